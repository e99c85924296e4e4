"""The DuckDB store: per-movie tables, replaced atomically per partition.

Usage::

    store = Store(Path("data/vcn.duckdb"))
    store.replace("ep1", {"shots": shots_df})        # one transaction: old rows out, new rows in
    df = store.read("shots", "ep1")                   # polars DataFrame

Every write replaces one movie's rows of the given tables inside a single transaction, so a
reader sees either the old result or the new one, never a mix; a failing write rolls back. All
SQL is parameterised; table names come only from ``SCHEMA`` (never from user input).
DuckDB admits one writing process per file: connections are short-lived and opening one retries
while another process holds the lock.

Errors a user can act on become a one-line :class:`StoreError` naming the file and what to do: a
damaged or foreign file (``vcn doctor --repair`` moves it aside), a full disk (the write was rolled
back; free space and re-run). A process killed mid-write leaves the previous rows: DuckDB makes a
transaction durable only at COMMIT.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

from vcn_assets.core.files import is_disk_full

log = logging.getLogger(__name__)

SCHEMA: dict[str, str] = {
    "movies": """movie_key VARCHAR, path VARCHAR, sha256 VARCHAR, fps DOUBLE, n_frames INTEGER,
        width INTEGER, height INTEGER, codec VARCHAR, duration_s DOUBLE""",
    "shots": "movie_key VARCHAR, shot_idx INTEGER, start_frame INTEGER, end_frame INTEGER",
    "track_boxes": """movie_key VARCHAR, track_id INTEGER, frame_idx INTEGER, x1 FLOAT, y1 FLOAT,
        x2 FLOAT, y2 FLOAT, kps FLOAT[], score FLOAT, detected BOOLEAN""",
    "tracks": """movie_key VARCHAR, track_id INTEGER, shot_idx INTEGER, start_frame INTEGER,
        end_frame INTEGER, n_boxes INTEGER, n_detections INTEGER""",
    "crops": """movie_key VARCHAR, crop_id INTEGER, track_id INTEGER, frame_idx INTEGER, x1 FLOAT,
        y1 FLOAT, x2 FLOAT, y2 FLOAT, embedding FLOAT[], quality FLOAT, sharpness FLOAT,
        frontal FLOAT, n_views INTEGER, views FLOAT[], jpeg BLOB""",
    "track_quality": """movie_key VARCHAR, track_id INTEGER, n_crops INTEGER, quality FLOAT,
        status VARCHAR, rep_crop_id INTEGER""",
    "checkpoints": """movie_key VARCHAR, path VARCHAR, sha256 VARCHAR, n_tracks INTEGER, n_crops INTEGER,
        rounds VARCHAR""",
    # member: which finetuned student (FinetuneConfig.members; 0 = the one trained at the config's seed)
    "finetune_loss": "movie_key VARCHAR, step INTEGER, round INTEGER, loss FLOAT, member INTEGER",
    # rule: "normal" (the paper's: matched_track's mean inside track's Normal, log_pdf > threshold) or
    # "mutual_neighbours" (each in the other's set of nearest tracks, MatchConfig.max_neighbours)
    "soft_matches": """movie_key VARCHAR, round INTEGER, track_id INTEGER, matched_track_id INTEGER,
        log_pdf DOUBLE, threshold DOUBLE, rule VARCHAR, member INTEGER""",
    # status: valid / unknown (quality outlier) / no_crops / not_face (a user correction); name: the
    # user's name for the track's cluster (from the corrections file), NULL when unnamed.
    "clusters": "movie_key VARCHAR, track_id INTEGER, cluster_id INTEGER, status VARCHAR, name VARCHAR",
    "cluster_summary": """movie_key VARCHAR, cluster_id INTEGER, n_tracks INTEGER, n_crops INTEGER,
        rep_crop_id INTEGER, first_frame INTEGER, last_frame INTEGER, name VARCHAR""",
    # For each cluster, the nearest other clusters by the learnt metric (rank 1 = nearest): score is
    # the Stage 4 cluster-pair score, threshold the larger of the two clusters' thresholds; a merge
    # would have happened had score been below threshold (margin = score - threshold > 0) with one
    # student; with several (FinetuneConfig.members) these are their mean metric's figures.
    "merge_suggestions": """movie_key VARCHAR, cluster_id INTEGER, rank INTEGER, other_cluster_id INTEGER,
        score DOUBLE, threshold DOUBLE, margin DOUBLE""",
    # One row per (movie, asset): the fingerprint and data version of the rows now stored. Written in
    # the same transaction as the rows, so it never describes rows that are not there.
    "cache_index": "movie_key VARCHAR, asset VARCHAR, fingerprint VARCHAR, data_version VARCHAR",
    # One row per materialisation, never overwritten.
    "lineage": """run_id VARCHAR, movie_key VARCHAR, asset VARCHAR, fingerprint VARCHAR, inputs VARCHAR,
        data_version VARCHAR, config VARCHAR, code_version VARCHAR, model VARCHAR, started_at TIMESTAMP,
        ended_at TIMESTAMP, row_counts VARCHAR, cache VARCHAR, status VARCHAR""",
}


ORDER_BY: dict[str, str] = {
    "movies": "movie_key",
    "shots": "shot_idx",
    "track_boxes": "track_id, frame_idx",
    "tracks": "track_id",
    "crops": "crop_id",
    "track_quality": "track_id",
    "checkpoints": "movie_key",
    "finetune_loss": "member, step",
    "soft_matches": "member, round, track_id, matched_track_id",
    "clusters": "track_id",
    "cluster_summary": "cluster_id",
    "merge_suggestions": "cluster_id, rank",
    "cache_index": "asset",
    "lineage": "started_at DESC",
}


def _columns(cols: str) -> list[str]:
    """``"a INTEGER, b FLOAT[]"`` -> ``["a INTEGER", "b FLOAT[]"]`` (SCHEMA types contain no commas)."""
    return [c.strip() for c in cols.split(",")]


def default_data_dir() -> str:
    """The project's data folder: $VCN_DATA_DIR, else ./data."""
    return os.environ.get("VCN_DATA_DIR", "data")


