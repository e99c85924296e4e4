"""A deterministic, fast stand-in backend for unit tests (no model files, no network).

Usage::

    models = build_models(ModelConfig(backend="fake"))

The detector finds bright-on-dark "faces" drawn by the tests: connected components of pixels
above ``threshold`` in the grey frame, with landmarks placed at the ArcFace template positions
inside each box. The embedder maps a crop to a unit vector from its mean colour and a coarse
intensity layout, so crops of the same drawn face embed close together and different colours apart.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from vcn_assets.models.base import ARCFACE_ALIGNMENT, ARCFACE_TEMPLATE_112, Detections

_TEMPLATE_UNIT = ARCFACE_TEMPLATE_112 / 112.0


class FakeDetector:
    def __init__(self, threshold: int = 128, min_area: int = 64) -> None:
        self.threshold = threshold
        self.min_area = min_area

    def detect(self, frame_bgr: NDArray[np.uint8]) -> Detections:
        grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        n, _, stats, _ = cv2.connectedComponentsWithStats((grey > self.threshold).astype(np.uint8))
        boxes = [s for s in stats[1:n] if s[cv2.CC_STAT_AREA] >= self.min_area]
        if not boxes:
            return Detections.empty()
        xywh = np.array([s[:4] for s in boxes], np.float32)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        kps = xyxy[:, None, :2] + _TEMPLATE_UNIT[None] * xywh[:, None, 2:]
        score = np.ones(len(boxes), np.float32)
        return Detections(xyxy, score, kps.astype(np.float32))


class FakeEmbedder:
    dim = 16
    alignment = ARCFACE_ALIGNMENT
    quality_method = "fake: samples = embedding + seeded Gaussian noise scaled by 1 - contrast"

    def embed(self, aligned_bgr: NDArray[np.uint8]) -> NDArray[np.float32]:
        if len(aligned_bgr) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = aligned_bgr.astype(np.float32) / 255.0
        colour = x.mean(axis=(1, 2))  # (N, 3)
        grid = np.stack([cv2.resize(c.mean(axis=2), (3, 4), interpolation=cv2.INTER_AREA) for c in x])
        vec = np.concatenate([colour * 3.0, grid.reshape(len(x), -1) - grid.mean(), np.ones((len(x), 1))], 1)
        return (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float32)

    def embed_with_samples(
        self, aligned_bgr: NDArray[np.uint8], n_samples: int, rng: np.random.Generator
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        emb = self.embed(aligned_bgr)
        contrast = aligned_bgr.reshape(len(aligned_bgr), -1).std(axis=1) / 128.0 if len(emb) else emb[:, 0]
        noise = rng.standard_normal((len(emb), n_samples, self.dim)).astype(np.float32)
        scale = np.clip(1.0 - contrast, 0.05, 1.0)[:, None, None] * 0.1
        return emb, (emb[:, None, :] + noise * scale).astype(np.float32)
