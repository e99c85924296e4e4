"""Face detection on a frame stride and motion tracking within shots.

Usage::

    boxes = track_faces(info, shots, detector, TrackConfig())   # TrackBoxes, one row per (track, frame)

Association is IoU + appearance (an HSV histogram of the face box) solved with the Hungarian
algorithm, per shot: the tracker is reset at every cut, so tracks never cross one. Between
detection frames boxes and landmarks are interpolated linearly (``detected`` is False there);
each track is extended by half a stride at both ends, clamped to its shot, because the face was
most likely already (still) visible between the detection frames.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from vcn_assets.core.config import TrackConfig
from vcn_assets.core.devices import threads_per_worker
from vcn_assets.core.progress import Progress, ProgressCounter
from vcn_assets.core.shots import Shots
from vcn_assets.core.video import VideoInfo, iter_frames
from vcn_assets.models.base import Detections, FaceDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackBoxes:
    """Column table of track boxes: ``track_id``, ``frame_idx`` (P,), ``xyxy`` (P, 4), ``kps`` (P, 5, 2),
    ``score`` (P,), ``detected`` (P,) bool; sorted by track then frame."""

    track_id: NDArray[np.int64]
    frame_idx: NDArray[np.int64]
    xyxy: NDArray[np.float32]
    kps: NDArray[np.float32]
    score: NDArray[np.float32]
    detected: NDArray[np.bool_]

    def __post_init__(self) -> None:
        p = len(self.track_id)
        shapes = {"frame_idx": (p,), "xyxy": (p, 4), "kps": (p, 5, 2), "score": (p,), "detected": (p,)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} must be {shape}, got {getattr(self, name).shape}")

    def __len__(self) -> int:
        return len(self.track_id)

    @property
    def n_tracks(self) -> int:
        return len(np.unique(self.track_id))

    @classmethod
    def empty(cls) -> TrackBoxes:
        return cls(
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.float32),
            np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, bool),
        )


def iou_matrix(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """Pairwise IoU of boxes ``a`` (N, 4) and ``b`` (M, 4) in xyxy: (N, M)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return (inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)).astype(np.float32)


def appearance(frame_bgr: NDArray[np.uint8], xyxy: NDArray[np.float32]) -> NDArray[np.float32]:
    """Unit-norm 8x4 hue-saturation histogram of the central part of each box: (N, 32)."""
    hsv = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2HSV)
    h, w = hsv.shape[:2]
    out = np.zeros((len(xyxy), 32), np.float32)
    for i, (x1, y1, x2, y2) in enumerate(xyxy):
        dx, dy = 0.2 * (x2 - x1), 0.2 * (y2 - y1)
        xa, ya = int(np.clip(x1 + dx, 0, w - 1)), int(np.clip(y1 + dy, 0, h - 1))
        xb, yb = int(np.clip(x2 - dx, xa + 1, w)), int(np.clip(y2 - dy, ya + 1, h))
        hist = cv2.calcHist([hsv[ya:yb, xa:xb]], [0, 1], None, [8, 4], [0, 180, 0, 256]).ravel()
        out[i] = np.sqrt(hist / max(hist.sum(), 1.0))  # Hellinger: dot product = Bhattacharyya coeff.
    return out