def default_store() -> Store:
    return Store(Path(default_data_dir()).expanduser().resolve() / "vcn.duckdb")


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message names the file and what to do."""


class StoreDamaged(StoreError):
    """The store file is damaged (truncated, overwritten, failing checksums) or not a DuckDB file."""


# What DuckDB says about a file that is damaged (truncated, overwritten, bad checksums) or not its own.
_DAMAGED = ("not a valid DuckDB database file", "Could not read enough bytes", "Corrupt database file")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def actionable(path: Path, exc: BaseException) -> StoreError | None:
    """The :class:`StoreError` for a full disk or a damaged store file, or None for other errors."""
    if is_disk_full(exc):
        return StoreError(f"{path}: the disk is full ({_one_line(exc)}); the write was rolled back, "
                          f"free space on the disk holding {path.parent} and re-run")
    if isinstance(exc, duckdb.Error) and any(s in str(exc) for s in _DAMAGED):
        return StoreDamaged(f"{path}: the DuckDB store is damaged ({_one_line(exc)}); run `vcn doctor --repair` "
                          "to move it aside, then re-materialise the movies")
    return None


class Store:
    def __init__(self, path: Path, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; retries while another process holds the file lock. A full disk
        or a damaged file, on opening or in the ``with`` body, raises :class:`StoreError`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._open(read_only)
        try:
            yield con
        except (duckdb.Error, OSError) as exc:
            err = actionable(self.path, exc)
            if err is None:
                raise
            raise err from exc
        finally:
            con.close()

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only and self.path.exists())
            except duckdb.IOException as exc:
                err = actionable(self.path, exc)
                if err is not None:
                    raise err from exc
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise StoreError(f"{self.path}: cannot open the DuckDB store ({_one_line(exc)})") from exc
                time.sleep(0.2)
            except duckdb.Error as exc:
                raise StoreError(
                    f"{self.path}: not a usable DuckDB store ({_one_line(exc)}); run `vcn doctor --repair` "
                    "to move it aside, then re-materialise the movies"
                ) from exc

    def schema_gaps(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        """Tables (``"shots"``) and columns (``"clusters.name VARCHAR"``) that ``SCHEMA`` has and the
        store lacks (a store written by an older version); :meth:`ensure_schema` adds them."""
        have: dict[str, set[str]] = {}
        for table, column in con.execute("SELECT table_name, column_name FROM information_schema.columns").fetchall():
            have.setdefault(table, set()).add(column)
        gaps = []
        for table, cols in SCHEMA.items():
            if table not in have:
                gaps.append(table)
                continue
            gaps += [f"{table}.{col}" for col in _columns(cols) if col.split()[0] not in have[table]]
        return gaps

    def ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create missing tables, and add columns that a store written by an older version lacks."""
        for gap in self.schema_gaps(con):
            if "." in gap:
                table, col = gap.split(".", 1)
                con.execute(f"ALTER TABLE {table} ADD COLUMN {col}")
            else:
                con.execute(f"CREATE TABLE {gap} ({SCHEMA[gap]})")

    def replace(
        self, movie_key: str, frames: dict[str, pl.DataFrame], cache_entry: tuple[str, str, str] | None = None
    ) -> None:
        """Atomically replace ``movie_key``'s rows in each named table with ``frames`` and, when given,
        its ``cache_entry`` = (asset, fingerprint, data version) in the cache index."""
        for table in frames:
            if table not in SCHEMA or table in ("cache_index", "lineage"):
                raise ValueError(f"unknown table {table!r}")
        with self.connect() as con:
            self.ensure_schema(con)
            con.execute("BEGIN TRANSACTION")
            try:
                for table, df in frames.items():
                    con.execute(f"DELETE FROM {table} WHERE movie_key = ?", [movie_key])
                    if df.height:
                        con.register("incoming", df.to_arrow())
                        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
                        con.unregister("incoming")
                if cache_entry is not None:
                    con.execute("DELETE FROM cache_index WHERE movie_key = ? AND asset = ?", [movie_key, cache_entry[0]])
                    con.execute("INSERT INTO cache_index VALUES (?, ?, ?, ?)", [movie_key, *cache_entry])
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise

    def read(self, table: str, movie_key: str) -> pl.DataFrame:
        """One movie's rows of ``table`` (an empty frame when none were written)."""
        if table not in SCHEMA:
            raise ValueError(f"unknown table {table!r}")
        with self.connect(read_only=True) as con:
            exists = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
            ).fetchone()[0]
            if not exists:
                return pl.DataFrame()
            return con.execute(
                f"SELECT * FROM {table} WHERE movie_key = ? ORDER BY {ORDER_BY[table]}", [movie_key]
            ).pl()

    def cache_entry(self, movie_key: str, asset: str) -> tuple[str, str] | None:
        """(fingerprint, data version) of ``asset``'s stored rows for the movie, or None."""
        df = self.read("cache_index", movie_key)
        if df.height == 0:
            return None
        row = df.filter(pl.col("asset") == asset)
        return (row["fingerprint"][0], row["data_version"][0]) if row.height else None

    def append_lineage(self, row: dict) -> None:
        """Add one materialisation record (never overwritten)."""
        with self.connect() as con:
            self.ensure_schema(con)
            cols = list(row)
            con.execute(
                f"INSERT INTO lineage ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                [row[c] for c in cols],
            )

    def count(self, table: str, movie_key: str) -> int:
        return self.read(table, movie_key).height

    def drop_cache_entry(self, movie_key: str, asset: str) -> None:
        """Forget the fingerprint of ``asset``'s stored rows, so the next run recomputes it."""
        with self.connect() as con:
            self.ensure_schema(con)
            con.execute("DELETE FROM cache_index WHERE movie_key = ? AND asset = ?", [movie_key, asset])


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back, keeping the error that caused it: after a fatal I/O error DuckDB refuses every
    statement, and the uncommitted transaction dies with the connection anyway."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error as exc:
        log.warning("rollback failed (%s); the transaction is discarded with the connection", _one_line(exc))
