"""Five-point similarity alignment of faces to an embedder's template.

Usage::

    crops = align_faces(frame_bgr, dets.kps, ARCFACE_ALIGNMENT)   # (N, 112, 112, 3) uint8
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from vcn_assets.models.base import AlignmentSpec


def similarity_transform(src: NDArray[np.float32], dst: NDArray[np.float32]) -> NDArray[np.float64]:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama's closed form, as in ``skimage.transform.SimilarityTransform``. Returns a 2x3 matrix.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_faces(
    frame_bgr: NDArray[np.uint8], kps: NDArray[np.float32], spec: AlignmentSpec
) -> NDArray[np.uint8]:
    """Warp each face (landmarks ``kps`` (N, 5, 2)) to ``spec``: returns (N, size, size, 3) uint8."""
    out = np.zeros((len(kps), spec.size, spec.size, 3), np.uint8)
    for i, pts in enumerate(kps):
        m = similarity_transform(pts, spec.template)
        out[i] = cv2.warpAffine(
            frame_bgr, m, (spec.size, spec.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
    return out


def rescale_alignment(spec: AlignmentSpec, size: int) -> AlignmentSpec:
    """The same template at another crop size."""
    return AlignmentSpec(size, (spec.template * (size / spec.size)).astype(np.float32))
