"""Stages 2-4 as per-movie assets: ``finetuned_checkpoint`` -> ``soft_matches`` -> ``clusters``."""

import base64
import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import numpy as np
import polars as pl

from vcn_assets.bench.clustering_eval import evaluate, track_counts
from vcn_assets.bench.frontend_metrics import load_gt_boxes, match_boxes, track_identities
from vcn_assets.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vcn_assets.core.contact_sheet import contact_sheet
from vcn_assets.core.config import ClusterConfig, FinetuneConfig, MatchConfig, describe
from vcn_assets.core.crops import UNKNOWN
from vcn_assets.core.finetune import student_embeddings
from vcn_assets.core.identity import ClusterInputs, adapt, cooccurrence, final_clusters
from vcn_assets.core.soft_match import flatten_views, soft_match
from vcn_assets.orchestration.assets import crops, user_errors
from vcn_assets.orchestration.caching import CODE_VERSIONS, Computed, Stage, materialize_stage
from vcn_assets.orchestration.partitions import MOVIES
from vcn_assets.orchestration.resources import VcnResource, config_class, to_core
from vcn_assets.store import tables

FinetuneRun = config_class(FinetuneConfig)
MatchRun = config_class(MatchConfig)
ClusterRun = config_class(ClusterConfig)
IDENTITY = "stage2_4_identity"


class MovieInputs(NamedTuple):
    """What Stages 2-4 read of one movie: ClusterInputs, all track ids (T_all,), their status, each
    crop's representative score (C,) and the crops table itself (read once per step)."""

    inputs: ClusterInputs
    track_ids: np.ndarray
    status: np.ndarray
    score: np.ndarray
    crops: pl.DataFrame


def _inputs(vcn: VcnResource, key: str) -> MovieInputs:
    store = vcn.store()
    tq = store.read("track_quality", key)
    track_ids = tq["track_id"].to_numpy().astype(np.int64) if tq.height else np.zeros(0, np.int64)
    status = np.asarray(tq["status"].to_list() if tq.height else [], dtype="<U8")
    crops_df = store.read("crops", key)
    crop_track, views, score = tables.crops_arrays(crops_df)
    boxes = store.read("track_boxes", key)
    row = {t: i for i, t in enumerate(track_ids.tolist())}
    crop_row = np.array([row[t] for t in crop_track.tolist()], np.int64)
    box_row = np.array([row[t] for t in boxes["track_id"].to_list()], np.int64) if boxes.height else np.zeros(0, np.int64)
    box_frame = boxes["frame_idx"].to_numpy().astype(np.int64) if boxes.height else np.zeros(0, np.int64)
    co = cooccurrence(box_row, box_frame, len(track_ids))
    return MovieInputs(ClusterInputs.from_stage1(status, crop_row, views, co), track_ids, status, score, crops_df)


def _save_checkpoint(vcn: VcnResource, key: str, result, in_dim: int, cfg: FinetuneConfig) -> tuple[Path, str]:
    """Write the checkpoint under a content-addressed name (``<key>-<digest>.safetensors``), so the
    path stored in DuckDB always names exactly the weights it was recorded with."""
    folder = vcn.data_path / "checkpoints"
    pending = folder / f"{key}.pending.safetensors"
    digest = save_checkpoint(pending, result, in_dim, cfg)
    path = folder / f"{key}-{digest[:16]}.safetensors"
    pending.replace(path)
    return path, digest


def stored_checkpoint(vcn: VcnResource, key: str) -> Path:
    df = vcn.store().read("checkpoints", key)
    if df.height == 0:
        raise CheckpointError(f"movie {key!r}: no checkpoint recorded: materialise `finetuned_checkpoint` first")
    return Path(df["path"][0])


