"""Shared fixtures: generated clips (never ../shared), a project data dir, a Dagster instance."""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg
import pytest

from vcn_assets_tests.clips import blob_clip

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


@pytest.fixture(scope="session")
def blob_movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 shots x 20 frames: shot 0 faces (colours) 0 and 1, shot 1 face 2, shot 2 face 0."""
    return blob_clip(tmp_path_factory.mktemp("clips") / "blob.mp4", [[0, 1], [2], [0]])


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "movies").mkdir()
    return tmp_path


@pytest.fixture()
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst
