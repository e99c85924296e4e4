"""Clustering metrics: hand-computed examples (exact fractions), edge cases, invariances, sklearn's NMI."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from vcn_assets.core.metrics import (
    REPORT_KEYS,
    bcubed_prf,
    clustering_report,
    contingency,
    nmi,
    pairwise_prf,
    pcr,
    wcp,
)

# 5 tracks, 2 identities (a x3, b x2), 3 clusters: {a, a}, {a, b}, {b}.
Y5 = ["a", "a", "a", "b", "b"]
C5 = [0, 0, 1, 1, 2]

# 6 tracks, 3 identities (a x3, b x2, c x1).
Y6 = ["a", "a", "a", "b", "b", "c"]


def _h(*p: float) -> float:
    return -sum(x * math.log(x) for x in p)


def test_contingency_counts_in_first_occurrence_order() -> None:
    np.testing.assert_array_equal(contingency(Y5, C5), [[2, 0], [1, 1], [0, 1]])


def test_hand_computed_example() -> None:
    # pairs: same-cluster {0,1},{2,3} -> 2, of which same-identity 1; same-identity pairs 3 + 1 = 4.
    # B-cubed precision: (2/2 + 2/2 + 1/2 + 1/2 + 1/1) / 5; recall: (2/3 + 2/3 + 1/3 + 1/2 + 1/2) / 5.
    # I(Y;C) = 2/5 ln(5/3) + 1/5 ln(5/6) + 1/5 ln(5/4) + 1/5 ln(5/2).
    mi = 2 / 5 * math.log(5 / 3) + 1 / 5 * (math.log(5 / 6) + math.log(5 / 4) + math.log(5 / 2))
    h_y, h_c = _h(3 / 5, 2 / 5), _h(2 / 5, 2 / 5, 1 / 5)
    expected = {
        "wcp": 4 / 5, "pcr": 3 / 2, "nmi": 2 * mi / (h_y + h_c),
        "pairwise_p": 1 / 2, "pairwise_r": 1 / 4, "pairwise_f": 1 / 3,
        "bcubed_p": 4 / 5, "bcubed_r": 8 / 15, "bcubed_f": 16 / 25,
        "n_clusters": 3, "n_identities": 2, "n_items": 5,
    }  # fmt: skip
    report = clustering_report(Y5, C5)
    assert list(report) == list(REPORT_KEYS)
    assert report == pytest.approx(expected, abs=1e-12)
    assert wcp(Y5, C5) == pytest.approx(4 / 5)
    assert pcr(Y5, C5) == pytest.approx(3 / 2)
    assert pairwise_prf(Y5, C5) == pytest.approx((1 / 2, 1 / 4, 1 / 3))
    assert bcubed_prf(Y5, C5) == pytest.approx((4 / 5, 8 / 15, 16 / 25))
    assert nmi(Y5, C5) == pytest.approx(normalized_mutual_info_score(Y5, C5, average_method="arithmetic"))


def test_perfect_clustering_scores_one() -> None:
    report = clustering_report(Y6, [7, 7, 7, "x", "x", 3])
    for key in REPORT_KEYS[:9]:
        assert report[key] == pytest.approx(1.0), key
    assert (report["n_clusters"], report["n_identities"], report["n_items"]) == (3, 3, 6)


def test_all_in_one_cluster() -> None:
    # same-cluster pairs 15, same-identity 3 + 1 + 0 = 4; B-cubed precision (3*3/6 + 2*2/6 + 1/6) / 6.
    report = clustering_report(Y6, [0] * 6)
    assert report["wcp"] == pytest.approx(1 / 2)
    assert report["pcr"] == pytest.approx(1 / 3)
    assert report["nmi"] == 0.0
    assert (report["pairwise_p"], report["pairwise_r"], report["pairwise_f"]) == pytest.approx(
        (4 / 15, 1.0, 8 / 19)
    )
    assert (report["bcubed_p"], report["bcubed_r"], report["bcubed_f"]) == pytest.approx(
        (7 / 18, 1.0, 14 / 25)
    )


def test_all_singletons() -> None:
    # No predicted pairs: pairwise precision := 1, recall 0. B-cubed recall (3 * 1/3 + 2 * 1/2 + 1) / 6.
    report = clustering_report(Y6, list(range(6)))
    h_y = _h(1 / 2, 1 / 3, 1 / 6)
    assert report["wcp"] == 1.0
    assert report["pcr"] == pytest.approx(2.0)
    assert report["nmi"] == pytest.approx(2 * h_y / (h_y + math.log(6)))
    assert (report["pairwise_p"], report["pairwise_r"], report["pairwise_f"]) == (1.0, 0.0, 0.0)
    assert (report["bcubed_p"], report["bcubed_r"], report["bcubed_f"]) == pytest.approx((1.0, 1 / 2, 2 / 3))


@pytest.mark.parametrize(
    ("y_true", "y_pred", "expected_nmi", "expected_pair_r"),
    [
        pytest.param(["a"] * 3, [0] * 3, 1.0, 1.0, id="one-identity-one-cluster"),
        pytest.param(["a"] * 3, [0, 1, 2], 0.0, 0.0, id="one-identity-singletons"),
        pytest.param(["a", "b", "c"], [0, 1, 2], 1.0, 1.0, id="no-pairs-at-all"),
        pytest.param(["a"], [5], 1.0, 1.0, id="one-item"),
    ],
)
def test_degenerate_cases(y_true: list, y_pred: list, expected_nmi: float, expected_pair_r: float) -> None:
    assert nmi(y_true, y_pred) == expected_nmi
    assert nmi(y_true, y_pred) == pytest.approx(
        normalized_mutual_info_score(y_true, y_pred, average_method="arithmetic")
    )
    assert pairwise_prf(y_true, y_pred)[1] == expected_pair_r


def test_invariant_to_renaming_labels_and_reordering_items() -> None:
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 5, 40), rng.integers(0, 7, 40)
    names = np.array(["ann", "bob", "cy", "dee", "eve"])
    perm_c, order = rng.permutation(7) + 100, rng.permutation(40)
    renamed = clustering_report(names[y_true][order], perm_c[y_pred][order])
    assert renamed == pytest.approx(clustering_report(y_true, y_pred), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_nmi_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    y_true, y_pred = rng.integers(0, rng.integers(1, 8), n), rng.integers(0, rng.integers(1, 12), n)
    expected = normalized_mutual_info_score(y_true, y_pred, average_method="arithmetic")
    assert nmi(y_true, y_pred) == pytest.approx(expected, abs=1e-12)


def test_empty_report_is_nan_with_zero_counts() -> None:
    report = clustering_report([], [])
    assert list(report) == list(REPORT_KEYS)
    assert all(math.isnan(report[k]) for k in REPORT_KEYS[:9])
    assert (report["n_clusters"], report["n_identities"], report["n_items"]) == (0, 0, 0)


@pytest.mark.parametrize("metric", [wcp, pcr, nmi, pairwise_prf, bcubed_prf])
def test_single_metrics_reject_empty_input(metric: Callable[[list, list], object]) -> None:
    with pytest.raises(ValueError, match="undefined for zero items"):
        metric([], [])


def test_rejects_mismatched_or_non_1d_labels() -> None:
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        clustering_report(["a", "b", "c"], [0, 1])
    with pytest.raises(ValueError, match="y_pred must be a 1-D sequence"):
        clustering_report(["a", "b"], [[0, 1], [1, 0]])
