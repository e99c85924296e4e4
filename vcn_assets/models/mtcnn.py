"""MTCNN face detector (Zhang et al. 2016) in plain torch, with facenet-pytorch's MIT-licensed weights.

Usage::

    from vcn_assets.models.mtcnn import MTCNNConfig, MTCNNDetector
    detector = MTCNNDetector(MTCNNConfig(min_face_px=20, max_side=960), num_threads=2)
    dets = detector.detect(frame_bgr)       # Detections: xyxy, score, kps (ArcFace order), float32

Weights: the three state dicts ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` that the facenet-pytorch
wheel ships. Install them without that package's pinned dependencies (old torch/numpy, torchvision,
none of which this module needs; the package itself is never imported)::

    pip install --no-deps facenet-pytorch==2.6.0

or pass ``weights_dir`` = a folder holding the three files.

Pipeline, per frame: (1) PNet, fully convolutional, scores 12x12 windows at stride 2 on an image
pyramid (scales 12/min_face_px * scale_factor**k); all pyramid levels are shelf-packed into one
canvas so PNet runs once. Candidates go through NMS per level (IoU 0.5) and across levels (0.7),
box regression and squaring. (2) RNet rescores 24x24 crops of all candidates in one batch: NMS 0.7,
regression, squaring. (3) ONet rescores 48x48 crops in one batch and gives five landmarks; then
regression and NMS 0.7 with intersection-over-minimum.

Box arithmetic reproduces the original (Matlab) MTCNN and its Python ports (facenet-pytorch),
quirks included, as that is the pipeline the weights and the project's recall figures come from.
Boxes are kept as pixel-edge coordinates; PNet cell (i, j) at scale s becomes [floor((2j+1)/s) - 1,
floor((2j+12)/s)] (the original's 1-based mapping: the left/top edge lies 1/s - 1 px inside the
window); a box is cropped over its whole pixels [floor(x1), floor(x2)); offsets are fractions of
the unrounded box. Final x1/y1 are reported as the original reports them, as the 1-based index of
the first pixel (1 px inside the edge box); x2/y2 are exclusive ends either way. This bookkeeping
is worth ~4 points of recall at IoU 0.5 on tbbt_s01e01_open (0.86 -> 0.90 over all frames, as
facenet-pytorch): its ground-truth boxes sit lower and tighter than MTCNN's. Landmarks are placed
on the crop ONet saw; output boxes are clipped to the frame.

Crops are sampled with ``grid_sample`` from a 1, 1/2, 1/4, ... mip pyramid (2x supersampled, then
2x2 averaged: on the same boxes, ONet's offsets differ from those on the reference's area-resampled
crops by 0.007 box sides rms); outside the frame the crop is black, as in the original. The
weights expect RGB scaled as (x - 127.5) * 0.0078125; that transform and the BGR->RGB swap are
folded into each net's first convolution, so raw BGR pixel values go in. Dense layers take feature
maps flattened in (W, H, C) order (the transposed layout of the Caffe original). ONet's landmarks
come out as left eye, right eye, nose, left and right mouth corner with "left" the image left: the
ArcFace order of ``Detections.kps``. The nets run channels-last in memory (2-15x faster on CPU).
"""

from __future__ import annotations

import logging
import math
import pickle
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from vcn_assets.models.base import Detections, ModelFileError, short_reason

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install --no-deps facenet-pytorch==2.6.0"
WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
_CELL = 12  # PNet window side, in pyramid pixels (stride 2)
_GAP = 2  # canvas gap: no PNet window reaches more than 1 px past its own level
_NMS_LEVEL, _NMS_PNET, _NMS_RNET, _NMS_ONET = 0.5, 0.7, 0.7, 0.7
_PIX_MEAN, _PIX_SCALE = 127.5, 0.0078125

Boxes = NDArray[np.float32]  # (N, 4) xyxy


