"""``vcn bench``: run the pipeline on benchmark cases and score it against their ground truth.

Usage::

    vcn bench ../shared/data/cases/tbbt_s01e01_open --json out.json

Output JSON: ``{"cases": [{"case", "video_seconds", "stage_seconds": {...}, "frontend": {...}}]}``
(see ``frontend_metrics`` for definitions) and a readable table on stdout.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from vcn_assets.bench.frontend_metrics import frontend_metrics, load_case
from vcn_assets.core.config import ModelConfig
from vcn_assets.core.pipeline import PipelineConfig, run_stage1
from vcn_assets.models.registry import build_models

log = logging.getLogger(__name__)


def bench_case(case_dir: Path, cfg: PipelineConfig, model_cfg: ModelConfig) -> dict[str, Any]:
    """Run Stage 1 on one case and compute its frontend metrics."""
    case = load_case(case_dir)
    models = build_models(model_cfg, cfg.tracks.min_face_px, cfg.tracks.min_score)
    result = run_stage1(case.movie, cfg, models)
    boxes = result.boxes
    metrics = frontend_metrics(case, result.shots.cuts, boxes.frame_idx, boxes.xyxy, boxes.track_id)
    return {
        "case": case.name,
        "backend": models.backend,
        "video_seconds": result.info.duration_s,
        "stage_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "realtime_factor": result.info.duration_s / sum(result.seconds.values()),
        "frontend": metrics,
        "n_crops": len(result.crops),
        "n_unknown_tracks": int((result.tracks.status == "unknown").sum()),
    }


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def table(results: list[dict[str, Any]]) -> str:
    cols = ["shot_f1", "gt_box_recall", "track_purity", "tracks_per_gt_track", "n_tracks"]
    head = ["case", "video_s", "stage1_s", "x_realtime", *cols]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in results:
        row = [r["case"], r["video_seconds"], sum(r["stage_seconds"].values()), r["realtime_factor"]]
        lines.append(" | ".join(_fmt(v) for v in row + [r["frontend"][c] for c in cols]))
    return "\n".join(lines)


def run_bench(case_dirs: list[Path], json_out: Path | None, model_cfg: ModelConfig) -> list[dict[str, Any]]:
    results = [bench_case(Path(d), PipelineConfig(), model_cfg) for d in case_dirs]
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"cases": results}, indent=2, default=float))
    return results
