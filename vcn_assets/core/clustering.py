"""Stage 4: final clustering of valid tracks with the learnt (loss) metric.

Usage::

    labels, n_iter = cluster_tracks(crops_terms, track_terms, crop_track, cannot_link, ClusterConfig())
    hints = merge_suggestions(crops_terms, track_terms, crop_track, labels, cannot_link, ClusterConfig())
    labels = consensus([labels_a, labels_b, labels_c], cannot_link, ClusterConfig())   # several students' clusterings

The metric between items i and j is the symmetrised DINO loss ``-(P_i . logS_j + P_j . logS_i) / 2``
(P: teacher probabilities, logS: student log-probabilities). Because it is bilinear, the mean over
all cross pairs of two item sets is the same expression on the sets' mean P and mean logS, so
every cluster-level quantity is a product of (clusters x K) matrices: no loop over crop pairs.

One iteration: each cluster's threshold is the mean loss over all pairs of its crops (a cluster
with one crop uses that crop's loss with itself); the score of two clusters is the mean loss over
cross pairs of their items (crops for a single-track cluster, track means otherwise); a pair
matches when its score is below either threshold. Matches are merged transitively, cheapest
first, skipping any merge that would put two tracks sharing a frame in one cluster. Iterations
repeat until nothing changes.

With several students (``FinetuneConfig.members``) each clusters on its own metric and
:func:`consensus` keeps together what a majority of them did; merge suggestions then use the
members' mean metric (:func:`mean_metric`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.csgraph import connected_components

from vcn_assets.core.config import ClusterConfig


@dataclass(frozen=True)
class MetricTerms:
    """Per-item teacher probabilities ``p`` and student log-probabilities ``logs``, both (N, K)."""

    p: NDArray[np.float64]
    logs: NDArray[np.float64]


def pair_losses(a: MetricTerms, b: MetricTerms) -> NDArray[np.float64]:
    """The symmetrised loss between every item of ``a`` and every item of ``b``: (Na, Nb)."""
    return -(a.p @ b.logs.T + (b.p @ a.logs.T).T) / 2


def _sums(x: NDArray[np.float64], groups: NDArray[np.int64], n: int) -> NDArray[np.float64]:
    out = np.zeros((n, x.shape[1]))
    np.add.at(out, groups, x)
    return out


def cluster_thresholds(crops: MetricTerms, crop_cluster: NDArray[np.int64], n: int) -> NDArray[np.float64]:
    """Mean loss over all pairs of distinct crops inside each cluster (self-loss for one crop)."""
    sp, sl = _sums(crops.p, crop_cluster, n), _sums(crops.logs, crop_cluster, n)
    diag = np.bincount(crop_cluster, weights=(crops.p * crops.logs).sum(1), minlength=n)
    count = np.bincount(crop_cluster, minlength=n).astype(np.float64)
    all_pairs = -(sp * sl).sum(1)
    pairs = count * (count - 1)
    return np.where(pairs > 0, (all_pairs + diag) / np.maximum(pairs, 1), -diag / np.maximum(count, 1))


def _cluster_items(crops: MetricTerms, tracks: MetricTerms, crop_track: NDArray[np.int64],
                   labels: NDArray[np.int64], n: int) -> MetricTerms:
    """Mean P / logS over each cluster's query items (crops if single-track, else track means)."""
    size = np.bincount(labels, minlength=n)
    crop_cluster = labels[crop_track]
    single_crop = size[crop_cluster] == 1
    p = _sums(crops.p[single_crop], crop_cluster[single_crop], n)
    logs = _sums(crops.logs[single_crop], crop_cluster[single_crop], n)
    multi = size[labels] > 1
    p += _sums(tracks.p[multi], labels[multi], n)
    logs += _sums(tracks.logs[multi], labels[multi], n)
    items = np.where(size == 1, np.bincount(crop_cluster, minlength=n), size).astype(np.float64)
    return MetricTerms(p / np.maximum(items, 1)[:, None], logs / np.maximum(items, 1)[:, None])


