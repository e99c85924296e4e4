"""Cross-check the metrics and baselines on ground-truth tracks against the reference numbers.

Usage::

    python -m vcn_assets.bench.baseline_crosscheck ../shared/data/cases/tbbt_s01e01_open --json out.json

Items are the case's GT tracks (``gt_tracks``: one identity's boxes within one shot, gap <= 5
frames). A track's embedding is the mean dlib 128-d descriptor of up to ``--per-track`` (10) evenly
spaced GT boxes (``round(linspace(0, n - 1, 10))`` over the track's boxes in frame order): dlib's
5-point landmarks fitted in the GT box (:func:`dlib_rect_corners`), ``get_face_chip(rgb, shape, 150,
0.25)``, the ResNet descriptor, no jitter. Every identity in the GT counts (an "unknown" person is
its own identity). Prints a markdown table per case (the rows of the reference BASELINES table plus
AHC with the GT tracks' "shares a frame" cannot-link) and optionally writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vcn_assets.bench.frontend_metrics import Case, gt_tracks, load_case
from vcn_assets.core.baselines import (
    ahc,
    chinese_whispers,
    finch_first_partition,
    finch_hierarchy,
    hdbscan_labels,
)
from vcn_assets.core.metrics import clustering_report
from vcn_assets.core.video import iter_frames
from vcn_assets.models.dlib_backend import RESNET_FILE, models_dir

LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
COLUMNS = [
    ("wcp", "WCP"),
    ("pcr", "PCR"),
    ("nmi", "NMI"),
    ("pairwise_f", "pairwise F"),
    ("bcubed_f", "B-cubed F"),
]

Method = Callable[[NDArray[np.float32], NDArray[np.bool_]], NDArray[np.int64]]
METHODS: dict[str, Method] = {
    "AHC-avg t=0.5": lambda x, cl: ahc(x, threshold=0.5),
    "AHC-avg t=0.6": lambda x, cl: ahc(x, threshold=0.6),
    "AHC-avg t=0.6 +cannot-link": lambda x, cl: ahc(x, threshold=0.6, cannot_link=cl),
    "HDBSCAN mcs=2": lambda x, cl: hdbscan_labels(x),
    "HDBSCAN mcs=2 ms=1": lambda x, cl: hdbscan_labels(x, min_samples=1),
    "ChineseWhispers t=0.5": lambda x, cl: chinese_whispers(x),
    "FINCH 1st partition": lambda x, cl: finch_first_partition(x),
}


def sample_boxes(frame: NDArray[np.int64], track: NDArray[np.int64], per_track: int) -> NDArray[np.int64]:
    """Indices of up to ``per_track`` boxes per track, evenly spaced over the track's frames."""
    picks = []
    for t in np.unique(track):
        rows = np.flatnonzero(track == t)
        rows = rows[np.argsort(frame[rows], kind="stable")]
        picks.append(
            rows[
                np.unique(np.round(np.linspace(0, len(rows) - 1, min(per_track, len(rows)))).astype(np.int64))
            ]
        )
    return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)


