"""A full disk (ENOSPC) during a write fails the movie's run with one line, and leaves nothing behind.

ep1 holds a good result (the baseline); ep2 runs while the disk is "full": either the checkpoint
file's write or DuckDB's write raises ENOSPC (monkeypatched). The run fails with a one-line message
saying the disk is full and naming the path; no rows, cache entry or pending file of the failed
write are left; ep1 is untouched; once "space is freed" the next run succeeds.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import duckdb
import pytest
import safetensors.torch

from vcn_assets_tests.faults import (
    KEY,
    OTHER,
    STAGE_TABLES,
    STAGES,
    Baseline,
    baseline,
    cache_states,
    failure,
    leftovers,
    materialize,
    patch_store,
    restore,
    store_of,
    versions,
)

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    return baseline(tmp_path_factory)


def _snapshot(data: Path, key: str) -> dict:
    store = store_of(data)
    return {"rows": {t: store.read(t, key) for tables in STAGE_TABLES.values() for t in tables},
            "cache": {s: store.cache_entry(key, s) for s in STAGES}}


def _unchanged(data: Path, key: str, before: dict) -> bool:
    after = _snapshot(data, key)
    return after["cache"] == before["cache"] and all(after["rows"][t].equals(df) for t, df in before["rows"].items())


def _failed_cleanly(data: Path, base: Baseline, stage: str, path: Path) -> None:
    """The run of OTHER with a full disk at ``stage``: one line naming ``path``; nothing of ``stage`` or
    later stored for OTHER; no pending file."""
    result = materialize(data, base.movies, OTHER)
    assert not result.success
    step, message = failure(result)
    assert step == stage and "\n" not in message
    assert "the disk is full" in message and NO_SPACE in message and str(path) in message
    store = store_of(data)
    for s in STAGES[STAGES.index(stage):]:
        assert store.cache_entry(OTHER, s) is None, s
        assert all(store.count(t, OTHER) == 0 for t in STAGE_TABLES[s]), s
    assert leftovers(data) == []


def _space_freed_run(data: Path, base: Baseline, redo: list[str]) -> None:
    result = materialize(data, base.movies, OTHER)
    assert result.success
    states = cache_states(result)
    assert [s for s in STAGES if states[s] == "miss"] == redo
    # the same movie content as ep1: every version but shots' (the movie's path is in its rows) is ep1's
    assert {s: v for s, v in versions(result).items() if s != "shots"} == {
        s: v for s, v in base.versions.items() if s != "shots"}


def test_full_disk_while_writing_the_checkpoint(base: Baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = restore(base, tmp_path / "data")
    ep1 = _snapshot(data, KEY)
    save_file = safetensors.torch.save_file

    def no_space(tensors, filename, metadata=None) -> None:
        save_file(tensors, filename, metadata=metadata)
        os.truncate(filename, os.path.getsize(filename) // 2)  # what fitted before the disk filled up
        raise OSError(errno.ENOSPC, NO_SPACE, filename)

    with monkeypatch.context() as full:
        full.setattr(safetensors.torch, "save_file", no_space)
        _failed_cleanly(data, base, "finetuned_checkpoint", data.resolve() / "checkpoints" / f"{OTHER}.pending.safetensors")
    assert _unchanged(data, KEY, ep1)
    _space_freed_run(data, base, ["finetuned_checkpoint", "soft_matches", "clusters"])


@pytest.mark.parametrize("statement, error", [("INSERT", "duckdb"), ("COMMIT", "oserror")])
def test_full_disk_while_writing_the_store(statement: str, error: str, base: Baseline, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up during `tracks`' transaction (its second table's INSERT, or the COMMIT) and
    stays full: the lineage row of the failure cannot be written either. DuckDB reports it as an
    IOException carrying the OS message; an OSError with ENOSPC is handled alike."""
    data = restore(base, tmp_path / "data")
    ep1 = _snapshot(data, KEY)
    store_path = data.resolve() / "vcn.duckdb"
    disk = {"full": False}

    def before(sql: str, armed: bool) -> None:
        if armed and sql.startswith("INSERT INTO tracks " if statement == "INSERT" else "COMMIT"):
            disk["full"] = True
        if disk["full"] and sql.startswith(("INSERT", "COMMIT")):
            if error == "oserror":
                raise OSError(errno.ENOSPC, NO_SPACE, f"{store_path}.wal")
            raise duckdb.IOException(f'IO Error: Could not write file "{store_path}.wal": {NO_SPACE}')

    with monkeypatch.context() as full:
        patch_store(before, "tracks", full.setattr)
        _failed_cleanly(data, base, "tracks", store_path)
        assert store_of(data).count("track_boxes", OTHER) == 0  # inserted in the same transaction, rolled back
    assert _unchanged(data, KEY, ep1)
    _space_freed_run(data, base, ["tracks", "crops", "finetuned_checkpoint", "soft_matches", "clusters"])
