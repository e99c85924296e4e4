"""Fingerprint caching and lineage: unchanged re-runs are hits, a config change recomputes only its stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from vcn_assets.definitions import ALL_ASSETS
from vcn_assets.orchestration.automation import PIPELINE_ASSETS
from vcn_assets.orchestration.resources import VcnResource
from vcn_assets.store.db import Store
from vcn_assets_tests.test_dagster_graph import FAST_FINETUNE

CACHED = [a for a in PIPELINE_ASSETS if a != "evaluation"]


def _run(instance: dg.DagsterInstance, data_dir: Path, ops: dict | None = None, force: bool = False) -> dict:
    if not instance.has_dynamic_partition("movies", "ep1"):
        instance.add_dynamic_partitions("movies", ["ep1"])
    run_config = {"ops": {"finetuned_checkpoint": {"config": FAST_FINETUNE}, **(ops or {})}}
    result = dg.materialize(
        ALL_ASSETS, selection=list(PIPELINE_ASSETS), partition_key="ep1", instance=instance, run_config=run_config,
        resources={"vcn": VcnResource(data_dir=str(data_dir), backend="fake", force=force)},
    )
    return {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}


def _cache(mats: dict) -> dict[str, str]:
    return {k: m.metadata["cache"].text for k, m in mats.items() if k in CACHED}


def _versions(mats: dict) -> dict[str, str]:
    return {k: m.tags["dagster/data_version"] for k, m in mats.items()}


def test_unchanged_rerun_is_all_hits_with_same_versions(instance: dg.DagsterInstance, data_dir: Path,
                                                        blob_movie: Path) -> None:
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    first = _run(instance, data_dir)
    assert set(_cache(first).values()) == {"miss"}
    second = _run(instance, data_dir)
    assert set(_cache(second).values()) == {"hit"}
    assert _versions(second) == _versions(first)
    forced = _run(instance, data_dir, force=True)
    assert set(_cache(forced).values()) == {"miss"}
    assert _versions(forced) == _versions(first)  # deterministic recomputation


def test_clusters_config_change_recomputes_clusters_alone(instance: dg.DagsterInstance, data_dir: Path,
                                                          blob_movie: Path) -> None:
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    _run(instance, data_dir)
    mats = _run(instance, data_dir, ops={"clusters": {"config": {"respect_cooccurrence": False}}})
    assert _cache(mats) == {a: "hit" for a in CACHED if a != "clusters"} | {"clusters": "miss"}


def test_identical_upstream_output_stops_the_cascade(instance: dg.DagsterInstance, data_dir: Path,
                                                     blob_movie: Path) -> None:
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    _run(instance, data_dir)
    # a different cut threshold that finds the same cuts: shots recomputes, nothing downstream does
    mats = _run(instance, data_dir, ops={"shots": {"config": {"threshold": 2.5}}})
    assert _cache(mats)["shots"] == "miss"
    assert {k: v for k, v in _cache(mats).items() if k != "shots"} == {a: "hit" for a in CACHED if a != "shots"}


def test_lineage_records_every_materialisation(instance: dg.DagsterInstance, data_dir: Path, blob_movie: Path) -> None:
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    _run(instance, data_dir)
    _run(instance, data_dir, ops={"clusters": {"config": {"max_iterations": 3}}})
    lineage = Store(data_dir / "vcn.duckdb").read("lineage", "ep1")
    assert lineage.height == 2 * len(CACHED)
    clusters = lineage.filter(lineage["asset"] == "clusters").sort("started_at")
    assert clusters["cache"].to_list() == ["miss", "miss"]
    assert clusters["fingerprint"][0] != clusters["fingerprint"][1]
    assert '"max_iterations": 3' in clusters["config"][1]
    assert set(lineage["status"].to_list()) == {"success"}


def test_lineage_report_chain_and_changes(instance: dg.DagsterInstance, data_dir: Path, blob_movie: Path) -> None:
    from vcn_assets.store.lineage import lineage_report

    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    _run(instance, data_dir)
    _run(instance, data_dir)
    _run(instance, data_dir, ops={"clusters": {"config": {"max_iterations": 3}}})
    report = lineage_report(Store(data_dir / "vcn.duckdb"), "ep1", "clusters")
    assert report["movie"] == "ep1" and report["asset"] == "clusters"
    assert next(e["asset"] for e in report["chain"]) == "clusters"
    assert {e["asset"] for e in report["chain"]} == {*CACHED, "movie_file", "corrections"}
    assert report["chain"][-1]["source"] is True
    assert [e["cache"] for e in report["history"]] == ["miss", "hit", "miss"]
    assert [e["changed"] for e in report["history"]] == [["config"], [], ["first"]]


def test_schedule_requests_missing_and_unsynced_movies(instance: dg.DagsterInstance, data_dir: Path,
                                                      blob_movie: Path) -> None:
    from vcn_assets.core.corrections import Corrections, TrackRef
    from vcn_assets.orchestration.automation import refresh_schedule
    from vcn_assets_tests.clips import blob_clip

    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    shutil.copy(blob_movie, data_dir / "movies" / "ep2.mp4")
    instance.add_dynamic_partitions("movies", ["ep1", "ep2"])
    _run(instance, data_dir)  # ep1 up to date, ep2 never materialised
    from datetime import datetime

    # `with`: the context enters a DagsterInstance of its own; left to the garbage collector, its exit
    # would reset Dagster's current defs-state storage in the middle of a later test
    with dg.build_schedule_context(instance=instance, resources={"vcn": VcnResource(data_dir=str(data_dir))},
                                   scheduled_execution_time=datetime(2026, 11, 28, 3, 0)) as ctx:
        assert [r.partition_key for r in refresh_schedule(ctx)] == ["ep2"]
        Corrections().add_not_face(TrackRef(1)).save(data_dir / "corrections" / "ep1.json")  # a reviewer's edit
        assert [r.partition_key for r in refresh_schedule(ctx)] == ["ep1", "ep2"]
        (data_dir / "corrections" / "ep1.json").unlink()
        assert [r.partition_key for r in refresh_schedule(ctx)] == ["ep2"]
        blob_clip(data_dir / "movies" / "ep1.mp4", [[1], [0]])  # the movie file changes
        assert [r.partition_key for r in refresh_schedule(ctx)] == ["ep1", "ep2"]


def test_lineage_bench_store_answers() -> None:
    from vcn_assets.bench.lineage_bench import run_lineage_bench

    r = run_lineage_bench(movies=3, reruns=2, repeat=1)
    assert r["lineage_rows"] == 36 and r["chain_len"] == 7 and r["history_len"] == 2


def test_vcn_lineage_cli_json(instance: dg.DagsterInstance, data_dir: Path, blob_movie: Path, monkeypatch,
                              capsys) -> None:
    import json

    from vcn_assets.cli import main

    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    _run(instance, data_dir)
    monkeypatch.setenv("VCN_DATA_DIR", str(data_dir))
    main(["lineage", "ep1", "--asset", "crops", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"movie", "asset", "chain", "history"}
    assert report["asset"] == "crops" and [e["asset"] for e in report["chain"]] == ["crops", "tracks", "shots", "movie_file"]
    assert report["history"][0]["changed"] == ["first"]


def test_dagster_marks_shots_unsynced_when_the_movie_changes(instance: dg.DagsterInstance, data_dir: Path) -> None:
    # Dagster's own staleness (what the UI shows as "Unsynced"), read through its resolver.
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.definitions.observe import observe
    from dagster._core.loader import LoadingContextForTest

    from vcn_assets.definitions import defs
    from vcn_assets_tests.clips import blob_clip

    blob_clip(data_dir / "movies" / "ep1.mp4", [[0, 1], [2]])
    resources = {"vcn": VcnResource(data_dir=str(data_dir), backend="fake")}
    instance.add_dynamic_partitions("movies", ["ep1"])
    observe([ALL_ASSETS[0]], instance=instance, partition_key="ep1", resources=resources)
    _run(instance, data_dir)
    graph = defs.get_repository_def().asset_graph

    def status() -> dict[str, str]:
        resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
        return {k: resolver.get_status(dg.AssetKey(k), "ep1").value for k in ("shots", "clusters")}

    assert status() == {"shots": "FRESH", "clusters": "FRESH"}
    blob_clip(data_dir / "movies" / "ep1.mp4", [[1, 0], [2]])
    observe([ALL_ASSETS[0]], instance=instance, partition_key="ep1", resources=resources)
    assert status()["shots"] == "STALE"
