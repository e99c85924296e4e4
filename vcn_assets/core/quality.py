"""Face quality: SER-FIQ scores, frontalness, sharpness and the MAD outlier rule.

Usage::

    q = serfiq_quality(samples)                  # samples (N, T, D) -> (N,) in (0, 1]
    outlier = mad_outliers(track_quality, k=3.0)  # low-side robust outliers
    cut = mad_cut(track_quality, k=3.0, min_count=5)  # its threshold (None: too few values)

SER-FIQ (Terhoerst et al., CVPR 2020): quality = 2 / (1 + exp(mean pairwise Euclidean distance of
the T L2-normalised stochastic embeddings)); 1.0 = perfectly stable identity vector.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

MAD_TO_SIGMA = 1.4826  # MAD of a Normal distribution times this = its standard deviation


def serfiq_quality(samples: NDArray[np.float32]) -> NDArray[np.float32]:
    """(N, T, D) stochastic embeddings -> (N,) SER-FIQ quality. Needs T >= 2."""
    _, t, _ = samples.shape
    if t < 2:
        raise ValueError(f"SER-FIQ needs at least 2 stochastic samples per crop, got {t}")
    x = samples / np.maximum(np.linalg.norm(samples, axis=2, keepdims=True), 1e-12)
    iu = np.triu_indices(t, k=1)
    dist = np.linalg.norm(x[:, iu[0]] - x[:, iu[1]], axis=2)  # (N, T(T-1)/2)
    return (2.0 / (1.0 + np.exp(dist.mean(axis=1)))).astype(np.float32)


def mad_outliers(values: NDArray[np.float32], k: float, min_count: int, min_gap: float = 0.0) -> NDArray[np.bool_]:
    """True where ``values`` lie below ``median - max(k * 1.4826 * MAD, min_gap)`` (low side only).

    With fewer than ``min_count`` values nothing is an outlier; with MAD = 0 and ``min_gap`` = 0
    only values strictly below the median by more than 1e-6 are.
    """
    values = np.asarray(values, np.float64)
    cut = mad_cut(values, k, min_count, min_gap)
    if cut is None:
        return np.zeros(len(values), bool)
    return values < cut


def mad_cut(values: NDArray[np.floating], k: float, min_count: int, min_gap: float = 0.0) -> float | None:
    """The value below which :func:`mad_outliers` flags: ``median - max(k * 1.4826 * MAD, min_gap,
    1e-6)``; None with fewer than ``min_count`` values (nothing is an outlier then)."""
    values = np.asarray(values, np.float64)
    if len(values) < min_count:
        return None
    med = np.median(values)
    mad = np.median(np.abs(values - med))
    return float(med - max(k * MAD_TO_SIGMA * mad, min_gap, 1e-6))


def sharpness(crops_bgr: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Variance of the Laplacian of each grey crop (N,): low = blurry."""
    out = np.zeros(len(crops_bgr), np.float32)
    for i, c in enumerate(crops_bgr):
        out[i] = cv2.Laplacian(cv2.cvtColor(c, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
    return out


def frontalness(kps: NDArray[np.float32]) -> NDArray[np.float32]:
    """1.0 for a frontal face, towards 0 for profile: nose offset from the eye midpoint along the eye
    axis, relative to the eye distance, from five landmarks (N, 5, 2)."""
    if len(kps) == 0:
        return np.zeros(0, np.float32)
    eye_l, eye_r, nose = kps[:, 0], kps[:, 1], kps[:, 2]
    axis = eye_r - eye_l
    dist = np.maximum(np.linalg.norm(axis, axis=1), 1e-6)
    offset = np.abs(((nose - (eye_l + eye_r) / 2) * axis).sum(axis=1)) / dist
    return np.clip(1.0 - 2.0 * offset / dist, 0.0, 1.0).astype(np.float32)
