"""Helpers of the fault-injection tests: an undisturbed baseline run, materialisation with the fake
backend, and the patches a killed child process installs (test code only: production has no hooks).

The movies live in one shared folder, so data versions (which include the movie's path) are the
same in every data dir and a disturbed run can be compared with the undisturbed baseline.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from vcn_assets.store.db import Store
from vcn_assets_tests.clips import blob_clip
from vcn_assets_tests.test_dagster_graph import FAST_FINETUNE

KEY, OTHER = "ep1", "ep2"
# The tables each asset replaces in one transaction with its cache_index row.
STAGE_TABLES = {
    "shots": ("movies", "shots"), "tracks": ("track_boxes", "tracks"), "crops": ("crops", "track_quality"),
    "finetuned_checkpoint": ("checkpoints", "finetune_loss"), "soft_matches": ("soft_matches",),
    "clusters": ("clusters", "cluster_summary", "merge_suggestions"),
}
STAGES = list(STAGE_TABLES)
IN_FLIGHT = "in-flight"  # fingerprint and data version of a write that must never land


@dataclass(frozen=True)
class Baseline:
    """``movies``: the shared movies folder (ep1, ep2 = the blob clip); ``data``: a data dir after an
    undisturbed run of ep1; its data version per asset, cache entries and row counts per table."""

    movies: Path
    data: Path
    versions: dict[str, str]
    cache: dict[str, tuple[str, str] | None]
    counts: dict[str, int]


_BASELINE: dict[str, Baseline] = {}


def baseline(factory: pytest.TempPathFactory) -> Baseline:
    """Built once per test session (one undisturbed run) and shared by the fault tests."""
    if "b" not in _BASELINE:
        root = factory.mktemp("faults_baseline")
        movies = root / "movies"
        blob_clip(movies / f"{KEY}.mp4", [[0, 1], [2], [0]])
        shutil.copy(movies / f"{KEY}.mp4", movies / f"{OTHER}.mp4")
        data = root / "data"
        result = materialize(data, movies, KEY)
        assert result.success
        store = store_of(data)
        counts = {t: store.count(t, KEY) for tables in STAGE_TABLES.values() for t in tables}
        _BASELINE["b"] = Baseline(movies, data, versions(result), {s: store.cache_entry(KEY, s) for s in STAGES},
                                  counts)
    return _BASELINE["b"]


def restore(base: Baseline, data_dir: Path) -> Path:
    """``data_dir`` holding a copy of the baseline's store and checkpoints, the recorded checkpoint
    paths pointing at the copies (so a test may damage them)."""
    shutil.copytree(base.data, data_dir, dirs_exist_ok=True)
    with store_of(data_dir).connect() as con:
        con.execute("UPDATE checkpoints SET path = replace(path, ?, ?)", [str(base.data.resolve()), str(data_dir.resolve())])
    return data_dir


def forget(data_dir: Path, key: str, stages: list[str]) -> None:
    """Delete ``stages``' rows and cache entries of ``key``: as if they had never been materialised."""
    with store_of(data_dir).connect() as con:
        for stage in stages:
            for table in STAGE_TABLES[stage]:
                con.execute(f"DELETE FROM {table} WHERE movie_key = ?", [key])
            con.execute("DELETE FROM cache_index WHERE movie_key = ? AND asset = ?", [key, stage])


def store_of(data_dir: Path) -> Store:
    return Store(data_dir / "vcn.duckdb")


def materialize(data_dir: Path, movies: Path, key: str, select: list[str] | None = None, force: bool = False,
                backend: str = "fake", **resource: str) -> dg.ExecuteInProcessResult:
    """The pipeline (or ``select``) for one movie on an ephemeral instance; ``resource``: more
    VcnResource settings."""
    from vcn_assets.definitions import ALL_ASSETS
    from vcn_assets.orchestration.automation import PIPELINE_ASSETS
    from vcn_assets.orchestration.resources import VcnResource

    select = select or list(PIPELINE_ASSETS)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("movies", [key])
    ops = {"finetuned_checkpoint": {"config": FAST_FINETUNE}} if "finetuned_checkpoint" in select else {}
    return dg.materialize(
        ALL_ASSETS, selection=select, partition_key=key, instance=instance, run_config={"ops": ops},
        raise_on_error=False,
        resources={"vcn": VcnResource(data_dir=str(data_dir), movies_dir=str(movies), backend=backend, force=force,
                                      **resource)},
    )