@dataclass
class _Track:
    track_id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[NDArray[np.float32]] = field(default_factory=list)
    kps: list[NDArray[np.float32]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    app: NDArray[np.float32] | None = None
    missed: int = 0

    def add(self, frame_idx: int, dets: Detections, j: int, app: NDArray[np.float32]) -> None:
        self.frames.append(frame_idx)
        self.boxes.append(dets.xyxy[j])
        self.kps.append(dets.kps[j])
        self.scores.append(float(dets.score[j]))
        self.app = app if self.app is None else 0.7 * self.app + 0.3 * app
        self.missed = 0


class ShotTracker:
    """Hungarian IoU + appearance tracker for one shot; ``reset()`` at every cut."""

    def __init__(self, cfg: TrackConfig) -> None:
        self.cfg = cfg
        self.next_id = 0
        self.reset()

    def reset(self) -> list[_Track]:
        """Finish the current shot: returns its tracks and clears the state (ids keep counting)."""
        done = getattr(self, "_finished", []) + getattr(self, "_active", [])
        self._active: list[_Track] = []
        self._finished: list[_Track] = []
        return [t for t in done if len(t.frames) >= self.cfg.min_detections]

    def update(self, frame_idx: int, dets: Detections, app: NDArray[np.float32]) -> None:
        rows, cols = self._associate(dets, app)
        for r, c in zip(rows, cols):
            self._active[r].add(frame_idx, dets, c, app[c])
        for r in set(range(len(self._active))) - set(rows):
            self._active[r].missed += 1
        for c in sorted(set(range(len(dets))) - set(cols)):
            track = _Track(self.next_id)
            self.next_id += 1
            track.add(frame_idx, dets, c, app[c])
            self._active.append(track)
        alive = [t for t in self._active if t.missed <= self.cfg.max_missed]
        self._finished += [t for t in self._active if t.missed > self.cfg.max_missed]
        self._active = alive

    def _associate(self, dets: Detections, app: NDArray[np.float32]) -> tuple[list[int], list[int]]:
        if not self._active or len(dets) == 0:
            return [], []
        last = np.stack([t.boxes[-1] for t in self._active])
        iou = iou_matrix(last, dets.xyxy)
        sim = np.stack([t.app for t in self._active]) @ app.T
        w = self.cfg.iou_weight
        cost = 1.0 - (w * iou + (1.0 - w) * sim)
        cost[iou < self.cfg.min_iou] = 1e6
        rows, cols = linear_sum_assignment(cost)
        keep = cost[rows, cols] <= self.cfg.max_cost
        return rows[keep].tolist(), cols[keep].tolist()


def detection_frames(shots: Shots, stride: int) -> NDArray[np.int64]:
    """Frames the detector runs on: every ``stride``-th frame of each shot plus its last frame."""
    parts = [np.unique(np.r_[np.arange(s, e + 1, stride), e]) for s, e in zip(shots.start_frame, shots.end_frame)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def track_faces(
    info: VideoInfo, shots: Shots, detector: FaceDetector, cfg: TrackConfig, progress: Progress | None = None,
    workers: int = 1,
) -> TrackBoxes:
    """Detect on a stride of frames, track within each shot, interpolate between detections.

    ``progress(done, total)`` counts the detection frames processed (total = all of them).
    ``workers`` > 1 runs the detector on that many frames at once (threads, each with an equal share
    of torch's CPU threads); tracking still sees the frames in order, so the result does not depend
    on it beyond float rounding.
    """
    wanted = detection_frames(shots, cfg.detect_stride)
    counter = ProgressCounter(len(wanted), progress)
    tracker = ShotTracker(cfg)
    tracks: list[tuple[_Track, int]] = []
    shot = 0
    frames = iter_frames(info.path, frames=set(wanted.tolist()))
    for frame_idx, frame_bgr, found in detect_ahead(frames, detector, workers):
        new_shot = int(shots.shot_of(frame_idx))
        if new_shot != shot:
            tracks += [(t, shot) for t in tracker.reset()]
            shot = new_shot
        dets = _filter(found, cfg)
        tracker.update(frame_idx, dets, appearance(frame_bgr, dets.xyxy))
        counter.advance()
    counter.finish()
    tracks += [(t, shot) for t in tracker.reset()]
    half = cfg.detect_stride // 2
    rows = [_densify(t, int(shots.start_frame[s]), int(shots.end_frame[s]), half) for t, s in tracks]
    return _renumber(_concat(rows))


def detect_ahead(
    frames: Iterator[tuple[int, NDArray[np.uint8]]], detector: FaceDetector, workers: int
) -> Iterator[tuple[int, NDArray[np.uint8], Detections]]:
    """``(frame_idx, frame, detections)`` in frame order; with ``workers`` > 1 up to ``2 * workers``
    frames are decoded ahead and detected concurrently (decoding and torch release the GIL)."""
    if workers <= 1:
        for idx, frame in frames:
            yield idx, frame, detector.detect(frame)
        return
    with threads_per_worker(workers), ThreadPoolExecutor(workers, thread_name_prefix="detect") as pool:
        pending: deque[tuple[int, NDArray[np.uint8], Future[Detections]]] = deque()
        for idx, frame in frames:
            pending.append((idx, frame, pool.submit(detector.detect, frame)))
            if len(pending) >= 2 * workers:
                i, f, fut = pending.popleft()
                yield i, f, fut.result()
        while pending:
            i, f, fut = pending.popleft()
            yield i, f, fut.result()


def _filter(dets: Detections, cfg: TrackConfig) -> Detections:
    height = dets.xyxy[:, 3] - dets.xyxy[:, 1]
    return dets.select((dets.score >= cfg.min_score) & (height >= cfg.min_face_px))


def _densify(track: _Track, shot_start: int, shot_end: int, extend: int) -> TrackBoxes:
    """Every frame from first to last detection (plus ``extend`` each side, inside the shot)."""
    f = np.asarray(track.frames, np.int64)
    lo, hi = max(shot_start, f[0] - extend), min(shot_end, f[-1] + extend)
    frames = np.arange(lo, hi + 1, dtype=np.int64)
    src = np.clip(frames, f[0], f[-1])
    boxes = np.stack(track.boxes)
    kps = np.stack(track.kps).reshape(len(f), 10)
    xyxy = np.stack([np.interp(src, f, boxes[:, k]) for k in range(4)], 1).astype(np.float32)
    kp = np.stack([np.interp(src, f, kps[:, k]) for k in range(10)], 1).reshape(-1, 5, 2)
    score = np.interp(src, f, np.asarray(track.scores)).astype(np.float32)
    detected = np.isin(frames, f)
    tid = np.full(len(frames), track.track_id, np.int64)
    return TrackBoxes(tid, frames, xyxy, kp.astype(np.float32), score, detected)


def _concat(parts: list[TrackBoxes]) -> TrackBoxes:
    if not parts:
        return TrackBoxes.empty()
    cols = ("track_id", "frame_idx", "xyxy", "kps", "score", "detected")
    return TrackBoxes(*(np.concatenate([getattr(p, c) for p in parts]) for c in cols))


def _renumber(boxes: TrackBoxes) -> TrackBoxes:
    """Track ids 0..T-1 in order of first appearance (stable across runs), rows sorted."""
    if len(boxes) == 0:
        return boxes
    first = {}
    for tid, fr in zip(boxes.track_id.tolist(), boxes.frame_idx.tolist()):
        first[tid] = min(fr, first.get(tid, fr))
    order_ids = sorted(first, key=lambda t: (first[t], t))
    remap = {old: new for new, old in enumerate(order_ids)}
    new_ids = np.array([remap[t] for t in boxes.track_id.tolist()], np.int64)
    order = np.lexsort((boxes.frame_idx, new_ids))
    return TrackBoxes(
        new_ids[order], boxes.frame_idx[order], boxes.xyxy[order], boxes.kps[order],
        boxes.score[order], boxes.detected[order],
    )
