"""The `vcn` command's materialisation path, as a user runs it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vcn_assets.cli import main


def test_vcn_materialize_twice_is_all_hits_and_quiet(data_dir: Path, blob_movie: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capfd: pytest.CaptureFixture) -> None:
    home = data_dir / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("VCN_DATA_DIR", str(data_dir))
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    main(["materialize", "ep1", "--backend", "fake"])
    first = capfd.readouterr()
    main(["materialize", "ep1", "--backend", "fake"])
    second = capfd.readouterr()
    assert "clusters               cache: miss" in first.out
    assert second.out.count("cache: hit") == 6 and "DEBUG" not in second.err + first.err
