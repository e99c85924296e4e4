"""One movie's clustering result as plain dataclasses: who appears, and when.

Usage::

    report = read_report(default_store(), "ep1")       # ExportError when the movie or its clusters are missing
    for c in report.clusters:                           # largest screen time first
        print(c.label, c.screen_time_s, [a.start_tc for a in c.appearances])

Times: an appearance (one track) covers frames ``start_frame..end_frame`` inclusive; its start time
is ``start_frame / fps`` and its end time ``(end_frame + 1) / fps`` (the end of its last frame, as in
edit decision lists), so ``duration_s = end_s - start_s``. Timecodes are ``HH:MM:SS.mmm``.
``build_report`` is pure (tables in, dataclasses out); ``read_report`` does the reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from vcn_assets.store.db import Store

EXTRA_CROPS = 5  # crops shown per cluster besides the representative one
NOT_CLUSTERED = -1  # clusters.cluster_id of tracks outside every cluster (unknown, no_crops, not_face)


class ExportError(ValueError):
    """The store lacks what an export needs; the message names the movie/file and what to do."""


def timecode(seconds: float) -> str:
    """``HH:MM:SS.mmm`` of a non-negative time in seconds (rounded to the millisecond)."""
    if seconds < 0:
        raise ValueError(f"timecode of a negative time {seconds}")
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


@dataclass(frozen=True)
class Movie:
    key: str
    path: str
    fps: float
    n_frames: int
    duration_s: float

    @property
    def name(self) -> str:
        return Path(self.path).name or self.key


@dataclass(frozen=True)
class Appearance:
    """One track: inclusive frames, times in seconds (end = end of the last frame) and timecodes."""

    track_id: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def start_tc(self) -> str:
        return timecode(self.start_s)

    @property
    def end_tc(self) -> str:
        return timecode(self.end_s)


@dataclass(frozen=True)
class Suggestion:
    """Stage 4's near miss: ``other_cluster_id`` would have merged had ``score`` been below ``threshold``."""

    other_cluster_id: int
    rank: int
    score: float
    threshold: float
    margin: float


@dataclass(frozen=True)
class Cluster:
    """One identity: its appearances in time order, crops (representative first, then best first)."""

    cluster_id: int
    name: str | None
    n_crops: int
    appearances: tuple[Appearance, ...]
    crop_ids: tuple[int, ...]
    suggestions: tuple[Suggestion, ...]

    @property
    def label(self) -> str:
        return self.name or f"cluster {self.cluster_id}"

    @property
    def n_tracks(self) -> int:
        return len(self.appearances)

    @property
    def screen_time_s(self) -> float:
        """Seconds on screen: the union of the appearances (overlaps counted once)."""
        total, end = 0.0, float("-inf")
        for a in sorted(self.appearances, key=lambda a: a.start_s):
            total += max(0.0, a.end_s - max(a.start_s, end))
            end = max(end, a.end_s)
        return total

    @property
    def first_tc(self) -> str:
        return timecode(min(a.start_s for a in self.appearances))

    @property
    def last_tc(self) -> str:
        return timecode(max(a.end_s for a in self.appearances))


@dataclass(frozen=True)
class UnknownTrack:
    """A track outside every cluster: ``status`` unknown (quality outlier), no_crops or not_face."""

    appearance: Appearance
    status: str
    name: str | None
    crop_id: int | None


@dataclass(frozen=True)
class MovieReport:
    movie: Movie
    clusters: tuple[Cluster, ...]
    unknown: tuple[UnknownTrack, ...]
    jpegs: dict[int, bytes] = field(repr=False)  # crop_id -> JPEG of every crop referenced above

    def cluster(self, cluster_id: int) -> Cluster | None:
        return next((c for c in self.clusters if c.cluster_id == cluster_id), None)


def _optional(df: pl.DataFrame, col: str) -> list:
    """A column's values, or Nones where a store written by an older version lacks the column."""
    return df[col].to_list() if col in df.columns else [None] * df.height


