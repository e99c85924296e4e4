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
from vcn_assets.core.checkpoint import CheckpointError, discard_partial, load_checkpoint, save_checkpoint
from vcn_assets.core.config import ClusterConfig, FinetuneConfig, MatchConfig, describe
from vcn_assets.core.contact_sheet import contact_sheet
from vcn_assets.core.corrections import Corrections, Resolved, resolve
from vcn_assets.core.crops import UNKNOWN, VALID
from vcn_assets.core.finetune import student_embeddings
from vcn_assets.core.identity import (
    ClusterInputs,
    LastBlock,
    adapt,
    cluster_names,
    constraints_for,
    cooccurrence,
    corrected_status,
    final_clusters,
    last_block_inputs,
    track_mean_inputs,
)
from vcn_assets.core.plots import cast_timeline, embedding_plot, loss_curve, markdown_image, project_2d
from vcn_assets.core.soft_match import flatten_views, soft_match
from vcn_assets.core.tracking import TrackBoxes
from vcn_assets.orchestration.assets import crops, info_from_store, user_errors
from vcn_assets.orchestration.caching import CODE_VERSIONS, Computed, Stage, materialize_stage
from vcn_assets.orchestration.checks import with_checks, with_metadata
from vcn_assets.orchestration.k8s import k8s_op_tags
from vcn_assets.orchestration.partitions import MOVIES
from vcn_assets.orchestration.progress import step_progress
from vcn_assets.orchestration.resources import VcnResource, config_class, to_core
from vcn_assets.store import tables

FinetuneRun = config_class(FinetuneConfig)
MatchRun = config_class(MatchConfig)
ClusterRun = config_class(ClusterConfig)
STAGE2, STAGE3, STAGE4 = "stage2_finetune", "stage3_soft_match", "stage4_clusters"


class MovieInputs(NamedTuple):
    """What Stages 2-4 read of one movie: ClusterInputs, all track ids (T_all,), their status (after
    the reviewer's corrections when given), each crop's representative score (C,), the crops table
    itself (read once per step) and the resolved corrections."""

    inputs: ClusterInputs
    track_ids: np.ndarray
    status: np.ndarray
    score: np.ndarray
    crops: pl.DataFrame
    resolved: Resolved


class MovieTracks(NamedTuple):
    """All track ids (T_all,), their status after the reviewer's corrections, their boxes, and the
    corrections resolved to rows of ``track_ids``."""

    track_ids: np.ndarray
    status: np.ndarray
    boxes: TrackBoxes
    resolved: Resolved


def _tracks(vcn: VcnResource, key: str, corrections: Corrections | None = None) -> MovieTracks:
    store = vcn.store()
    tq = store.read("track_quality", key)
    track_ids = tq["track_id"].to_numpy().astype(np.int64) if tq.height else np.zeros(0, np.int64)
    status = np.asarray(tq["status"].to_list() if tq.height else [], dtype="<U8")
    boxes = tables.boxes_from(store.read("track_boxes", key))
    resolved = resolve(corrections or Corrections(), boxes.track_id, boxes.frame_idx, boxes.xyxy, track_ids)
    return MovieTracks(track_ids, corrected_status(status, resolved), boxes, resolved)


def _inputs(vcn: VcnResource, key: str, corrections: Corrections | None = None) -> MovieInputs:
    t = _tracks(vcn, key, corrections)
    crops_df = vcn.store().read("crops", key)
    crop_track, views, score = tables.crops_arrays(crops_df)
    row = {tid: i for i, tid in enumerate(t.track_ids.tolist())}
    crop_row = np.array([row[tid] for tid in crop_track.tolist()], np.int64)
    box_row = np.array([row[tid] for tid in t.boxes.track_id.tolist()], np.int64)
    co = cooccurrence(box_row, t.boxes.frame_idx, len(t.track_ids))
    inputs = ClusterInputs.from_stage1(t.status, crop_row, views, co)
    return MovieInputs(inputs, t.track_ids, t.status, score, crops_df, t.resolved)


def _save_checkpoint(vcn: VcnResource, key: str, members: list, in_dim: int, cfg: FinetuneConfig) -> tuple[Path, str]:
    """Write the checkpoint under a content-addressed name (``<key>-<digest>.safetensors``), so the
    path stored in DuckDB always names exactly the weights it was recorded with."""
    pending = _pending(vcn, key)
    try:
        digest = save_checkpoint(pending, members, in_dim, cfg)
        path = pending.with_name(f"{key}-{digest[:16]}.safetensors")
        pending.replace(path)
    finally:
        discard_partial(pending)  # nothing is left behind when the write failed
    return path, digest


