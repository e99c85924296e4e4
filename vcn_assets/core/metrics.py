"""Clustering metrics of the face-track clustering protocol: WCP, PCR, NMI, pairwise and B-cubed P/R/F.

Usage::

    y_true = ["sheldon", "sheldon", "leonard", "leonard", "penny"]   # identity per track
    y_pred = [0, 0, 0, 1, 2]                                         # cluster per track
    clustering_report(y_true, y_pred)
    # {"wcp": 0.8, "pcr": 1.0, "nmi": 0.671..., "pairwise_f": 0.4, "bcubed_f": 0.765..., ...}

Items are tracks. With ``n_ij`` the number of items of cluster ``i`` and identity ``j``, ``a_i`` the
size of cluster ``i``, ``b_j`` the size of identity ``j`` and ``N`` the number of items:

- WCP (weighted clustering purity): ``(1/N) * sum_i max_j n_ij``; it reaches 1.0 when every item is
  its own cluster, so report it with PCR.
- PCR (predicted cluster ratio): ``#clusters / #identities``; 1.0 is ideal.
- NMI: ``2 I(Y;C) / (H(Y) + H(C))`` (natural logarithms; the base cancels). When both entropies
  are 0 (one identity and one cluster) the two partitions are identical and NMI is defined as 1.0,
  as scikit-learn does; when exactly one entropy is 0, ``I = 0`` and NMI is 0.0.
- Pairwise precision/recall/F over unordered item pairs: precision = same-cluster pairs that are
  same-identity / same-cluster pairs (1.0 when no item pairs share a cluster), recall = same-identity
  pairs that share a cluster / same-identity pairs (1.0 when no items share an identity).
- B-cubed (Amigo et al. 2009): per item, precision = share of its cluster with its identity and
  recall = share of its identity in its cluster, each averaged over items.

F is the harmonic mean of precision and recall, 0.0 when both are 0. Labels may be any hashable
values (str, int); only equality matters, so every metric is invariant to renaming labels.
Pure numpy.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

REPORT_KEYS = (
    "wcp", "pcr", "nmi",
    "pairwise_p", "pairwise_r", "pairwise_f",
    "bcubed_p", "bcubed_r", "bcubed_f",
    "n_clusters", "n_identities", "n_items",
)  # fmt: skip


def _encode(labels: Sequence[Hashable]) -> NDArray[np.int64]:
    """Integer codes 0..K-1 in order of first occurrence (works for any hashable labels)."""
    index: dict[Any, int] = {}
    return np.array([index.setdefault(v, len(index)) for v in labels], np.int64)


def _as_labels(y: ArrayLike, name: str) -> list[Hashable]:
    arr = np.asarray(y, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of labels, got shape {arr.shape}")
    return arr.tolist()


def contingency(y_true: ArrayLike, y_pred: ArrayLike) -> NDArray[np.int64]:
    """Contingency table ``n`` (K clusters, J identities): ``n[i, j]`` items of cluster i and identity j.

    Rows follow the first occurrence of each cluster label, columns that of each identity.
    Raises ValueError when the inputs are not 1-D or differ in length.
    """
    yt, yp = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if len(yt) != len(yp):
        raise ValueError(f"y_true and y_pred must have the same length, got {len(yt)} and {len(yp)}")
    t, p = _encode(yt), _encode(yp)
    n = np.zeros((int(p.max(initial=-1)) + 1, int(t.max(initial=-1)) + 1), np.int64)
    np.add.at(n, (p, t), 1)
    return n


def _nonempty(n: NDArray[np.int64], metric: str) -> NDArray[np.int64]:
    if n.sum() == 0:
        raise ValueError(f"{metric} is undefined for zero items (clustering_report returns NaN instead)")
    return n


def _f(p: float, r: float) -> float:
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


def _pairs(x: NDArray[np.int64]) -> int:
    return int((x * (x - 1) // 2).sum())


def _entropy(counts: NDArray[np.int64], total: int) -> float:
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def _wcp(n: NDArray[np.int64]) -> float:
    return float(n.max(axis=1).sum()) / float(n.sum())


def _pcr(n: NDArray[np.int64]) -> float:
    return n.shape[0] / n.shape[1]


def _nmi(n: NDArray[np.int64]) -> float:
    total = int(n.sum())
    h_c, h_y = _entropy(n.sum(axis=1), total), _entropy(n.sum(axis=0), total)
    if h_c == 0.0 and h_y == 0.0:
        return 1.0
    outer = n.sum(axis=1, keepdims=True) * n.sum(axis=0, keepdims=True)
    nz = n > 0
    mi = float((n[nz] / total * np.log(n[nz] * total / outer[nz])).sum())
    return float(np.clip(2.0 * mi / (h_c + h_y), 0.0, 1.0))


def _pairwise(n: NDArray[np.int64]) -> tuple[float, float, float]:
    tp, pred, true = _pairs(n), _pairs(n.sum(axis=1)), _pairs(n.sum(axis=0))
    p = tp / pred if pred else 1.0
    r = tp / true if true else 1.0
    return p, r, _f(p, r)


def _bcubed(n: NDArray[np.int64]) -> tuple[float, float, float]:
    sq = (n * n).astype(np.float64)
    total = float(n.sum())
    p = float((sq / n.sum(axis=1, keepdims=True)).sum()) / total
    r = float((sq / n.sum(axis=0, keepdims=True)).sum()) / total
    return p, r, _f(p, r)


def wcp(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Weighted clustering purity ``(1/N) sum_i max_j n_ij``; ValueError for zero items."""
    return _wcp(_nonempty(contingency(y_true, y_pred), "wcp"))


def pcr(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Predicted cluster ratio ``#clusters / #identities``; ValueError for zero items."""
    return _pcr(_nonempty(contingency(y_true, y_pred), "pcr"))


def nmi(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """``2 I(Y;C) / (H(Y) + H(C))``; 1.0 when both entropies are 0; ValueError for zero items."""
    return _nmi(_nonempty(contingency(y_true, y_pred), "nmi"))


def pairwise_prf(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[float, float, float]:
    """Pairwise (precision, recall, F) over unordered item pairs; ValueError for zero items.

    Precision is 1.0 when no pair shares a cluster; recall is 1.0 when no pair shares an identity.
    """
    return _pairwise(_nonempty(contingency(y_true, y_pred), "pairwise_prf"))


def bcubed_prf(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[float, float, float]:
    """B-cubed (precision, recall, F) averaged over items; ValueError for zero items."""
    return _bcubed(_nonempty(contingency(y_true, y_pred), "bcubed_prf"))


def clustering_report(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float | int]:
    """All metrics as a dict with the keys of ``REPORT_KEYS``.

    Zero items gives NaN for every ratio and 0 for ``n_clusters``, ``n_identities`` and ``n_items``
    (the metrics are undefined there, and a benchmark over many cases should not crash on one).
    """
    n = contingency(y_true, y_pred)
    out: dict[str, float | int] = dict.fromkeys(REPORT_KEYS, float("nan"))
    out.update(n_clusters=n.shape[0], n_identities=n.shape[1], n_items=int(n.sum()))
    if out["n_items"] == 0:
        return out
    out.update(wcp=_wcp(n), pcr=_pcr(n), nmi=_nmi(n))
    out["pairwise_p"], out["pairwise_r"], out["pairwise_f"] = _pairwise(n)
    out["bcubed_p"], out["bcubed_r"], out["bcubed_f"] = _bcubed(n)
    return out
