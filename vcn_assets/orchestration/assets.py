"""Stage 1 as per-movie assets: ``movie_file`` (observed) -> ``shots`` -> ``tracks`` -> ``crops``.

Each asset reads its inputs from the DuckDB store, makes one core call, replaces the movie's rows
in one transaction, and returns metadata plus a data version (a content hash of what it wrote).
Pictures (``tracks``: timeline, ``crops``: quality histogram) and the ``crops`` asset check are
made from the stored rows after the cache decision, so cache hits carry them too. Long core steps
report progress to the run log (see ``progress.py``).
"""


from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import numpy as np
import polars as pl
from dagster._core.definitions.data_version import DATA_VERSION_TAG  # the tag Dagster reads versions from

from vcn_assets.core.checkpoint import CheckpointError
from vcn_assets.core.config import CropConfig, ShotConfig, TrackConfig, VideoConfig, describe
from vcn_assets.core.crops import UNKNOWN, VALID, extract_crops, quality_cut, summarise_tracks
from vcn_assets.core.devices import DeviceError
from vcn_assets.core.plots import markdown_image, quality_histogram, timeline
from vcn_assets.core.shots import detect_shots
from vcn_assets.core.tracking import track_faces
from vcn_assets.core.video import VideoError, VideoInfo, content_hash, probe
from vcn_assets.models.base import ModelFileError, UnsupportedModelError
from vcn_assets.orchestration.caching import CODE_VERSIONS, Computed, Stage, materialize_stage
from vcn_assets.orchestration.checks import embeddings_finite, with_checks, with_metadata
from vcn_assets.orchestration.k8s import k8s_op_tags
from vcn_assets.orchestration.partitions import MOVIES
from vcn_assets.orchestration.progress import step_progress
from vcn_assets.orchestration.resources import VcnResource, config_class, to_core
from vcn_assets.store import tables
from vcn_assets.store.db import StoreError

ShotsRun = config_class(ShotConfig)
TracksRun = config_class(TrackConfig)
CropsRun = config_class(CropConfig)

STAGE1 = "stage1_faces"  # asset groups = the method's stages (the UI draws one box per group)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can act on into a one-line Dagster failure naming the file."""
    try:
        yield
    except (VideoError, StoreError, CheckpointError, ModelFileError, UnsupportedModelError, DeviceError,
            FileNotFoundError, PermissionError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def info_from_store(vcn: VcnResource, key: str) -> VideoInfo:
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


@dg.asset(partitions_def=MOVIES, group_name=STAGE1, deps=[movie_file], code_version=CODE_VERSIONS["shots"],
          op_tags=k8s_op_tags("shots"))
def shots(context: dg.AssetExecutionContext, config: ShotsRun, vcn: VcnResource) -> dg.MaterializeResult:
    """Cut detection (PySceneDetect) over the whole movie; also records the movie's probe."""
    key = context.partition_key
    cfg = to_core(config, ShotConfig)
    with user_errors():
        path = vcn.movie_path(key)
        digest = content_hash(path)

    def compute() -> Computed:
        info = probe(path, VideoConfig().min_frames)
        found = detect_shots(info, cfg, progress=step_progress(context, "shots", "frames"))
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


@dg.asset(partitions_def=MOVIES, group_name=STAGE1, deps=[shots], code_version=CODE_VERSIONS["tracks"],
          op_tags=k8s_op_tags("tracks"))
def tracks(context: dg.AssetExecutionContext, config: TracksRun, vcn: VcnResource) -> dg.MaterializeResult:
    """Face detection on a frame stride + IoU/appearance Hungarian tracking within shots."""
    key = context.partition_key
    cfg = to_core(config, TrackConfig)

    def compute() -> Computed:
        info = info_from_store(vcn, key)
        found_shots = tables.shots_from(vcn.store().read("shots", key))
        models = vcn.models(cfg)
        boxes = track_faces(info, found_shots, models.detector, cfg, progress=step_progress(context, "tracks", "frames"),
                            workers=models.detect_workers)
        frames = {"track_boxes": tables.boxes_frame(key, boxes), "tracks": tables.tracks_frame(key, boxes, found_shots)}
        return Computed(frames, {
            "n_tracks": boxes.n_tracks, "n_boxes": len(boxes), "n_detections": int(boxes.detected.sum()),
            "backend": models.backend, "models": models.identity,
        }, tables.data_version(frames))

    with user_errors():
        stage = Stage("tracks", describe(cfg), vcn.model_identity(), ("shots",))
        result = materialize_stage(context, vcn, stage, compute)
        return with_metadata(result, {"timeline": _timeline_picture(vcn, key)})


@dg.asset(partitions_def=MOVIES, group_name=STAGE1, deps=[tracks], code_version=CODE_VERSIONS["crops"],
          op_tags=k8s_op_tags("crops"),
          check_specs=[dg.AssetCheckSpec("embeddings_finite", asset="crops", description=(
              "Every stored embedding and SER-FIQ view is finite and all have one dimension."))])
def crops(context: dg.AssetExecutionContext, config: CropsRun, vcn: VcnResource) -> dg.MaterializeResult:
    """Sampled, aligned, filtered crops with embeddings and SER-FIQ quality; outlier tracks unknown."""
    key = context.partition_key
    cfg = to_core(config, CropConfig)

    def compute() -> Computed:
        info = info_from_store(vcn, key)
        boxes = tables.boxes_from(vcn.store().read("track_boxes", key))
        models = vcn.embedding_models()
        found = extract_crops(info, boxes, models, cfg, progress=step_progress(context, "crops", "crops"))
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
        result = materialize_stage(context, vcn, stage, compute)
        store = vcn.store()
        pictures = {"quality_histogram": _quality_picture(store.read("track_quality", key), cfg)}
        return with_checks(with_metadata(result, pictures), [embeddings_finite(store.read("crops", key))])


def _timeline_picture(vcn: VcnResource, key: str) -> dg.MetadataValue:
    """Shot cuts and face tracks on screen over time, from the stored rows."""
    store = vcn.store()
    movie = store.read("movies", key).row(0, named=True)
    spans = store.read("tracks", key).select("start_frame", "end_frame").to_numpy()
    starts = store.read("shots", key)["start_frame"].to_numpy()
    png = timeline(movie["fps"], movie["n_frames"], starts, spans)
    return dg.MetadataValue.md(markdown_image(png, "face tracks over time"))


def _quality_picture(track_quality: pl.DataFrame, cfg: CropConfig) -> dg.MetadataValue:
    """Per-track quality with the outlier cut (recomputed from the stored qualities, as
    ``summarise_tracks`` computed it from the same values)."""
    with_crops = track_quality.filter(pl.col("n_crops") > 0)["quality"].to_numpy()
    cut = quality_cut(with_crops, cfg)
    png = quality_histogram(with_crops, cut)
    text = f"outlier cut {cut:.4f}" if cut is not None else f"no outlier cut (fewer than {cfg.mad_min_tracks} tracks)"
    return dg.MetadataValue.md(f"{markdown_image(png, 'track quality')}\n\n{text}")
