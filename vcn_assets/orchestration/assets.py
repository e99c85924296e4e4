"""Stage 1 as per-movie assets: ``movie_file`` (observed) -> ``shots`` -> ``tracks`` -> ``crops``.

Each asset reads its inputs from the DuckDB store, makes one core call, replaces the movie's rows
in one transaction, and returns metadata plus a data version (a content hash of what it wrote).
"""


from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import numpy as np
from dagster._core.definitions.data_version import DATA_VERSION_TAG  # the tag Dagster reads versions from

from vcn_assets.core.checkpoint import CheckpointError
from vcn_assets.core.config import CropConfig, ShotConfig, TrackConfig, VideoConfig, describe
from vcn_assets.core.crops import UNKNOWN, VALID, extract_crops, summarise_tracks
from vcn_assets.core.shots import detect_shots
from vcn_assets.core.tracking import track_faces
from vcn_assets.core.video import VideoError, VideoInfo, content_hash, probe
from vcn_assets.orchestration.caching import CODE_VERSIONS, Computed, Stage, materialize_stage
from vcn_assets.orchestration.partitions import MOVIES
from vcn_assets.orchestration.resources import VcnResource, config_class, to_core
from vcn_assets.store import tables
from vcn_assets.store.db import StoreError

ShotsRun = config_class(ShotConfig)
TracksRun = config_class(TrackConfig)
CropsRun = config_class(CropConfig)

STAGE1 = "stage1_frontend"


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can act on into a one-line Dagster failure naming the file."""
    try:
        yield
    except (VideoError, StoreError, CheckpointError, FileNotFoundError, PermissionError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def _info_from_store(vcn: VcnResource, key: str) -> VideoInfo:
    df = vcn.store().read("movies", key)
    if df.height == 0:
        raise ValueError(f"movie {key!r} has no probe record: materialise `shots` first")
    row = df.row(0, named=True)
    path = vcn.movie_path(key)
    return VideoInfo(path, row["fps"], row["n_frames"], row["width"], row["height"], row["codec"])


@dg.observable_source_asset(partitions_def=MOVIES, group_name=STAGE1, description="A movie file in the movies folder.")
def movie_file(context: dg.OpExecutionContext, vcn: VcnResource) -> dg.DataVersionsByPartition:
    """Data version = sha256 of the file's bytes, with fps, frame count, size and duration.

    Observed per partition (or every known movie when run unpartitioned). Each observation is logged
    here with its metadata and data-version tag, so the returned mapping is empty (returning the
    versions as well would log a second, metadata-less observation per movie).
    """
    keys = [context.partition_key] if context.has_partition_key else context.instance.get_dynamic_partitions("movies")
    for key in keys:
        with user_errors():
            path = vcn.movie_path(key)
            info = probe(path, VideoConfig().min_frames)
            digest = content_hash(path)
        context.log_event(dg.AssetObservation(
            asset_key=context.asset_key, partition=key, tags={DATA_VERSION_TAG: digest},
            metadata={"path": dg.MetadataValue.path(str(path)), "fps": info.fps, "n_frames": info.n_frames,
                      "size": f"{info.width}x{info.height}", "duration_s": round(info.duration_s, 3),
                      "bytes": path.stat().st_size, "sha256": digest},
        ))
    return dg.DataVersionsByPartition({})


@dg.asset(partitions_def=MOVIES, group_name=STAGE1, deps=[movie_file], code_version=CODE_VERSIONS["shots"])
def shots(context: dg.AssetExecutionContext, config: ShotsRun, vcn: VcnResource) -> dg.MaterializeResult:
    """Cut detection (PySceneDetect) over the whole movie; also records the movie's probe."""
    key = context.partition_key
    cfg = to_core(config, ShotConfig)
    with user_errors():
        path = vcn.movie_path(key)
        digest = content_hash(path)

    def compute() -> Computed:
        info = probe(path, VideoConfig().min_frames)
        found = detect_shots(info, cfg)
        frames = {"movies": tables.movie_frame(key, info, digest), "shots": tables.shots_frame(key, found)}
        lengths = (found.end_frame - found.start_frame + 1) / info.fps
        return Computed(frames, {
            "path": dg.MetadataValue.path(str(path)), "fps": info.fps, "n_frames": info.n_frames,
            "size": f"{info.width}x{info.height}", "duration_s": round(info.duration_s, 3),
            "n_shots": len(found), "median_shot_s": float(np.median(lengths)),
        }, tables.data_version(frames))

    with user_errors():
        stage = Stage("shots", describe(cfg))
        return materialize_stage(context, vcn, stage, compute, extra_inputs={"movie_file": digest})


@dg.asset(partitions_def=MOVIES, group_name=STAGE1, deps=[shots], code_version=CODE_VERSIONS["tracks"])
def tracks(context: dg.AssetExecutionContext, config: TracksRun, vcn: VcnResource) -> dg.MaterializeResult:
    """Face detection on a frame stride + IoU/appearance Hungarian tracking within shots."""
    key = context.partition_key
    cfg = to_core(config, TrackConfig)

    def compute() -> Computed:
        info = _info_from_store(vcn, key)
        found_shots = tables.shots_from(vcn.store().read("shots", key))
        models = vcn.models(cfg)
        boxes = track_faces(info, found_shots, models.detector, cfg)
        frames = {"track_boxes": tables.boxes_frame(key, boxes), "tracks": tables.tracks_frame(key, boxes, found_shots)}
        return Computed(frames, {
            "n_tracks": boxes.n_tracks, "n_boxes": len(boxes), "n_detections": int(boxes.detected.sum()),
            "backend": models.backend, "models": models.identity,
        }, tables.data_version(frames))

    with user_errors():
        stage = Stage("tracks", describe(cfg), vcn.model_identity(), ("shots",))
        return materialize_stage(context, vcn, stage, compute)


@dg.asset(partitions_def=MOVIES, group_name=STAGE1, deps=[tracks], code_version=CODE_VERSIONS["crops"])
def crops(context: dg.AssetExecutionContext, config: CropsRun, vcn: VcnResource) -> dg.MaterializeResult:
    """Sampled, aligned, filtered crops with embeddings and SER-FIQ quality; outlier tracks unknown."""
    key = context.partition_key
    cfg = to_core(config, CropConfig)

    def compute() -> Computed:
        info = _info_from_store(vcn, key)
        boxes = tables.boxes_from(vcn.store().read("track_boxes", key))
        models = vcn.embedding_models()
        found = extract_crops(info, boxes, models, cfg)
        summary = summarise_tracks(boxes, found, cfg)
        frames = {"crops": tables.crops_frame(key, found), "track_quality": tables.quality_frame(key, summary)}
        status = summary.status.tolist()
        return Computed(frames, {
            "n_crops": len(found), "n_tracks_valid": status.count(VALID),
            "n_tracks_unknown": status.count(UNKNOWN), "backend": models.backend,
            "quality_method": getattr(models.embedder, "quality_method", ""),
        }, tables.data_version(frames))

    with user_errors():
        stage = Stage("crops", describe(cfg), vcn.model_identity(), ("tracks",))
        return materialize_stage(context, vcn, stage, compute)
