"""FinetuneConfig.train_last_block: Stage 2 also trains the backbone's last block.

Core level with a small stand-in block (a linear map over 'trunk features'), the checkpoint round
trip, and dlib's real split (trunk + trainable tail) on real face chips.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from vcn_assets.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vcn_assets.core.config import ClusterConfig, MatchConfig
from vcn_assets.core.finetune import TrainingSet, finetune
from vcn_assets.core.identity import ClusterInputs, LastBlock, cluster_movie, final_clusters
from vcn_assets_tests.test_identity_core import SMALL, _blob_views

LAST = dataclasses.replace(SMALL, train_last_block=True)
FEATURES = 24  # stand-in trunk features per view


def _trunk_and_tail(views: np.ndarray, seed: int = 0) -> tuple[np.ndarray, torch.nn.Module]:
    """Trunk features (C, V, FEATURES) and a linear 'last block' mapping them back to ``views`` exactly."""
    rng = np.random.default_rng(seed)
    c, v, d = views.shape
    mix = rng.normal(size=(d, FEATURES))  # full row rank: features -> views by its pseudo-inverse
    trunk = (views.reshape(-1, d) @ mix).reshape(c, v, FEATURES)
    tail = torch.nn.Linear(FEATURES, d, bias=False)
    with torch.no_grad():
        tail.weight.copy_(torch.from_numpy(np.linalg.pinv(mix).T.copy()))
    return trunk.astype(np.float16), tail


def _data(trunk: np.ndarray | None = None):
    views, crop_track, ident = _blob_views(3, 3, 6)
    trunk_, tail = _trunk_and_tail(views)
    data = TrainingSet.build(views, crop_track, len(ident), np.zeros((len(ident),) * 2, bool),
                             trunk_ if trunk is None else trunk)
    return data, tail


def test_the_last_block_is_trained_deterministically_and_its_views_returned() -> None:
    data, tail = _data()
    a, b = finetune(data, LAST, MatchConfig(), tail=tail), finetune(data, LAST, MatchConfig(), tail=tail)
    assert a.losses == b.losses and len(a.losses) == 60
    student_views, teacher_views = a.backbone_views(data.views)
    assert student_views.shape == teacher_views.shape == data.views.shape
    np.testing.assert_array_equal(student_views, b.backbone_views(data.views)[0])
    before = tail.weight.detach().numpy()
    trained, ema = (w["weight"].numpy() for w in a.tail_weights)
    assert not np.allclose(trained, before) and not np.allclose(trained, ema)  # trained; teacher = EMA, behind
    assert np.abs(ema - before).max() < np.abs(trained - before).max()
    np.testing.assert_array_equal(tail.weight.detach().numpy(), before)  # the caller's block is left as it was


def test_without_the_switch_the_views_are_stage_1s() -> None:
    data, tail = _data()
    ft = finetune(data, SMALL, MatchConfig(), tail=tail)  # a block given but not asked for: not trained
    assert ft.tail_views is None
    student_views, teacher_views = ft.backbone_views(data.views)
    assert student_views is data.views and teacher_views is data.views


def test_the_switch_without_features_or_block_is_an_error() -> None:
    data, tail = _data()
    with pytest.raises(ValueError, match="train_last_block needs"):
        finetune(data, LAST, MatchConfig())
    no_trunk = dataclasses.replace(data, trunk=None)
    with pytest.raises(ValueError, match="train_last_block needs"):
        finetune(no_trunk, LAST, MatchConfig(), tail=tail)
    with pytest.raises(ValueError, match="do not match the views"):
        _data(trunk=np.zeros((2, 2, FEATURES), np.float16))


def test_views_of_other_crops_are_refused() -> None:
    data, tail = _data()
    ft = finetune(data, LAST, MatchConfig(), tail=tail)
    with pytest.raises(ValueError, match="made for other crops"):
        ft.backbone_views(data.views[:-1])


def test_checkpoint_round_trip_keeps_the_block_and_its_views(tmp_path: Path) -> None:
    data, tail = _data()
    one = dataclasses.replace(LAST, members=1)
    ft = finetune(data, one, MatchConfig(), tail=tail)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, [ft], data.views.shape[2], one)
    [back] = load_checkpoint(path, data.views.shape[2])
    for mine, theirs in zip(ft.tail_views, back.tail_views):
        np.testing.assert_array_equal(mine, theirs)
    for mine, theirs in zip(ft.tail_weights, back.tail_weights):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    # a file whose config says the block was trained but which lacks its views is refused
    plain = finetune(data, SMALL, MatchConfig())
    save_checkpoint(path, [plain], data.views.shape[2], one)
    with pytest.raises(CheckpointError, match="lacks the block's views"):
        load_checkpoint(path, data.views.shape[2])


def test_stage_4_reads_the_block_trained_views() -> None:
    views, crop_track, ident = _blob_views(3, 2, 5)
    trunk, tail = _trunk_and_tail(views)
    inputs = ClusterInputs.from_stage1(np.array(["valid"] * len(ident)), crop_track, views,
                                       np.zeros((len(ident),) * 2, bool))
    out = cluster_movie(inputs, LAST, MatchConfig(), ClusterConfig(), LastBlock(trunk, tail))
    assert len(out.members) == LAST.members and all(ft.tail_views is not None for ft in out.members)
    # Stage 4 on the same result gives the same clusters; with Stage 1's views instead, the
    # metric would differ: corrupt the stored block views and the clustering follows them
    again = final_clusters(inputs, out.members, ClusterConfig())
    np.testing.assert_array_equal(again.cluster_of_track, out.cluster_of_track)
    swapped = [dataclasses.replace(ft, tail_views=tuple(v[::-1].copy() for v in ft.tail_views)) for ft in out.members]
    moved = final_clusters(inputs, swapped, ClusterConfig())
    assert moved.suggestions.score.tolist() != again.suggestions.score.tolist()


@pytest.mark.slow
def test_dlib_trunk_and_tail_give_the_descriptor_and_train() -> None:
    from vcn_assets.models.dlib_backend import DlibEmbedder
    from vcn_assets_tests.test_dlib_backend import _chips

    chips = _chips(3)
    emb = DlibEmbedder()
    trunk = emb.trunk_views(chips, 2, np.random.default_rng(0))
    assert trunk.shape == (3, 2, 256, 4, 4)
    tail = emb.tail()
    with torch.no_grad():
        again = tail(torch.from_numpy(trunk[:, 0])).numpy()
        mirrored = tail(torch.from_numpy(trunk[:, 1])).numpy()
    np.testing.assert_allclose(again, emb.embed(chips), atol=1e-5)
    np.testing.assert_allclose(mirrored, emb.embed(np.ascontiguousarray(chips[:, :, ::-1])), atol=1e-5)
    assert sum(p.numel() for p in tail.parameters() if p.requires_grad) > 1_000_000  # a real block, trainable
    with pytest.raises(ValueError, match="dlib_runtime to 'torch'"):
        DlibEmbedder(runtime="dlib").tail()


def test_a_backend_without_a_torch_block_says_so() -> None:
    from vcn_assets.core.config import ModelConfig
    from vcn_assets.models.registry import build_models

    with pytest.raises(ValueError, match="backend 'fake'.*no trainable last block"):
        build_models(ModelConfig(backend="fake")).trainable_tail()


def test_no_valid_track_and_one_track_with_the_block() -> None:
    views, _, _ = _blob_views(2, 2, 4)
    trunk, tail = _trunk_and_tail(views)
    none = ClusterInputs.from_stage1(np.array(["unknown"]), np.array([0]), views[:1], np.zeros((1, 1), bool))
    out = cluster_movie(none, LAST, MatchConfig(), ClusterConfig(), LastBlock(trunk[:0], tail))
    assert out.cluster_of_track.tolist() == [-1] and out.members[0].tail_views[0].shape == (0, 2, views.shape[2])
    one = ClusterInputs.from_stage1(np.array(["valid"]), np.zeros(3, np.int64), views[:3], np.zeros((1, 1), bool))
    out = cluster_movie(one, LAST, MatchConfig(), ClusterConfig(), LastBlock(trunk[:3], tail))
    assert out.cluster_of_track.tolist() == [0]


@pytest.mark.slow
def test_bench_trains_the_block_on_a_case(tmp_path: Path) -> None:
    """`vcn bench --train-last-block`'s path: the case's movie is re-read and `vcn` trains the block."""
    from vcn_assets.bench.clustering_eval import MethodConfigs
    from vcn_assets.bench.run import bench_case
    from vcn_assets.core.config import ModelConfig
    from vcn_assets.core.pipeline import PipelineConfig
    from vcn_assets.core.samples import SampleSpec, make_sample_case

    case = make_sample_case(tmp_path, SampleSpec(n_shots=6, identities=3, shot_seconds=(1.2, 1.6), seed=3)).parent
    fast = dataclasses.replace(LAST, hidden_dim=512, bottleneck_dim=128, out_dim=64)
    r = bench_case(case, PipelineConfig(), ModelConfig(backend="dlib"), methods=("vcn",),
                   method_cfgs=MethodConfigs(finetune=fast))
    vcn = r["methods"]["vcn"]
    assert vcn["n_tracks_evaluated"] >= 4 and vcn["wcp"] == 1.0
    with pytest.raises(ValueError, match="backend 'fake'.*no trainable last block"):
        bench_case(case, PipelineConfig(), ModelConfig(backend="fake"), methods=("vcn",),
                   method_cfgs=MethodConfigs(finetune=fast))
