"""Frontend metrics (shots, detection, tracking) of a predicted track set against a benchmark case's GT.

Usage::

    case = load_case(Path("cases/lfw10_episode"))
    m = frontend_metrics(case, pred_cuts, pred_frame, pred_xyxy, pred_track)
    # {"shot_f1": 0.97, "gt_box_recall": 0.93, "track_purity": 1.0,
    #  "tracks_per_gt_track": 1.1, "n_tracks": 66}

A case directory holds ``movie.mp4``, ``gt_faces.csv`` (``frame,x1,y1,x2,y2,identity``), ``gt_shots.txt``
(first frame of each shot after the first) and ``case.json``. Boxes are ``xyxy`` pixel corners; frames are
0-based indices in decode order. Ratios that are undefined (no GT boxes, no matched boxes, no GT tracks)
are NaN. Pure numpy/scipy.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

GT_HEADER = ["frame", "x1", "y1", "x2", "y2", "identity"]


@dataclass(frozen=True)
class GtBoxes:
    """Ground-truth face boxes as columns.

    ``frame`` (M,) int64, ``xyxy`` (M, 4) float64, ``identity`` (M,) str.
    """

    frame: NDArray[np.int64]
    xyxy: NDArray[np.float64]
    identity: NDArray[np.str_]

    def __post_init__(self) -> None:
        m = self.frame.shape[0]
        if self.frame.shape != (m,):
            raise ValueError(f"GtBoxes: frame must be (M,), got {self.frame.shape}")
        if self.xyxy.shape != (m, 4):
            raise ValueError(f"GtBoxes: xyxy must be ({m}, 4), got {self.xyxy.shape}")
        if self.identity.shape != (m,):
            raise ValueError(f"GtBoxes: identity must be ({m},), got {self.identity.shape}")

    def __len__(self) -> int:
        return int(self.frame.shape[0])


@dataclass(frozen=True)
class Case:
    """A loaded benchmark case; ``gt_cuts`` (K,) int64 holds the first frame of each shot after the first."""

    name: str
    movie: Path
    fps: float
    n_frames: int
    width: int
    height: int
    identities: tuple[str, ...]
    gt_boxes: GtBoxes
    gt_cuts: NDArray[np.int64]


# ---------------------------------------------------------------- loading


def _read_case_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")  # noqa: TRY004 (bad file content, not a caller type error)
    missing = [k for k in ("name", "n_frames", "width", "height", "fps") if k not in meta]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    if not isinstance(meta["n_frames"], int) or meta["n_frames"] < 0:
        raise ValueError(f"{path}: n_frames must be a non-negative integer, got {meta['n_frames']!r}")
    if not isinstance(meta["fps"], (int, float)) or meta["fps"] <= 0:
        raise ValueError(f"{path}: fps must be a positive number, got {meta['fps']!r}")
    return meta


def _parse_gt_row(path: Path, line: int, row: list[str], n_frames: int) -> tuple[int, list[float], str]:
    if len(row) != 6:
        raise ValueError(f"{path}:{line}: expected 6 fields, got {len(row)}")
    try:
        frame, xyxy = int(row[0]), [float(v) for v in row[1:5]]
    except ValueError as e:
        raise ValueError(f"{path}:{line}: bad number ({e})") from e
    if not 0 <= frame < n_frames:
        raise ValueError(f"{path}:{line}: frame {frame} outside [0, {n_frames})")
    if not (np.all(np.isfinite(xyxy)) and xyxy[2] > xyxy[0] and xyxy[3] > xyxy[1]):
        raise ValueError(f"{path}:{line}: box {xyxy} is not a finite box with x2 > x1 and y2 > y1")
    if not row[5]:
        raise ValueError(f"{path}:{line}: empty identity")
    return frame, xyxy, row[5]


def load_gt_boxes(path: Path, n_frames: int) -> GtBoxes:
    """Read ``gt_faces.csv``; every malformed row raises a ValueError naming the file and line."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != GT_HEADER:
            raise ValueError(f"{path}: header must be {','.join(GT_HEADER)}, got {header}")
        rows = [_parse_gt_row(path, i + 2, row, n_frames) for i, row in enumerate(reader) if row]
    return GtBoxes(
        frame=np.array([r[0] for r in rows], np.int64),
        xyxy=np.array([r[1] for r in rows], np.float64).reshape(-1, 4),
        identity=np.array([r[2] for r in rows], dtype=str),
    )


