"""``vcn bench-scale``: Stages 2-4 on synthetic embeddings shaped like real episodes.

Usage::

    vcn bench-scale --tracks 500 2000 5000 --tracks-dir ../shared/data/tracks/tvpersonid_weaklabels/csv --json out.json

Track lengths and identity sizes are drawn from annotated episodes (``*.facetracks.csv.gz``:
``track_id,frame,...,identity``) when ``--tracks-dir`` is given, else from a documented fallback
(log-normal lengths, Zipf-like identity sizes). Each identity is a random direction in 128-d; a
track is its identity plus a per-track offset; crops add per-crop noise (two views each, like the
dlib backend's original + mirror). Reports seconds and peak RSS per N (each run in a fresh process,
so peaks do not mix); ``--repeat R`` runs each N R times and reports the median seconds (total and
per stage), every run's total, and the largest peak RSS.
"""

from __future__ import annotations

import gzip
import json
import logging
import multiprocessing
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

log = logging.getLogger(__name__)
DIM, VIEWS, MAX_CROPS, CROP_EVERY = 128, 2, 10, 12


@dataclass(frozen=True)
class EpisodeShape:
    track_lengths: NDArray[np.int64]  # frames per track
    identity_sizes: NDArray[np.float64]  # relative share of tracks per identity, sorted descending


def load_shape(tracks_dir: Path | None) -> EpisodeShape:
    if tracks_dir is None:
        rng = np.random.default_rng(0)
        sizes = 1.0 / np.arange(1, 41) ** 1.2
        return EpisodeShape(np.maximum(rng.lognormal(3.5, 0.9, 2000).astype(np.int64), 5), sizes / sizes.sum())
    lengths, sizes = [], []
    for f in sorted(Path(tracks_dir).glob("*.facetracks.csv.gz")):
        tracks: dict[str, tuple[int, str]] = {}
        with gzip.open(f, "rt") as fh:
            next(fh)
            for line in fh:
                tid, _, _, _, _, _, _, ident = line.rstrip("\n").split(",")
                n, _ = tracks.get(tid, (0, ident))
                tracks[tid] = (n + 1, ident)
        lengths += [n for n, _ in tracks.values()]
        counts = np.unique([i for _, i in tracks.values()], return_counts=True)[1]
        sizes.append(np.sort(counts)[::-1] / counts.sum())
    if not lengths:
        raise FileNotFoundError(f"{tracks_dir}: no *.facetracks.csv.gz files")
    width = max(len(s) for s in sizes)
    mean_sizes = np.mean([np.pad(s, (0, width - len(s))) for s in sizes], axis=0)
    return EpisodeShape(np.asarray(lengths, np.int64), mean_sizes / mean_sizes.sum())


def synthetic_inputs(n_tracks: int, shape: EpisodeShape, crops: int = 0, seed: int = 0):
    from vcn_assets.core.identity import ClusterInputs

    rng = np.random.default_rng(seed)
    n_ids = len(shape.identity_sizes)
    centres = rng.normal(size=(n_ids, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ident = rng.choice(n_ids, n_tracks, p=shape.identity_sizes)
    lengths = rng.choice(shape.track_lengths, n_tracks)
    n_crops = np.full(n_tracks, crops) if crops else np.clip(lengths // CROP_EVERY, 1, MAX_CROPS)
    crop_track = np.repeat(np.arange(n_tracks), n_crops)
    track_centre = centres[ident] + rng.normal(0, 0.25 / np.sqrt(DIM), (n_tracks, DIM)) * 4
    views = track_centre[crop_track][:, None, :] + rng.normal(0, 0.15 / np.sqrt(DIM), (len(crop_track), VIEWS, DIM)) * 4
    status = np.full(n_tracks, "valid", dtype="<U8")
    co = sp.csr_matrix((n_tracks, n_tracks), dtype=bool)  # synthetic tracks never share a frame
    return ClusterInputs.from_stage1(status, crop_track, views.astype(np.float32), co), ident


def _run_one(n_tracks: int, shape: EpisodeShape, crops: int, queue: Any) -> None:
    from vcn_assets.core.config import ClusterConfig, FinetuneConfig, MatchConfig
    from vcn_assets.core.identity import cluster_movie

    inputs, _ = synthetic_inputs(n_tracks, shape, crops)
    t0 = time.perf_counter()
    out = cluster_movie(inputs, FinetuneConfig(), MatchConfig(), ClusterConfig())
    total = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"n_tracks": n_tracks, "n_crops": len(inputs.views), "seconds": round(total, 2),
               "stage_seconds": {k: round(v, 2) for k, v in out.seconds.items()},
               "peak_rss_mb": round(peak_mb, 1), "n_clusters": int(out.cluster_of_track.max() + 1)})


def _run_fresh(n: int, shape: EpisodeShape, crops: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_one, args=(n, shape, crops, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's counts; median seconds (total and per stage); the largest peak RSS."""
    out = dict(runs[0])
    out["seconds"] = round(statistics.median(r["seconds"] for r in runs), 2)
    out["stage_seconds"] = {k: round(statistics.median(r["stage_seconds"][k] for r in runs), 2)
                            for k in runs[0]["stage_seconds"]}
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["repeat"] = len(runs)
    out["all_seconds"] = [r["seconds"] for r in runs]
    return out


def run_scale(tracks: list[int], tracks_dir: Path | None, json_out: Path | None, crops: int = 0,
              repeat: int = 1) -> list[dict[str, Any]]:
    shape = load_shape(tracks_dir)
    results = []
    for n in tracks:
        results.append(_median([_run_fresh(n, shape, crops) for _ in range(max(1, repeat))]))
        log.info("%s", results[-1])
    if json_out is not None:
        json_out.write_text(json.dumps({"scale": results}, indent=2))
    return results
