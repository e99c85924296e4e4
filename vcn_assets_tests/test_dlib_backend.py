"""The real offline default backend (MTCNN + dlib) on a generated movie with ground truth."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import dagster as dg
import numpy as np
import polars as pl
import pytest

from vcn_assets.bench.frontend_metrics import frontend_metrics, load_case, match_boxes, track_identities
from vcn_assets.core.align import align_faces
from vcn_assets.core.metrics import clustering_report
from vcn_assets.core.samples import SampleSpec, load_source_faces, make_sample_case
from vcn_assets.definitions import ALL_ASSETS
from vcn_assets.models.dlib_backend import DLIB_ALIGNMENT, DlibEmbedder
from vcn_assets.models.mtcnn import MTCNNDetector
from vcn_assets.store import tables
from vcn_assets.store.db import Store
from vcn_assets_tests.test_dagster_graph import counts, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SampleSpec(n_shots=6, identities=3, shot_seconds=(1.2, 1.6), seed=3)
    return make_sample_case(tmp_path_factory.mktemp("sample"), spec).parent


def test_dlib_alignment_template_matches_dlib_chip_geometry() -> None:
    # dlib chips (150 px, padding 0.25) put the eye centres ~ 0.36 of the width apart
    t = DLIB_ALIGNMENT.template
    assert DLIB_ALIGNMENT.size == 150
    assert (t[1, 0] - t[0, 0]) / 150 == pytest.approx(0.3528, abs=1e-3)
    assert t[0, 1] == pytest.approx(t[1, 1])


def _chips(n: int) -> np.ndarray:
    """dlib chips of the first ``n`` source faces (one person each)."""
    detector = MTCNNDetector()
    chips = []
    for f in load_source_faces()[:n]:
        patch = np.ascontiguousarray(f.patch_bgr)
        dets = detector.detect(patch)
        assert len(dets) >= 1, f.identity
        best = int(np.argmax(dets.score))
        chips.append(align_faces(patch, dets.kps[best : best + 1], DLIB_ALIGNMENT)[0])
    return np.stack(chips)


def test_torch_runtime_equals_dlib_on_faces_and_noise() -> None:
    rng = np.random.default_rng(0)
    noise = np.stack([cv2.resize(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8), (150, 150)) for _ in range(5)])
    chips = np.concatenate([_chips(6), noise])
    ref = DlibEmbedder(runtime="dlib").embed(chips)
    ours = DlibEmbedder(runtime="torch").embed(chips)
    assert ours.shape == ref.shape == (11, 128) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)  # float32 rounding (measured max 4.2e-7)
    assert np.abs(ref).max() > 0.05  # a real descriptor, not zeros


def test_dlib_runtime_unknown_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown dlib runtime 'onnx'"):
        DlibEmbedder(runtime="onnx")


def test_dlib_embedder_separates_identities() -> None:
    emb = DlibEmbedder()
    e, samples = emb.embed_with_samples(_chips(3), 2, np.random.default_rng(0))
    assert e.shape == (3, 128) and samples.shape == (3, 2, 128)
    np.testing.assert_array_equal(samples[:, 0], e)  # sample 0 is the unperturbed chip
    d = np.linalg.norm(e[:, None] - e[None], axis=2)
    assert d[np.triu_indices(3, 1)].min() > 0.6  # different people, dlib's same-person cut is 0.6
    assert np.linalg.norm(samples[:, 0] - samples[:, 1], axis=1).max() < 0.6  # mirror: same person by dlib's cut


def test_materialize_whole_graph_dlib_backend(
    instance: dg.DagsterInstance, data_dir: Path, sample_case: Path
) -> None:
    shutil.copy(sample_case / "movie.mp4", data_dir / "movies" / "sample.mp4")
    result = run(instance, data_dir, "sample", backend="dlib")
    assert result.success
    c = counts(data_dir, "sample")
    case = load_case(sample_case)
    assert c["shots"] == len(case.gt_cuts) + 1
    store = Store(data_dir / "vcn.duckdb")
    boxes = tables.boxes_from(store.read("track_boxes", "sample"))
    shots = tables.shots_from(store.read("shots", "sample"))
    m = frontend_metrics(case, shots.cuts, boxes.frame_idx, boxes.xyxy, boxes.track_id)
    assert m["shot_f1"] == 1.0
    assert m["gt_box_recall"] >= 0.9
    assert m["track_purity"] >= 0.99
    assert m["tracks_per_gt_track"] <= 1.5
    quality = store.read("track_quality", "sample")
    assert quality.height == c["tracks"] and (quality["rep_crop_id"] >= 0).all()
    crops = store.read("crops", "sample")
    assert len(crops["embedding"][0]) == 128 and crops["quality"].is_between(0, 1).all()
    # Stages 2-4 never put two people in one cluster (the sample has about 2 tracks per person: the
    # case where a fixed number of Stage 3 neighbours paired different people)
    identity = track_identities(case.gt_boxes, match_boxes(case.gt_boxes, boxes.frame_idx, boxes.xyxy, 0.5),
                                boxes.track_id)
    clusters = store.read("clusters", "sample").filter(pl.col("cluster_id") >= 0)
    scored = [(identity[t], c) for t, c in zip(clusters["track_id"], clusters["cluster_id"]) if t in identity]
    assert len(scored) >= 4
    assert clustering_report([i for i, _ in scored], [c for _, c in scored])["wcp"] == 1.0


def test_whole_graph_with_the_last_block_trained(
    instance: dg.DagsterInstance, data_dir: Path, sample_case: Path
) -> None:
    """FinetuneConfig.train_last_block through the assets: the checkpoint holds the trained block and
    the crops' views through it, Stages 3-4 run on them, and a movie replaced behind the store's back
    is refused by name (its re-read crops no longer match the stored ones)."""
    from safetensors import safe_open

    from vcn_assets.core.checkpoint import load_checkpoint
    from vcn_assets.orchestration.identity_assets import stored_checkpoint
    from vcn_assets.orchestration.resources import VcnResource
    from vcn_assets_tests.test_dagster_graph import FAST_FINETUNE, failure_message

    movie = data_dir / "movies" / "sample.mp4"
    shutil.copy(sample_case / "movie.mp4", movie)
    result = run(instance, data_dir, "sample", backend="dlib", finetune=FAST_FINETUNE | {"train_last_block": True})
    assert result.success
    mats = {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
    assert mats["finetuned_checkpoint"].metadata["backbone_last_block"].value.startswith("trained (1,213,952 weights")
    path = stored_checkpoint(VcnResource(data_dir=str(data_dir), backend="dlib"), "sample")
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
    assert {"member0.tail_views.student", "member0.tail_views.teacher", "member0.student_tail.fc",
            "member0.teacher_tail.fc"} <= names
    crops = Store(data_dir / "vcn.duckdb").read("crops", "sample")
    members = load_checkpoint(path, 128)
    assert all(ft.tail_views[0].shape[1:] == (int(crops["n_views"][0]), 128) for ft in members)
    assert counts(data_dir, "sample")["clusters"] >= 1
    # the same movie name, other content (the store was not told): the re-read is refused
    frames = cv2.VideoCapture(str(movie))
    ok, frame = frames.read()
    frames.release()
    assert ok
    writer = cv2.VideoWriter(str(movie), cv2.VideoWriter_fourcc(*"mp4v"), 25, (frame.shape[1], frame.shape[0]))
    for _ in range(200):
        writer.write(np.zeros_like(frame))
    writer.release()
    again = dg.materialize(ALL_ASSETS, selection=["finetuned_checkpoint"], partition_key="sample", instance=instance,
                           resources={"vcn": VcnResource(data_dir=str(data_dir), backend="dlib")}, raise_on_error=False,
                           run_config={"ops": {"finetuned_checkpoint": {"config": FAST_FINETUNE | {
                               "train_last_block": True, "seed": 1}}}})
    assert not again.success
    assert "sample.mp4" in failure_message(again) and "re-materialise crops" in failure_message(again)


def test_demo_sample_has_no_wrong_merge_and_no_split(tmp_path: Path) -> None:
    """The sample `vcn demo` clusters (8 people, about 2 tracks each) on the offline default: every
    person in one cluster of their own. A fixed number of Stage 3 neighbours (k=3) merged two people
    here (WCP 0.889); the paper's Stage 3 rule alone also gets this sample right."""
    from vcn_assets.bench.clustering_eval import MethodConfigs, evaluate_case
    from vcn_assets.bench.run import stage1
    from vcn_assets.core.config import ModelConfig
    from vcn_assets.core.pipeline import PipelineConfig

    case = load_case(make_sample_case(tmp_path / "demo", SampleSpec()).parent)
    result, _, _ = stage1(case, PipelineConfig(), ModelConfig(backend="dlib"), cache_dir=None)
    scores = evaluate_case(case, result, ("vcn",), MethodConfigs())
    vcn = scores["methods"]["vcn"]
    assert vcn["n_tracks_evaluated"] >= 14 and vcn["n_identities"] == 8
    assert vcn["wcp"] == 1.0 and vcn["pcr"] == 1.0