@dataclass(frozen=True)
class MTCNNConfig:
    """Detector settings; every one trades speed against recall or precision."""

    min_face_px: int = 20
    """Smallest face side searched for, in detection-image pixels (after ``max_side``). The pyramid
    starts at scale 12 / min_face_px: halving it about quadruples PNet's work and its candidates."""
    scale_factor: float = 0.709
    """Ratio between pyramid levels (0.709 ~ 1/sqrt 2, the paper's). Closer to 1: more levels, finer
    size coverage, slower; smaller: faster, but faces between two level sizes are found less often."""
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    """Face probability needed to pass PNet, RNet, ONet. Lower: more candidates reach the costlier
    later stages (higher recall, slower, more false positives); higher: the reverse."""
    min_score: float = 0.9
    """Final ONet probability kept. Lower keeps harder faces (profile, blurred, small, dark) and
    more non-faces; higher keeps only clear frontal-ish faces."""
    max_side: int | None = None
    """If set, frames whose longer side exceeds it are downscaled (INTER_AREA) before detection and
    results are mapped back. Cost falls about with the square of the downscale; faces smaller than
    min_face_px * (longer side / max_side) original pixels are no longer searched for."""
    device: str = "cpu"
    """torch device of the three nets and crops ("cpu", "cuda", ...); NMS runs in numpy on the CPU."""

    def __post_init__(self) -> None:
        if self.min_face_px < 1:
            raise ValueError(f"min_face_px must be >= 1, got {self.min_face_px}")
        if not 0.0 < self.scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in (0, 1), got {self.scale_factor}")
        if len(self.thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be three probabilities, got {self.thresholds}")
        if self.max_side is not None and self.max_side < _CELL:
            raise ValueError(f"max_side must be None or >= {_CELL}, got {self.max_side}")


# ----------------------------------------------------------------------------------------- networks
# Attribute names follow the keys of facenet-pytorch's state dicts.


def _flatten_wh(x: Tensor) -> Tensor:
    """Flatten (N, C, H, W) maps in (W, H, C) order, the order the dense weights were converted in."""
    return x.permute(0, 3, 2, 1).flatten(1)


class _PNet(nn.Module):
    """Proposal net: face probability and box offsets for every 12x12 window at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return F.softmax(self.conv4_1(x), 1)[:, 1], self.conv4_2(x)


class _RNet(nn.Module):
    """Refinement net on 24x24 crops: face probability and box offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_wh(self.prelu3(self.conv3(x)))))
        return F.softmax(self.dense5_1(x), 1)[:, 1], self.dense5_2(x)


class _ONet(nn.Module):
    """Output net on 48x48 crops: face probability, box offsets, five landmarks (x1..x5, y1..y5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2 = nn.Linear(256, 2), nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_wh(self.prelu4(self.conv4(x)))))
        return F.softmax(self.dense6_1(x), 1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def default_weights_dir() -> Path | None:
    """``facenet_pytorch/data`` in site-packages, found without importing the package (or None)."""
    spec = find_spec("facenet_pytorch")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data"


def _weight_paths(weights_dir: Path | None) -> list[Path]:
    folder = weights_dir if weights_dir is not None else default_weights_dir()
    shown = folder if folder is not None else Path("<site-packages>/facenet_pytorch/data")
    paths = [Path(shown) / name for name in WEIGHT_FILES]
    missing = [p for p in paths if folder is None or not p.is_file()]
    if missing:
        raise FileNotFoundError(
            "MTCNN weights not found: expected "
            + ", ".join(map(str, paths))
            + f" (missing: {', '.join(p.name for p in missing)}). They ship in the facenet-pytorch "
            f"wheel (MIT licence); install them with `{INSTALL_HINT}` (--no-deps: its pinned "
            "torch/numpy/torchvision are not needed), or pass weights_dir=<folder with "
            + ", ".join(WEIGHT_FILES)
            + ">."
        )
    return paths


def _fold_input_transform(conv: nn.Conv2d) -> None:
    """Make ``conv`` take raw BGR pixel values instead of RGB scaled as (x - 127.5) * 0.0078125."""
    assert conv.bias is not None
    weight = conv.weight.flip(1) * _PIX_SCALE
    conv.bias.sub_(_PIX_MEAN * weight.sum((1, 2, 3)))
    conv.weight.copy_(weight)


def _load_weights(net: nn.Module, path: Path) -> None:
    """``path``'s state dict into ``net``; a damaged or wrong file is a :class:`ModelFileError`."""
    what = f"{type(net).__name__.lstrip('_')} weights"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # unreadable file (permissions, I/O): its own message names the path
    except Exception as exc:  # a damaged file makes torch's unpickler raise almost any type
        # (UnpicklingError, RuntimeError, EOFError, ValueError; IndexError on one random-bytes file in CI)
        # torch's own unpickling message is long and suggests weights_only=False: never do that here
        why = "unpickling failed" if isinstance(exc, pickle.UnpicklingError) else short_reason(exc, 80)
        raise ModelFileError(f"{path}: not a readable torch weights file (expected facenet-pytorch's MTCNN "
                             f"{what}; {why}); reinstall with `{INSTALL_HINT} --force-reinstall`") from exc
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{path}: these are not facenet-pytorch's MTCNN {what} ({short_reason(exc, 80)}); "
                             f"reinstall with `{INSTALL_HINT} --force-reinstall`") from exc


