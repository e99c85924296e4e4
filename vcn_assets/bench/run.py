"""``vcn bench``: run the pipeline on benchmark cases and score it against their ground truth.

Usage::

    vcn bench ../shared/data/cases/tbbt_s01e01_open --json out.json
    vcn bench CASE... --methods vcn,ahc --cache .bench_cache   # reuse Stage 1 while iterating

    run_bench([Path("cases/tbbt_s01e01_open")], Path("out.json"), ModelConfig(backend="dlib"),
              methods=("vcn", "ahc"), cache_dir=Path(".bench_cache"))

Output JSON: ``{"cases": [{"case", "backend", "video_seconds", "stage_seconds": {...},
"realtime_factor", "frontend": {...}, "n_crops", "n_unknown_tracks", "stage1_cached",
"gt_unknown_policy", "n_tracks_unmatched", "n_tracks_matched", "n_tracks_excluded", "unknown_share",
"n_tracks_valid", "methods": {name: {"wcp", "pcr", "nmi", "pairwise_f", "bcubed_f", "n_clusters",
"n_identities", "n_tracks_evaluated", "unknown_share", "seconds"}}}]}`` (see ``frontend_metrics``
and ``clustering_eval`` for definitions) and readable tables on stdout. ``stage_seconds`` holds
Stage 1's stages plus, when ``vcn`` runs, its ``finetune_and_match`` and ``cluster``;
``realtime_factor`` is the video duration over their sum.

``--cache DIR`` pickles each case's Stage 1 result under DIR, keyed by the case name, the sha256 of
its movie.mp4, the PipelineConfig and the resolved backend, and reuses it on the next run (the code
version is not in the key: clear DIR after changing Stage 1 code). Only load caches you wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vcn_assets.bench.clustering_eval import MethodConfigs, evaluate_case, parse_methods
from vcn_assets.bench.frontend_metrics import Case, frontend_metrics, load_case
from vcn_assets.core.config import ModelConfig
from vcn_assets.core.files import file_sha256
from vcn_assets.core.identity import ClusterInputs, LastBlock, last_block_inputs
from vcn_assets.core.pipeline import PipelineConfig, Stage1Result, run_stage1
from vcn_assets.models.registry import build_models, resolve_backend

log = logging.getLogger(__name__)
STAGE1_KEYS = ("probe", "shots", "tracks", "crops")


# ---------------------------------------------------------------- Stage 1 (cached)


def cache_path(cache_dir: Path, case: Case, cfg: PipelineConfig, backend: str) -> Path:
    """``DIR/<case>-<sha256(case name, movie sha256, repr(cfg), backend)[:16]>.pkl``."""
    key = "\n".join([case.name, file_sha256(case.movie), repr(cfg), backend])
    return cache_dir / f"{case.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pkl"


def _write_pickle(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def _read_pickle(path: Path) -> Stage1Result | None:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)  # the bench's own cache files (trusted, see --cache)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        log.warning("ignoring unreadable Stage 1 cache %s (%s)", path, e)
        return None
    return obj if isinstance(obj, Stage1Result) else None


def _median_seconds(runs: list[Stage1Result]) -> dict[str, float]:
    return {k: float(statistics.median(r.seconds[k] for r in runs)) for k in runs[0].seconds}


def stage1(
    case: Case, cfg: PipelineConfig, model_cfg: ModelConfig, cache_dir: Path | None, repeat: int = 1
) -> tuple[Stage1Result, str, bool]:
    """Stage 1 result of a case, its backend and whether it came from the cache.

    Face models are built only on a cache miss (and once for all ``repeat`` runs, whose per-stage
    seconds are reported as medians).
    """
    backend = resolve_backend(model_cfg)
    path = cache_path(cache_dir, case, cfg, backend) if cache_dir is not None else None
    cached = _read_pickle(path) if path is not None and path.is_file() else None
    if cached is not None:
        log.info("%s: Stage 1 from cache %s", case.name, path)
        return cached, backend, True
    models = build_models(model_cfg, cfg.tracks.min_face_px, cfg.tracks.min_score, cfg.tracks.detect_max_side)
    runs = [run_stage1(case.movie, cfg, models) for _ in range(max(1, repeat))]
    result = dataclasses.replace(runs[-1], seconds=_median_seconds(runs))
    if path is not None:
        _write_pickle(path, result)
    return result, models.backend, False


# ---------------------------------------------------------------- one case


def bench_case(
    case_dir: Path,
    cfg: PipelineConfig,
    model_cfg: ModelConfig,
    *,
    methods: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    method_cfgs: MethodConfigs | None = None,
    repeat: int = 1,
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run Stage 1 (or reuse it) on one case, then its frontend metrics and the clustering ``methods``
    (``vcn`` at each of ``seeds`` when given: :func:`~vcn_assets.bench.clustering_eval.evaluate_case`)."""
    case = load_case(case_dir)
    result, backend, cached = stage1(case, cfg, model_cfg, cache_dir, repeat)
    boxes = result.boxes
    metrics = frontend_metrics(case, result.shots.cuts, boxes.frame_idx, boxes.xyxy, boxes.track_id)
    method_cfgs = method_cfgs or MethodConfigs()
    seed = seeds[0] if seeds else method_cfgs.finetune.seed
    last_block = _last_block_maker(case, result, model_cfg, cfg, seed) if method_cfgs.finetune.train_last_block else None
    clustering = evaluate_case(case, result, parse_methods(methods), method_cfgs, seeds, last_block)
    stage_seconds = {k: round(v, 3) for k, v in result.seconds.items()} | clustering.pop("stage_seconds")
    return {
        "case": case.name,
        "backend": backend,
        "video_seconds": result.info.duration_s,
        "stage_seconds": stage_seconds,
        "realtime_factor": result.info.duration_s / max(sum(stage_seconds.values()), 1e-9),
        "stage1_realtime_factor": result.info.duration_s / max(sum(result.seconds.values()), 1e-9),
        "stage1_repeats": 1 if cached else max(1, repeat),
        "frontend": metrics,
        "n_crops": len(result.crops),
        "n_unknown_tracks": int((result.tracks.status == "unknown").sum()),
        "stage1_cached": cached,
        **clustering,
    }


