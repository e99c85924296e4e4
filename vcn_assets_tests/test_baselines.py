"""Clustering baselines: exact labels on small synthetic sets, cannot-link, noise, FINCH by hand."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from vcn_assets.core.baselines import (
    ahc,
    canonical_labels,
    chinese_whispers,
    cosine_first_neighbours,
    finch_first_partition,
    finch_hierarchy,
    hdbscan_labels,
)

Baseline = Callable[[np.ndarray], np.ndarray]
Reduce = Callable[[np.ndarray], float]
ALL: list[Baseline] = [ahc, hdbscan_labels, chinese_whispers, finch_first_partition]
BLOB_IDS = [0, 1, 0, 2, 1, 0, 2, 2, 1]  # interleaved, so the canonical labels equal the ids


def _blobs(sigma: float = 0.02) -> np.ndarray:
    """Three tight blobs around orthogonal unit vectors (far apart in Euclidean and cosine terms)."""
    rng = np.random.default_rng(0)
    return (np.eye(4)[BLOB_IDS] + rng.normal(0, sigma, (len(BLOB_IDS), 4))).astype(np.float32)


def _line(*x: float) -> np.ndarray:
    return np.array([[v, 0.0] for v in x], np.float32)


def _angles(*degrees: float) -> np.ndarray:
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


# ---------------------------------------------------------------- shared contract


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_three_blobs_exact_labels(fn: Baseline) -> None:
    labels = fn(_blobs())
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, BLOB_IDS)


@pytest.mark.parametrize(
    "fn", [*ALL, lambda x: finch_hierarchy(x)[-1]], ids=["ahc", "hdbscan", "cw", "finch", "hier"]
)
def test_empty_and_single_track(fn: Baseline) -> None:
    assert fn(np.zeros((0, 128), np.float32)).shape == (0,)
    np.testing.assert_array_equal(fn(np.ones((1, 128), np.float32)), [0])


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_rejects_bad_embeddings(fn: Baseline) -> None:
    with pytest.raises(ValueError, match=r"track_emb must be a 2-D array \(T, D\), got shape \(3,\)"):
        fn(np.zeros(3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        fn(np.array([[0.0, np.nan], [1.0, 1.0]]))


def test_canonical_labels_number_by_first_occurrence() -> None:
    np.testing.assert_array_equal(canonical_labels([7, 3, 7, -1, 3]), [0, 1, 0, 2, 1])
    np.testing.assert_array_equal(canonical_labels(np.array(["b", "a", "b"])), [0, 1, 0])


# ---------------------------------------------------------------- AHC


def test_ahc_threshold_is_inclusive_merge_distance() -> None:
    x = _line(0.0, 0.55)
    np.testing.assert_array_equal(ahc(x, threshold=0.5), [0, 1])
    np.testing.assert_array_equal(ahc(x), [0, 0])  # default 0.6 = dlib's same-person cut


def test_ahc_average_vs_single_vs_complete() -> None:
    # {0, 0.4} merge first (0.4); then {0, 0.4} -> 0.9 is 0.5 (single), 0.7 (average), 0.9 (complete).
    x = _line(0.0, 0.4, 0.9)
    np.testing.assert_array_equal(ahc(x, threshold=0.6, linkage="single"), [0, 0, 0])
    np.testing.assert_array_equal(ahc(x, threshold=0.6, linkage="average"), [0, 0, 1])
    np.testing.assert_array_equal(ahc(x, threshold=0.8, linkage="average"), [0, 0, 0])
    np.testing.assert_array_equal(ahc(x, threshold=0.8, linkage="complete"), [0, 0, 1])


@pytest.mark.parametrize("linkage", ["average", "complete"])
def test_ahc_cannot_link_blocks_a_merge_through_a_third_track(linkage: str) -> None:
    x = _line(0.0, 0.1, 0.25)
    cl = np.zeros((3, 3), bool)
    cl[0, 2] = True  # one triangle only: symmetrised
    np.testing.assert_array_equal(ahc(x, linkage=linkage), [0, 0, 0])
    np.testing.assert_array_equal(ahc(x, linkage=linkage, cannot_link=cl), [0, 0, 1])


def test_ahc_cannot_link_diagonal_is_ignored() -> None:
    np.testing.assert_array_equal(ahc(_line(0.0, 0.1), cannot_link=np.eye(2, dtype=bool)), [0, 0])


def _naive_constrained_linkage(x: np.ndarray, threshold: float, cl: np.ndarray, reduce: Reduce) -> np.ndarray:
    """Reference: repeatedly merge the closest pair of clusters (linkage ``reduce`` over member pairs)
    holding no cannot-link pair, while that distance <= threshold. O(T^4), fine for T = 24."""
    d = squareform(pdist(x))
    clusters = [[i] for i in range(len(x))]
    while True:
        best = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                block = np.ix_(clusters[a], clusters[b])
                v = reduce(d[block])
                if not cl[block].any() and v <= threshold and (best is None or v < best[0]):
                    best = (v, a, b)
        if best is None:
            break
        _, a, b = best
        clusters[a] += clusters.pop(b)
    labels = np.empty(len(x), np.int64)
    for k, members in enumerate(clusters):
        labels[members] = k
    return canonical_labels(labels)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("linkage", "reduce"), [("average", np.mean), ("complete", np.max)])
def test_ahc_cannot_link_equals_constrained_greedy_linkage(seed: int, linkage: str, reduce: Reduce) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (24, 2))
    cl = np.triu(rng.uniform(size=(24, 24)) < 0.1, 1)
    cl |= cl.T
    labels = ahc(x, threshold=0.45, linkage=linkage, cannot_link=cl)
    np.testing.assert_array_equal(labels, _naive_constrained_linkage(x, 0.45, cl, reduce))
    assert not (cl & (labels[:, None] == labels[None, :])).any()
    assert len(np.unique(labels)) < len(np.unique(ahc(x, threshold=0.0)))  # some merges happened


def test_ahc_cannot_link_holds_with_a_huge_threshold() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8))
    cl = np.zeros((40, 40), bool)
    cl[0, 1:4] = cl[5, 6] = True
    labels = ahc(x, threshold=1e6, cannot_link=cl)
    cl |= cl.T
    assert not (cl & (labels[:, None] == labels[None, :])).any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"threshold": -0.1}, "threshold must be a finite number >= 0.0, got -0.1", id="neg"),
        pytest.param({"threshold": math.inf}, "threshold must be a finite number", id="inf"),
        pytest.param({"linkage": "ward"}, "linkage must be one of", id="linkage"),
        pytest.param({"cannot_link": np.zeros((2, 2), bool)}, r"shape \(3, 3\)", id="cl-shape"),
        pytest.param({"cannot_link": np.zeros((3, 3))}, "must be a bool array", id="cl-dtype"),
        pytest.param(
            {"linkage": "single", "cannot_link": np.zeros((3, 3), bool)}, "single linkage", id="single"
        ),
    ],
)
def test_ahc_rejects_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ahc(_line(0.0, 1.0, 2.0), **kwargs)


def test_parameters_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ahc(_line(0.0, 1.0), 0.5)  # type: ignore[misc]


# ---------------------------------------------------------------- HDBSCAN


def test_hdbscan_noise_becomes_singletons() -> None:
    x = np.insert(_blobs(), 3, 5.0, axis=0)  # a far outlier as track 3
    expected = [0, 1, 0, 2, 3, 1, 0, 3, 3, 1]
    np.testing.assert_array_equal(hdbscan_labels(x), expected)
    np.testing.assert_array_equal(hdbscan_labels(x, min_samples=1), expected)


def test_hdbscan_too_few_tracks_for_a_cluster_are_singletons() -> None:
    x = _line(0.0, 0.01, 0.02)
    np.testing.assert_array_equal(hdbscan_labels(x, min_cluster_size=4), [0, 1, 2])
    np.testing.assert_array_equal(hdbscan_labels(x, min_samples=5), [0, 1, 2])
    np.testing.assert_array_equal(hdbscan_labels(x[:2]), [0, 1])  # the root is never a cluster


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_cluster_size": 1}, "min_cluster_size must be an integer >= 2, got 1"),
        ({"min_cluster_size": 2.5}, "min_cluster_size must be an integer"),
        ({"min_samples": 0}, "min_samples must be an integer >= 1, got 0"),
    ],
)
def test_hdbscan_rejects_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hdbscan_labels(_blobs(), **kwargs)


# ---------------------------------------------------------------- Chinese whispers


def test_chinese_whispers_threshold_is_a_pair_distance() -> None:
    x = _line(0.0, 0.4)
    np.testing.assert_array_equal(chinese_whispers(x), [0, 0])
    np.testing.assert_array_equal(chinese_whispers(x, threshold=0.3), [0, 1])
    with pytest.raises(ValueError, match="threshold must be a finite number > 0.0, got 0"):
        chinese_whispers(x, threshold=0)


# ---------------------------------------------------------------- FINCH

# Angles (degrees): A = {0, 10, 25}, B = {60, 65}, C = {180, 200}, D = {250, 255}.
# First neighbours: 0->10, 10->0 (10 < 15), 25->10 (15 < 35), 60<->65, 180<->200 (20 < 50 for 200),
# 250<->255. Components A, B, C, D. Cluster means: A ~11.7, B 62.5, C 190, D 252.5 degrees;
# A->B (50.8), B->A (50.8 < 127.5), C->D (62.5 < 127.5), D->C (62.5 < 119.2): {A, B}, {C, D}; then one.
FINCH_ANGLES = (0, 10, 25, 60, 65, 180, 200, 250, 255)
FINCH_LEVELS = [[0, 0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 0, 0, 0, 1, 1, 1, 1], [0] * 9]


def test_finch_first_neighbours_by_hand() -> None:
    np.testing.assert_array_equal(
        cosine_first_neighbours(_angles(*FINCH_ANGLES)), [1, 0, 1, 4, 3, 6, 5, 8, 7]
    )


def test_finch_hierarchy_by_hand() -> None:
    levels = finch_hierarchy(_angles(*FINCH_ANGLES))
    assert [lv.tolist() for lv in levels] == FINCH_LEVELS
    np.testing.assert_array_equal(finch_first_partition(_angles(*FINCH_ANGLES)), FINCH_LEVELS[0])


def test_finch_uses_cosine_distance() -> None:
    # Scaling rows changes Euclidean neighbours but not cosine ones.
    scales = np.array([1, 9, 1, 5, 0.2, 3, 1, 7, 2.0])[:, None]
    np.testing.assert_array_equal(finch_first_partition(_angles(*FINCH_ANGLES) * scales), FINCH_LEVELS[0])


@pytest.mark.parametrize("seed", range(3))
def test_finch_hierarchy_halves_down_to_one_cluster(seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(50, 16))
    levels = finch_hierarchy(x)
    counts = [int(lv.max()) + 1 for lv in levels]
    np.testing.assert_array_equal(levels[0], finch_first_partition(x))
    assert counts[0] <= 25 and counts[-1] == 1
    assert all(b <= a // 2 for a, b in itertools.pairwise(counts))
    for fine, coarse in itertools.pairwise(levels):  # nested: each fine cluster inside one coarse cluster
        assert all(len(np.unique(coarse[fine == k])) == 1 for k in range(int(fine.max()) + 1))