def load_gt_cuts(path: Path, n_frames: int) -> NDArray[np.int64]:
    """Read ``gt_shots.txt``: strictly increasing frame indices in (0, n_frames), one per line."""
    lines = [(i + 1, s.strip()) for i, s in enumerate(path.read_text().splitlines()) if s.strip()]
    cuts = []
    for line, text in lines:
        if not text.isdigit():
            raise ValueError(f"{path}:{line}: expected a frame index, got {text!r}")
        cut = int(text)
        if not 0 < cut < n_frames or (cuts and cut <= cuts[-1]):
            raise ValueError(f"{path}:{line}: cut {cut} not increasing within (0, {n_frames})")
        cuts.append(cut)
    return np.array(cuts, np.int64)


def load_case(case_dir: Path) -> Case:
    """Load a case directory; a missing file raises FileNotFoundError, a malformed one ValueError."""
    case_dir = Path(case_dir)
    for name in ("movie.mp4", "gt_faces.csv", "gt_shots.txt", "case.json"):
        if not (case_dir / name).is_file():
            raise FileNotFoundError(f"{case_dir / name}: case file missing")
    meta = _read_case_json(case_dir / "case.json")
    n_frames = int(meta["n_frames"])
    return Case(
        name=str(meta["name"]),
        movie=case_dir / "movie.mp4",
        fps=float(meta["fps"]),
        n_frames=n_frames,
        width=int(meta["width"]),
        height=int(meta["height"]),
        identities=tuple(meta.get("identities", ())),
        gt_boxes=load_gt_boxes(case_dir / "gt_faces.csv", n_frames),
        gt_cuts=load_gt_cuts(case_dir / "gt_shots.txt", n_frames),
    )


# ---------------------------------------------------------------- metrics


def shot_f1(pred_cuts: NDArray[np.integer], gt_cuts: NDArray[np.integer], tolerance: int = 1) -> float:
    """F1 over cut frames (each a set): a predicted cut matches one unmatched GT cut within ±``tolerance``.

    The one-to-one matching is a maximum matching (Hungarian), so the count never depends on order.
    Both empty gives 1.0; exactly one empty gives 0.0.
    """
    pred = np.unique(np.asarray(pred_cuts, np.int64))
    gt = np.unique(np.asarray(gt_cuts, np.int64))
    if len(pred) == 0 and len(gt) == 0:
        return 1.0
    if len(pred) == 0 or len(gt) == 0:
        return 0.0
    close = (np.abs(pred[:, None] - gt[None, :]) <= tolerance).astype(np.float64)
    rows, cols = linear_sum_assignment(close, maximize=True)
    tp = int(close[rows, cols].sum())
    return 2.0 * tp / (len(pred) + len(gt))


def gt_tracks(gt: GtBoxes, gt_cuts: NDArray[np.integer], max_gap: int = 5) -> NDArray[np.int64]:
    """GT track id (M,) per box: runs of one identity's boxes within one shot, consecutive boxes at most
    ``max_gap`` frames apart (frame difference). Ids are numbered by (first frame, identity)."""
    m = len(gt)
    if m == 0:
        return np.zeros(0, np.int64)
    shot = np.searchsorted(np.asarray(gt_cuts, np.int64), gt.frame, side="right")
    order = np.lexsort((gt.frame, shot, gt.identity))
    ident, sh, fr = gt.identity[order], shot[order], gt.frame[order]
    new = np.ones(m, bool)
    new[1:] = (ident[1:] != ident[:-1]) | (sh[1:] != sh[:-1]) | (fr[1:] - fr[:-1] > max_gap)
    run = np.cumsum(new) - 1  # run id along the sorted order; runs start where ``new``
    rank = np.empty(int(run[-1]) + 1, np.int64)
    rank[np.lexsort((ident[new], fr[new]))] = np.arange(len(rank))
    out = np.empty(m, np.int64)
    out[order] = rank[run]
    return out


