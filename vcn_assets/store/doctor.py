"""``vcn doctor``: check the store, the checkpoints and the Dagster instance; repair what is safe.

Usage::

    findings = diagnose(Path("data"), dagster_home=Path("."))
    for f in findings:
        print(f.line())                  # one line per problem, naming the file or movie and the fix
    lines, healthy = doctor(Path("data"), Path("."), repair=True)

What is checked (each check reads; nothing is written unless ``repair``):

- the DuckDB store opens and every table reads end to end (damaged blocks fail their checksum);
- its schema has every table and column of ``SCHEMA`` (a store of an older version lacks some:
  ``Store.ensure_schema`` adds them, as every write does);
- per movie, the tables of every ``cache_index`` entry hold the rows that the materialisation
  which wrote it recorded in ``lineage.row_counts``;
- the checkpoint of every cached ``finetuned_checkpoint`` exists and holds the weights whose content
  hash was recorded;
- no checkpoint is left half-written (``data/checkpoints/<movie>.pending.safetensors*``);
- the Dagster instance under DAGSTER_HOME reads its runs, partitions and materialisations.

Repairs are only the safe ones: move a damaged store aside to ``vcn.duckdb.corrupt-<timestamp>``
(with its WAL; the next materialisation rebuilds the store), add missing tables and columns, delete
pending checkpoint files, and drop ``cache_index`` entries whose rows or checkpoint are missing or
wrong (the next run recomputes them). Nothing else is deleted; the Dagster instance is never
touched. Run it while no materialisation is running: a pending file may be a write in progress.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from vcn_assets.store.db import SCHEMA, Store, StoreDamaged, StoreError

FIX_RERUN = "`vcn doctor --repair` drops the cache entry, so the next run recomputes it"
FIX_CHECKPOINT = "`vcn doctor --repair` drops the `finetuned_checkpoint` cache entry, so the next run recomputes it"
PENDING_GLOB = "*.pending.safetensors*"
DOCTOR_LOCK_TIMEOUT_S = 30.0  # waits this long for a running materialisation to release the store


@dataclass(frozen=True)
class Finding:
    """One problem: what is wrong (naming the file or movie), how to fix it, and the safe repair
    (``None`` when only a person can fix it), which returns what it did."""

    problem: str
    fix: str
    repair: Callable[[], str] | None = None

    def line(self) -> str:
        return f"{self.problem}; fix: {self.fix}"


def diagnose(data_dir: Path, dagster_home: Path | None) -> list[Finding]:
    """Every problem found in the project data under ``data_dir`` and the Dagster instance."""
    store = Store(data_dir / "vcn.duckdb", lock_timeout_s=DOCTOR_LOCK_TIMEOUT_S)
    return check_store(store) + check_pending(data_dir / "checkpoints") + check_dagster(dagster_home)


REPAIR_ROUNDS = 3  # a repair can reveal the next problem (an added table is empty: its cache entry goes)


def doctor(data_dir: Path, dagster_home: Path | None, repair: bool = False) -> tuple[list[str], bool]:
    """The lines to print and whether all is well. With ``repair``: each safe repair's line (repeating
    check and repair while a check finds something safe to repair), then the problems left."""
    findings, lines = diagnose(data_dir, dagster_home), []
    for _ in range(REPAIR_ROUNDS if repair else 0):
        if not any(f.repair for f in findings):
            break
        lines += [f"repaired: {f.repair()}" for f in findings if f.repair]
        findings = diagnose(data_dir, dagster_home)
    lines += [f.line() for f in findings]
    if not findings:
        lines.append(f"healthy: {data_dir / 'vcn.duckdb'}, {data_dir / 'checkpoints'}, "
                     f"Dagster instance {dagster_home}")
    return lines, not findings


# ----------------------------------------------------------------------------- the store


def check_store(store: Store) -> list[Finding]:
    """Opening, scanning, the schema, the cache entries and the checkpoints of the DuckDB store."""
    if not store.path.exists():
        return []  # nothing materialised yet
    try:
        with store.connect(read_only=True) as con:
            gaps = store.schema_gaps(con)
            present = [t for t in SCHEMA if t not in gaps]
            for table in present:  # reads every block: a damaged one fails its checksum here
                con.execute(f"SELECT count(*), sum(hash(t)) FROM {table} t").fetchall()
            findings = [_schema_finding(store, gaps)] if gaps else []
            if {"cache_index", "lineage"} <= set(present):
                findings += _cache_findings(store, con, present)
            if {"checkpoints", "cache_index"} <= set(present):
                findings += _checkpoint_findings(store, con)
            return findings
    except StoreDamaged as exc:
        return [Finding(f"damaged store: {exc}", "`vcn doctor --repair` moves it aside; re-materialise the movies "
                        "to rebuild it", lambda: move_aside(store.path))]
    except StoreError as exc:
        return [Finding(f"store unusable: {exc}", "see the message (another process holding the store, "
                        "permissions, a file of another DuckDB version)")]


def _schema_finding(store: Store, gaps: list[str]) -> Finding:
    def add() -> str:
        with store.connect() as con:
            store.ensure_schema(con)
        return f"{store.path}: added {', '.join(gaps)}"

    return Finding(f"{store.path}: schema lacks {', '.join(gaps)} (a store written by an older version)",
                   "added by the next materialisation (Store.ensure_schema); `vcn doctor --repair` adds it now", add)


def move_aside(path: Path) -> str:
    """Rename a damaged store (and its WAL) to ``<name>.corrupt-<timestamp>``; returns what it did."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    path.rename(target)
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        wal.rename(target.with_name(target.name + ".wal"))
    return f"moved {path} aside to {target}; re-materialise the movies to rebuild the store"


