"""``vcn_pipeline_dask``: three movies whose steps run on a local Dask cluster store exactly the rows an
in-process run stores; a failing movie beside them stops at its failed step."""

from __future__ import annotations

import multiprocessing
import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from vcn_assets.core.samples import SampleSpec, make_sample_case
from vcn_assets.orchestration.automation import (
    PIPELINE_ASSETS,
    automation_job,
    vcn_pipeline,
    vcn_pipeline_dask,
)
from vcn_assets.orchestration.executors import DASK_SCHEDULER_ENV, DaskAddressMissing, scheduler_address
from vcn_assets.store.db import SCHEMA, Store
from vcn_assets_tests.test_dagster_graph import FAST_FINETUNE, run

KEYS = ("m1", "m2", "m3")
BROKEN = "broken"
# Every stored table but the append-only lineage (run ids and times differ by construction).
COMPARED = tuple(t for t in SCHEMA if t != "lineage")
# Dask's nanny caps each worker at one OpenMP / MKL / OpenBLAS thread by default; the in-process run
# uses every core. Stage 4's float scores then differ in the last bits (1.2e-7 measured on a merge
# suggestion's score), so for an exact comparison the workers get the test process's thread settings.
SAME_THREADS = {"MALLOC_TRIM_THRESHOLD_": 65536}


@contextmanager
def _default_sigterm() -> Iterator[None]:
    """SIGTERM at its default while processes are spawned. After an in-process run Dagster gives SIGTERM
    SIGINT's handler (``dagster._utils.interrupts``); in a suite started as a background job SIGINT is
    ignored, so SIGTERM becomes ignored too, every process spawned afterwards inherits that, and each
    step on a Dask worker then waits 2 x 30 s for Dagster's compute-log ``tail`` processes to end
    (measured: the test took ~14 minutes instead of ~70 s)."""
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _sample_movies(root: Path) -> dict[str, Path]:
    """Three different small generated movies (seeds 1-3): 3 shots of 0.4-0.6 s at 320x240."""
    movies = {}
    for seed, key in enumerate(KEYS, start=1):
        spec = SampleSpec(n_shots=3, shot_seconds=(0.4, 0.6), identities=2, width=320, height=240,
                          face_height_px=(60, 80), seed=seed)
        movies[key] = make_sample_case(root / key, spec)
    return movies


def _data_dir(root: Path, movies: dict[str, Path]) -> Path:
    (root / "movies").mkdir(parents=True)
    for key, movie in movies.items():
        shutil.copy(movie, root / "movies" / f"{key}.mp4")
    (root / "movies" / f"{BROKEN}.mp4").touch()  # an empty file: its run fails in `shots`
    return root


def _stored(data_dir: Path, key: str) -> dict[str, pl.DataFrame]:
    """The movie's rows of every compared table; file paths relative to the data dir."""
    store = Store(data_dir / "vcn.duckdb")
    relative = pl.col("path").str.strip_prefix(f"{data_dir}/")
    return {t: (df.with_columns(relative) if "path" in df.columns else df)
            for t, df in ((t, store.read(t, key)) for t in COMPARED)}


def _dask_run_config(data_dir: Path, address: str) -> dict:
    return {
        "resources": {"vcn": {"config": {"data_dir": str(data_dir), "backend": "fake"}}},
        "ops": {"finetuned_checkpoint": {"config": FAST_FINETUNE}},
        "execution": {"config": {"address": address}},
    }


def execute_on_dask(instance_ref, data_dir: str, address: str, key: str) -> dict:
    """In its own process (as a run worker would be): one run of ``vcn_pipeline_dask`` for ``key``;
    whether it succeeded, the steps started and the processes they ran in, and any failure's message."""
    import dagster as dg

    from vcn_assets.definitions import dask_pipeline_job

    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        result = dg.execute_job(dg.reconstructable(dask_pipeline_job), instance, tags={"dagster/partition": key},
                                run_config=_dask_run_config(Path(data_dir), address))
        started = [e for e in result.all_events if e.event_type_value == "STEP_START"]
        failures = [e.step_failure_data for e in result.get_step_failure_events()]
        return {"success": result.success, "steps": {e.step_key for e in started}, "pids": {e.pid for e in started},
                "failure": failures[0].user_failure_data.description if failures else None}