def _last_block_maker(case: Case, result: Stage1Result, model_cfg: ModelConfig, cfg: PipelineConfig,
                      seed: int) -> Callable[[ClusterInputs], LastBlock]:
    """``train_last_block``: a function making the valid crops' last-block inputs (re-reads the movie)."""
    models = build_models(model_cfg, cfg.tracks.min_face_px, cfg.tracks.min_score, cfg.tracks.detect_max_side)
    crops, info = result.crops, dataclasses.replace(result.info, path=case.movie)  # where the case is now

    def make(inputs: ClusterInputs) -> LastBlock:
        return last_block_inputs(info, result.boxes, np.asarray(crops.track_id, np.int64),
                                 np.asarray(crops.frame_idx, np.int64), np.asarray(crops.embedding, np.float32),
                                 inputs, models, seed)
    return make


# ---------------------------------------------------------------- output


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def _rows(head: list[str], rows: list[list[Any]]) -> list[str]:
    body = [" | ".join(_fmt(v) for v in r) for r in rows]
    return [" | ".join(head), " | ".join("---" for _ in head), *body]


def _stage1_seconds(r: dict[str, Any]) -> float:
    return sum(v for k, v in r["stage_seconds"].items() if k in STAGE1_KEYS)


def frontend_table(results: list[dict[str, Any]]) -> str:
    cols = ["shot_f1", "gt_box_recall", "track_purity", "tracks_per_gt_track", "n_tracks"]
    head = ["case", "video_s", "stage1_s", "total_s", "x_realtime_stage1", "x_realtime_all", *cols]
    rows = [[r["case"], r["video_seconds"], _stage1_seconds(r), sum(r["stage_seconds"].values()),
             r["stage1_realtime_factor"], r["realtime_factor"], *(r["frontend"][c] for c in cols)] for r in results]
    return "\n".join(_rows(head, rows))


def methods_table(r: dict[str, Any]) -> str:
    """One case's clustering table: a line of track counts, then one row per method."""
    cols = ["wcp", "pcr", "nmi", "pairwise_f", "bcubed_f", "n_clusters"]
    first = next(iter(r["methods"].values()), {})
    title = (f"{r['case']}: clustering of {first.get('n_tracks_evaluated', 0)} tracks, "
             f"{first.get('n_identities', 0)} identities (GT unknowns: {r['gt_unknown_policy']}); "
             f"{r['n_tracks_unmatched']} unmatched tracks left out, unknown_share {_fmt(r['unknown_share'])}")
    rows = [[name, *(m[c] for c in cols)] for name, m in r["methods"].items()]
    vcn = r["methods"].get("vcn", {})
    return "\n".join([title, *_rows(["method", *cols], rows), *_matches_line(vcn), *_seeds_line(vcn)])


def _matches_line(vcn: dict[str, Any]) -> list[str]:
    """vcn's Stage 3 pairs per round against the ground truth (empty when vcn did not run)."""
    rounds = vcn.get("soft_matches") or []
    parts = [f"round {i}: {m['pairs']} pairs ({m['by_normal']} by the Normal rule), precision "
             f"{_fmt(m['precision'])}, recall {_fmt(m['recall'])}" for i, m in enumerate(rounds, start=1)]
    return ["vcn soft matches: " + "; ".join(parts)] if parts else []


def _seeds_line(vcn: dict[str, Any]) -> list[str]:
    """vcn's scores at each Stage 2 seed (empty without ``--seeds``)."""
    rep = vcn.get("seeds")
    if not rep:
        return []
    parts = [f"{row['seed']}: {_fmt(row['bcubed_f'])} (WCP {_fmt(row['wcp'])})" for row in rep["by_seed"]]
    return [(f"vcn B-cubed F by seed: {'; '.join(parts)}; median {_fmt(rep['median_bcubed_f'])}, "
             f"lowest WCP {_fmt(rep['min_wcp'])}")]


def table(results: list[dict[str, Any]]) -> str:
    """The frontend table of all cases, then a clustering table per case."""
    return "\n\n".join([frontend_table(results), *(methods_table(r) for r in results if r.get("methods"))])


def run_bench(
    case_dirs: list[Path],
    json_out: Path | None,
    model_cfg: ModelConfig,
    *,
    methods: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    cfg: PipelineConfig | None = None,
    method_cfgs: MethodConfigs | None = None,
    repeat: int = 1,
    seeds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Bench every case and write ``{"cases": [...]}`` to ``json_out`` when given."""
    names = parse_methods(methods)
    results = [bench_case(Path(d), cfg or PipelineConfig(), model_cfg, methods=names, cache_dir=cache_dir,
                          method_cfgs=method_cfgs, repeat=repeat, seeds=seeds) for d in case_dirs]
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"cases": results}, indent=2, default=float))
    return results

