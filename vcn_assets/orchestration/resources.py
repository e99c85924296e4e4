"""The project resource: where data lives, the store, and the face models (built once per process).

Usage::

    vcn = VcnResource(data_dir="data")
    vcn.movie_path("ep1"); vcn.store(); vcn.models()
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic

from vcn_assets.core.config import ModelConfig, TrackConfig
from vcn_assets.models.base import FaceModels
from vcn_assets.models.registry import build_models, resolve_backend
from vcn_assets.orchestration.partitions import resolve_movie
from vcn_assets.store.db import Store, default_data_dir


class VcnResource(dg.ConfigurableResource):
    """Paths and face models shared by all assets."""

    data_dir: str = pydantic.Field(default="", description="Root of all project data; empty = $VCN_DATA_DIR or ./data.")
    movies_dir: str = pydantic.Field(default="", description="Movie folder; empty = <data_dir>/movies.")
    backend: str = pydantic.Field(default="auto", description="Face models: auto, insightface, dlib or fake.")
    insightface_pack: str = pydantic.Field(default="", description="Local SCRFD+ArcFace model pack folder.")
    device: str = pydantic.Field(default="auto", description="auto, cpu or cuda.")
    num_threads: int = pydantic.Field(default=0, description="CPU threads for torch/ONNX; 0 = all.")
    detect_workers: int = pydantic.Field(
        default=0, description="Frames detected at once (threads); 0 = one per core on the CPU (dlib backend).")
    dlib_runtime: str = pydantic.Field(
        default="torch", description="dlib backend: 'torch' (dlib's network in torch, default) or 'dlib' (its C++).")
    force: bool = pydantic.Field(default=False, description="Recompute even when the stored result's fingerprint matches.")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir or default_data_dir()).expanduser().resolve()

    @property
    def movies_path(self) -> Path:
        return Path(self.movies_dir).expanduser().resolve() if self.movies_dir else self.data_path / "movies"

    def store(self) -> Store:
        return Store(self.data_path / "vcn.duckdb")

    def movie_path(self, key: str) -> Path:
        return resolve_movie(self.movies_path, key)

    def corrections_path(self, key: str) -> Path:
        """The reviewer's corrections of one movie (``vcn correct`` writes it; see core/corrections.py)."""
        return self.data_path / "corrections" / f"{key}.json"

    def face_model_config(self) -> ModelConfig:
        return ModelConfig(
            backend=self.backend, insightface_pack=self.insightface_pack, device=self.device,
            num_threads=self.num_threads, detect_workers=self.detect_workers,
            dlib_runtime=self.dlib_runtime,
        )

    def model_identity(self) -> dict:
        """What identifies the face models without loading them (for fingerprints): the resolved
        backend and the model settings."""
        cfg = self.face_model_config()
        return {"backend": resolve_backend(cfg), **dataclasses.asdict(cfg)}

    def models(self, track_cfg: TrackConfig) -> FaceModels:
        """The face models for these detection settings, built once per process."""
        key = (self.face_model_config(), track_cfg.min_face_px, track_cfg.min_score, track_cfg.detect_max_side)
        if key not in _MODELS:
            _MODELS[key] = build_models(*key)
        return _MODELS[key]

    def embedding_models(self) -> FaceModels:
        """Models for embedding only: any already loaded with this model config (the detector settings
        do not matter), else the defaults."""
        cfg = self.face_model_config()
        loaded = [m for key, m in _MODELS.items() if key[0] == cfg]
        return loaded[-1] if loaded else self.models(TrackConfig())


# Face models loaded in this process, by (model config, detector settings): steps of one run share them.
_MODELS: dict[tuple, FaceModels] = {}


def config_class(core_cls: type) -> type[dg.Config]:
    """A Dagster run-config class with the fields, defaults and docs of a core config dataclass."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(core_cls):
        fields[f.name] = (f.type if not isinstance(f.type, str) else eval(f.type), pydantic.Field(
            default=f.default, description=f.metadata.get("doc", "")
        ))
    return pydantic.create_model(f"{core_cls.__name__}Run", __base__=dg.Config, **fields)


def to_core(config: dg.Config, core_cls: type) -> Any:
    """The core dataclass for a run config made by :func:`config_class`."""
    return core_cls(**config.model_dump())
