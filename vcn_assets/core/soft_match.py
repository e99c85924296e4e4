"""Stage 3: soft clustering by per-track Normal distributions of student embeddings.

Usage::

    m = soft_match(emb, crop_track, n_tracks, cannot_link, MatchConfig())
    m.track_a, m.track_b     # track_b's mean embedding lies inside track_a's Normal
    m.log_pdf, m.threshold   # log-pdf of track_b's mean under track_a, and track_a's threshold

Covariance (the paper leaves it open; with 2-10 crops in 128 dimensions a sample covariance is
singular): embeddings are projected on the top ``dims`` principal axes of the track means (a
low-rank model: the directions in which tracks differ), then whitened with the movie's pooled within-track covariance (plus a
small ridge), which captures how a face's embedding varies within one track; in that space each
track gets a diagonal Normal whose variances are its own, shrunk toward 1 (the pooled value) with
``prior_weight`` pseudo-crops. All pairwise log-pdfs are then three matrix products, computed for
``ROW_BLOCK`` (256) tracks at a time so memory grows linearly with the number of tracks (only the matches
are kept, at most ``max_matches_per_track`` per track; the co-occurrence matrix passed in is sparse).
threshold_T = log(mean of the lowest 25% of the pdfs of T's own crops) (computed with logsumexp).
The whitening's log-determinant shifts every log-pdf and threshold by the same constant; it is
left out.

Beyond the paper (``MatchConfig.max_neighbours``; 0 turns it off): two tracks are also matched
when each is in the other's neighbour set: its nearest tracks by cosine of mean student embeddings
(never one sharing a frame), up to the largest drop in similarity among its ``max_neighbours + 1``
nearest, so the set follows how many tracks the person has (a fixed k pairs other people once a
person has fewer tracks than k). The paper's rule compares another track's mean with the spread of
a track's own crops, and a track's crops are far more alike than two tracks of one person: on three
of the dev cases it finds 3-16% of the same-person pairs (measured), and Stage 4 then leaves each
person in 2-3 clusters. With every same-person pair supplied (an oracle experiment), Stages 2 and 4
as specified reach PCR 1.0-1.2: most of what was missing is the pairs. ``SoftMatches.by_normal`` tells the
two kinds apart (a neighbour pair's log-pdf is below its threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from vcn_assets.core.config import MatchConfig

ROW_BLOCK = 256  # tracks whose log-pdf rows are computed at once: (ROW_BLOCK, T) float64 temporaries


@dataclass(frozen=True)
class SoftMatches:
    """Directed matches: ``track_b`` soft-matches ``track_a`` (indices into the track list)."""

    track_a: NDArray[np.int64]
    track_b: NDArray[np.int64]
    log_pdf: NDArray[np.float64]
    threshold: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.track_a)

    @property
    def by_normal(self) -> NDArray[np.bool_]:
        """True where the paper's rule matched (log-pdf above threshold); False for mutual neighbours."""
        return self.log_pdf > self.threshold

    def partners(self, n_tracks: int) -> list[NDArray[np.int64]]:
        """For each track, the tracks matched in either direction (sorted, without repeats)."""
        a = np.concatenate([self.track_a, self.track_b]).astype(np.int64)
        b = np.concatenate([self.track_b, self.track_a]).astype(np.int64)
        key = np.unique(a * n_tracks + b)
        return np.split(key % n_tracks, np.cumsum(np.bincount(key // n_tracks, minlength=n_tracks))[:-1])


def whitener(emb: NDArray[np.float64], crop_track: NDArray[np.int64], ridge: float) -> NDArray[np.float64]:
    """W with W^T Sigma_w W = I for the pooled within-track covariance Sigma_w (+ ridge)."""
    d = emb.shape[1]
    means = _track_means(emb, crop_track, int(crop_track.max()) + 1)
    resid = emb - means[crop_track]
    dof = max(len(emb) - len(np.unique(crop_track)), 1)
    cov = resid.T @ resid / dof
    cov += (ridge * max(np.trace(cov) / d, 1e-12) + 1e-12) * np.eye(d)
    vals, vecs = np.linalg.eigh(cov)
    return vecs / np.sqrt(vals)[None, :]


def principal_subspace(x: NDArray[np.float64], crop_track: NDArray[np.int64], n: int, dims: int) -> NDArray[np.float64]:
    """Centre ``x`` and project it on the top ``dims`` principal axes of the track means."""
    x = x - x.mean(0)
    means = _track_means(x, crop_track, n)
    _, _, vt = np.linalg.svd(means - means.mean(0), full_matrices=False)
    return x @ vt[: min(dims, len(vt))].T


def _track_means(x: NDArray[np.float64], crop_track: NDArray[np.int64], n: int) -> NDArray[np.float64]:
    sums = np.zeros((n, x.shape[1]))
    np.add.at(sums, crop_track, x)
    counts = np.bincount(crop_track, minlength=n)[:, None]
    return sums / np.maximum(counts, 1)


def _track_vars(z: NDArray[np.float64], mu: NDArray[np.float64], crop_track: NDArray[np.int64], k: float):
    n = len(mu)
    sq = np.zeros_like(mu)
    np.add.at(sq, crop_track, (z - mu[crop_track]) ** 2)
    counts = np.bincount(crop_track, minlength=n)[:, None]
    return (sq + k) / (counts + k)


def _log_pdf_matrix(x: NDArray[np.float64], mu: NDArray[np.float64], var: NDArray[np.float64]) -> NDArray[np.float64]:
    """log N(x_j | mu_i, diag var_i) for all i, j: (len(mu), len(x))."""
    inv = 1.0 / var
    maha = (inv * mu**2).sum(1)[:, None] - 2 * (mu * inv) @ x.T + inv @ (x**2).T
    return -0.5 * (maha + np.log(var).sum(1)[:, None] + mu.shape[1] * math.log(2 * math.pi))


def _thresholds(own: NDArray[np.float64], crop_track: NDArray[np.int64], n: int, q: float) -> NDArray[np.float64]:
    """Per track: log of the mean pdf of its lowest ``q`` share of own-crop pdfs (at least one)."""
    order = np.lexsort((own, crop_track))
    t_sorted, v_sorted = crop_track[order], own[order]
    counts = np.bincount(crop_track, minlength=n)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - start[t_sorted]
    k = np.maximum(1, np.ceil(q * counts)).astype(np.int64)
    low = rank < k[t_sorted]
    top = np.full(n, -np.inf)
    np.maximum.at(top, t_sorted[low], v_sorted[low])
    sums = np.bincount(t_sorted[low], weights=np.exp(v_sorted[low] - top[t_sorted[low]]), minlength=n)
    thr = np.full(n, np.inf)
    has = counts > 0
    thr[has] = top[has] + np.log(sums[has]) - np.log(k[has])
    return thr


def flatten_views(
    views: NDArray[np.float32], crop_track: NDArray[np.int64], use_views: bool
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """(C, V, D) views -> samples (C*V or C, D) and their track index."""
    if not use_views:
        return views[:, 0], crop_track
    return views.reshape(-1, views.shape[2]), np.repeat(crop_track, views.shape[1])


def soft_match(
    emb: NDArray[np.float32],
    crop_track: NDArray[np.int64],
    n_tracks: int,
    cannot_link: sp.spmatrix | NDArray[np.bool_] | None,
    cfg: MatchConfig,
) -> SoftMatches:
    """All directed soft matches between ``n_tracks`` tracks from their crops' embeddings."""
    empty = SoftMatches(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    if n_tracks < 2 or len(emb) == 0:
        return empty
    x = principal_subspace(emb.astype(np.float64), crop_track, n_tracks, cfg.dims)
    z = x @ whitener(x, crop_track, cfg.ridge)
    mu = _track_means(z, crop_track, n_tracks)
    var = _track_vars(z, mu, crop_track, cfg.prior_weight)
    own = _own_log_pdf(z, mu, var, crop_track)
    thr = _thresholds(own, crop_track, n_tracks, cfg.low_quantile)
    parts = [_match_block(mu, var, thr, cannot_link, lo, min(lo + ROW_BLOCK, n_tracks), cfg.max_matches_per_track)
             for lo in range(0, n_tracks, ROW_BLOCK)]
    a, b, score = (np.concatenate(x) for x in zip(*parts))
    if cfg.max_neighbours > 0:
        na, nb = _new_pairs(mutual_neighbours(emb, crop_track, n_tracks, cannot_link, cfg.max_neighbours), a, b, n_tracks)
        a, b = np.concatenate([a, na]), np.concatenate([b, nb])
        score = np.concatenate([score, _pair_log_pdf(mu, var, na, nb)])
    return SoftMatches(a, b, score, thr[a])


def mutual_neighbours(emb: NDArray[np.float32], crop_track: NDArray[np.int64], n_tracks: int,
                      cannot_link: sp.spmatrix | NDArray[np.bool_] | None, cap: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Pairs (a < b) of tracks each in the other's neighbour set (:func:`_neighbour_block`; cosine of the
    mean unit-norm embedding), leaving out pairs in ``cannot_link``; ``ROW_BLOCK`` rows at a time."""
    x = emb.astype(np.float64) / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    m = _track_means(x, crop_track, n_tracks)
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    width = min(cap + 1, n_tracks - 1)
    if cap <= 0 or width < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    near = np.concatenate([_neighbour_block(m, cannot_link, lo, min(lo + ROW_BLOCK, n_tracks), width)
                           for lo in range(0, n_tracks, ROW_BLOCK)])
    rows = np.repeat(np.arange(n_tracks), near.shape[1])
    cols = near.ravel()
    ok = cols >= 0
    rows, cols = rows[ok], cols[ok]
    mutual = np.isin(rows * n_tracks + cols, cols * n_tracks + rows) & (rows < cols)
    return rows[mutual].astype(np.int64), cols[mutual].astype(np.int64)


def _neighbour_block(m: NDArray[np.float64], cannot_link: sp.spmatrix | NDArray[np.bool_] | None, lo: int, hi: int,
                     width: int) -> NDArray[np.int64]:
    """(hi - lo, width - 1) neighbour sets, -1 padded: of each row's ``width`` most similar allowed
    tracks (sorted), those before the largest drop between consecutive similarities."""
    sim = m[lo:hi] @ m.T
    sim[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf
    if cannot_link is not None:
        rows = cannot_link[lo:hi]
        sim[rows.toarray() if sp.issparse(rows) else rows] = -np.inf
    top = np.argpartition(-sim, width - 1, axis=1)[:, :width]
    vals = np.take_along_axis(sim, top, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    top, vals = np.take_along_axis(top, order, 1), np.take_along_axis(vals, order, 1)
    with np.errstate(invalid="ignore"):  # -inf - -inf between two disallowed tracks: nan, masked next
        drops = vals[:, :-1] - vals[:, 1:]
    drops[~np.isfinite(drops)] = -np.inf  # no drop into a missing (disallowed) track
    keep = np.arange(width - 1)[None, :] <= drops.argmax(1)[:, None]
    keep &= np.isfinite(drops).any(1)[:, None]  # fewer than two allowed tracks: no drop, no neighbours
    return np.where(keep, top[:, :-1], -1)


def _new_pairs(pairs: tuple[NDArray[np.int64], NDArray[np.int64]], a: NDArray[np.int64], b: NDArray[np.int64],
               n: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The undirected ``pairs`` that are not already matched (a, b) in either direction."""
    pa, pb = pairs
    have = np.concatenate([a * n + b, b * n + a])
    new = ~np.isin(pa * n + pb, have)
    return pa[new], pb[new]


def _pair_log_pdf(mu: NDArray[np.float64], var: NDArray[np.float64], a: NDArray[np.int64],
                  b: NDArray[np.int64]) -> NDArray[np.float64]:
    """log N(mu_b | mu_a, diag var_a) for each pair (same constant as :func:`_log_pdf_matrix`)."""
    v = var[a]
    return -0.5 * (((mu[b] - mu[a]) ** 2 / v).sum(1) + np.log(v).sum(1) + mu.shape[1] * math.log(2 * math.pi))


def _match_block(mu: NDArray[np.float64], var: NDArray[np.float64], thr: NDArray[np.float64],
                 cannot_link: sp.spmatrix | NDArray[np.bool_] | None, lo: int, hi: int, cap: int):
    """Matches (a, b, log-pdf) with ``a`` in rows lo..hi: b's mean inside a's Normal; at most ``cap``
    per ``a`` (its highest log-pdfs)."""
    scores = _log_pdf_matrix(mu, mu[lo:hi], var[lo:hi])  # (a - lo, b): b's mean under a's Normal
    ok = scores > thr[lo:hi, None]
    ok[np.arange(hi - lo), np.arange(lo, hi)] = False
    if cannot_link is not None:
        rows = cannot_link[lo:hi]
        ok &= ~(rows.toarray() if sp.issparse(rows) else rows)
    if cap > 0 and ok.sum(1).max(initial=0) > cap:
        ok = _best_per_row(np.where(ok, scores, -np.inf), cap)
    a, b = np.nonzero(ok)
    return (a + lo).astype(np.int64), b.astype(np.int64), scores[a, b]


def _best_per_row(scores: NDArray[np.float64], cap: int) -> NDArray[np.bool_]:
    """True at each row's ``cap`` largest finite entries (all of them in rows with fewer)."""
    k = min(cap, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    keep = np.zeros(scores.shape, bool)
    np.put_along_axis(keep, top, True, axis=1)
    return keep & np.isfinite(scores)


def _own_log_pdf(
    z: NDArray[np.float64], mu: NDArray[np.float64], var: NDArray[np.float64], crop_track: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Log-pdf of each crop under its own track's Normal: (n_crops,)."""
    v = var[crop_track]
    return (-0.5 * ((z - mu[crop_track]) ** 2 / v + np.log(v) + math.log(2 * math.pi))).sum(1)
