"""A damaged DuckDB store gives one clear line; `vcn doctor` finds each problem and repairs the safe ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vcn_assets import cli
from vcn_assets.core.checkpoint import checkpoint_digest
from vcn_assets.store.db import Store, StoreDamaged
from vcn_assets.store.doctor import diagnose, doctor
from vcn_assets_tests.faults import (
    KEY,
    Baseline,
    baseline,
    cache_states,
    failure,
    materialize,
    restore,
    store_of,
    versions,
)

HINT = "vcn doctor --repair"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    return baseline(tmp_path_factory)


@pytest.fixture()
def data(base: Baseline, tmp_path: Path) -> Path:
    """A copy of the baseline's healthy data dir."""
    return restore(base, tmp_path / "data")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAGSTER_HOME with the project's kind of SQLite storage."""
    root = tmp_path_factory.mktemp("dagster_home")
    (root / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {root / 'storage'}\ntelemetry:\n  enabled: false\n")
    return root


def _damage(store: Path, how: str) -> None:
    if how == "garbage":
        store.write_bytes(os.urandom(300_000))
    elif how == "truncated":  # the headers survive, every data block is gone
        os.truncate(store, 64 * 1024)
    elif how == "half":  # some tables still read, the rest fail
        os.truncate(store, store.stat().st_size // 2)
    else:  # a data block overwritten: the file opens, reading the block fails its checksum
        with open(store, "r+b") as f:
            f.seek(3 * 4096 + 64)  # past the three header blocks, inside the first data block
            f.write(os.urandom(4000))


def _problems(data: Path, home: Path) -> list[str]:
    return [f.line() for f in diagnose(data, home)]


# ----------------------------------------------------------------------------- a damaged store


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_damaged_store_is_one_line_from_materialise_and_lineage(how: str, data: Path, base: Baseline,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = data / "vcn.duckdb"
    _damage(path, how)
    result = materialize(data, base.movies, KEY)
    assert not result.success
    step, message = failure(result)
    assert step == "shots" and "\n" not in message
    assert str(path) in message and "damaged" in message and HINT in message

    monkeypatch.setenv("VCN_DATA_DIR", str(data))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["lineage", KEY])
    text = str(exit_.value.code)
    assert text.startswith("vcn lineage: ") and "\n" not in text
    assert str(path) in text and HINT in text


def test_half_truncated_store_fails_at_the_first_missing_block(data: Path, base: Baseline) -> None:
    _damage(data / "vcn.duckdb", "half")
    result = materialize(data, base.movies, KEY)
    assert not result.success
    _, message = failure(result)  # at some stage: earlier ones read intact blocks (cache hits)
    assert "\n" not in message and str(data / "vcn.duckdb") in message and HINT in message


def test_damaged_block_is_found_by_reading(data: Path) -> None:
    _damage(data / "vcn.duckdb", "block")
    with pytest.raises(StoreDamaged, match="Corrupt database file"):
        for table in ("crops", "track_boxes", "lineage", "shots"):
            Store(data / "vcn.duckdb").read(table, KEY)


# ----------------------------------------------------------------------------- vcn doctor


def test_doctor_healthy_exit_0(data: Path, home: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    assert doctor(data, home) == ([f"healthy: {data / 'vcn.duckdb'}, {data / 'checkpoints'}, Dagster instance {home}"],
                                  True)
    monkeypatch.setenv("VCN_DATA_DIR", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["doctor"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("healthy: ")


@pytest.mark.parametrize("how", ["garbage", "half", "block"])
def test_doctor_moves_a_damaged_store_aside(how: str, data: Path, base: Baseline, home: Path) -> None:
    path = data / "vcn.duckdb"
    (data / "vcn.duckdb.wal").write_bytes(b"")  # a WAL goes aside with its store
    _damage(path, how)
    assert doctor(data, home)[1] is False
    [problem] = _problems(data, home)
    assert problem.startswith(f"damaged store: {path}: ") and HINT in problem
    lines, healthy = doctor(data, home, repair=True)
    assert healthy and lines[0].startswith(f"repaired: moved {path} aside to {path}.corrupt-")
    [aside] = sorted(p.name for p in data.glob("vcn.duckdb.corrupt-*") if not p.name.endswith(".wal"))
    assert (data / f"{aside}.wal").exists() and not path.exists()
    result = materialize(data, base.movies, KEY, select=["shots"])  # the next run rebuilds the store
    assert result.success and cache_states(result) == {"shots": "miss"}


def test_doctor_reports_and_adds_missing_schema(data: Path, home: Path) -> None:
    with store_of(data).connect() as con:
        con.execute("DROP TABLE merge_suggestions")
        con.execute("ALTER TABLE clusters DROP COLUMN name")
    [problem] = _problems(data, home)
    assert "schema lacks clusters.name VARCHAR, merge_suggestions" in problem and "--repair" in problem
    lines, healthy = doctor(data, home, repair=True)
    assert healthy and lines[:2] == [  # the added table is empty: the next check drops its cache entry
        f"repaired: {data / 'vcn.duckdb'}: added clusters.name VARCHAR, merge_suggestions",
        f"repaired: movie '{KEY}': dropped the cache entry of `clusters`; its next run recomputes it"]


def test_doctor_drops_a_cache_entry_whose_rows_are_missing(data: Path, base: Baseline, home: Path) -> None:
    store = store_of(data)
    with store.connect() as con:
        con.execute("DELETE FROM track_boxes WHERE movie_key = ?", [KEY])
    [problem] = _problems(data, home)
    assert problem.startswith(f"movie '{KEY}': `tracks` is cached but track_boxes holds 0 rows, "
                              f"{base.counts['track_boxes']} written; fix: ")
    lines, healthy = doctor(data, home, repair=True)
    assert healthy and lines[0] == f"repaired: movie '{KEY}': dropped the cache entry of `tracks`; its next run recomputes it"
    assert store.cache_entry(KEY, "tracks") is None and store.cache_entry(KEY, "crops") == base.cache["crops"]
    result = materialize(data, base.movies, KEY, select=["tracks"])
    assert result.success and cache_states(result) == {"tracks": "miss"}
    assert versions(result) == {"tracks": base.versions["tracks"]} and store.count("track_boxes", KEY) > 0


def _other_weights(path: Path) -> None:
    """Valid safetensors with the same metadata and one weight changed (still loads, other hash)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    name = min(tensors)
    tensors[name] = tensors[name] + torch.ones_like(tensors[name])
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("how", ["missing", "other_weights", "garbage"])
def test_doctor_drops_the_entry_of_a_bad_checkpoint(how: str, data: Path, base: Baseline, home: Path) -> None:
    store = store_of(data)
    path = Path(store.read("checkpoints", KEY)["path"][0])
    assert path.parent == data.resolve() / "checkpoints" and checkpoint_digest(path)
    if how == "missing":
        path.unlink()
    elif how == "other_weights":
        _other_weights(path)
    else:
        path.write_bytes(b"not a checkpoint")
    [problem] = _problems(data, home)
    expected = {"missing": f"checkpoint missing: {path}", "other_weights": f"{path}: holds other weights than recorded",
                "garbage": f"checkpoint unreadable: {path}: not a readable safetensors checkpoint"}[how]
    assert problem.startswith(f"movie '{KEY}': {expected}") and "`finetuned_checkpoint` cache entry" in problem
    lines, healthy = doctor(data, home, repair=True)
    assert healthy and "dropped the cache entry of `finetuned_checkpoint`" in lines[0]
    assert store.cache_entry(KEY, "finetuned_checkpoint") is None


def test_doctor_deletes_pending_checkpoints(data: Path, home: Path) -> None:
    folder = data / "checkpoints"
    for name in (f"{KEY}.pending.safetensors", f"{KEY}.pending.safetensors.tmp"):
        (folder / name).write_bytes(b"half")
    problems = _problems(data, home)
    assert problems == [f"{folder / n}: a checkpoint left half-written by an interrupted run; fix: `vcn doctor "
                        "--repair` deletes it (the movie's next run does too)"
                        for n in (f"{KEY}.pending.safetensors", f"{KEY}.pending.safetensors.tmp")]
    lines, healthy = doctor(data, home, repair=True)
    assert healthy and lines[:2] == [f"repaired: deleted {folder / KEY}.pending.safetensors",
                                     f"repaired: deleted {folder / KEY}.pending.safetensors.tmp"]
    assert not list(folder.glob("*.pending*"))


def test_doctor_reports_an_unreadable_dagster_instance(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "home"
    (broken / "storage" / "history").mkdir(parents=True)
    (broken / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {broken / 'storage'}\n")
    (broken / "storage" / "history" / "runs.db").write_bytes(os.urandom(5000))
    [problem] = _problems(data, broken)
    assert problem.startswith(f"Dagster instance at {broken} cannot be read (") and "file is not a database" in problem
    assert f"fix: check {broken / 'dagster.yaml'}" in problem
    assert [f.line() for f in diagnose(data, None)] == [(
        "DAGSTER_HOME is not set and ./dagster.yaml is absent; fix: set DAGSTER_HOME to the project root "
        "(the folder holding dagster.yaml)")]

    monkeypatch.setenv("VCN_DATA_DIR", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(broken))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["doctor", "--repair"])  # nothing safe to repair: still exit 1
    assert exit_.value.code == 1
    assert capsys.readouterr().out.splitlines() == [problem]