def _drop(store: Store, key: str, asset: str) -> Callable[[], str]:
    def drop() -> str:
        store.drop_cache_entry(key, asset)
        return f"movie {key!r}: dropped the cache entry of `{asset}`; its next run recomputes it"

    return drop


def _cache_findings(store: Store, con: duckdb.DuckDBPyConnection, present: list[str]) -> list[Finding]:
    """Cache entries whose tables do not hold the rows their materialisation recorded writing."""
    counts = {t: dict(con.execute(f"SELECT movie_key, count(*) FROM {t} GROUP BY movie_key").fetchall())
              for t in present}
    entries = con.execute("""
        SELECT c.movie_key, c.asset, arg_max(l.row_counts, l.started_at) FROM cache_index c
        LEFT JOIN lineage l ON l.movie_key = c.movie_key AND l.asset = c.asset AND l.fingerprint = c.fingerprint
            AND l.data_version = c.data_version AND l.status = 'success' AND l.cache = 'miss'
        GROUP BY c.movie_key, c.asset ORDER BY c.movie_key, c.asset""").fetchall()
    findings = []
    for key, asset, row_counts in entries:
        written = json.loads(row_counts) if row_counts else {}  # no lineage: nothing to compare with
        wrong = [f"{t} holds {counts[t].get(key, 0)} rows, {n} written" for t, n in written.items()
                 if t in counts and counts[t].get(key, 0) != n]  # a missing table is the schema finding
        if wrong:
            findings.append(Finding(f"movie {key!r}: `{asset}` is cached but {'; '.join(wrong)}", FIX_RERUN,
                                    _drop(store, key, asset)))
    return findings


def _checkpoint_findings(store: Store, con: duckdb.DuckDBPyConnection) -> list[Finding]:
    """Checkpoints of cached ``finetuned_checkpoint`` results that are missing, unreadable, or hold other
    weights than recorded (without a cache entry the next run rewrites the row anyway)."""
    from vcn_assets.core.checkpoint import CheckpointError, checkpoint_digest  # torch: only when needed

    findings = []
    rows = con.execute("""SELECT k.movie_key, k.path, k.sha256 FROM checkpoints k JOIN cache_index c
        ON c.movie_key = k.movie_key AND c.asset = 'finetuned_checkpoint' ORDER BY k.movie_key""").fetchall()
    for key, path, sha in rows:
        file = Path(path)
        try:
            digest = checkpoint_digest(file)
        except CheckpointError as exc:
            problem = f"checkpoint missing: {file}" if not file.is_file() else f"checkpoint unreadable: {exc}"
        else:
            if digest == sha:
                continue
            problem = f"{file}: holds other weights than recorded (content sha256 {digest[:16]}, recorded {sha[:16]})"
        findings.append(Finding(f"movie {key!r}: {problem}", FIX_CHECKPOINT, _drop(store, key, "finetuned_checkpoint")))
    return findings


# ----------------------------------------------------------------------------- files and Dagster


def check_pending(folder: Path) -> list[Finding]:
    """Checkpoints left half-written by a killed or failed run (never referenced by the store)."""
    def delete(path: Path) -> Callable[[], str]:
        def run() -> str:
            path.unlink(missing_ok=True)
            return f"deleted {path}"

        return run

    return [Finding(f"{p}: a checkpoint left half-written by an interrupted run",
                    "`vcn doctor --repair` deletes it (the movie's next run does too)", delete(p))
            for p in sorted(folder.glob(PENDING_GLOB))]


def check_dagster(home: Path | None) -> list[Finding]:
    """The Dagster instance under ``home`` (DAGSTER_HOME) reads its runs, partitions and events."""
    if home is None:
        return [Finding("DAGSTER_HOME is not set and ./dagster.yaml is absent",
                        "set DAGSTER_HOME to the project root (the folder holding dagster.yaml)")]
    import dagster as dg

    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.get_runs(limit=1)
            instance.get_dynamic_partitions("movies")
            instance.fetch_materializations(dg.AssetKey("clusters"), limit=1)
    except Exception as exc:  # noqa: BLE001  YAML, config, SQLAlchemy, storage errors: all are the finding
        reason = " ".join(str(exc).split())[:300]
        return [Finding(f"Dagster instance at {home} cannot be read ({type(exc).__name__}: {reason})",
                        f"check {home / 'dagster.yaml'}; if the run storage it names (storage.sqlite.base_dir) "
                        "is damaged, move that folder aside: run history is lost, results in DuckDB are kept")]
    return []