def pairwise_iou(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    """IoU matrix (N, K) of boxes ``a`` (N, 4) and ``b`` (K, 4), xyxy."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _check_pred(pred_frame: NDArray, pred_xyxy: NDArray, pred_track: NDArray | None = None) -> None:
    p = np.shape(pred_frame)[0] if np.ndim(pred_frame) == 1 else -1
    if p < 0 or np.shape(pred_xyxy) != (p, 4):
        raise ValueError(f"predictions: pred_frame must be (P,), pred_xyxy (P, 4); got "
                         f"{np.shape(pred_frame)} and {np.shape(pred_xyxy)}")
    if pred_track is not None and np.shape(pred_track) != (p,):
        raise ValueError(f"predictions: pred_track must be ({p},), got {np.shape(pred_track)}")


def match_boxes(
    gt: GtBoxes, pred_frame: NDArray[np.integer], pred_xyxy: NDArray[np.floating], iou_min: float = 0.5
) -> NDArray[np.int64]:
    """For every GT box the index of its matched predicted box, or -1.

    Per frame, a Hungarian assignment maximizes the summed IoU over pairs with IoU >= ``iou_min``
    (pairs below it cannot match).
    """
    _check_pred(pred_frame, pred_xyxy)
    out = np.full(len(gt), -1, np.int64)
    pred_frame = np.asarray(pred_frame, np.int64)
    if len(gt) == 0 or len(pred_frame) == 0:
        return out
    pred_xyxy = np.asarray(pred_xyxy, np.float64)
    g_order, p_order = np.argsort(gt.frame, kind="stable"), np.argsort(pred_frame, kind="stable")
    g_sorted, p_sorted = gt.frame[g_order], pred_frame[p_order]
    frames, g_start = np.unique(g_sorted, return_index=True)
    g_end = np.append(g_start[1:], len(g_sorted))
    p_lo, p_hi = np.searchsorted(p_sorted, frames, "left"), np.searchsorted(p_sorted, frames, "right")
    for gs, ge, lo, hi in zip(g_start, g_end, p_lo, p_hi):
        if lo == hi:
            continue
        g_idx, p_idx = g_order[gs:ge], p_order[lo:hi]
        iou = pairwise_iou(gt.xyxy[g_idx], pred_xyxy[p_idx])
        iou[iou < iou_min] = 0.0
        rows, cols = linear_sum_assignment(iou, maximize=True)
        ok = iou[rows, cols] > 0
        out[g_idx[rows[ok]]] = p_idx[cols[ok]]
    return out


def track_identities(
    gt: GtBoxes, gt_match: NDArray[np.integer], pred_track: NDArray[np.integer]
) -> dict[int, str | None]:
    """Majority GT identity of each predicted track's matched boxes (None when none matched).

    ``gt_match`` is :func:`match_boxes`' output; ties go to the alphabetically first identity.
    """
    pred_track = np.asarray(pred_track, np.int64)
    votes: dict[int, Counter[str]] = {int(t): Counter() for t in np.unique(pred_track)}
    for g in np.flatnonzero(np.asarray(gt_match) >= 0):
        votes[int(pred_track[gt_match[g]])][str(gt.identity[g])] += 1
    return {t: (min(c, key=lambda k: (-c[k], k)) if c else None) for t, c in votes.items()}


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den > 0 else float("nan")


def frontend_metrics(
    case: Case,
    pred_cuts: NDArray[np.integer],
    pred_frame: NDArray[np.integer],
    pred_xyxy: NDArray[np.floating],
    pred_track: NDArray[np.integer],
    *,
    iou_min: float = 0.5,
    cut_tolerance: int = 1,
    max_gap: int = 5,
) -> dict[str, float | int]:
    """shot_f1, gt_box_recall, track_purity, tracks_per_gt_track and n_tracks of predicted track boxes.

    gt_box_recall: share of GT boxes matched at IoU >= ``iou_min``. track_purity: share of matched boxes
    whose GT identity equals their track's majority identity. tracks_per_gt_track: tracks with at least
    one matched box / GT tracks (1.0 = no fragmentation). n_tracks: distinct predicted track ids.
    """
    _check_pred(pred_frame, pred_xyxy, pred_track)
    gt = case.gt_boxes
    pred_track = np.asarray(pred_track, np.int64)
    match = match_boxes(gt, pred_frame, pred_xyxy, iou_min)
    majority = track_identities(gt, match, pred_track)
    matched = np.flatnonzero(match >= 0)
    pure = sum(majority[int(pred_track[match[g]])] == gt.identity[g] for g in matched)
    n_gt_tracks = len(np.unique(gt_tracks(gt, case.gt_cuts, max_gap)))
    n_matched_tracks = sum(v is not None for v in majority.values())
    return {
        "shot_f1": shot_f1(pred_cuts, case.gt_cuts, cut_tolerance),
        "gt_box_recall": _ratio(len(matched), len(gt)),
        "track_purity": _ratio(pure, len(matched)),
        "tracks_per_gt_track": _ratio(n_matched_tracks, n_gt_tracks),
        "n_tracks": len(majority),
    }