def _last_block(context: dg.AssetExecutionContext, vcn: VcnResource, key: str, m: MovieInputs,
                cfg: FinetuneConfig) -> LastBlock:
    """``train_last_block``: the valid crops re-read from the movie up to the backbone's last block."""
    boxes = tables.boxes_from(vcn.store().read("track_boxes", key))
    crops_df = m.crops
    embedding = np.asarray(crops_df["embedding"].to_list(), np.float32).reshape(crops_df.height, -1)
    return last_block_inputs(info_from_store(vcn, key), boxes, crops_df["track_id"].to_numpy().astype(np.int64),
                             crops_df["frame_idx"].to_numpy().astype(np.int64), embedding, m.inputs,
                             vcn.embedding_models(), cfg.seed, progress=step_progress(context, "last_block", "crops"))


def _block_description(last_block: LastBlock | None) -> str:
    if last_block is None:
        return "frozen"
    n = sum(p.numel() for p in last_block.tail.parameters())
    return f"trained ({n:,} weights, {last_block.trunk.shape[0]} crops x {last_block.trunk.shape[1]} views re-read)"


def _pending(vcn: VcnResource, key: str) -> Path:
    """Where a checkpoint is written before its content-addressed rename (never referenced in DuckDB)."""
    return vcn.data_path / "checkpoints" / f"{key}.pending.safetensors"


def stored_checkpoint(vcn: VcnResource, key: str) -> Path:
    df = vcn.store().read("checkpoints", key)
    if df.height == 0:
        raise CheckpointError(f"movie {key!r}: no checkpoint recorded: materialise `finetuned_checkpoint` first")
    return Path(df["path"][0])


