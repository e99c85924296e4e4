"""Stage 1's crop stage: sampling, alignment, filters, embeddings, SER-FIQ quality, outliers.

Usage::

    crops = extract_crops(info, boxes, models, CropConfig())   # Crops, one row per kept crop
    tracks = summarise_tracks(boxes, crops, CropConfig())      # TrackSummary: quality, status, rep
    quality_cut(tracks.quality[tracks.n_crops > 0], CropConfig())  # the outlier threshold applied

Per track, a crop is sampled every ``crop_interval`` frames among frames where the detector ran
(interpolated landmarks are not precise enough to align), capped at ``max_crops_per_track``.
The slides' filters then drop faces that are too small, beyond the K largest of their frame, or
blurry. Tracks whose mean quality is a low-side MAD outlier are ``unknown`` (kept, excluded from
clustering); tracks with no crop left are ``no_crops``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from vcn_assets.core.align import align_faces
from vcn_assets.core.config import CropConfig
from vcn_assets.core.progress import Progress, ProgressCounter
from vcn_assets.core.quality import frontalness, mad_cut, mad_outliers, serfiq_quality, sharpness
from vcn_assets.core.tracking import TrackBoxes
from vcn_assets.core.video import VideoError, VideoInfo, iter_frames
from vcn_assets.models.base import ARCFACE_ALIGNMENT, FaceModels

log = logging.getLogger(__name__)

VALID, UNKNOWN, NO_CROPS = "valid", "unknown", "no_crops"


@dataclass(frozen=True)
class Crops:
    """Kept crops: ``track_id``, ``frame_idx`` (C,), ``xyxy`` (C, 4), ``embedding`` (C, D),
    ``quality``, ``sharpness``, ``frontal`` (C,), ``views`` (C, T, D) the stochastic SER-FIQ samples
    (reused by finetuning as augmented views of the crop) and ``jpeg`` (C JPEG-encoded 112x112
    ArcFace-aligned BGR crops, for display)."""

    track_id: NDArray[np.int64]
    frame_idx: NDArray[np.int64]
    xyxy: NDArray[np.float32]
    embedding: NDArray[np.float32]
    quality: NDArray[np.float32]
    sharpness: NDArray[np.float32]
    frontal: NDArray[np.float32]
    views: NDArray[np.float32]
    jpeg: list[bytes]

    def __len__(self) -> int:
        return len(self.track_id)


@dataclass(frozen=True)
class TrackSummary:
    """Per track: ``track_id``, ``n_crops``, ``quality`` (mean SER-FIQ, NaN without crops), ``status``
    (valid / unknown / no_crops) and ``rep_crop`` (row of its representative crop in Crops, or -1)."""

    track_id: NDArray[np.int64]
    n_crops: NDArray[np.int64]
    quality: NDArray[np.float32]
    status: NDArray[np.str_]
    rep_crop: NDArray[np.int64]


def sample_rows(boxes: TrackBoxes, cfg: CropConfig) -> NDArray[np.int64]:
    """Rows of ``boxes`` to crop: detected frames, >= crop_interval apart, capped per track."""
    picked: list[int] = []
    for tid in np.unique(boxes.track_id):
        rows = np.flatnonzero((boxes.track_id == tid) & boxes.detected)
        chosen, last = [], -(10**9)
        for r in rows:
            if boxes.frame_idx[r] - last >= cfg.crop_interval:
                chosen.append(r)
                last = boxes.frame_idx[r]
        if len(chosen) > cfg.max_crops_per_track:
            idx = np.linspace(0, len(chosen) - 1, cfg.max_crops_per_track).round().astype(int)
            chosen = [chosen[i] for i in idx]
        picked += chosen
    return np.asarray(sorted(picked, key=lambda r: (boxes.frame_idx[r], r)), np.int64)


def size_filter(boxes: TrackBoxes, rows: NDArray[np.int64], cfg: CropConfig) -> NDArray[np.int64]:
    """Drop rows whose face is below ``min_face_px`` or not among the K largest of its frame."""
    wh = boxes.xyxy[:, 2:] - boxes.xyxy[:, :2]
    side = np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 0, None))
    keep = []
    for r in rows:
        same = boxes.frame_idx == boxes.frame_idx[r]
        rank = int((side[same] > side[r]).sum())
        if side[r] >= cfg.min_face_px and rank < cfg.top_k_per_frame:
            keep.append(r)
    return np.asarray(keep, np.int64)


def _frames_with_rows(
    info: VideoInfo, boxes: TrackBoxes, rows: NDArray[np.int64]
) -> Iterator[tuple[NDArray[np.uint8], NDArray[np.int64]]]:
    frames = boxes.frame_idx[rows]
    for frame_idx, frame_bgr in iter_frames(info.path, frames=set(frames.tolist())):
        yield frame_bgr, rows[frames == frame_idx]


def extract_crops(
    info: VideoInfo, boxes: TrackBoxes, models: FaceModels, cfg: CropConfig, progress: Progress | None = None
) -> Crops:
    """Align, filter, embed and score the sampled crops of every track (one streaming decode).

    ``progress(done, total)`` counts sampled crops finished: embedded, or dropped as blurry.
    """
    rows = size_filter(boxes, sample_rows(boxes, cfg), cfg)
    kept: list[NDArray[np.int64]] = []
    shown: list[bytes] = []  # JPEG at once: raw 112x112 crops would cost 37 kB each until the end
    sharp: list[NDArray[np.float32]] = []
    params = [int(cv2.IMWRITE_JPEG_QUALITY), cfg.jpeg_quality]
    batch: list[NDArray[np.uint8]] = []
    results: list[tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]] = []
    rng = np.random.default_rng(cfg.seed)
    counter = ProgressCounter(len(rows), progress)
    seen = 0
    for frame_bgr, frame_rows in _frames_with_rows(info, boxes, rows):
        disp = align_faces(frame_bgr, boxes.kps[frame_rows], ARCFACE_ALIGNMENT)
        s = sharpness(disp)
        ok = s >= cfg.min_sharpness
        kept.append(frame_rows[ok])
        shown += [cv2.imencode(".jpg", im, params)[1].tobytes() for im in disp[ok]]
        sharp.append(s[ok])
        batch.append(align_faces(frame_bgr, boxes.kps[frame_rows[ok]], models.embedder.alignment))
        if sum(len(b) for b in batch) >= 64:
            results.append(_embed(models, np.concatenate(batch), cfg, rng))
            batch = []
        seen += len(frame_rows)
        counter.update(seen - sum(len(b) for b in batch))
    if batch:
        results.append(_embed(models, np.concatenate(batch), cfg, rng))
    counter.finish()
    return _assemble(boxes, kept, shown, sharp, results, models.embedder.dim, cfg)


def trunk_features(info: VideoInfo, boxes: TrackBoxes, track_id: NDArray[np.int64], frame_idx: NDArray[np.int64],
                   embedding: NDArray[np.float32], models: FaceModels, n_views: int, seed: int,
                   progress: Progress | None = None) -> NDArray[np.float16]:
    """For Stage 2's ``train_last_block``: the backbone features before its last block (C, V, *F),
    float16, of ``n_views`` views of the crops (``track_id``, ``frame_idx``), re-read from the movie
    (one streaming decode) and re-aligned as :func:`extract_crops` aligned them. ``embedding`` (C, D)
    are the crops' stored embeddings: view 0 through the untrained block must give them back, or the
    movie is not the one the crops came from (a :class:`VideoError` naming it)."""
    backbone = models.trainable_tail()
    where = {(int(t), int(f)): r for r, (t, f) in enumerate(zip(boxes.track_id, boxes.frame_idx))}
    rows = np.array([where.get((int(t), int(f)), -1) for t, f in zip(track_id, frame_idx)], np.int64)
    if (rows < 0).any():
        raise VideoError(info.path, f"{int((rows < 0).sum())} crop(s) have no box in the stored tracks; re-materialise crops")
    if len(rows) == 0:
        return np.zeros((0, n_views), np.float16)  # nothing to read
    position = {int(r): i for i, r in enumerate(rows)}
    parts: list[tuple[list[int], NDArray[np.float16]]] = []
    rng = np.random.default_rng(seed)
    counter = ProgressCounter(len(rows), progress)
    done, batch, batch_at = 0, [], []

    def flush() -> None:  # 64 chips per trunk pass, as extract_crops batches them
        parts.append((batch_at[:], backbone.trunk_views(np.concatenate(batch), n_views, rng).astype(np.float16)))
        batch.clear()
        batch_at.clear()

    for frame_bgr, frame_rows in _frames_with_rows(info, boxes, np.sort(rows)):
        batch.append(align_faces(frame_bgr, boxes.kps[frame_rows], models.embedder.alignment))
        batch_at.extend(position[int(r)] for r in frame_rows)
        if len(batch_at) >= 64:
            flush()
        done += len(frame_rows)
        counter.update(done)
    if batch:
        flush()
    counter.finish()
    missing = len(rows) - done
    if missing:
        raise VideoError(info.path, f"{missing} of {len(rows)} crop frames could not be read: the movie changed "
                                    f"since `crops` was materialised; re-materialise crops")
    out = np.zeros((len(rows), *parts[0][1].shape[1:]), np.float16)
    for positions, feats in parts:
        out[positions] = feats
    _check_reread(info, out, embedding, backbone.tail())
    return out


def _check_reread(info: VideoInfo, trunk: NDArray[np.float16], embedding: NDArray[np.float32], tail) -> None:
    """Every re-read crop's view 0 through the untrained block is its stored embedding (cosine > 0.99:
    float16 features and decoder rounding stay far above it; another frame or face does not)."""
    import torch

    with torch.no_grad():
        again = np.concatenate([tail(torch.from_numpy(trunk[i:i + 512, 0].astype(np.float32))).numpy()
                                for i in range(0, len(trunk), 512)])
    cos = (again * embedding).sum(1) / np.maximum(np.linalg.norm(again, axis=1) * np.linalg.norm(embedding, axis=1), 1e-12)
    bad = int((cos < 0.99).sum())
    if bad:
        raise VideoError(info.path, f"{bad} of {len(cos)} crops re-read for the last block differ from the stored "
                                    f"crops (lowest cosine {cos.min():.3f}): the movie changed since `crops` was "
                                    f"materialised; re-materialise crops")


def _embed(
    models: FaceModels, chips: NDArray[np.uint8], cfg: CropConfig, rng: np.random.Generator
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    stochastic = models.stochastic
    if stochastic is None:
        raise ValueError(f"backend {models.backend!r} has no stochastic embedding: SER-FIQ quality needs one")
    emb, samples = stochastic.embed_with_samples(chips, cfg.quality_samples, rng)
    return emb, serfiq_quality(samples) if len(emb) else np.zeros(0, np.float32), samples


def _assemble(
    boxes: TrackBoxes,
    kept: list[NDArray[np.int64]],
    jpeg: list[bytes],
    sharp: list[NDArray[np.float32]],
    results: list[tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]],
    dim: int,
    cfg: CropConfig,
) -> Crops:
    rows = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    emb = np.concatenate([r[0] for r in results]) if results else np.zeros((0, dim), np.float32)
    qual = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.float32)
    views = np.concatenate([r[2] for r in results]) if results else np.zeros((0, cfg.quality_samples, dim), np.float32)
    order = np.lexsort((boxes.frame_idx[rows], boxes.track_id[rows]))
    return Crops(
        track_id=boxes.track_id[rows][order],
        frame_idx=boxes.frame_idx[rows][order],
        xyxy=boxes.xyxy[rows][order],
        embedding=emb[order].astype(np.float32),
        quality=qual[order].astype(np.float32),
        sharpness=(np.concatenate(sharp) if sharp else np.zeros(0, np.float32))[order],
        frontal=frontalness(boxes.kps[rows][order]),
        views=views[order].astype(np.float32),
        jpeg=[jpeg[i] for i in order],
    )


def summarise_tracks(boxes: TrackBoxes, crops: Crops, cfg: CropConfig) -> TrackSummary:
    """Track quality (mean crop quality), MAD outliers -> ``unknown``, and representative crops."""
    track_ids = np.unique(boxes.track_id)
    n = np.array([(crops.track_id == t).sum() for t in track_ids], np.int64)
    quality = np.array(
        [crops.quality[crops.track_id == t].mean() if k else np.nan for t, k in zip(track_ids, n)], np.float32
    )
    status = np.where(n > 0, VALID, NO_CROPS).astype("<U8")
    has = n > 0
    outlier = mad_outliers(quality[has], cfg.mad_k, cfg.mad_min_tracks, cfg.mad_min_gap)
    status[np.flatnonzero(has)[outlier]] = UNKNOWN
    rep = np.full(len(track_ids), -1, np.int64)
    score = crops.frontal * crops.quality
    for i, t in enumerate(track_ids):
        idx = np.flatnonzero(crops.track_id == t)
        if len(idx):
            rep[i] = idx[np.argmax(score[idx])]
    return TrackSummary(track_ids.astype(np.int64), n, quality, status, rep)


def quality_cut(quality: NDArray[np.float32], cfg: CropConfig) -> float | None:
    """Track quality below which :func:`summarise_tracks` marks a track ``unknown``; ``quality`` holds
    the tracks that have crops. None when there are too few tracks to judge (``mad_min_tracks``)."""
    return mad_cut(quality, cfg.mad_k, cfg.mad_min_tracks, cfg.mad_min_gap)