def load_nets(weights_dir: Path | None, device: str) -> tuple[_PNet, _RNet, _ONet]:
    """The three nets with their weights, in eval mode on ``device``, taking raw BGR pixels."""
    nets = (_PNet(), _RNet(), _ONet())
    for net, path in zip(nets, _weight_paths(weights_dir)):
        _load_weights(net, path)
        with torch.no_grad():
            _fold_input_transform(net.conv1)
        net.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
        log.debug("loaded %s", path)
    return nets


# ------------------------------------------------------------------------------------- box helpers


def nms(
    boxes: Boxes,
    scores: NDArray[np.float32],
    iou: float,
    groups: NDArray[np.int64] | None = None,
    use_min: bool = False,
) -> NDArray[np.int64]:
    """Greedy NMS: indices kept, best first. ``groups`` are suppressed only within themselves;
    ``use_min`` divides the intersection by the smaller area instead of the union."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if groups is not None:  # shift each group far away so groups never overlap
        boxes = boxes + (groups * (np.ptp(boxes) + 1.0))[:, None]
    x1, y1, x2, y2 = np.ascontiguousarray(boxes.T)
    area = (x2 - x1) * (y2 - y1)
    order, keep = np.argsort(-scores, kind="stable"), []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0)
        inter = w * np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0)
        denom = np.minimum(area[i], area[rest]) if use_min else area[i] + area[rest] - inter
        order = rest[inter <= iou * np.maximum(denom, 1e-9)]
    return np.asarray(keep, np.int64)


def _regress(boxes: Boxes, offsets: NDArray[np.float32]) -> Boxes:
    """Apply the nets' box offsets, which are fractions of the box width/height."""
    wh = boxes[:, 2:] - boxes[:, :2]
    return boxes + offsets * np.tile(wh, 2)


def _square(boxes: Boxes) -> Boxes:
    """Squares of side max(w, h) around the same centres."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half], 1)


def _even(x: int) -> int:
    return x + (x & 1)


def _shelf_pack(sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Places images of (h, w), largest first, on shelves: their (x, y) origins and the canvas (h, w).
    Origins are even (each level keeps PNet's stride-2 grid) and at least ``_GAP`` px apart."""
    width = sizes[0][1] if len(sizes) == 1 else _even(sizes[0][1] + _GAP) + sizes[1][1]
    origins, x, y, shelf_h = [], 0, 0, 0
    for h, w in sizes:
        if x + w > width:
            x, y, shelf_h = 0, _even(y + shelf_h + _GAP), 0
        origins.append((x, y))
        x, shelf_h = _even(x + w + _GAP), max(shelf_h, h)
    return origins, (y + shelf_h, width)


def _pnet_cells(side: int) -> int:
    """PNet output cells along a level side: conv3, ceil-mode pool 2, conv3, conv3."""
    return math.ceil((side - 2) / 2) - 4


