"""The Dagster layer: definitions load, whole-graph materialisation, the sensor, bad input."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import av
import dagster as dg
import numpy as np
import pytest

from vcn_assets.core.config import FinetuneConfig
from vcn_assets.definitions import ALL_ASSETS
from vcn_assets.orchestration import assets
from vcn_assets.orchestration.automation import PIPELINE_ASSETS, new_movies_sensor
from vcn_assets.orchestration.partitions import movie_key
from vcn_assets.orchestration.resources import VcnResource
from vcn_assets.store.db import Store
from vcn_assets_tests.clips import blob_clip

STAGE1_TABLES = ("movies", "shots", "track_boxes", "tracks", "crops", "track_quality")
TABLES = STAGE1_TABLES + ("checkpoints", "finetune_loss", "clusters", "cluster_summary")
FAST_FINETUNE = {"rounds": 2, "steps_per_round": 20, "warmup_steps": 5, "batch_tracks": 16}


def run(instance: dg.DagsterInstance, data_dir: Path, key: str, backend: str = "fake",
        finetune: dict | None = None) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition("movies", key):
        instance.add_dynamic_partitions("movies", [key])
    return dg.materialize(
        ALL_ASSETS, selection=list(PIPELINE_ASSETS), partition_key=key, instance=instance,
        resources={"vcn": VcnResource(data_dir=str(data_dir), backend=backend)}, raise_on_error=False,
        run_config={"ops": {"finetuned_checkpoint": {"config": finetune or FAST_FINETUNE}}},
    )


def counts(data_dir: Path, key: str) -> dict[str, int]:
    store = Store(data_dir / "vcn.duckdb")
    return {t: store.count(t, key) for t in TABLES}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    data = result.get_step_failure_events()[0].step_failure_data
    return data.user_failure_data.description if data.user_failure_data else data.error.message


def test_definitions_load() -> None:
    from vcn_assets.definitions import defs

    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"movie_file", *PIPELINE_ASSETS} <= keys
    assert repo.get_job("vcn_pipeline") is not None
    assert repo.get_sensor_def("new_movies_sensor") is not None


def test_materialize_whole_graph_fake_backend(instance: dg.DagsterInstance, data_dir: Path, blob_movie: Path) -> None:
    shutil.copy(blob_movie, data_dir / "movies" / "Blob, 'one'.mp4")
    key = movie_key("Blob, 'one'.mp4")
    result = run(instance, data_dir, key)
    assert result.success
    c = counts(data_dir, key)
    # defaults: detection on frames 0, 4, 8, 12, 16, 19 of each 20-frame shot; a crop every >= 9 frames
    # among them -> frames 0 and 12 -> 2 crops for each of the 4 tracks
    assert c["shots"] == 3 and c["tracks"] == 4 and c["crops"] == 8 and c["track_quality"] == 4
    assert c["clusters"] == 4 and 1 <= c["cluster_summary"] <= 4 and c["checkpoints"] == 1
    mats = {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
    assert mats["tracks"].metadata["n_tracks"].value == 4
    assert mats["finetuned_checkpoint"].metadata["backbone_last_block"].value == "frozen"
    # every finetuned member's loss curve and soft matches are stored, told apart by `member`
    store = Store(data_dir / "vcn.duckdb")
    members = FinetuneConfig().members
    assert mats["finetuned_checkpoint"].metadata["members"].value == members
    per_member = store.read("finetune_loss", key).group_by("member").len().sort("member")
    assert per_member["member"].to_list() == list(range(members))
    assert per_member["len"].to_list() == [FAST_FINETUNE["rounds"] * FAST_FINETUNE["steps_per_round"]] * members
    rounds = store.read("soft_matches", key).select("member", "round").unique()
    assert set(rounds["member"].to_list()) <= set(range(members))
    sheet = mats["clusters"].metadata["contact_sheet"].value
    assert sheet.startswith("![clusters](data:image/jpeg;base64,") and len(sheet) < 100_000
    assert str(data_dir / "movies") in mats["shots"].metadata["path"].value
    # re-running replaces rows (idempotent) and yields the same data versions
    again = run(instance, data_dir, key)
    assert counts(data_dir, key) == c
    v1 = {k: m.tags["dagster/data_version"] for k, m in mats.items()}
    v2 = {e.asset_key.to_user_string(): e.materialization.tags["dagster/data_version"]
          for e in again.get_asset_materialization_events()}
    assert v1 == v2


def _blob_gt(path: Path, shots: list[list[int]], shot_len: int = 20) -> None:
    """Ground truth of ``blob_clip``'s squares (see vcn_assets_tests/clips.py)."""
    rows = ["frame,x1,y1,x2,y2,identity"]
    for s, faces in enumerate(shots):
        for t in range(shot_len):
            for k, c in enumerate(faces):
                x, y = 20 + 90 * k + t, 40 + t // 2
                rows.append(f"{s * shot_len + t},{x},{y},{x + 40},{y + 48},colour_{c}")
    path.write_text("\n".join(rows) + "\n")