def _worker_pids(client) -> set[int]:
    """The Dask workers' process ids; they must import this checkout's code, not another install, and
    compute with as many threads as this process."""
    import os

    import torch

    import vcn_assets

    assert set(client.run(lambda: __import__("vcn_assets").__file__).values()) == {vcn_assets.__file__}
    assert set(client.run(torch.get_num_threads).values()) == {torch.get_num_threads()}
    return set(client.run(os.getpid).values())


@pytest.mark.slow
def test_three_movies_on_dask_match_an_in_process_run(tmp_path: Path) -> None:
    import dask
    from dask.distributed import Client, LocalCluster

    movies = _sample_movies(tmp_path / "cases")
    local, remote = _data_dir(tmp_path / "in_process", movies), _data_dir(tmp_path / "dask", movies)
    with dg.instance_for_test() as instance:
        assert all(run(instance, local, key).success for key in KEYS)
    spawn = multiprocessing.get_context("spawn")
    with (_default_sigterm(),
          dask.config.set({"distributed.nanny.pre-spawn-environ": SAME_THREADS}),
          LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None, worker_dashboard_address=None) as cluster,
          Client(cluster) as client,
          dg.instance_for_test() as instance,  # persistent: run processes and workers open it by reference
          ProcessPoolExecutor(len(KEYS) + 1, mp_context=spawn) as runs):  # four runs at once share the workers
        workers = _worker_pids(client)
        keys = [*KEYS, BROKEN]
        instance.add_dynamic_partitions("movies", keys)
        n = len(keys)
        outcomes = dict(zip(keys, runs.map(execute_on_dask, [instance.get_ref()] * n, [str(remote)] * n,
                                           [cluster.scheduler_address] * n, keys)))
    assert [outcomes[k]["success"] for k in KEYS] == [True] * len(KEYS)
    assert all(outcomes[k]["steps"] == set(PIPELINE_ASSETS) for k in KEYS)
    assert set().union(*(o["pids"] for o in outcomes.values())) <= workers  # every step ran in a Dask worker
    # a failed step stops its run there, with its one-line message; nothing downstream runs
    assert not outcomes[BROKEN]["success"] and outcomes[BROKEN]["steps"] == {"shots"}
    assert outcomes[BROKEN]["failure"].endswith("file is empty (0 bytes)")
    for key in KEYS:
        expected, got = _stored(local, key), _stored(remote, key)
        assert expected["clusters"].height > 0 and expected["crops"].height > 0
        for table in COMPARED:
            assert got[table].equals(expected[table]), (key, table)
    versions = {tuple(_stored(local, key)["cache_index"]["data_version"]) for key in KEYS}
    assert len(versions) == len(KEYS)  # three different movies, not one computed three times


def test_scheduler_address_from_config_else_env_else_a_clear_error() -> None:
    assert scheduler_address("tcp://a:1", {DASK_SCHEDULER_ENV: "tcp://b:2"}) == "tcp://a:1"
    assert scheduler_address(None, {DASK_SCHEDULER_ENV: "tcp://b:2"}) == "tcp://b:2"
    with pytest.raises(DaskAddressMissing, match=DASK_SCHEDULER_ENV):
        scheduler_address(None, {})


def test_automation_targets_the_dask_job_only_when_a_scheduler_is_set() -> None:
    assert automation_job({}) is vcn_pipeline
    assert automation_job({DASK_SCHEDULER_ENV: "tcp://b:2"}) is vcn_pipeline_dask


def test_dask_job_without_an_address_fails_with_the_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vcn_assets.definitions import dask_pipeline_job

    monkeypatch.delenv(DASK_SCHEDULER_ENV, raising=False)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions("movies", ["m1"])
        with pytest.raises(DaskAddressMissing, match=DASK_SCHEDULER_ENV):
            dg.execute_job(dg.reconstructable(dask_pipeline_job), instance, tags={"dagster/partition": "m1"})
