"""Stages 2-4 core units: learnt metric algebra, Stage 4 merging, soft matching, finetuning."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from vcn_assets.core.clustering import MetricTerms, cluster_thresholds, cluster_tracks, pair_losses
from vcn_assets.core.config import ClusterConfig, FinetuneConfig, MatchConfig
from vcn_assets.core.finetune import TrainingSet, finetune
from vcn_assets.core.identity import ClusterInputs, cluster_movie, cooccurrence
from vcn_assets.core.soft_match import soft_match


def _terms(p: np.ndarray) -> MetricTerms:
    p = np.asarray(p, np.float64)
    return MetricTerms(p, np.log(np.clip(p, 1e-9, None)))


def test_pair_loss_mean_equals_loss_of_means() -> None:
    rng = np.random.default_rng(0)
    a, b = _terms(rng.dirichlet(np.ones(5), 4)), _terms(rng.dirichlet(np.ones(5), 3))
    mean_a = MetricTerms(a.p.mean(0, keepdims=True), a.logs.mean(0, keepdims=True))
    mean_b = MetricTerms(b.p.mean(0, keepdims=True), b.logs.mean(0, keepdims=True))
    assert pair_losses(a, b).mean() == pytest.approx(pair_losses(mean_a, mean_b)[0, 0])
    np.testing.assert_allclose(pair_losses(a, b), pair_losses(b, a).T)


def test_cluster_thresholds_exact() -> None:
    crops = _terms([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    thr = cluster_thresholds(crops, np.array([0, 0, 1]), 2)
    full = pair_losses(crops, crops)
    assert thr[0] == pytest.approx(full[0, 1])  # the one pair of distinct crops in cluster 0
    assert thr[1] == pytest.approx(full[2, 2])  # one crop: its loss with itself


def _blob_terms(n_id: int, tracks_per_id: int, crops_per_track: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    k = 8
    crop_p, crop_track, ident = [], [], []
    for i in range(n_id):
        for _ in range(tracks_per_id):
            t = len(ident)
            ident.append(i)
            for _ in range(crops_per_track):
                logits = np.full(k, 0.0)
                logits[i] = 4.0
                crop_p.append(np.exp(logits + rng.normal(0, 0.3, k)))
                crop_track.append(t)
    p = np.array(crop_p)
    p /= p.sum(1, keepdims=True)
    crop_track = np.array(crop_track)
    track_p = np.stack([p[crop_track == t].mean(0) for t in range(len(ident))])
    return _terms(p), _terms(track_p), crop_track, np.array(ident)


def test_cluster_tracks_recovers_identities() -> None:
    crops, tracks, crop_track, ident = _blob_terms(3, 4, 5)
    labels, n_iter = cluster_tracks(crops, tracks, crop_track, None, ClusterConfig())
    assert n_iter >= 2
    assert len(set(labels.tolist())) == 3
    for i in range(3):
        assert len(set(labels[ident == i].tolist())) == 1


def test_cluster_tracks_never_merges_cooccurring_tracks() -> None:
    crops, tracks, crop_track, _ident = _blob_terms(1, 3, 4)
    cl = np.zeros((3, 3), bool)
    cl[0, 1] = cl[1, 0] = True
    labels, _ = cluster_tracks(crops, tracks, crop_track, cl, ClusterConfig())
    assert labels[0] != labels[1]
    assert len(set(labels.tolist())) == 2
    labels, _ = cluster_tracks(crops, tracks, crop_track, cl, ClusterConfig(respect_cooccurrence=False))
    assert len(set(labels.tolist())) == 1


def test_cluster_tracks_edge_sizes() -> None:
    crops, tracks, crop_track, _ = _blob_terms(1, 1, 3)
    assert cluster_tracks(crops, tracks, crop_track, None, ClusterConfig())[0].tolist() == [0]


def test_cooccurrence_exact() -> None:
    co = cooccurrence(np.array([0, 0, 1, 2, 2]), np.array([1, 2, 2, 5, 6]), 4)
    expected = np.zeros((4, 4), bool)
    expected[0, 1] = expected[1, 0] = True
    np.testing.assert_array_equal(co.toarray(), expected)


def _blob_views(n_id: int, tracks_per_id: int, crops: int, dim: int = 16, seed: int = 0, spread: float = 0.03):
    """Identities far apart; a track's centre varies around its identity by ``spread`` per dimension,
    its crops by 0.1 (a track of one person covers how that person looks across tracks)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_id, dim))
    views, crop_track, ident = [], [], []
    for i in range(n_id):
        for _ in range(tracks_per_id):
            t = len(ident)
            ident.append(i)
            track_centre = centres[i] + rng.normal(0, spread, dim)
            for _ in range(crops):
                v = track_centre + rng.normal(0, 0.1, (2, dim))
                views.append(v)
                crop_track.append(t)
    return np.array(views, np.float32), np.array(crop_track), np.array(ident)