def test_evaluation_asset_scores_against_ground_truth(instance: dg.DagsterInstance, data_dir: Path, blob_movie: Path) -> None:
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    _blob_gt(data_dir / "movies" / "ep1.gt_faces.csv", [[0, 1], [2], [0]])
    result = run(instance, data_dir, "ep1")
    assert result.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata
            for e in result.get_asset_materialization_events()}["evaluation"]
    assert meta["n_tracks_evaluated"].value == 4 and meta["n_identities"].value == 3
    assert meta["unknown_share"].value == 0.0 and meta["n_tracks_unmatched"].value == 0
    assert 0.0 < meta["wcp"].value <= 1.0 and meta["pcr"].value == meta["n_clusters"].value / 3


def test_movie_file_observation_versions_by_content(instance: dg.DagsterInstance, data_dir: Path, blob_movie: Path) -> None:
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    instance.add_dynamic_partitions("movies", ["ep1"])
    from dagster._core.definitions.observe import observe  # not re-exported by dagster 1.13

    result = observe([assets.movie_file], instance=instance, partition_key="ep1",
                        resources={"vcn": VcnResource(data_dir=str(data_dir))})
    assert result.success
    obs = result.get_asset_observation_events()[0].asset_observation_data.asset_observation
    assert obs.partition == "ep1" and len(obs.tags["dagster/data_version"]) == 64
    assert obs.metadata["n_frames"].value == 60 and obs.metadata["fps"].value == 25.0
    assert obs.metadata["size"].value == "240x160"
    assert len(result.get_asset_observation_events()) == 1
    from dagster import AssetKey

    record = instance.get_latest_data_version_record(AssetKey("movie_file"), partition_key="ep1")
    assert record is not None


def test_sensor_adds_new_movies_as_partitions(instance: dg.DagsterInstance, data_dir: Path, blob_movie: Path) -> None:
    for name in ["ep1.mp4", "Épisode 2, 'final'.mp4", "readme.txt"]:
        shutil.copy(blob_movie, data_dir / "movies" / name)
    with dg.build_sensor_context(instance=instance, resources={"vcn": VcnResource(data_dir=str(data_dir))}) as ctx:
        result = new_movies_sensor(ctx)
        keys = sorted(["ep1", movie_key("Épisode 2, 'final'.mp4")])
        assert [r.partition_key for r in result.run_requests] == keys
        assert result.dynamic_partitions_requests[0].partition_keys == keys
        instance.add_dynamic_partitions("movies", keys)
        assert new_movies_sensor(ctx).run_requests == []


def test_sensor_registers_a_thousand_movies_once() -> None:
    from vcn_assets.bench.sensor_bench import make_movies, tick

    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        vcn = VcnResource(data_dir=tmp)
        make_movies(vcn.movies_path, 1000)
        assert tick(instance, vcn)[1] == 1000
        assert len(instance.get_dynamic_partitions("movies")) == 1000
        assert tick(instance, vcn)[1] == 0


def _truncated(path: Path, src: Path) -> None:
    data = src.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.3)])


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)


BAD = {
    "empty.mp4": ("file is empty", lambda p, src: p.write_bytes(b"")),
    "truncated.mp4": ("not a readable video file", _truncated),
    "text.mp4": ("not a readable video file", lambda p, src: p.write_text("hello, I am not a movie\n" * 50)),
    "audio.mp4": ("no video stream", lambda p, src: _audio_only(p)),
    "oneframe.mp4": ("has 1 frame(s)", lambda p, src: blob_clip(p, [[0]], shot_len=1)),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_fails_clearly_and_harms_no_other_movie(
    name: str, instance: dg.DagsterInstance, data_dir: Path, blob_movie: Path
) -> None:
    shutil.copy(blob_movie, data_dir / "movies" / "good.mp4")
    assert run(instance, data_dir, "good").success
    good_counts = counts(data_dir, "good")
    problem, make = BAD[name]
    make(data_dir / "movies" / name, blob_movie)
    key = movie_key(name)
    result = run(instance, data_dir, key)
    assert not result.success
    message = failure_message(result)
    assert name in message and problem in message
    assert all(v == 0 for v in counts(data_dir, key).values())
    assert counts(data_dir, "good") == good_counts


def test_movie_without_faces_gives_empty_valid_tables(instance: dg.DagsterInstance, data_dir: Path) -> None:
    blob_clip(data_dir / "movies" / "nofaces.mp4", [[], []])
    result = run(instance, data_dir, "nofaces")
    assert result.success
    c = counts(data_dir, "nofaces")
    assert c["shots"] == 2 and c["tracks"] == c["crops"] == c["track_quality"] == 0
    assert c["clusters"] == c["cluster_summary"] == 0
