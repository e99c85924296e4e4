"""Conversions between the core's column dataclasses and the store's tables, plus data versions.

Usage::

    frames = stage1_tables("ep1", shots=shots)        # {"shots": DataFrame}
    shots = shots_from(store.read("shots", "ep1"), n_frames)
    data_version(frames)                              # content hash of what was written
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from vcn_assets.core.crops import Crops, TrackSummary
from vcn_assets.core.shots import Shots
from vcn_assets.core.tracking import TrackBoxes
from vcn_assets.core.video import VideoInfo


def movie_frame(movie_key: str, info: VideoInfo, sha256: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "movie_key": [movie_key], "path": [str(info.path)], "sha256": [sha256], "fps": [info.fps],
            "n_frames": [info.n_frames], "width": [info.width], "height": [info.height],
            "codec": [info.codec], "duration_s": [info.duration_s],
        }
    )


def shots_frame(movie_key: str, shots: Shots) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "movie_key": [movie_key] * len(shots),
            "shot_idx": np.arange(len(shots), dtype=np.int32),
            "start_frame": shots.start_frame.astype(np.int32),
            "end_frame": shots.end_frame.astype(np.int32),
        }
    )


def shots_from(df: pl.DataFrame) -> Shots:
    if df.height == 0:
        raise ValueError("no shots stored for this movie: materialise `shots` first")
    return Shots(df["start_frame"].to_numpy().astype(np.int64), df["end_frame"].to_numpy().astype(np.int64))


def boxes_frame(movie_key: str, boxes: TrackBoxes) -> pl.DataFrame:
    n = len(boxes)
    return pl.DataFrame(
        {
            "movie_key": [movie_key] * n,
            "track_id": boxes.track_id.astype(np.int32),
            "frame_idx": boxes.frame_idx.astype(np.int32),
            **{c: boxes.xyxy[:, i] for i, c in enumerate(("x1", "y1", "x2", "y2"))},
            "kps": pl.Series(boxes.kps.reshape(n, 10), dtype=pl.List(pl.Float32)),
            "score": boxes.score,
            "detected": boxes.detected,
        },
        schema_overrides={"kps": pl.List(pl.Float32)},
    )


def boxes_from(df: pl.DataFrame) -> TrackBoxes:
    if df.height == 0:
        return TrackBoxes.empty()
    kps = np.asarray(df["kps"].to_list(), np.float32).reshape(-1, 5, 2)
    return TrackBoxes(
        df["track_id"].to_numpy().astype(np.int64),
        df["frame_idx"].to_numpy().astype(np.int64),
        df.select("x1", "y1", "x2", "y2").to_numpy().astype(np.float32),
        kps,
        df["score"].to_numpy().astype(np.float32),
        df["detected"].to_numpy().astype(bool),
    )


def tracks_frame(movie_key: str, boxes: TrackBoxes, shots: Shots) -> pl.DataFrame:
    df = boxes_frame(movie_key, boxes).group_by("track_id").agg(
        pl.col("frame_idx").min().alias("start_frame"),
        pl.col("frame_idx").max().alias("end_frame"),
        pl.len().cast(pl.Int32).alias("n_boxes"),
        pl.col("detected").sum().cast(pl.Int32).alias("n_detections"),
    )
    shot_idx = shots.shot_of(df["start_frame"].to_numpy()).astype(np.int32) if df.height else []
    return df.with_columns(
        pl.lit(movie_key).alias("movie_key"), pl.Series("shot_idx", shot_idx, dtype=pl.Int32)
    ).sort("track_id")


def crops_frame(movie_key: str, crops: Crops) -> pl.DataFrame:
    n = len(crops)
    return pl.DataFrame(
        {
            "movie_key": [movie_key] * n,
            "crop_id": np.arange(n, dtype=np.int32),
            "track_id": crops.track_id.astype(np.int32),
            "frame_idx": crops.frame_idx.astype(np.int32),
            **{c: crops.xyxy[:, i] for i, c in enumerate(("x1", "y1", "x2", "y2"))},
            "embedding": pl.Series(list(crops.embedding), dtype=pl.List(pl.Float32)),
            "quality": crops.quality,
            "sharpness": crops.sharpness,
            "frontal": crops.frontal,
            "n_views": np.full(n, crops.views.shape[1] if n else 0, np.int32),
            "views": pl.Series([v.ravel() for v in crops.views], dtype=pl.List(pl.Float32)),
            "jpeg": pl.Series(crops.jpeg, dtype=pl.Binary),
        }
    )


def quality_frame(movie_key: str, summary: TrackSummary) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "movie_key": [movie_key] * len(summary.track_id),
            "track_id": summary.track_id.astype(np.int32),
            "n_crops": summary.n_crops.astype(np.int32),
            "quality": summary.quality,
            "status": summary.status.tolist(),
            "rep_crop_id": summary.rep_crop.astype(np.int32),
        }
    )


def data_version(frames: dict[str, pl.DataFrame]) -> str:
    """A content hash of tables, independent of the movie key and the file's location (a renamed or
    moved movie, or a moved data folder, keeps it: the ``movies`` row holds the file's sha256)."""
    h = hashlib.sha256()
    for name in sorted(frames):
        df = frames[name].drop("movie_key", "path", strict=False)
        h.update(name.encode())
        h.update(str(df.schema).encode())
        for col in df.columns:
            _hash_column(h, df[col])
    return h.hexdigest()[:16]


