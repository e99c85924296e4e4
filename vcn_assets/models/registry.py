"""The explicit registry of face-model backends.

Usage::

    models = build_models(ModelConfig(backend="auto"), min_face_px=20)
    models.backend        # "insightface" or "dlib" (what "auto" chose; logged and recorded)
    models.identity       # files and hashes, for lineage

Backends:
- ``insightface``: SCRFD detector + ArcFace recogniser from a local model pack (never downloaded).
- ``dlib``: the offline default. MTCNN detector (weights from the facenet-pytorch wheel) + dlib's
  ResNet 128-d descriptor (face-recognition-models), run in torch from dlib's own file by default.
  MTCNN was chosen by measurement: on ``tbbt_s01e01_open`` it finds far more of the small faces of
  wide shots than dlib's HOG detector.
- ``fake``: deterministic and fast, for unit tests.
- ``auto``: ``insightface`` when a pack is found locally, else ``dlib``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from vcn_assets.core.config import ModelConfig
from vcn_assets.core.devices import usable_cpus
from vcn_assets.models.base import FaceModels

log = logging.getLogger(__name__)

# Backend defaults for TrackConfig.min_score = 0 (the scores of different detectors are not comparable).
MTCNN_MIN_SCORE = 0.9  # ONet probability; ENVIRONMENT.md measured recall 0.92 on tbbt at 0.9
SCRFD_MIN_SCORE = 0.5  # insightface's own default


def _threads(cfg: ModelConfig) -> int:
    return cfg.num_threads or usable_cpus()


def _build_fake(cfg: ModelConfig, min_face_px: int, min_score: float, max_side: int) -> FaceModels:
    from vcn_assets.models.fake import FakeDetector, FakeEmbedder

    return FaceModels("fake", FakeDetector(), FakeEmbedder(), {"backend": "fake", "version": 1})


def _build_dlib(cfg: ModelConfig, min_face_px: int, min_score: float, max_side: int) -> FaceModels:
    from vcn_assets.models.dlib_backend import DlibEmbedder
    from vcn_assets.models.mtcnn import MTCNNConfig, MTCNNDetector

    det_cfg = MTCNNConfig(
        min_face_px=min_face_px, min_score=min_score or MTCNN_MIN_SCORE, max_side=max_side or None,
        device=_device(cfg),
    )
    detector = MTCNNDetector(det_cfg, num_threads=_threads(cfg))
    embedder = DlibEmbedder(workers=cfg.embed_workers or usable_cpus(), runtime=cfg.dlib_runtime,
                            device=det_cfg.device)
    identity = {"backend": "dlib", "detector": "mtcnn(facenet-pytorch weights)", **embedder.identity()}
    workers = cfg.detect_workers or (1 if det_cfg.device != "cpu" else usable_cpus())
    return FaceModels("dlib", detector, embedder, identity, detect_workers=workers)


def _build_insightface(cfg: ModelConfig, min_face_px: int, min_score: float, max_side: int) -> FaceModels:
    from vcn_assets.models import insightface_backend as ib

    icfg = ib.InsightFaceConfig(
        pack_dir=Path(cfg.insightface_pack).expanduser() if cfg.insightface_pack else None,
        det_threshold=min_score or SCRFD_MIN_SCORE,
        min_face_px=min_face_px,
        providers=_providers(cfg),
        num_threads=cfg.num_threads,
        serfiq_dropout=cfg.serfiq_dropout,
    )
    models = ib.build_insightface_models(icfg)
    return dataclasses.replace(models, detect_workers=cfg.detect_workers or 1)


BACKENDS: dict[str, Callable[[ModelConfig, int, float, int], FaceModels]] = {
    "insightface": _build_insightface,
    "dlib": _build_dlib,
    "fake": _build_fake,
}


def resolve_backend(cfg: ModelConfig) -> str:
    """The concrete backend name for ``cfg.backend`` (resolving ``auto``)."""
    if cfg.backend != "auto":
        if cfg.backend not in BACKENDS:
            raise ValueError(f"unknown face-model backend {cfg.backend!r}; choose from auto, {', '.join(BACKENDS)}")
        return cfg.backend
    from vcn_assets.models.insightface_backend import InsightFaceConfig, find_pack

    pack_dir = Path(cfg.insightface_pack).expanduser() if cfg.insightface_pack else None
    pack = find_pack(InsightFaceConfig(pack_dir=pack_dir))
    chosen = "insightface" if pack is not None else "dlib"
    log.info("backend auto -> %s (%s)", chosen, f"pack {pack}" if pack else "no local insightface pack")
    return chosen


def build_models(
    cfg: ModelConfig, min_face_px: int = 20, min_score: float = 0.0, max_side: int = 960
) -> FaceModels:
    """Build the backend named by ``cfg`` (heavy libraries are imported only here). ``max_side``
    downscales large frames before MTCNN detection (0 = never); SCRFD uses its own ``det_size``."""
    name = resolve_backend(cfg)
    models = BACKENDS[name](cfg, min_face_px, min_score, max_side)
    log.info("face models: %s", models.identity)
    return models


def _device(cfg: ModelConfig) -> str:
    from vcn_assets.core.devices import resolve_device

    return resolve_device(cfg.device)


def _providers(cfg: ModelConfig) -> tuple[str, ...]:
    if cfg.device == "cpu":
        return ("CPUExecutionProvider",)
    if cfg.device == "cuda":
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    return ("auto",)