def _merge(score: NDArray[np.float64], match: NDArray[np.bool_], blocked: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Union matched clusters, cheapest first, never joining blocked (cannot-link) clusters."""
    n = len(score)
    parent = np.arange(n)
    block = blocked.copy()

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    a, b = np.nonzero(np.triu(match, 1))
    for k in np.argsort(score[a, b], kind="stable"):
        ra, rb = find(int(a[k])), find(int(b[k]))
        if ra == rb or block[ra, rb]:
            continue
        parent[rb] = ra
        block[ra] |= block[rb]
        block[:, ra] |= block[:, rb]
    roots = np.array([find(i) for i in range(n)])
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


@dataclass(frozen=True)
class Constraints:
    """A reviewer's links over the tracks being clustered: ``component`` (T,) tracks that must end in
    one cluster share a value; ``cannot_link`` (T, T) pairs that must not. A must-link overrides the
    co-occurrence rule for that pair (the reviewer has seen the faces)."""

    component: NDArray[np.int64]
    cannot_link: NDArray[np.bool_]

    @classmethod
    def none(cls, n: int) -> Constraints:
        return cls(np.arange(n, dtype=np.int64), np.zeros((n, n), bool))


def _blocked_tracks(cannot_link: sp.spmatrix | NDArray[np.bool_] | None, cfg: ClusterConfig,
                    user: Constraints) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(rows, cols) of the track pairs that may never share a cluster: co-occurring tracks (unless
    the reviewer must-linked them) and the reviewer's cannot-links."""
    a, b = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if cannot_link is not None and cfg.respect_cooccurrence:
        a, b = cannot_link.nonzero()
        apart = user.component[a] != user.component[b]
        a, b = a[apart], b[apart]
    ua, ub = np.nonzero(user.cannot_link)
    return np.concatenate([a, ua]).astype(np.int64), np.concatenate([b, ub]).astype(np.int64)


def _cluster_blocked(blocked: tuple[NDArray[np.int64], NDArray[np.int64]], labels: NDArray[np.int64],
                     n: int) -> NDArray[np.bool_]:
    """(n, n) True where two clusters hold a blocked track pair; ``blocked`` = the pairs' (rows, cols)."""
    out = np.zeros((n, n), bool)
    out[labels[blocked[0]], labels[blocked[1]]] = True
    return out


def _scores(crops: MetricTerms, tracks: MetricTerms, crop_track: NDArray[np.int64], labels: NDArray[np.int64]):
    """(cluster-pair scores (n, n), cluster thresholds (n,)) for the clustering ``labels``."""
    n = int(labels.max()) + 1
    thr = cluster_thresholds(crops, labels[crop_track], n)
    items = _cluster_items(crops, tracks, crop_track, labels, n)
    return pair_losses(items, items), thr


def cluster_tracks(crops: MetricTerms, tracks: MetricTerms, crop_track: NDArray[np.int64],
                   cannot_link: sp.spmatrix | NDArray[np.bool_] | None, cfg: ClusterConfig,
                   user: Constraints | None = None) -> tuple[NDArray[np.int64], int]:
    """Cluster labels (T,) of the tracks, and the number of iterations run. ``cannot_link``: tracks
    sharing a frame; ``user``: the reviewer's links (must-linked tracks start in one cluster)."""
    n_tracks = len(tracks.p)
    user = user or Constraints.none(n_tracks)
    labels = np.unique(user.component, return_inverse=True)[1].astype(np.int64)
    if labels.max(initial=-1) + 1 < 2:
        return labels, 0
    blocked_tracks = _blocked_tracks(cannot_link, cfg, user)
    for it in range(1, cfg.max_iterations + 1):
        n = int(labels.max()) + 1
        score, thr = _scores(crops, tracks, crop_track, labels)
        match = (score < thr[:, None]) | (score < thr[None, :])
        np.fill_diagonal(match, False)
        blocked = _cluster_blocked(blocked_tracks, labels, n)
        merged = _merge(score, match & ~blocked, blocked)
        if merged.max() + 1 == n:
            return labels, it
        labels = merged[labels]
    return labels, cfg.max_iterations


def mean_metric(members: Sequence[MetricTerms]) -> MetricTerms:
    """Terms whose loss is the mean of the members' losses: the loss is bilinear, so the members'
    ``p`` (divided by their number) and ``logs`` side by side give exactly that mean."""
    return MetricTerms(np.concatenate([m.p for m in members], 1) / len(members),
                       np.concatenate([m.logs for m in members], 1))


def consensus(member_labels: Sequence[NDArray[np.int64]], cannot_link: sp.spmatrix | NDArray[np.bool_] | None,
              cfg: ClusterConfig, user: Constraints | None = None) -> NDArray[np.int64]:
    """One clustering from several of the same tracks: tracks that more than half of them put together
    are joined, transitively; where that would put a blocked pair (tracks sharing a frame, a reviewer's
    cannot-link) in one cluster, the pairs of that group are joined strongest agreement first, skipping
    blocked merges. One clustering is returned as it is."""
    if len(member_labels) == 1:
        return member_labels[0]
    together = np.zeros((len(member_labels[0]),) * 2, np.int16)
    for labels in member_labels:
        together += labels[:, None] == labels[None, :]
    match = 2 * together > len(member_labels)
    comp = connected_components(sp.csr_matrix(match), directed=False)[1]
    rows, cols = _blocked_tracks(cannot_link, cfg, user or Constraints.none(len(comp)))
    bad = np.unique(comp[rows][comp[rows] == comp[cols]])
    if len(bad):
        idx = np.flatnonzero(np.isin(comp, bad))
        blocked = np.zeros((len(comp),) * 2, bool)
        blocked[rows, cols] = blocked[cols, rows] = True
        sub = np.ix_(idx, idx)
        comp[idx] = comp.max() + 1 + _merge(-together[sub].astype(np.float64), match[sub], blocked[sub])
    return np.unique(comp, return_inverse=True)[1].astype(np.int64)


@dataclass(frozen=True)
class MergeSuggestions:
    """For each cluster, its nearest other clusters (rank 1 = nearest) by ``margin`` = cluster-pair
    score - the larger of the two thresholds (one student's Stage 4 merges when the margin is negative;
    with several students these are their mean metric's, and the clusters their majority's)."""

    cluster: NDArray[np.int64]
    rank: NDArray[np.int64]
    other: NDArray[np.int64]
    score: NDArray[np.float64]
    threshold: NDArray[np.float64]

    @property
    def margin(self) -> NDArray[np.float64]:
        return self.score - self.threshold

    def __len__(self) -> int:
        return len(self.cluster)


def merge_suggestions(crops: MetricTerms, tracks: MetricTerms, crop_track: NDArray[np.int64],
                      labels: NDArray[np.int64], cannot_link: sp.spmatrix | NDArray[np.bool_] | None, cfg: ClusterConfig,
                      user: Constraints | None = None, k: int = 3) -> MergeSuggestions:
    """Up to ``k`` nearest other clusters per cluster, leaving out pairs that may never merge
    (tracks sharing a frame, the reviewer's cannot-links)."""
    n = int(labels.max(initial=-1)) + 1
    empty = np.zeros(0, np.int64)
    if n < 2:
        return MergeSuggestions(empty, empty, empty, np.zeros(0), np.zeros(0))
    score, thr = _scores(crops, tracks, crop_track, labels)
    thr_pair = np.maximum(thr[:, None], thr[None, :])
    margin = score - thr_pair
    blocked = _blocked_tracks(cannot_link, cfg, user or Constraints.none(len(tracks.p)))
    margin[_cluster_blocked(blocked, labels, n)] = np.inf
    np.fill_diagonal(margin, np.inf)
    order = np.argsort(margin, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(n), order.shape[1])
    cols = order.ravel()
    keep = np.isfinite(margin[rows, cols])
    rows, cols = rows[keep], cols[keep]
    rank = (np.tile(np.arange(1, order.shape[1] + 1), n))[keep]
    return MergeSuggestions(rows.astype(np.int64), rank.astype(np.int64), cols.astype(np.int64),
                            score[rows, cols], thr_pair[rows, cols])