def _hash_column(h: hashlib._Hash, s: pl.Series) -> None:
    h.update(s.name.encode())
    if s.dtype == pl.Binary:
        for b in s.to_list():
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    elif isinstance(s.dtype, pl.List):
        h.update(s.list.len().to_numpy().tobytes())
        h.update(s.explode().to_numpy().tobytes())
    elif s.dtype == pl.String:
        h.update("\x00".join("\x01" if v is None else v for v in s.to_list()).encode())  # \x01: null
    else:
        h.update(s.to_numpy().tobytes())


def crops_arrays(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crop track ids (C,), views (C, V, D), representative score frontal*quality (C,)) of a crops table."""
    if df.height == 0:
        return np.zeros(0, np.int64), np.zeros((0, 1, 1), np.float32), np.zeros(0, np.float32)
    n_views = int(df["n_views"][0])
    views = np.asarray(df["views"].to_list(), np.float32)
    views = views.reshape(df.height, n_views, -1)
    score = (df["frontal"] * df["quality"]).to_numpy().astype(np.float32)
    return df["track_id"].to_numpy().astype(np.int64), views, score


def matches_frame(movie_key: str, rounds: list, track_ids: np.ndarray) -> pl.DataFrame:
    """Soft matches of every round; ``rounds`` = [(member, round, SoftMatches over valid-track indices)]."""
    parts = []
    for member, r, m in rounds:
        parts.append(pl.DataFrame({
            "movie_key": [movie_key] * len(m), "round": np.full(len(m), r, np.int32),
            "track_id": track_ids[m.track_a].astype(np.int32),
            "matched_track_id": track_ids[m.track_b].astype(np.int32),
            "log_pdf": m.log_pdf, "threshold": m.threshold,
            "rule": np.where(m.by_normal, "normal", "mutual_neighbours"), "member": np.full(len(m), member, np.int32),
        }))
    return pl.concat(parts) if parts else pl.DataFrame(schema={
        "movie_key": pl.String, "round": pl.Int32, "track_id": pl.Int32, "matched_track_id": pl.Int32,
        "log_pdf": pl.Float64, "threshold": pl.Float64, "rule": pl.String, "member": pl.Int32})


def suggestions_frame(movie_key: str, s) -> pl.DataFrame:
    """Stage 4's merge suggestions (core.clustering.MergeSuggestions) as ``merge_suggestions`` rows."""
    return pl.DataFrame({
        "movie_key": [movie_key] * len(s), "cluster_id": s.cluster.astype(np.int32), "rank": s.rank.astype(np.int32),
        "other_cluster_id": s.other.astype(np.int32), "score": s.score.astype(np.float64),
        "threshold": s.threshold.astype(np.float64), "margin": s.margin.astype(np.float64),
    }, schema={"movie_key": pl.String, "cluster_id": pl.Int32, "rank": pl.Int32, "other_cluster_id": pl.Int32,
               "score": pl.Float64, "threshold": pl.Float64, "margin": pl.Float64})
