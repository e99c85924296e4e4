"""Several movies materialising at once in separate processes share one DuckDB file safely."""

from __future__ import annotations

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from vcn_assets_tests.test_dagster_graph import TABLES

KEYS = [f"m{i}" for i in range(1, 9)]  # a backfill of 8 movies


def materialize_one(data_dir: str, key: str) -> bool:
    """Run the whole graph for one movie with its own (ephemeral) Dagster instance."""
    import dagster as dg

    from vcn_assets.definitions import ALL_ASSETS
    from vcn_assets.orchestration.automation import PIPELINE_ASSETS
    from vcn_assets.orchestration.resources import VcnResource
    from vcn_assets_tests.test_dagster_graph import FAST_FINETUNE

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("movies", [key])
        result = dg.materialize(
            ALL_ASSETS, selection=list(PIPELINE_ASSETS), partition_key=key, instance=instance,
            resources={"vcn": VcnResource(data_dir=data_dir, backend="fake")}, raise_on_error=False,
            run_config={"ops": {"finetuned_checkpoint": {"config": FAST_FINETUNE}}},
        )
        return result.success


def _counts(data_dir: Path) -> dict[str, dict[str, int]]:
    from vcn_assets.store.db import Store

    store = Store(data_dir / "vcn.duckdb")
    return {k: {t: store.count(t, k) for t in TABLES} for k in KEYS}


def _versions(data_dir: Path) -> dict[str, dict[str, str]]:
    """Each movie's stored data version per asset (a content hash of the rows)."""
    from vcn_assets.store.db import Store

    store = Store(data_dir / "vcn.duckdb")
    return {k: dict(store.read("cache_index", k).select("asset", "data_version").iter_rows()) for k in KEYS}


@pytest.mark.slow
def test_eight_concurrent_movies_match_a_sequential_run(tmp_path: Path, blob_movie: Path) -> None:
    dirs = {name: tmp_path / name for name in ("sequential", "concurrent")}
    for d in dirs.values():
        (d / "movies").mkdir(parents=True)
        for k in KEYS:
            shutil.copy(blob_movie, d / "movies" / f"{k}.mp4")
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:  # one at a time, each in its own process
        assert list(pool.map(materialize_one, [str(dirs["sequential"])] * len(KEYS), KEYS)) == [True] * len(KEYS)
    with ProcessPoolExecutor(len(KEYS), mp_context=spawn) as pool:  # all eight at once on one DuckDB file
        ok = list(pool.map(materialize_one, [str(dirs["concurrent"])] * len(KEYS), KEYS))
    assert ok == [True] * len(KEYS)
    sequential = _counts(dirs["sequential"])
    assert sequential == _counts(dirs["concurrent"])
    assert all(c["clusters"] == 4 for c in sequential.values())
    assert _versions(dirs["sequential"]) == _versions(dirs["concurrent"])  # the same rows, not just as many