def _checkpoint_frames(key: str, path: Path, digest: str, inputs: ClusterInputs, members: list, cfg: FinetuneConfig):
    per_round = max(cfg.steps_per_round, 1)
    steps = [np.arange(len(m.losses)) for m in members]
    step = np.concatenate(steps).astype(np.int32)
    return {
        "checkpoints": pl.DataFrame({"movie_key": [key], "path": [str(path)], "sha256": [digest],
                                     "n_tracks": [len(inputs.valid_index)], "n_crops": [len(inputs.views)],
                                     "rounds": [json.dumps([m.rounds for m in members])]}),
        "finetune_loss": pl.DataFrame({"movie_key": [key] * len(step), "step": step,
                                       "round": (step // per_round + 1).astype(np.int32),
                                       "loss": np.concatenate([np.asarray(m.losses, np.float32) for m in members]),
                                       "member": np.repeat(np.arange(len(members)), [len(s) for s in steps]).astype(np.int32)},
                                      schema_overrides={"loss": pl.Float32}),
    }


@dg.asset(partitions_def=MOVIES, group_name=STAGE2, deps=[crops], code_version=CODE_VERSIONS["finetuned_checkpoint"],
          op_tags=k8s_op_tags("finetuned_checkpoint"))
def finetuned_checkpoint(context: dg.AssetExecutionContext, config: FinetuneRun, vcn: VcnResource) -> dg.MaterializeResult:
    """DINO-style student/teacher adaptation to this movie's tracks, alternating with soft matching."""
    key = context.partition_key
    cfg = to_core(config, FinetuneConfig)

    def compute() -> Computed:
        m = _inputs(vcn, key)
        inputs = m.inputs
        last_block = _last_block(context, vcn, key, m, cfg) if cfg.train_last_block else None
        members = adapt(inputs, cfg, MatchConfig(), progress=step_progress(context, "finetune", "steps"),
                        last_block=last_block)
        path, digest = _save_checkpoint(vcn, key, members, inputs.views.shape[2], cfg)
        frames = _checkpoint_frames(key, path, digest, inputs, members, cfg)
        return Computed(frames, {
            "path": dg.MetadataValue.path(str(path)), "sha256": digest, "members": len(members),
            "rounds": [m.rounds for m in members],
            "loss_first": [m.losses[0] if m.losses else None for m in members],
            "loss_last": [m.losses[-1] if m.losses else None for m in members],
            "backbone_last_block": _block_description(last_block),
        }, digest[:16])

    def file_present() -> bool:
        df = vcn.store().read("checkpoints", key)
        return df.height == 1 and Path(df["path"][0]).is_file()

    with user_errors():
        discard_partial(_pending(vcn, key))  # what a killed run of this movie left
        # the rounds soft-match with MatchConfig's defaults: part of what determines the checkpoint
        # a trained last block is the backbone's: its weights are then part of what determines the checkpoint
        stage = Stage("finetuned_checkpoint", {"finetune": describe(cfg), "match": describe(MatchConfig())},
                      vcn.model_identity() if cfg.train_last_block else {}, ("crops",))
        result = materialize_stage(context, vcn, stage, compute, still_valid=file_present)
        losses = vcn.store().read("finetune_loss", key).filter(pl.col("member").fill_null(0) == 0)
        png = loss_curve(losses["loss"].to_numpy() if losses.height else [], cfg.steps_per_round)
        # the first student's curve (each member's is in the finetune_loss table)
        return with_metadata(result, {"loss_curve": dg.MetadataValue.md(markdown_image(png, "finetuning loss"))})


@dg.asset(partitions_def=MOVIES, group_name=STAGE3, deps=[finetuned_checkpoint], code_version=CODE_VERSIONS["soft_matches"],
          op_tags=k8s_op_tags("soft_matches"))
def soft_matches(context: dg.AssetExecutionContext, config: MatchRun, vcn: VcnResource) -> dg.MaterializeResult:
    """Per-track Normals of the finetuned student's embeddings; matched pairs of every round."""
    key = context.partition_key
    cfg = to_core(config, MatchConfig)

    def compute() -> Computed:
        inputs, track_ids, *_ = _inputs(vcn, key)
        members = load_checkpoint(stored_checkpoint(vcn, key), inputs.views.shape[2])
        rounds, finals = [], []
        for k, ft in enumerate(members):
            samples, sample_track = flatten_views(ft.backbone_views(inputs.views)[0], inputs.crop_track, cfg.use_views)
            emb = student_embeddings(ft.student, samples)
            finals.append(soft_match(emb, sample_track, len(inputs.valid_index), inputs.cannot_link, cfg))
            rounds += [(k, r, m) for r, m in enumerate(ft.round_matches, start=1)] + [(k, 0, finals[-1])]
        frames = {"soft_matches": tables.matches_frame(key, rounds, track_ids[inputs.valid_index])}
        return Computed(frames, {
            "members": len(members), "n_matches_final": [len(f) for f in finals],
            "n_matches_per_round": [[len(m) for m in ft.round_matches] for ft in members],
            "n_mutual_neighbour_matches_final": [int((~f.by_normal).sum()) for f in finals],
            "round_0_is": "final student (one list entry per member)",
        }, tables.data_version(frames))

    with user_errors():
        stage = Stage("soft_matches", describe(cfg), {}, ("crops", "finetuned_checkpoint"))
        return materialize_stage(context, vcn, stage, compute)


CLUSTER_CHECKS = ("every_valid_track_in_one_cluster", "no_empty_cluster", "corrections_honoured")


@dg.asset(partitions_def=MOVIES, group_name=STAGE4, deps=[soft_matches], code_version=CODE_VERSIONS["clusters"],
          op_tags=k8s_op_tags("clusters"),
          check_specs=[dg.AssetCheckSpec(c, asset="clusters") for c in CLUSTER_CHECKS])
def clusters(context: dg.AssetExecutionContext, config: ClusterRun, vcn: VcnResource) -> dg.MaterializeResult:
    """Stage 4: iterative merging with the learnt metric, honouring the reviewer's corrections
    (``vcn correct``); unknown tracks kept apart; each cluster's nearest other clusters suggested."""
    key = context.partition_key
    cfg = to_core(config, ClusterConfig)
    with user_errors():
        corrections = Corrections.load(vcn.corrections_path(key))

    def compute() -> Computed:
        m = _inputs(vcn, key, corrections)
        members = load_checkpoint(stored_checkpoint(vcn, key), m.inputs.views.shape[2])
        final = final_clusters(m.inputs, members, cfg, constraints_for(m.inputs, m.resolved))
        crops_df = m.crops.select("crop_id", "track_id", "jpeg").with_columns(
            pl.Series("score", m.score, dtype=pl.Float32))
        names = cluster_names(final.cluster_of_track, m.resolved)
        frames = _cluster_frames(vcn, key, m.track_ids, m.status, final.cluster_of_track, names, crops_df)
        frames["merge_suggestions"] = tables.suggestions_frame(key, final.suggestions)
        sizes = frames["cluster_summary"]["n_tracks"].to_list()
        return Computed(frames, {
            "cast_timeline": _cast_picture(vcn, key, frames["clusters"]),
            "embedding_plot": _embedding_picture(members[0], m.inputs, final.cluster_of_track, names),
            "contact_sheet": _sheet_markdown(frames["clusters"], crops_df),
            "merge_suggestions": _suggestions_markdown(frames["merge_suggestions"], names),
            "n_clusters": len(sizes), "largest_clusters": sorted(sizes, reverse=True)[:10],
            "n_unknown_tracks": int((m.status == UNKNOWN).sum()), "iterations": final.n_iterations,
            "named_clusters": dict(sorted((str(c), n) for c, n in names.items())[:50]),
            "corrections": len(corrections), "unresolved_corrections": m.resolved.unresolved[:20],
        }, tables.data_version(frames))

    with user_errors():
        stage = Stage("clusters", describe(cfg), {}, ("crops", "finetuned_checkpoint", "soft_matches"))
        extra = {"corrections": corrections.version()}
        result = materialize_stage(context, vcn, stage, compute, extra_inputs=extra)
        store = vcn.store()
        return with_checks(result, cluster_checks(store.read("clusters", key), store.read("cluster_summary", key),
                                                  _tracks(vcn, key, corrections)))


def cluster_checks(assigned: pl.DataFrame, summary: pl.DataFrame, m: MovieTracks) -> list[dg.AssetCheckResult]:
    """The stored clustering against the movie's valid tracks and the reviewer's corrections."""
    valid = set(m.track_ids[m.status == VALID].tolist())
    cluster_of = dict(zip(assigned["track_id"].to_list(), assigned["cluster_id"].to_list(), strict=True))
    missing = sorted(t for t in valid if cluster_of.get(t, -1) < 0)
    duplicated = assigned.height - len(cluster_of)
    empty = summary.filter(pl.col("n_tracks") < 1)["cluster_id"].to_list()
    orphan = sorted(set(summary["cluster_id"].to_list()) ^ {c for c in cluster_of.values() if c >= 0})
    broken = _broken_corrections(cluster_of, m)
    return [
        dg.AssetCheckResult(check_name="every_valid_track_in_one_cluster", passed=not missing and not duplicated,
                            metadata={"valid_tracks": len(valid), "unclustered": missing[:20],
                                      "duplicated_rows": duplicated}),
        dg.AssetCheckResult(check_name="no_empty_cluster", passed=not empty and not orphan,
                            metadata={"empty_clusters": empty[:20], "summary_mismatch": orphan[:20]}),
        dg.AssetCheckResult(
            check_name="corrections_honoured", passed=not broken and not m.resolved.unresolved,
            severity=dg.AssetCheckSeverity.ERROR if broken else dg.AssetCheckSeverity.WARN,
            metadata={"violated": broken[:20], "unresolved": m.resolved.unresolved[:20]},
            description="every correction holds" if not broken and not m.resolved.unresolved else
            "violated corrections" if broken else "some corrections name tracks that no longer exist"),
    ]


def _broken_corrections(cluster_of: dict[int, int], m: MovieTracks) -> list[str]:
    ids = m.track_ids
    c = [cluster_of.get(int(t), -1) for t in ids]
    out = [f"must-link {ids[a]}-{ids[b]}" for a, b in m.resolved.must_link if c[a] < 0 or c[a] != c[b]]
    out += [f"cannot-link {ids[a]}-{ids[b]}" for a, b in m.resolved.cannot_link if c[a] >= 0 and c[a] == c[b]]
    out += [f"not-face {ids[r]}" for r in m.resolved.not_face if c[r] >= 0]
    by_name: dict[str, set[int]] = {}
    for r, name in m.resolved.name_of.items():
        by_name.setdefault(name, set()).add(c[r])
    out += [f"name {n!r} spread over clusters {sorted(cs)}" for n, cs in by_name.items() if len(cs) > 1]
    return out


SHEET_CLUSTERS = 24  # rows shown in the UI; metadata stays small (a 56 px thumbnail JPEG mosaic)


def _embedding_picture(ft, inputs: ClusterInputs, cluster_of_track: np.ndarray, names: dict[int, str]):
    """Valid tracks' mean student embeddings (of member 0) in 2-D, coloured by cluster (the paper's Fig. 4)."""
    n = len(inputs.valid_index)
    views = ft.backbone_views(inputs.views)[0]
    emb = student_embeddings(ft.student, track_mean_inputs(views, inputs.crop_track, n)) if n else np.zeros((0, 2))
    png = embedding_plot(project_2d(emb), cluster_of_track[inputs.valid_index], names=names)
    return dg.MetadataValue.md(markdown_image(png, "tracks by cluster"))


def _cast_picture(vcn: VcnResource, key: str, assigned: pl.DataFrame) -> dg.MetadataValue:
    """Who is on screen when: each cluster's tracks along the movie."""
    store = vcn.store()
    movie = store.read("movies", key)
    spans = assigned.filter(pl.col("cluster_id") >= 0).join(
        store.read("tracks", key).select("track_id", "start_frame", "end_frame"), on="track_id")
    rows = [(name or f"cluster {c}", g.select("start_frame", "end_frame").to_numpy())
            for (c, name), g in spans.group_by(["cluster_id", "name"], maintain_order=True)]
    fps, n_frames = (float(movie["fps"][0]), int(movie["n_frames"][0])) if movie.height else (0.0, 0)
    return dg.MetadataValue.md(markdown_image(cast_timeline(fps, n_frames, sorted(rows)), "who is on screen when"))


def _md_text(name: str) -> str:
    """A reviewer-given name as literal Markdown text (no markup, no table breaks)."""
    return "".join("\\" + ch if ch in "\\`*_{}[]()#+-.!|<>" else ch for ch in name)


def _suggestions_markdown(hints: pl.DataFrame, names: dict[int, str], rows: int = 15) -> dg.MetadataValue:
    """The closest cluster pairs that Stage 4 kept apart (each pair once), nearest first."""
    pairs = hints.with_columns(pl.min_horizontal("cluster_id", "other_cluster_id").alias("a"),
                               pl.max_horizontal("cluster_id", "other_cluster_id").alias("b"))
    pairs = pairs.unique(["a", "b"]).sort("margin").head(rows)
    if pairs.height == 0:
        return dg.MetadataValue.md("no other cluster to suggest")
    label = lambda c: f"{c} ({names[c]})" if c in names else str(c)
    lines = ["| cluster | may be the same person as | score | threshold | margin |", "|---|---|---|---|---|"]
    lines += [f"| {label(r['a'])} | {label(r['b'])} | {r['score']:.3f} | {r['threshold']:.3f} | {r['margin']:.3f} |"
              for r in pairs.iter_rows(named=True)]
    return dg.MetadataValue.md("\n".join(lines) + "\n\nmerge with `vcn correct MOVIE --merge A B --apply`")


def _sheet_markdown(assigned: pl.DataFrame, crops_df: pl.DataFrame) -> dg.MetadataValue:
    """Largest clusters first, each row its best crops (frontal x quality); unknown tracks last.
    ``crops_df``: crop_id, track_id, jpeg, score."""
    if crops_df.height == 0:
        return dg.MetadataValue.md("no faces")
    joined = crops_df.join(assigned.select("track_id", "cluster_id"), on="track_id")
    sizes = joined.filter(pl.col("cluster_id") >= 0).group_by("cluster_id").agg(pl.col("track_id").n_unique().alias("n"))
    order = sizes.sort(["n", "cluster_id"], descending=[True, False])["cluster_id"].to_list()[:SHEET_CLUSTERS]
    rows = [joined.filter(pl.col("cluster_id") == c).sort("score", descending=True)["jpeg"].to_list() for c in order]
    names = dict(assigned.filter(pl.col("name").is_not_null()).select("cluster_id", "name").unique().iter_rows())
    captions = [f"cluster {c}" + (f" ({_md_text(names[c])})" if c in names else "") for c in order]
    unknown = joined.filter(pl.col("cluster_id") < 0).sort("score", descending=True)["jpeg"].to_list()
    if unknown:
        rows.append(unknown)
        captions.append("unknown tracks")
    jpeg = contact_sheet(rows)
    legend = ", ".join(f"row {i + 1}: {c}" for i, c in enumerate(captions))
    return dg.MetadataValue.md(f"![clusters](data:image/jpeg;base64,{base64.b64encode(jpeg).decode()})\n\n{legend}")


def _cluster_frames(vcn: VcnResource, key: str, track_ids: np.ndarray, status: np.ndarray, labels: np.ndarray,
                    names: dict[int, str], crops_df: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """``crops_df``: crop_id, track_id, score (the representative score); ``names``: cluster -> name."""
    assigned = pl.DataFrame({"movie_key": [key] * len(track_ids), "track_id": track_ids.astype(np.int32),
                             "cluster_id": labels.astype(np.int32), "status": status.tolist(),
                             "name": [names.get(int(c)) for c in labels]}, schema_overrides={"name": pl.String})
    tracks_df = vcn.store().read("tracks", key).select("track_id", "start_frame", "end_frame")
    valid = assigned.filter(pl.col("cluster_id") >= 0)
    per_track = valid.join(tracks_df, on="track_id", how="left")
    summary = per_track.group_by("cluster_id").agg(
        pl.len().cast(pl.Int32).alias("n_tracks"), pl.col("start_frame").min().alias("first_frame"),
        pl.col("end_frame").max().alias("last_frame"))
    crops_c = crops_df.join(valid.select("track_id", "cluster_id"), on="track_id", how="inner")
    rep = crops_c.sort(["score", "crop_id"], descending=[True, False]).group_by("cluster_id").agg(
        pl.col("crop_id").first().alias("rep_crop_id"), pl.len().cast(pl.Int32).alias("n_crops"))
    summary = summary.join(rep, on="cluster_id", how="left").with_columns(
        pl.lit(key).alias("movie_key"),
        pl.col("cluster_id").map_elements(lambda c: names.get(int(c)), return_dtype=pl.String).alias("name"),
    ).sort("cluster_id")
    return {"clusters": assigned, "cluster_summary": summary.select(
        "movie_key", "cluster_id", "n_tracks", "n_crops", "rep_crop_id", "first_frame", "last_frame", "name")}


def ground_truth_path(movie: Path) -> Path:
    """Where a movie's optional ground truth lives: ``<movie stem>.gt_faces.csv`` beside it (the
    benchmark case format's ``frame,x1,y1,x2,y2,identity``)."""
    return movie.with_name(movie.stem + ".gt_faces.csv")


WCP_TARGET, PCR_RANGE = 0.95, (0.9, 1.3)  # the project's accuracy targets (issue #3); a warning below them


def score_check(report: dict | None) -> dg.AssetCheckResult:
    """WCP and PCR against the targets; passes with a note when the movie has no ground truth."""
    if report is None:
        return dg.AssetCheckResult(check_name="ground_truth_scores", passed=True,
                                   description="no ground truth beside the movie")
    wcp, pcr = report.get("wcp"), report.get("pcr")
    ok = wcp is not None and pcr is not None and wcp >= WCP_TARGET and PCR_RANGE[0] <= pcr <= PCR_RANGE[1]
    return dg.AssetCheckResult(
        check_name="ground_truth_scores", passed=bool(ok), severity=dg.AssetCheckSeverity.WARN,
        metadata={"wcp": wcp, "pcr": pcr, "target": f"WCP >= {WCP_TARGET}, {PCR_RANGE[0]} <= PCR <= {PCR_RANGE[1]}"},
        description="WCP and PCR on target" if ok else "below target: review the clusters (merge suggestions)")


@dg.asset(partitions_def=MOVIES, group_name=STAGE4, deps=[clusters], code_version=CODE_VERSIONS["evaluation"],
          op_tags=k8s_op_tags("evaluation"),
          check_specs=[dg.AssetCheckSpec("ground_truth_scores", asset="evaluation")])
def evaluation(context: dg.AssetExecutionContext, vcn: VcnResource) -> dg.MaterializeResult:
    """WCP / PCR / NMI / pairwise and B-cubed F of the clusters when ground truth exists beside the movie."""
    key = context.partition_key
    with user_errors():
        movie = vcn.movie_path(key)
        gt_path = ground_truth_path(movie)
        if not gt_path.is_file():
            return dg.MaterializeResult(metadata={"ground_truth": f"none (looked for {gt_path.name})"},
                                        data_version=dg.DataVersion("no-ground-truth"), check_results=[score_check(None)])
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
        check_results=[score_check(clean)],
    )