def _clean_name(name: str | None) -> str | None:
    return (name.strip() or None) if name is not None else None


def _movie(movies: pl.DataFrame, key: str) -> Movie:
    row = movies.row(0, named=True)
    fps = row["fps"]
    if not fps or fps <= 0:
        raise ExportError(f"movie {key!r}: stored fps is {fps!r}; re-materialise `shots`")
    duration = row["duration_s"] or (row["n_frames"] or 0) / fps
    return Movie(key, row["path"] or "", float(fps), int(row["n_frames"] or 0), float(duration))


def _appearances(tracks: pl.DataFrame, fps: float) -> dict[int, Appearance]:
    return {
        t: Appearance(t, s, e, s / fps, (e + 1) / fps)
        for t, s, e in tracks.select("track_id", "start_frame", "end_frame").iter_rows()
    }


def _crop_order(crops: pl.DataFrame, assigned: pl.DataFrame) -> pl.DataFrame:
    """Crops with their track's cluster, ordered for display: each track's best crop (frontal x
    quality) before any track's second best, so a cluster's thumbnails show several tracks."""
    scored = crops.select(
        "crop_id", "track_id", (pl.col("frontal") * pl.col("quality")).fill_null(0.0).fill_nan(0.0).alias("score")
    ).join(assigned.select("track_id", "cluster_id"), on="track_id", how="inner")
    ranked = scored.sort(["score", "crop_id"], descending=[True, False]).with_columns(
        pl.int_range(pl.len()).over("track_id").alias("k"))
    return ranked.sort(["k", "score", "crop_id"], descending=[False, True, False])


def _suggestions(merge: pl.DataFrame) -> dict[int, tuple[Suggestion, ...]]:
    if merge.height == 0:
        return {}
    out: dict[int, list[Suggestion]] = {}
    rows = merge.sort(["cluster_id", "rank"]).select(
        "cluster_id", "other_cluster_id", "rank", "score", "threshold", "margin").iter_rows()
    for cid, other, rank, score, threshold, margin in rows:
        out.setdefault(cid, []).append(Suggestion(other, rank, score, threshold, margin))
    return {cid: tuple(s) for cid, s in out.items()}


def _clusters(key: str, assigned: pl.DataFrame, summary: pl.DataFrame, order: pl.DataFrame,
              apps: dict[int, Appearance], suggestions: dict[int, tuple[Suggestion, ...]]) -> tuple[Cluster, ...]:
    """The clusters, largest screen time first (ties: smaller cluster id first)."""
    members = assigned.filter(pl.col("cluster_id") >= 0).group_by("cluster_id").agg("track_id").iter_rows()
    info = dict(zip(summary["cluster_id"].to_list(), summary.iter_rows(named=True))) if summary.height else {}
    crops_of = dict(order.filter(pl.col("cluster_id") >= 0).group_by("cluster_id", maintain_order=True)
                    .agg("crop_id").iter_rows())
    out = []
    for cid, track_ids in members:
        if cid not in info:
            raise ExportError(f"movie {key!r}: cluster {cid} has no `cluster_summary` row; re-materialise `clusters`")
        row = info[cid]
        rep = row["rep_crop_id"]
        shown = ([rep] if rep is not None else []) + [c for c in crops_of.get(cid, []) if c != rep]
        appearances = tuple(sorted((apps[t] for t in track_ids), key=lambda a: (a.start_frame, a.track_id)))
        out.append(Cluster(cid, _clean_name(row.get("name")), int(row["n_crops"] or 0), appearances,
                           tuple(shown[: 1 + EXTRA_CROPS]), suggestions.get(cid, ())))
    return tuple(sorted(out, key=lambda c: (-c.screen_time_s, c.cluster_id)))