def _to_tensor(image: NDArray[np.uint8], device: str) -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 raw pixel values, channels-last in memory."""
    return torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float()


# ------------------------------------------------------------------------------------- mip pyramid


@dataclass(frozen=True)
class _Mip:
    """The frame at scales 1, 1/2, 1/4, ... packed in one (1, 3, H, W) tensor, for crop sampling.
    Per level (rows): ``origin`` (x, y) in the canvas, ``size`` (w, h), ``ratio`` level/frame size."""

    image: Tensor
    origin: Tensor
    size: Tensor
    ratio: Tensor
    frame_wh: Tensor


def _halvings(frame: NDArray[np.uint8], smallest: int) -> list[NDArray[np.uint8]]:
    """The frame and its successive INTER_AREA halvings while the shorter side stays >= ``smallest``."""
    levels = [np.ascontiguousarray(frame)]
    while min(levels[-1].shape[:2]) >= 2 * smallest:
        h, w = levels[-1].shape[:2]
        levels.append(cv2.resize(levels[-1], ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA))
    return levels


def _build_mip(levels: list[NDArray[np.uint8]], device: str) -> _Mip:
    """Packs ``_halvings`` output: level 0 at the origin, the others stacked in a column to its right."""
    fh, fw = levels[0].shape[:2]
    ys = np.cumsum([0] + [lv.shape[0] for lv in levels[1:]])
    canvas = np.zeros(
        (max(fh, int(ys[-1])), fw + (levels[1].shape[1] if len(levels) > 1 else 0), 3), np.uint8
    )
    origins = [(0, 0)] + [(fw, int(y)) for y in ys[:-1]]
    for (x, y), lv in zip(origins, levels):
        canvas[y : y + lv.shape[0], x : x + lv.shape[1]] = lv
    size = np.array([(lv.shape[1], lv.shape[0]) for lv in levels], np.float32)

    def t(a: NDArray[np.float32] | list[tuple[int, int]]) -> Tensor:
        return torch.as_tensor(np.asarray(a, np.float32), device=device)

    return _Mip(_to_tensor(canvas, device), t(origins), t(size), t(size / size[0]), t(size[0]))


def _crop(mip: _Mip, boxes: Boxes, out: int) -> Tensor:
    """(N, 3, out, out) crops of ``boxes`` (frame pixels), black outside the frame. Each box is sampled
    from the mip level where it is 1-2x ``out`` px, at 2x2 points per output pixel, then averaged."""
    n = 2 * out
    b = torch.as_tensor(np.floor(boxes), dtype=torch.float32, device=mip.image.device)  # whole pixels
    wh = b[:, 2:] - b[:, :2]
    lvl = torch.log2(wh.amax(1).clamp(min=1) / out).floor().clamp(0, len(mip.size) - 1).long()
    t = (torch.arange(n, device=b.device, dtype=torch.float32) + 0.5) / n
    pts = b[:, None, :2] + t[None, :, None] * wh[:, None, :]  # (N, n, 2): sample x's and y's
    inside = (pts >= 0) & (pts < mip.frame_wh)
    mask = inside[:, :, None, 1] & inside[:, None, :, 0]  # (N, rows, cols)
    lp = torch.minimum((pts * mip.ratio[lvl][:, None]).clamp(min=0.5), mip.size[lvl][:, None] - 0.5)
    g = (lp + mip.origin[lvl][:, None]) * 2 / torch.tensor(mip.image.shape[:1:-1], device=b.device) - 1
    grid = torch.stack(torch.broadcast_tensors(g[:, None, :, 0], g[:, :, None, 1]), -1)
    crops = F.grid_sample(mip.image, grid.reshape(1, -1, n, 2), align_corners=False)
    crops = crops.view(3, -1, n, n).transpose(0, 1) * mask[:, None]
    return F.avg_pool2d(crops, 2).contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------- detector


class MTCNNDetector:
    """MTCNN as a ``FaceDetector``: ``detect(frame_bgr) -> Detections`` in the frame's pixels.

    ``num_threads`` (if given) sets torch's intra-op threads, which is process-wide.
    """

    def __init__(
        self,
        config: MTCNNConfig = MTCNNConfig(),
        weights_dir: Path | None = None,
        num_threads: int | None = None,
    ) -> None:
        self.config = config
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.pnet, self.rnet, self.onet = load_nets(weights_dir, config.device)

    def detect(self, frame_bgr: NDArray[np.uint8]) -> Detections:
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(
                f"expected an (H, W, 3) uint8 BGR frame, got {frame_bgr.shape}, {frame_bgr.dtype}"
            )
        image, ratio = self._detection_image(frame_bgr)
        with torch.inference_mode():
            found = self._detect(image)
        if found is None:
            return Detections.empty()
        boxes, score, kps = found
        h, w = frame_bgr.shape[:2]
        boxes = np.clip(boxes / np.tile(ratio, 2), 0, [w, h, w, h])
        return Detections(
            boxes.astype(np.float32), score.astype(np.float32), (kps / ratio).astype(np.float32)
        )

    def _detection_image(self, frame: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
        """The frame downscaled to ``max_side`` if it is larger, and the (x, y) ratios used."""
        (h, w), cap = frame.shape[:2], self.config.max_side
        if cap is None or max(h, w) <= cap:
            return np.ascontiguousarray(frame), np.ones(2)
        size = (max(1, round(w * cap / max(h, w))), max(1, round(h * cap / max(h, w))))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), np.array(size) / [w, h]

    def _detect(
        self, image: NDArray[np.uint8]
    ) -> tuple[Boxes, NDArray[np.float32], NDArray[np.float32]] | None:
        halvings = _halvings(image, 24)
        boxes = self._propose(halvings)
        if len(boxes) == 0:
            return None
        mip = _build_mip(halvings, self.config.device)
        boxes = self._refine(mip, boxes)
        if len(boxes) == 0:
            return None
        found = self._output(mip, boxes)
        return found if len(found[0]) else None

    def _scales(self, h: int, w: int) -> list[float]:
        scales, s = [], _CELL / self.config.min_face_px
        while min(h, w) * s >= _CELL:
            scales.append(s)
            s *= self.config.scale_factor
        return scales

    def _pnet_canvas(
        self, halvings: list[NDArray[np.uint8]]
    ) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
        """All pyramid levels on one canvas, and per level (x, y, w, h, scale). Each level
        is resized from the smallest halving of the frame that is still larger than it."""
        h, w = halvings[0].shape[:2]
        sizes = [(math.ceil(h * s), math.ceil(w * s)) for s in self._scales(h, w)]
        if not sizes:
            return np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5), np.float64)
        origins, shape = _shelf_pack(sizes)
        canvas = np.zeros((*shape, 3), np.uint8)
        for (lh, lw), (x, y) in zip(sizes, origins):
            src = next((v for v in reversed(halvings) if v.shape[0] >= lh and v.shape[1] >= lw), halvings[0])
            canvas[y : y + lh, x : x + lw] = cv2.resize(src, (lw, lh), interpolation=cv2.INTER_AREA)
        levels = [(x, y, lw, lh, s) for (lh, lw), (x, y), s in zip(sizes, origins, self._scales(h, w))]
        return canvas, np.array(levels, np.float64)

    def _propose(self, halvings: list[NDArray[np.uint8]]) -> Boxes:
        """Stage 1: PNet on the pyramid canvas -> squared candidate boxes in image pixels."""
        canvas, levels = self._pnet_canvas(halvings)
        if len(levels) == 0:
            return np.zeros((0, 4), np.float32)
        prob, reg = self.pnet(_to_tensor(canvas, self.config.device))
        prob, reg = prob[0].cpu().numpy(), reg[0].cpu().numpy()
        owner = np.full(prob.shape, -1, np.int64)
        for k, (x, y, lw, lh) in enumerate(levels[:, :4].astype(int)):
            owner[y // 2 : y // 2 + _pnet_cells(lh), x // 2 : x // 2 + _pnet_cells(lw)] = k
        ys, xs = np.nonzero((prob >= self.config.thresholds[0]) & (owner >= 0))
        lvl = owner[ys, xs]
        corner = np.stack([2 * xs, 2 * ys], 1) - levels[lvl, :2]  # window corner in level pixels
        scale = levels[lvl, 4:]  # the original's cell -> box mapping (see module docstring)
        boxes = np.concatenate([np.floor((corner + 1) / scale) - 1, np.floor((corner + _CELL) / scale)], 1)
        score, offsets = prob[ys, xs], reg[:, ys, xs].T
        keep = nms(boxes, score, _NMS_LEVEL, groups=lvl)
        keep = keep[nms(boxes[keep], score[keep], _NMS_PNET)]
        log.debug("PNet: %d cells, %d after NMS", len(ys), len(keep))
        return _square(_regress(boxes[keep], offsets[keep])).astype(np.float32)

    def _refine(self, mip: _Mip, boxes: Boxes) -> Boxes:
        """Stage 2: RNet rescoring of 24x24 crops -> squared, regressed survivors."""
        prob, reg = (o.cpu().numpy() for o in self.rnet(_crop(mip, boxes, 24)))
        ok = np.flatnonzero(prob >= self.config.thresholds[1])
        keep = ok[nms(boxes[ok], prob[ok], _NMS_RNET)]
        log.debug("RNet: %d candidates, %d kept", len(boxes), len(keep))
        return _square(_regress(boxes[keep], reg[keep])).astype(np.float32)

    def _output(self, mip: _Mip, boxes: Boxes) -> tuple[Boxes, NDArray[np.float32], NDArray[np.float32]]:
        """Stage 3: ONet on 48x48 crops -> final boxes, probabilities and (N, 5, 2) landmarks."""
        prob, reg, pts = (o.cpu().numpy() for o in self.onet(_crop(mip, boxes, 48)))
        ok = np.flatnonzero((prob >= self.config.thresholds[2]) & (prob >= self.config.min_score))
        boxes, prob, reg, pts = boxes[ok], prob[ok], reg[ok], pts[ok]
        seen = np.floor(boxes)[:, None]  # the crop ONet saw
        kps = seen[..., :2] + np.stack([pts[:, :5], pts[:, 5:]], -1) * (seen[..., 2:] - seen[..., :2])
        boxes = _regress(boxes, reg)
        keep = nms(boxes, prob, _NMS_ONET, use_min=True)
        log.debug("ONet: %d candidates, %d kept", len(ok), len(keep))
        return boxes[keep] + np.array([1, 1, 0, 0], np.float32), prob[keep], kps[keep]  # reported as 1-based
