"""Several finetuned students (``FinetuneConfig.members``): training, Stage 4's consensus, the checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vcn_assets.core.checkpoint import SINGLE, CheckpointError, load_checkpoint, save_checkpoint
from vcn_assets.core.clustering import MetricTerms, consensus, mean_metric, pair_losses
from vcn_assets.core.config import ClusterConfig, MatchConfig
from vcn_assets.core.finetune import TrainingSet, finetune, finetune_members
from vcn_assets.core.identity import ClusterInputs, cluster_movie, final_clusters
from vcn_assets_tests.test_identity_core import SMALL, _blob_views

THREE = dataclasses.replace(SMALL, members=3)


def _data() -> TrainingSet:
    views, crop_track, ident = _blob_views(3, 3, 6)
    return TrainingSet.build(views, crop_track, len(ident), np.zeros((len(ident),) * 2, bool))


def _same_weights(a, b) -> bool:
    return all(torch.equal(va, vb) for va, vb in zip(a.student.state_dict().values(), b.student.state_dict().values(),
                                                     strict=True))


def test_members_are_runs_at_consecutive_seeds_and_progress_counts_them_all() -> None:
    data = _data()
    seen: list[tuple[int, int]] = []
    members = finetune_members(data, THREE, MatchConfig(), progress=lambda d, t: seen.append((d, t)))
    assert len(members) == 3
    assert _same_weights(members[0], finetune(data, SMALL, MatchConfig()))  # member 0 = the config's seed
    assert _same_weights(members[2], finetune(data, dataclasses.replace(SMALL, seed=2), MatchConfig()))
    assert not _same_weights(members[0], members[1])
    total = 3 * SMALL.rounds * SMALL.steps_per_round
    done = [d for d, _ in seen]
    assert {t for _, t in seen} == {total} and done == sorted(set(done)) and done[-1] == total
    with pytest.raises(ValueError, match="members must be at least 1"):
        finetune_members(data, dataclasses.replace(SMALL, members=0), MatchConfig())


def test_consensus_keeps_majorities_and_never_joins_a_blocked_pair() -> None:
    a, b = np.array([0, 0, 1, 1, 2]), np.array([0, 0, 0, 1, 2])
    np.testing.assert_array_equal(consensus([a], None, ClusterConfig()), a)  # one clustering as it is
    # tracks 0-1 together in 3 of 3, 2 with them in 1 of 3, 3 alone: majority = {0, 1}, {2}, {3}, {4}
    c = np.array([0, 0, 1, 2, 3])
    assert consensus([a, b, c], None, ClusterConfig()).tolist() == [0, 0, 1, 2, 3]
    # a chain of majorities A-B, B-C, C-D with A and D sharing a frame: joined strongest (then first)
    # first, the merge that would put A with D skipped
    m1, m2, m3 = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), np.array([0, 1, 1, 1])
    cannot = np.zeros((4, 4), bool)
    cannot[0, 3] = cannot[3, 0] = True
    out = consensus([m1, m2, m3], cannot, ClusterConfig())
    assert out[0] == out[1] == out[2] != out[3]
    # without the frame rule the chain is one cluster
    assert len(set(consensus([m1, m2, m3], None, ClusterConfig()).tolist())) == 1


def test_mean_metric_is_the_members_mean_loss() -> None:
    rng = np.random.default_rng(0)
    terms = [MetricTerms(rng.dirichlet(np.ones(5), 4), np.log(rng.dirichlet(np.ones(5), 4))) for _ in range(3)]
    mean = mean_metric(terms)
    np.testing.assert_allclose(pair_losses(mean, mean), np.mean([pair_losses(t, t) for t in terms], 0), atol=1e-12)


def test_stage_4_is_the_members_consensus() -> None:
    views, crop_track, ident = _blob_views(3, 2, 5)
    inputs = ClusterInputs.from_stage1(np.array(["valid"] * len(ident)), crop_track, views,
                                       np.zeros((len(ident),) * 2, bool))
    out = cluster_movie(inputs, THREE, MatchConfig(), ClusterConfig())
    assert len(out.members) == 3
    alone = [final_clusters(inputs, [m], ClusterConfig()).cluster_of_track for m in out.members]
    np.testing.assert_array_equal(out.cluster_of_track, consensus(alone, None, ClusterConfig()))
    # three copies of one member agree with it exactly
    copies = final_clusters(inputs, [out.members[1]] * 3, ClusterConfig()).cluster_of_track
    np.testing.assert_array_equal(copies, alone[1])


def test_checkpoint_holds_every_member(tmp_path: Path) -> None:
    data = _data()
    members = finetune_members(data, THREE, MatchConfig())
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, members, data.views.shape[2], THREE)
    back = load_checkpoint(path, data.views.shape[2])
    assert len(back) == 3 and all(_same_weights(m, b) for m, b in zip(members, back, strict=True))
    assert [b.losses for b in back] == [[round(x, 5) for x in m.losses] for m in members]
    assert [len(b.round_matches) for b in back] == [SMALL.rounds] * 3
    with pytest.raises(ValueError, match="2 finetuned members given, the config asks for 3"):
        save_checkpoint(path, members[:2], data.views.shape[2], THREE)


def test_a_checkpoint_whose_members_disagree_with_its_config_is_refused(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    data = _data()
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, finetune_members(data, THREE, MatchConfig()), data.views.shape[2], THREE)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file({k: v for k, v in tensors.items() if not k.startswith("member2.")}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=f"{path}: its config asks for 3 finetuned members, the file holds 2"):
        load_checkpoint(path, data.views.shape[2])


def test_a_checkpoint_of_the_one_student_format_reads_as_one_member(tmp_path: Path) -> None:
    """Files written before members existed (format vcn-adapt-1: no prefix, no ``members`` in the config)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    data = _data()
    one = dataclasses.replace(SMALL, members=1)
    ft = finetune(data, one, MatchConfig())
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, [ft], data.views.shape[2], one)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k.removeprefix("member0."): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config = json.loads(meta["config"])
    del config["members"]
    old = {**meta, "format": SINGLE, "config": json.dumps(config), "rounds": json.dumps(json.loads(meta["rounds"])[0]),
           "losses": json.dumps(json.loads(meta["losses"])[0])}
    save_file(tensors, str(path), metadata=old)
    [back] = load_checkpoint(path, data.views.shape[2])
    assert _same_weights(back, ft) and len(back.round_matches) == SMALL.rounds
