"""The Dagster layer's pictures, the crops check and progress reports, on a whole-graph run."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import cv2
import dagster as dg
import numpy as np
from dagster._serdes import serialize_value

from vcn_assets.orchestration.progress import ProgressEvent, listening
from vcn_assets_tests.test_dagster_graph import run

METADATA_LIMIT = 1_000_000  # bytes of one serialised materialisation


def _materializations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetMaterialization]:
    return {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}


def _png(markdown: str, alt: str) -> np.ndarray:
    prefix = f"![{alt}](data:image/png;base64,"
    assert markdown.startswith(prefix)
    data = base64.b64decode(markdown[len(prefix) : markdown.index(")", len(prefix))])
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[:2] == (208, 360)
    return img


def _assert_pictures_and_check(result: dg.ExecuteInProcessResult, cache: str) -> None:
    assert result.success
    mats = _materializations(result)
    for name, mat in mats.items():
        assert len(serialize_value(mat).encode()) < METADATA_LIMIT, name
    assert mats["crops"].metadata["cache"].text == cache
    _png(mats["tracks"].metadata["timeline"].value, "face tracks over time")
    quality = mats["crops"].metadata["quality_histogram"].value
    _png(quality, "track quality")
    assert "no outlier cut (fewer than" in quality  # the blob clip has 4 tracks
    _png(mats["finetuned_checkpoint"].metadata["loss_curve"].value, "finetuning loss")
    _png(mats["clusters"].metadata["embedding_plot"].value, "tracks by cluster")
    _png(mats["clusters"].metadata["cast_timeline"].value, "who is on screen when")
    assert "may be the same person as" in mats["clusters"].metadata["merge_suggestions"].value
    checks = {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}
    assert {k: c.passed for k, c in checks.items()} == {
        ("crops", "embeddings_finite"): True, ("clusters", "every_valid_track_in_one_cluster"): True,
        ("clusters", "no_empty_cluster"): True, ("clusters", "corrections_honoured"): True,
        ("evaluation", "ground_truth_scores"): True}
    assert checks[("crops", "embeddings_finite")].metadata["n_crops"].value == 8


def test_stage1_pictures_check_and_progress(instance: dg.DagsterInstance, data_dir: Path, blob_movie: Path) -> None:
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    events: list[ProgressEvent] = []
    with listening(events.append):
        result = run(instance, data_dir, "ep1")
    _assert_pictures_and_check(result, "miss")
    for step, unit in (("shots", "frames"), ("tracks", "frames"), ("crops", "crops")):
        mine = [e for e in events if e.step == step]
        assert mine and all(e.unit == unit for e in mine)
        assert mine[-1].done == mine[-1].total > 0
    assert [e.done for e in events if e.step == "shots"] == list(range(1, 61))
    messages = [r.user_message for r in instance.all_logs(result.run_id)]
    for line in ("shots: 60/60 frames (100%)", "tracks: 18/18 frames (100%)", "crops: 8/8 crops (100%)"):
        assert any(m.startswith(line) for m in messages), line
    # cache hits carry the pictures and the check too (they are made from the stored rows)
    events.clear()
    with listening(events.append):
        again = run(instance, data_dir, "ep1")
    _assert_pictures_and_check(again, "hit")
    assert events == []  # nothing was recomputed


def test_checks_and_pictures_on_a_movie_without_faces(instance: dg.DagsterInstance, data_dir: Path) -> None:
    from vcn_assets_tests.clips import blob_clip

    blob_clip(data_dir / "movies" / "nofaces.mp4", [[], []])
    result = run(instance, data_dir, "nofaces")
    assert result.success
    mats = _materializations(result)
    _png(mats["tracks"].metadata["timeline"].value, "face tracks over time")
    _png(mats["crops"].metadata["quality_histogram"].value, "track quality")
    assert [c.passed for c in result.get_asset_check_evaluations()] == [True] * 5
    _png(mats["clusters"].metadata["cast_timeline"].value, "who is on screen when")  # "no data"
    _png(mats["clusters"].metadata["embedding_plot"].value, "tracks by cluster")