def _unknown(assigned: pl.DataFrame, order: pl.DataFrame, apps: dict[int, Appearance]) -> tuple[UnknownTrack, ...]:
    """Tracks outside every cluster in time order, each with its best crop (None without crops)."""
    best = dict(order.filter(pl.col("k") == 0).select("track_id", "crop_id").iter_rows())
    rows = assigned.filter(pl.col("cluster_id") < 0)
    tracks = [UnknownTrack(apps[t], status, _clean_name(name), best.get(t))
              for t, status, name in zip(rows["track_id"].to_list(), rows["status"].to_list(), _optional(rows, "name"))]
    return tuple(sorted(tracks, key=lambda u: (u.appearance.start_frame, u.appearance.track_id)))


def _jpegs(key: str, crops: pl.DataFrame, clusters: tuple[Cluster, ...], unknown: tuple[UnknownTrack, ...]) -> dict[int, bytes]:
    wanted = {c for cl in clusters for c in cl.crop_ids} | {u.crop_id for u in unknown if u.crop_id is not None}
    found = dict(crops.filter(pl.col("crop_id").is_in(list(wanted))).select("crop_id", "jpeg").iter_rows())
    missing = sorted(wanted - set(found))
    if missing:
        raise ExportError(f"movie {key!r}: crops {missing[:5]} (representative crops of `cluster_summary`) are not "
                          "in `crops`; re-materialise `clusters`")
    return found


def build_report(key: str, tables: dict[str, pl.DataFrame]) -> MovieReport:
    """One movie's report from its rows of movies, tracks, crops (crop_id, track_id, frontal, quality,
    jpeg), clusters, cluster_summary and merge_suggestions (may be empty)."""
    movie = _movie(tables["movies"], key)
    apps = _appearances(tables["tracks"], movie.fps)
    assigned = tables["clusters"]
    missing = sorted(set(assigned["track_id"].to_list()) - set(apps))
    if missing:
        raise ExportError(f"movie {key!r}: tracks {missing[:5]} of `clusters` are not in `tracks`; "
                          "re-materialise `clusters`")
    order = _crop_order(tables["crops"], assigned)
    clusters = _clusters(key, assigned, tables["cluster_summary"], order, apps, _suggestions(tables["merge_suggestions"]))
    unknown = _unknown(assigned, order, apps)
    return MovieReport(movie, clusters, unknown, _jpegs(key, tables["crops"], clusters, unknown))


def stored_movie_keys(store: Store) -> list[str]:
    with store.connect(read_only=True) as con:
        if not _has_table(con, "movies"):
            return []
        return [r[0] for r in con.execute("SELECT DISTINCT movie_key FROM movies ORDER BY movie_key").fetchall()]


def _has_table(con, table: str) -> bool:
    return con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0] > 0


def _read_crops(store: Store, key: str) -> pl.DataFrame:
    """The crops columns an export needs (not the embeddings)."""
    with store.connect(read_only=True) as con:
        if not _has_table(con, "crops"):
            return pl.DataFrame(schema={"crop_id": pl.Int32, "track_id": pl.Int32, "frontal": pl.Float32,
                                        "quality": pl.Float32, "jpeg": pl.Binary})
        return con.execute("SELECT crop_id, track_id, frontal, quality, jpeg FROM crops WHERE movie_key = ? "
                           "ORDER BY crop_id", [key]).pl()


def read_report(store: Store, key: str) -> MovieReport:
    """Read one movie's report; ExportError naming the movie/file when something needed is missing."""
    if not store.path.is_file():
        raise ExportError(f"{store.path}: no DuckDB store there (set VCN_DATA_DIR or pass --store)")
    movies = store.read("movies", key)
    if movies.height == 0:
        keys = stored_movie_keys(store)
        raise ExportError(f"movie {key!r} is not in {store.path}; stored movies: {', '.join(keys) or 'none'}")
    assigned = store.read("clusters", key)
    if assigned.height == 0 and store.cache_entry(key, "clusters") is None:
        raise ExportError(f"movie {key!r} has no clusters in {store.path}: materialise `clusters` for {key} first")
    tables = {t: store.read(t, key) for t in ("tracks", "cluster_summary", "merge_suggestions")}
    return build_report(key, tables | {"movies": movies, "clusters": assigned, "crops": _read_crops(store, key)})