def dlib_rect_corners(xyxy: NDArray[np.float64]) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of a dlib.rectangle for an ``xyxy`` box.

    dlib's right and bottom are inclusive pixel indices, while ``x2``/``y2`` are exclusive corners, so
    they are ``round(x2) - 1`` and ``round(y2) - 1``. The one pixel matters on hard cases: it moves
    the 5-point fit enough to flip AHC t=0.6 on tbbt_s01e01_open between 2 clusters and 1.
    """
    x1, y1, x2, y2 = (round(float(v)) for v in xyxy)
    return x1, y1, x2 - 1, y2 - 1


def dlib_descriptors(movie: Path, frame: NDArray[np.int64], xyxy: NDArray[np.float64]) -> NDArray[np.float32]:
    """(M, 128) dlib descriptors of boxes ``xyxy`` (M, 4) in frames ``frame`` (M,), one decode pass."""
    import dlib

    sp = dlib.shape_predictor(str(models_dir() / LANDMARKS_FILE))
    net = dlib.face_recognition_model_v1(str(models_dir() / RESNET_FILE))
    out = np.zeros((len(frame), 128), np.float32)
    for idx, frame_bgr in iter_frames(movie, frames=set(frame.tolist())):
        rgb = np.ascontiguousarray(frame_bgr[:, :, ::-1])
        for m in np.flatnonzero(frame == idx):
            rect = dlib.rectangle(*dlib_rect_corners(xyxy[m]))
            chip = dlib.get_face_chip(rgb, sp(rgb, rect), 150, 0.25)
            out[m] = np.asarray(net.compute_face_descriptor(chip), np.float32)
    return out


def track_items(
    case: Case, per_track: int
) -> tuple[NDArray[np.float32], NDArray[np.str_], NDArray[np.bool_]]:
    """GT-track embeddings (T, 128), identities (T,) and the (T, T) "share a frame" cannot-link matrix."""
    gt = case.gt_boxes
    track = gt_tracks(gt, case.gt_cuts)
    rows = sample_boxes(gt.frame, track, per_track)
    desc = dlib_descriptors(case.movie, gt.frame[rows], gt.xyxy[rows])
    n = int(track.max()) + 1 if len(track) else 0
    emb = np.stack([desc[track[rows] == t].mean(axis=0) for t in range(n)]) if n else np.zeros((0, 128))
    identity = np.array([gt.identity[track == t][0] for t in range(n)], dtype=str)
    present = np.zeros((n, case.n_frames), bool)
    present[track, gt.frame] = True
    shared = present.astype(np.int64) @ present.T.astype(np.int64) > 0
    return emb.astype(np.float32), identity, shared


def _separation(emb: NDArray[np.float32], identity: NDArray[np.str_]) -> dict[str, float]:
    d = np.linalg.norm(emb[:, None] - emb[None, :], axis=-1)
    upper = np.triu(np.ones_like(d, bool), 1)
    same = identity[:, None] == identity[None, :]
    d_same, d_diff = d[same & upper], d[~same & upper]
    return {
        "same_median": float(np.median(d_same)) if len(d_same) else float("nan"),
        "same_p95": float(np.percentile(d_same, 95)) if len(d_same) else float("nan"),
        "diff_median": float(np.median(d_diff)) if len(d_diff) else float("nan"),
        "diff_p5": float(np.percentile(d_diff, 5)) if len(d_diff) else float("nan"),
    }


def crosscheck_case(case_dir: Path, per_track: int = 10) -> dict[str, Any]:
    """Every method's clustering report on one case's GT tracks."""
    case = load_case(case_dir)
    emb, identity, shared = track_items(case, per_track)
    rows = {name: clustering_report(identity, fn(emb, shared)) for name, fn in METHODS.items()}
    return {
        "case": case.name,
        "n_tracks": len(emb),
        "n_identities": len(np.unique(identity)),
        "finch_level_counts": [int(lv.max()) + 1 for lv in finch_hierarchy(emb) if len(lv)],
        "track_separation": _separation(emb, identity),
        "methods": rows,
    }


def table(result: dict[str, Any]) -> str:
    """Markdown table in the layout of the reference BASELINES tables."""
    sep = result["track_separation"]
    lines = [
        (
            f"## {result['case']}: {result['n_tracks']} GT tracks, {result['n_identities']} identities, "
            f"FINCH levels {result['finch_level_counts']}; track-embedding distances: same identity "
            f"median {sep['same_median']:.3f} / p95 {sep['same_p95']:.3f}, different identity median "
            f"{sep['diff_median']:.3f} / p5 {sep['diff_p5']:.3f}"
        ),
        "",
        "| method | " + " | ".join(title for _, title in COLUMNS) + " | #clusters |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for name, rep in result["methods"].items():
        cells = [f"{rep[k]:.2f}" if k == "pcr" else f"{rep[k]:.3f}" for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rep['n_clusters']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", type=Path, help="benchmark case directories")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--per-track", type=int, default=10, help="GT boxes described per track")
    args = parser.parse_args(argv)
    if args.per_track < 1:
        parser.error(f"--per-track must be >= 1, got {args.per_track}")
    results = [crosscheck_case(c, args.per_track) for c in args.cases]
    sys.stdout.write("\n\n".join(table(r) for r in results) + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cases": results}, indent=2))


if __name__ == "__main__":
    main()
