"""A worker killed (SIGKILL) in the middle of a stage's write never corrupts the results.

A child process materialises a movie with the fake backend; a patch it installs first (test code:
production has no hooks, see ``faults.child``) stops it right before COMMIT of the chosen asset's
transaction, or half-way through writing the checkpoint file, and tells the parent through a marker
file. The parent kills it and checks: the store opens, no row and no cache entry of the interrupted
write landed (the previous result, when there was one, is intact), no half-written checkpoint is
referenced, and the next run recomputes what is missing, removes a pending checkpoint file, and
reports the data versions of an undisturbed run.

Children start from a multiprocessing forkserver that has imported Dagster, torch and the project
once (a spawned interpreter would spend ~5 s importing them for each of the 14 cases); each child is
still a separate process that installs its own patches, and the server is stopped after the module.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vcn_assets.store.doctor import check_pending, check_store
from vcn_assets_tests.faults import (
    IN_FLIGHT,
    KEY,
    STAGE_TABLES,
    STAGES,
    Baseline,
    baseline,
    cache_states,
    child,
    forget,
    leftovers,
    materialize,
    restore,
    store_of,
    versions,
)

MARKER_TIMEOUT_S = 300  # generous: on 2 busy cores the child may take a while to reach the fault
FAULTS = [*STAGES, "checkpoint_file"]  # every stage's COMMIT, and the checkpoint file's own write
HALF_WRITTEN = f"{KEY}.pending.safetensors.tmp"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    return baseline(tmp_path_factory)


@pytest.fixture(scope="module")
def forkserver() -> Iterator[multiprocessing.context.BaseContext]:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["vcn_assets_tests.faults", "vcn_assets.definitions"])
    yield ctx
    multiprocessing.forkserver._forkserver._stop()  # stop and reap the server (CPython's own test hook)


def _stage(fault: str) -> str:
    return "finetuned_checkpoint" if fault == "checkpoint_file" else fault


def kill_at_fault(ctx, tmp_path: Path, data: Path, movies: Path, fault: str, select: list[str] | None = None,
                  force: bool = False) -> None:
    """Run a child until it reports the fault point, then SIGKILL it (always killed and reaped)."""
    marker, log = tmp_path / "at_fault", tmp_path / "child.log"
    proc = ctx.Process(target=child, args=(data, movies, KEY, fault, marker, select, force, log))
    proc.start()
    try:
        deadline = time.monotonic() + MARKER_TIMEOUT_S
        while not marker.exists():
            if proc.exitcode is not None:
                pytest.fail(f"child ended ({proc.exitcode}) before the fault:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"child did not reach the fault in {MARKER_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.exitcode is None:
            proc.kill()
        proc.join()


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_killed_first_write_leaves_nothing_and_next_run_recomputes(fault: str, tmp_path: Path, base: Baseline,
                                                                    forkserver) -> None:
    stage = _stage(fault)
    redo = STAGES[STAGES.index(stage):]
    data = restore(base, tmp_path / "data")
    forget(data, KEY, redo)  # earlier stages done, this one and later ones never written
    kill_at_fault(forkserver, tmp_path, data, base.movies, fault, select=redo)
    store = store_of(data)
    for s in STAGES:  # earlier stages committed as usual; nothing of the killed one or later
        assert store.cache_entry(KEY, s) == (None if s in redo else base.cache[s]), s  # no stale entry
        assert {t: store.count(t, KEY) for t in STAGE_TABLES[s]} == {
            t: 0 if s in redo else base.counts[t] for t in STAGE_TABLES[s]}, s
    assert check_store(store) == []  # nothing half-written is referenced: the doctor finds the store healthy
    assert leftovers(data) == ([HALF_WRITTEN] if fault == "checkpoint_file" else [])
    assert len(check_pending(data / "checkpoints")) == len(leftovers(data))

    result = materialize(data, base.movies, KEY, select=redo)  # (earlier stages: their entries are checked above)
    assert result.success
    assert versions(result) == {s: base.versions[s] for s in redo}
    assert cache_states(result) == {s: "miss" for s in redo}
    assert leftovers(data) == []


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_killed_rewrite_keeps_the_previous_result(fault: str, tmp_path: Path, base: Baseline, forkserver) -> None:
    data = restore(base, tmp_path / "data")
    store, stage = store_of(data), _stage(fault)
    before = {t: store.read(t, KEY) for t in STAGE_TABLES[stage]}
    assert {t: df.height for t, df in before.items()} == {t: base.counts[t] for t in before}
    kill_at_fault(forkserver, tmp_path, data, base.movies, fault, select=[stage], force=True)  # a forced recompute
    for table, rows in before.items():
        assert store.read(table, KEY).equals(rows), table
    assert {s: store.cache_entry(KEY, s) for s in STAGES} == base.cache
    assert IN_FLIGHT not in str(store.read("cache_index", KEY).rows())
    assert check_store(store) == []  # the referenced checkpoint is whole and holds the recorded weights
    assert leftovers(data) == ([HALF_WRITTEN] if fault == "checkpoint_file" else [])

    result = materialize(data, base.movies, KEY, select=[stage])
    assert result.success
    assert cache_states(result) == {stage: "hit"}
    assert versions(result) == {stage: base.versions[stage]}
    assert leftovers(data) == []  # a cache hit removes what the killed run left, too
