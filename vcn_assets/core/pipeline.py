"""The whole method without Dagster: one call per stage, composable in plain Python.

Usage::

    result = run_stage1(Path("movie.mp4"), PipelineConfig(), build_models(ModelConfig()))
    result.shots, result.boxes, result.crops, result.tracks, result.seconds

The Dagster assets reproduce exactly these calls, one per asset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from vcn_assets.core.config import CropConfig, ShotConfig, TrackConfig, VideoConfig
from vcn_assets.core.crops import Crops, TrackSummary, extract_crops, summarise_tracks
from vcn_assets.core.shots import Shots, detect_shots
from vcn_assets.core.tracking import TrackBoxes, track_faces
from vcn_assets.core.video import VideoInfo, probe
from vcn_assets.models.base import FaceModels


@dataclass(frozen=True)
class PipelineConfig:
    video: VideoConfig = field(default_factory=VideoConfig)
    shots: ShotConfig = field(default_factory=ShotConfig)
    tracks: TrackConfig = field(default_factory=TrackConfig)
    crops: CropConfig = field(default_factory=CropConfig)


@dataclass(frozen=True)
class Stage1Result:
    info: VideoInfo
    shots: Shots
    boxes: TrackBoxes
    crops: Crops
    tracks: TrackSummary
    seconds: dict[str, float]


def run_stage1(path: Path, cfg: PipelineConfig, models: FaceModels) -> Stage1Result:
    """Probe, shots, tracks and crops for one movie, with wall-clock seconds per stage."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    info = probe(path, cfg.video.min_frames)
    seconds["probe"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shots = detect_shots(info, cfg.shots)
    seconds["shots"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    boxes = track_faces(info, shots, models.detector, cfg.tracks, workers=models.detect_workers)
    seconds["tracks"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    crops = extract_crops(info, boxes, models, cfg.crops)
    summary = summarise_tracks(boxes, crops, cfg.crops)
    seconds["crops"] = time.perf_counter() - t0
    return Stage1Result(info, shots, boxes, crops, summary, seconds)