def versions(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {e.asset_key.to_user_string(): e.materialization.tags["dagster/data_version"]
            for e in result.get_asset_materialization_events()}


def cache_states(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {e.asset_key.to_user_string(): e.materialization.metadata["cache"].text
            for e in result.get_asset_materialization_events() if "cache" in e.materialization.metadata}


def failure(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    """(step, message) of the run's first failed step: the dg.Failure description."""
    event = result.get_step_failure_events()[0]
    data = event.step_failure_data
    assert data.user_failure_data is not None, f"not a dg.Failure: {data.error.to_string() if data.error else data}"
    return event.step_key, data.user_failure_data.description


def leftovers(data_dir: Path) -> list[str]:
    """Pending checkpoint files under ``data_dir``."""
    return sorted(p.name for p in (data_dir / "checkpoints").glob("*.pending.safetensors*"))


# ----------------------------------------------------------------------------- child-process patches


class _Connection:
    """A DuckDB connection whose ``execute`` runs ``before(sql)`` first."""

    def __init__(self, con, before) -> None:
        self._con, self._before = con, before

    def __getattr__(self, name: str):
        return getattr(self._con, name)

    def execute(self, sql: str, *args):
        self._before(sql)
        return self._con.execute(sql, *args)


def patch_store(before, target: str, patch=setattr, mark: bool = False) -> None:
    """Route every Store connection through ``before(sql, armed)``, ``armed`` being True while
    ``target``'s write is in flight. ``mark``: cut that write's frames to one row and mark its cache
    entry IN_FLIGHT, so a write that landed would be told apart from the previous rows. ``patch``:
    ``setattr`` (a child process), or ``monkeypatch.setattr``."""
    state = {"armed": False}
    connect, replace = Store.connect, Store.replace

    @contextmanager
    def proxied(self: Store, read_only: bool = False) -> Iterator[_Connection]:
        with connect(self, read_only) as con:
            yield _Connection(con, lambda sql: before(sql, state["armed"]))

    def replace_marked(self: Store, movie_key: str, frames: dict, cache_entry=None) -> None:
        if cache_entry is not None and cache_entry[0] == target:
            state["armed"] = True
            if mark:
                frames = {t: df.head(1) for t, df in frames.items()}
                cache_entry = (target, IN_FLIGHT, IN_FLIGHT)
        try:
            replace(self, movie_key, frames, cache_entry)
        finally:
            state["armed"] = False

    patch(Store, "connect", proxied)
    patch(Store, "replace", replace_marked)


def hang(marker: Path) -> None:
    """Tell the parent we are at the fault point, then wait to be killed."""
    marker.write_text(str(os.getpid()))
    time.sleep(600)


def hang_at_commit(target: str, marker: Path) -> None:
    """Stop right before COMMIT of ``target``'s write."""
    patch_store(lambda sql, armed: hang(marker) if armed and sql == "COMMIT" else None, target, mark=True)


def hang_in_checkpoint_write(marker: Path) -> None:
    """Stop in the middle of writing the checkpoint file (half of its bytes on disk)."""
    import safetensors.torch

    save_file = safetensors.torch.save_file

    def half_written(tensors, filename, metadata=None) -> None:
        save_file(tensors, filename, metadata=metadata)
        os.truncate(filename, os.path.getsize(filename) // 2)
        hang(marker)

    safetensors.torch.save_file = half_written


def child(data: Path, movies: Path, key: str, fault: str, marker: Path, select: list[str] | None, force: bool,
          log: Path) -> None:
    """A child process's whole life: install the fault, materialise, and be killed at the fault."""
    with open(log, "wb") as out:  # the child's output, for the parent's failure message
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    if fault == "checkpoint_file":
        hang_in_checkpoint_write(marker)
    else:
        hang_at_commit(fault, marker)
    materialize(data, movies, key, select, force)
    raise SystemExit("not stopped at the fault point")