def _checkpoint_frames(key: str, path: Path, digest: str, inputs: ClusterInputs, result, cfg: FinetuneConfig):
    per_round = max(cfg.steps_per_round, 1)
    steps = np.arange(len(result.losses))
    return {
        "checkpoints": pl.DataFrame({"movie_key": [key], "path": [str(path)], "sha256": [digest],
                                     "n_tracks": [len(inputs.valid_index)], "n_crops": [len(inputs.views)],
                                     "rounds": [json.dumps(result.rounds)]}),
        "finetune_loss": pl.DataFrame({"movie_key": [key] * len(steps), "step": steps.astype(np.int32),
                                       "round": (steps // per_round + 1).astype(np.int32),
                                       "loss": np.asarray(result.losses, np.float32)}),
    }


@dg.asset(partitions_def=MOVIES, group_name=IDENTITY, deps=[crops], code_version=CODE_VERSIONS["finetuned_checkpoint"])
def finetuned_checkpoint(context: dg.AssetExecutionContext, config: FinetuneRun, vcn: VcnResource) -> dg.MaterializeResult:
    """DINO-style student/teacher adaptation to this movie's tracks, alternating with soft matching."""
    key = context.partition_key
    cfg = to_core(config, FinetuneConfig)

    def compute() -> Computed:
        inputs = _inputs(vcn, key).inputs
        result = adapt(inputs, cfg, MatchConfig())
        path, digest = _save_checkpoint(vcn, key, result, inputs.views.shape[2], cfg)
        frames = _checkpoint_frames(key, path, digest, inputs, result, cfg)
        return Computed(frames, {
            "path": dg.MetadataValue.path(str(path)), "sha256": digest, "rounds": result.rounds,
            "loss_first": result.losses[0] if result.losses else None,
            "loss_last": result.losses[-1] if result.losses else None,
        }, digest[:16])

    def file_present() -> bool:
        df = vcn.store().read("checkpoints", key)
        return df.height == 1 and Path(df["path"][0]).is_file()

    with user_errors():
        # the rounds soft-match with MatchConfig's defaults: part of what determines the checkpoint
        stage = Stage("finetuned_checkpoint", {"finetune": describe(cfg), "match": describe(MatchConfig())},
                      {}, ("crops",))
        return materialize_stage(context, vcn, stage, compute, still_valid=file_present)


@dg.asset(partitions_def=MOVIES, group_name=IDENTITY, deps=[finetuned_checkpoint], code_version=CODE_VERSIONS["soft_matches"])
def soft_matches(context: dg.AssetExecutionContext, config: MatchRun, vcn: VcnResource) -> dg.MaterializeResult:
    """Per-track Normals of the finetuned student's embeddings; matched pairs of every round."""
    key = context.partition_key
    cfg = to_core(config, MatchConfig)

    def compute() -> Computed:
        inputs, track_ids, *_ = _inputs(vcn, key)
        ft = load_checkpoint(stored_checkpoint(vcn, key), inputs.views.shape[2])
        samples, sample_track = flatten_views(inputs.views, inputs.crop_track, cfg.use_views)
        emb = student_embeddings(ft.student, samples)
        final = soft_match(emb, sample_track, len(inputs.valid_index), inputs.cannot_link, cfg)
        rounds = [(r, m) for r, m in enumerate(ft.round_matches, start=1)] + [(0, final)]
        frames = {"soft_matches": tables.matches_frame(key, rounds, track_ids[inputs.valid_index])}
        return Computed(frames, {
            "n_matches_final": len(final), "n_matches_per_round": [len(m) for m in ft.round_matches],
            "round_0_is": "final student",
        }, tables.data_version(frames))

    with user_errors():
        stage = Stage("soft_matches", describe(cfg), {}, ("crops", "finetuned_checkpoint"))
        return materialize_stage(context, vcn, stage, compute)


@dg.asset(partitions_def=MOVIES, group_name=IDENTITY, deps=[soft_matches], code_version=CODE_VERSIONS["clusters"])
def clusters(context: dg.AssetExecutionContext, config: ClusterRun, vcn: VcnResource) -> dg.MaterializeResult:
    """Stage 4: iterative merging with the learnt metric; unknown tracks kept apart."""
    key = context.partition_key
    cfg = to_core(config, ClusterConfig)

    def compute() -> Computed:
        inputs, track_ids, status, score, crops_df = _inputs(vcn, key)
        ft = load_checkpoint(stored_checkpoint(vcn, key), inputs.views.shape[2])
        labels, n_iter = final_clusters(inputs, ft, cfg)
        crops_df = crops_df.select("crop_id", "track_id", "jpeg").with_columns(
            pl.Series("score", score, dtype=pl.Float32))
        frames = _cluster_frames(vcn, key, track_ids, status, labels, crops_df)
        sizes = frames["cluster_summary"]["n_tracks"].to_list()
        return Computed(frames, {
            "contact_sheet": _sheet_markdown(frames["clusters"], crops_df),
            "n_clusters": len(sizes), "largest_clusters": sorted(sizes, reverse=True)[:10],
            "n_unknown_tracks": int((status == UNKNOWN).sum()), "iterations": n_iter,
        }, tables.data_version(frames))

    with user_errors():
        stage = Stage("clusters", describe(cfg), {}, ("crops", "finetuned_checkpoint", "soft_matches"))
        return materialize_stage(context, vcn, stage, compute)


SHEET_CLUSTERS = 24  # rows shown in the UI; metadata stays small (a 56 px thumbnail JPEG mosaic)


def _sheet_markdown(assigned: pl.DataFrame, crops_df: pl.DataFrame) -> dg.MetadataValue:
    """Largest clusters first, each row its best crops (frontal x quality); unknown tracks last.
    ``crops_df``: crop_id, track_id, jpeg, score."""
    if crops_df.height == 0:
        return dg.MetadataValue.md("no faces")
    joined = crops_df.join(assigned.select("track_id", "cluster_id"), on="track_id")
    sizes = joined.filter(pl.col("cluster_id") >= 0).group_by("cluster_id").agg(pl.col("track_id").n_unique().alias("n"))
    order = sizes.sort(["n", "cluster_id"], descending=[True, False])["cluster_id"].to_list()[:SHEET_CLUSTERS]
    rows = [joined.filter(pl.col("cluster_id") == c).sort("score", descending=True)["jpeg"].to_list() for c in order]
    captions = [f"cluster {c}" for c in order]
    unknown = joined.filter(pl.col("cluster_id") < 0).sort("score", descending=True)["jpeg"].to_list()
    if unknown:
        rows.append(unknown)
        captions.append("unknown tracks")
    jpeg = contact_sheet(rows)
    legend = ", ".join(f"row {i + 1}: {c}" for i, c in enumerate(captions))
    return dg.MetadataValue.md(f"![clusters](data:image/jpeg;base64,{base64.b64encode(jpeg).decode()})\n\n{legend}")


def _cluster_frames(vcn: VcnResource, key: str, track_ids: np.ndarray, status: np.ndarray, labels: np.ndarray,
                    crops_df: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """``crops_df``: crop_id, track_id, score (the representative score)."""
    assigned = pl.DataFrame({"movie_key": [key] * len(track_ids), "track_id": track_ids.astype(np.int32),
                             "cluster_id": labels.astype(np.int32), "status": status.tolist()})
    tracks_df = vcn.store().read("tracks", key).select("track_id", "start_frame", "end_frame")
    valid = assigned.filter(pl.col("cluster_id") >= 0)
    per_track = valid.join(tracks_df, on="track_id", how="left")
    summary = per_track.group_by("cluster_id").agg(
        pl.len().cast(pl.Int32).alias("n_tracks"), pl.col("start_frame").min().alias("first_frame"),
        pl.col("end_frame").max().alias("last_frame"))
    crops_c = crops_df.join(valid.select("track_id", "cluster_id"), on="track_id", how="inner")
    rep = crops_c.sort(["score", "crop_id"], descending=[True, False]).group_by("cluster_id").agg(
        pl.col("crop_id").first().alias("rep_crop_id"), pl.len().cast(pl.Int32).alias("n_crops"))
    summary = summary.join(rep, on="cluster_id", how="left").with_columns(pl.lit(key).alias("movie_key")).sort("cluster_id")
    return {"clusters": assigned, "cluster_summary": summary.select(
        "movie_key", "cluster_id", "n_tracks", "n_crops", "rep_crop_id", "first_frame", "last_frame")}


def ground_truth_path(movie: Path) -> Path:
    """Where a movie's optional ground truth lives: ``<movie stem>.gt_faces.csv`` beside it (the
    benchmark case format's ``frame,x1,y1,x2,y2,identity``)."""
    return movie.with_name(movie.stem + ".gt_faces.csv")


@dg.asset(partitions_def=MOVIES, group_name=IDENTITY, deps=[clusters], code_version=CODE_VERSIONS["evaluation"])
def evaluation(context: dg.AssetExecutionContext, vcn: VcnResource) -> dg.MaterializeResult:
    """WCP / PCR / NMI / pairwise and B-cubed F of the clusters when ground truth exists beside the movie."""
    key = context.partition_key
    with user_errors():
        movie = vcn.movie_path(key)
        gt_path = ground_truth_path(movie)
        if not gt_path.is_file():
            return dg.MaterializeResult(metadata={"ground_truth": f"none (looked for {gt_path.name})"},
                                        data_version=dg.DataVersion("no-ground-truth"))
        store = vcn.store()
        n_frames = int(store.read("movies", key)["n_frames"][0])
        gt = load_gt_boxes(gt_path, n_frames)
        boxes = tables.boxes_from(store.read("track_boxes", key))
        assigned = store.read("clusters", key)
        ids = track_identities(gt, match_boxes(gt, boxes.frame_idx, boxes.xyxy), boxes.track_id)
        identity = [ids.get(int(t)) for t in assigned["track_id"].to_list()]
        status = assigned["status"].to_list()
        labels = assigned.filter(pl.col("status") == "valid")["cluster_id"].to_numpy()
        report = evaluate(identity, status, labels) | track_counts(identity, status)
    clean = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in report.items()}
    return dg.MaterializeResult(
        metadata={"ground_truth": dg.MetadataValue.path(str(gt_path)), "gt_unknown_policy": "own identity",
                  **clean},
        data_version=dg.DataVersion(hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:16]),
    )
