"""The small interface every face-model backend implements.

Usage::

    from vcn_assets.models import build_models
    models = build_models(ModelConfig(backend="auto"))
    dets = models.detector.detect(frame_bgr)          # Detections, boxes in pixels
    crops = align_faces(frame_bgr, dets.kps, models.embedder.alignment)
    emb = models.embedder.embed(crops)                # (N, D) float32

Array contracts: boxes are ``xyxy`` pixel corners (x2/y2 exclusive), landmarks ``kps`` are
five (x, y) points in the ArcFace order (left eye, right eye, nose tip, left mouth corner,
right mouth corner; "left" = image left), images are BGR ``uint8``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray


class ModelFileError(ValueError):
    """A face-model file is there but is not the model expected (damaged, truncated, another model);
    the message names the file and how to restore it. A missing file is a ``FileNotFoundError``."""


class UnsupportedModelError(ValueError):
    """The configured backend cannot do what the config asks of it (the message says what would)."""


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message, shortened: a loader's own message, for one-line errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame: ``xyxy`` (N, 4), ``score`` (N,), ``kps`` (N, 5, 2), float32."""

    xyxy: NDArray[np.float32]
    score: NDArray[np.float32]
    kps: NDArray[np.float32]

    def __post_init__(self) -> None:
        n = self.xyxy.shape[0]
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy must be (N, 4), got {self.xyxy.shape}")
        if self.score.shape != (n,):
            raise ValueError(f"score must be ({n},), got {self.score.shape}")
        if self.kps.shape != (n, 5, 2):
            raise ValueError(f"kps must be ({n}, 5, 2), got {self.kps.shape}")

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def select(self, keep: NDArray[np.bool_] | NDArray[np.int64]) -> Detections:
        return Detections(self.xyxy[keep], self.score[keep], self.kps[keep])


@dataclass(frozen=True)
class AlignmentSpec:
    """Where an embedder wants the five landmarks in its square input crop of ``size`` pixels."""

    size: int
    template: NDArray[np.float32]  # (5, 2) pixel coordinates inside the crop

    def __post_init__(self) -> None:
        if self.template.shape != (5, 2):
            raise ValueError(f"template must be (5, 2), got {self.template.shape}")


# The standard ArcFace 112x112 five-point template (insightface utils/face_align.py).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
ARCFACE_ALIGNMENT = AlignmentSpec(112, ARCFACE_TEMPLATE_112)


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces with five landmarks in one BGR frame."""

    def detect(self, frame_bgr: NDArray[np.uint8]) -> Detections: ...


@runtime_checkable
class FaceEmbedder(Protocol):
    """Maps aligned crops (N, size, size, 3) BGR uint8 to identity embeddings (N, dim) float32."""

    dim: int
    alignment: AlignmentSpec

    def embed(self, aligned_bgr: NDArray[np.uint8]) -> NDArray[np.float32]: ...


@runtime_checkable
class StochasticEmbedder(Protocol):
    """Optional capability for SER-FIQ quality: embeddings plus T stochastic samples per crop.

    ``embed_with_samples`` returns ``(embeddings (N, D), samples (N, T, D))`` float32 in one go so
    that backends can share work (ArcFace runs its trunk once for both). What is stochastic is
    backend-specific (dropout in the head for ArcFace; input perturbations for dlib) and is stated
    in ``quality_method``.
    """

    quality_method: str

    def embed_with_samples(
        self, aligned_bgr: NDArray[np.uint8], n_samples: int, rng: np.random.Generator
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]: ...


@runtime_checkable
class TrainableTail(Protocol):
    """Optional capability for Stage 2's ``train_last_block``: the embedder split before its last block.

    ``trunk_views`` returns the features before that block (N, V, *F) float32 of the same kind of V
    views ``embed_with_samples`` embeds (view 0 the crop, then the backend's perturbations drawn from
    ``rng``); ``tail()`` is a fresh trainable ``torch.nn.Module`` mapping (B, *F) features to (B, dim)
    embeddings, equal to ``embed`` of view 0 before it is trained.
    """

    def trunk_views(self, aligned_bgr: NDArray[np.uint8], n_views: int, rng: np.random.Generator) -> NDArray[np.float32]: ...

    def tail(self) -> Any: ...


@dataclass(frozen=True)
class FaceModels:
    """A resolved backend: the detector, the embedder and what identifies them (for lineage)."""

    backend: str
    detector: FaceDetector
    embedder: FaceEmbedder
    identity: dict[str, Any] = field(default_factory=dict)
    detect_workers: int = 1  # frames detected at once by track_faces (threads); see ModelConfig

    @property
    def stochastic(self) -> StochasticEmbedder | None:
        return self.embedder if isinstance(self.embedder, StochasticEmbedder) else None

    def trainable_tail(self) -> TrainableTail:
        """The embedder's :class:`TrainableTail`; an :class:`UnsupportedModelError` naming the backend when
        it has none."""
        if not isinstance(self.embedder, TrainableTail):
            raise UnsupportedModelError(f"backend {self.backend!r}: its embedder has no trainable last block (its "
                                        f"network is not in torch); train_last_block works with the dlib and "
                                        f"insightface backends")
        return self.embedder