PAPER_RULE = MatchConfig(max_neighbours=0)


def test_soft_match_links_same_identity_tracks_only() -> None:
    views, crop_track, ident = _blob_views(3, 3, 8)
    n = len(ident)
    m = soft_match(views[:, 0], crop_track, n, np.zeros((n, n), bool), PAPER_RULE)
    assert len(m) > 0
    assert np.all(ident[m.track_a] == ident[m.track_b])
    assert np.all(m.log_pdf > m.threshold) and m.by_normal.all()


def _far_tracks(n_id: int, tracks_per_id: int, seed: int = 0):
    """Tracks whose crops are near-copies (spread 0.01) while tracks of one person differ by 0.3:
    the paper's Normal rule finds no pair, mutual neighbours find the people."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_id, 16))
    track_centres = np.repeat(centres, tracks_per_id, 0) + rng.normal(0, 0.3, (n_id * tracks_per_id, 16))
    crop_track = np.repeat(np.arange(len(track_centres)), 6)
    views = track_centres[crop_track] + rng.normal(0, 0.01, (len(crop_track), 16))
    return views.astype(np.float32), crop_track, np.repeat(np.arange(n_id), tracks_per_id)


def test_mutual_neighbours_add_the_pairs_the_normal_rule_misses() -> None:
    views, crop_track, ident = _far_tracks(3, 6)
    n = len(ident)
    co = np.zeros((n, n), bool)
    co[0, 1] = co[1, 0] = True  # tracks 0 and 1 share a frame: never paired
    assert len(soft_match(views, crop_track, n, co, PAPER_RULE)) == 0
    m = soft_match(views, crop_track, n, co, MatchConfig(max_neighbours=5))
    assert len(m) >= n and not m.by_normal.any()
    assert np.all(ident[m.track_a] == ident[m.track_b])
    assert np.all(m.track_a < m.track_b) and not ((m.track_a == 0) & (m.track_b == 1)).any()
    # log-pdf and threshold are still the Normal rule's numbers for the pair (below the threshold)
    assert np.all(np.isfinite(m.log_pdf)) and np.all(m.log_pdf <= m.threshold)


def _reference_neighbour_pairs(views, crop_track, n, cannot_link, cap):
    """The documented rule, written plainly: a track's set = its nearest allowed tracks before the
    largest drop among its cap + 1 nearest (none with fewer than two allowed); pairs = mutual."""
    x = views / np.linalg.norm(views, axis=1, keepdims=True)
    means = np.stack([x[crop_track == t].mean(0) for t in range(n)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    sets = []
    for a in range(n):
        allowed = [b for b in range(n) if b != a and not (cannot_link is not None and cannot_link[a, b])]
        near = sorted(allowed, key=lambda b: -(means[a] @ means[b]))[: cap + 1]
        sims = [means[a] @ means[b] for b in near]
        drops = [sims[i] - sims[i + 1] for i in range(len(sims) - 1)]
        sets.append(set(near[: int(np.argmax(drops)) + 1]) if drops else set())
    return sorted((a, b) for a in range(n) for b in sets[a] if a < b and a in sets[b])


def test_mutual_neighbours_follow_the_largest_similarity_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    import vcn_assets.core.soft_match as sm

    views, crop_track, ident = _far_tracks(4, 5, seed=1)
    n = len(ident)
    co = np.zeros((n, n), bool)
    co[2, 7] = co[7, 2] = True
    for cap in (1, 3, 5, 30):
        want = _reference_neighbour_pairs(views, crop_track, n, co, cap)
        for block in (256, 3):
            monkeypatch.setattr(sm, "ROW_BLOCK", block)
            a, b = sm.mutual_neighbours(views, crop_track, n, sp.csr_matrix(co), cap)
            assert sorted(zip(a.tolist(), b.tolist())) == want, (cap, block)
    assert len(want) and all(ident[a] == ident[b] for a, b in want)


def test_mutual_neighbours_adapt_to_people_with_few_tracks() -> None:
    """Two tracks per person: a fixed k of 3 would pair other people; the drop keeps each pair."""
    import vcn_assets.core.soft_match as sm

    views, crop_track, ident = _far_tracks(6, 2, seed=2)
    a, b = sm.mutual_neighbours(views, crop_track, len(ident), None, 5)
    assert sorted(zip(a.tolist(), b.tolist())) == [(2 * i, 2 * i + 1) for i in range(6)]
    # one other track only (no drop to measure) or a single track: no pair
    two = crop_track < 2
    assert all(len(x) == 0 for x in sm.mutual_neighbours(views[two], crop_track[two], 2, None, 5))
    one = crop_track == 0
    assert all(len(x) == 0 for x in sm.mutual_neighbours(views[one], crop_track[one], 1, None, 5))


def test_soft_match_with_neighbours_is_row_block_independent(monkeypatch: pytest.MonkeyPatch) -> None:
    import vcn_assets.core.soft_match as sm

    views, crop_track, ident = _far_tracks(4, 5, seed=1)
    n = len(ident)
    whole = soft_match(views, crop_track, n, None, MatchConfig(max_neighbours=5))
    monkeypatch.setattr(sm, "ROW_BLOCK", 3)
    assert len(whole) and not whole.by_normal.all()
    again = soft_match(views, crop_track, n, None, MatchConfig(max_neighbours=5))
    for field in ("track_a", "track_b", "log_pdf", "threshold"):
        assert np.array_equal(getattr(whole, field), getattr(again, field))


def test_soft_match_row_blocks_give_the_same_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    import vcn_assets.core.soft_match as sm

    views, crop_track, _ = _blob_views(4, 5, 8)
    n = int(crop_track.max()) + 1
    co = np.zeros((n, n), bool)
    co[0, 1] = co[1, 0] = True
    whole = soft_match(views[:, 0], crop_track, n, co, MatchConfig())
    monkeypatch.setattr(sm, "ROW_BLOCK", 3)
    blocks = soft_match(views[:, 0], crop_track, n, co, MatchConfig())
    assert len(whole) > 0 and not ((whole.track_a == 0) & (whole.track_b == 1)).any()
    for field in ("track_a", "track_b", "log_pdf", "threshold"):
        assert np.array_equal(getattr(whole, field), getattr(blocks, field))


def test_soft_match_keeps_each_tracks_best_matches_up_to_the_cap() -> None:
    views, crop_track, ident = _blob_views(2, 12, 8)
    n = len(ident)
    free = soft_match(views[:, 0], crop_track, n, None, MatchConfig(max_matches_per_track=0, max_neighbours=0))
    capped = soft_match(views[:, 0], crop_track, n, None, MatchConfig(max_matches_per_track=3, max_neighbours=0))
    per_track = np.bincount(free.track_a, minlength=n)
    assert per_track.max() > 3  # the cap binds
    assert np.bincount(capped.track_a, minlength=n).max() <= 3
    for t in range(n):  # each track keeps exactly its min(3, all) highest log-pdfs
        mine = np.sort(free.log_pdf[free.track_a == t])[::-1][:3]
        np.testing.assert_array_equal(np.sort(capped.log_pdf[capped.track_a == t])[::-1], mine)


def test_soft_match_thresholds_are_the_mean_pdf_of_the_lowest_quarter() -> None:
    from scipy.special import logsumexp

    from vcn_assets.core.soft_match import _thresholds

    own = np.array([-1.0, -5.0, -3.0, -2.0, -4.0, -7.0, 0.5])
    track = np.array([0, 0, 0, 0, 0, 1, 2])
    thr = _thresholds(own, track, 4, 0.25)
    # track 0: 5 crops -> ceil(1.25) = 2 lowest (-5, -4); tracks 1, 2: their one crop; track 3: none
    assert np.allclose(thr[:3], [logsumexp([-5.0, -4.0]) - np.log(2), -7.0, 0.5])
    assert thr[3] == np.inf


def test_soft_match_partners_are_both_directions_sorted_without_repeats() -> None:
    from vcn_assets.core.soft_match import SoftMatches

    m = SoftMatches(np.array([0, 2, 2, 3]), np.array([2, 0, 3, 0]), np.zeros(4), np.zeros(4))
    got = m.partners(5)
    assert [p.tolist() for p in got] == [[2, 3], [], [0, 3], [0, 2], []]
    assert all(p.dtype == np.int64 for p in got)


def test_soft_match_edge_cases() -> None:
    views, crop_track, _ = _blob_views(1, 1, 3)
    assert len(soft_match(views[:, 0], crop_track, 1, None, MatchConfig())) == 0


SMALL = FinetuneConfig(rounds=2, steps_per_round=30, warmup_steps=10, batch_tracks=16, hidden_dim=32,
                       bottleneck_dim=16, out_dim=32)


def test_finetune_is_deterministic_and_learns() -> None:
    views, crop_track, ident = _blob_views(3, 3, 6)
    data = TrainingSet.build(views, crop_track, len(ident), np.zeros((len(ident),) * 2, bool))
    a = finetune(data, SMALL, MatchConfig())
    b = finetune(data, SMALL, MatchConfig())
    for (ka, va), (kb, vb) in zip(a.student.state_dict().items(), b.student.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert torch.equal(a.loss_fn.center, b.loss_fn.center)
    assert a.losses == b.losses and len(a.losses) == 60
    assert [r["round"] for r in a.rounds] == [1, 2] and len(a.round_matches) == 2


def test_finetuned_metric_separates_identities() -> None:
    from vcn_assets.core.identity import metric_terms

    views, crop_track, ident = _blob_views(3, 2, 6)
    data = TrainingSet.build(views, crop_track, len(ident), np.zeros((len(ident),) * 2, bool))
    ft = finetune(data, FinetuneConfig(rounds=2, steps_per_round=150, warmup_steps=20, batch_tracks=32,
                                       hidden_dim=64, bottleneck_dim=32, out_dim=32), MatchConfig(dims=4))
    loss = pair_losses(*(metric_terms(ft, views[:, 0], views[:, 0]),) * 2)
    crop_id = ident[crop_track]
    same = (crop_id[:, None] == crop_id[None, :]) & ~np.eye(len(crop_id), dtype=bool)
    assert loss[same].mean() < loss[crop_id[:, None] != crop_id[None, :]].mean()


def test_cluster_movie_handles_zero_one_and_unknown_tracks() -> None:
    views, _crop_track, _ident = _blob_views(2, 2, 4)
    status = np.array(["valid", "unknown", "valid", "no_crops"])
    crop_row = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])  # track 3's crops are ignored
    co = np.zeros((4, 4), bool)
    inputs = ClusterInputs.from_stage1(status, crop_row, views, co)
    out = cluster_movie(inputs, SMALL, MatchConfig(), ClusterConfig())
    assert out.cluster_of_track[1] == -1 and out.cluster_of_track[3] == -1
    assert out.cluster_of_track[0] >= 0 and out.cluster_of_track[2] >= 0
    none = ClusterInputs.from_stage1(np.array(["unknown"]), np.array([0]), views[:1], np.zeros((1, 1), bool))
    assert cluster_movie(none, SMALL, MatchConfig(), ClusterConfig()).cluster_of_track.tolist() == [-1]
    one = ClusterInputs.from_stage1(np.array(["valid"]), np.zeros(3, np.int64), views[:3], np.zeros((1, 1), bool))
    assert cluster_movie(one, SMALL, MatchConfig(), ClusterConfig()).cluster_of_track.tolist() == [0]
