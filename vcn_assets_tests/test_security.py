"""Security: stored tensors are never unpickled, hostile names stay data, secrets stay out of logs."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import dagster as dg
import pytest

from vcn_assets.core.checkpoint import CheckpointError, load_checkpoint
from vcn_assets.core.corrections import Corrections, TrackRef
from vcn_assets.store.db import Store
from vcn_assets_tests.test_caching import _run


class _Payload:
    """A pickle that, if ever unpickled, creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_a_malicious_pickle_as_checkpoint_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path, 128)
    assert not marker.exists()


def test_a_malicious_pickle_as_mtcnn_weights_is_refused_not_run(tmp_path: Path) -> None:
    from vcn_assets.models.base import ModelFileError
    from vcn_assets.models.mtcnn import _load_weights, _PNet

    marker = tmp_path / "code-ran"
    path = tmp_path / "pnet.pt"
    path.write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    with pytest.raises(ModelFileError, match=str(path)):
        _load_weights(_PNet(), path)
    assert not marker.exists()


SECRET = "s3cr3t-token-0f9e8d7c6b5a"


def test_secrets_in_the_environment_never_reach_logs_or_metadata(instance: dg.DagsterInstance, data_dir: Path,
                                                                 blob_movie: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "VCN_API_TOKEN", "DATABASE_PASSWORD"):
        monkeypatch.setenv(var, SECRET)
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    mats = _run(instance, data_dir)
    assert mats  # the run materialised
    runs = instance.get_runs()
    text = "\n".join(str(e) for run in runs for e in instance.all_logs(run.run_id))
    assert runs and "ASSET_MATERIALIZATION" in text and SECRET not in text
    assert SECRET not in "\n".join(str(run.run_config) + str(run.tags) for run in runs)
    with Store(data_dir / "vcn.duckdb").connect(read_only=True) as con:
        lineage = con.execute("SELECT * FROM lineage").fetchall()
    assert lineage and SECRET not in str(lineage)


HOSTILE_NAMES = ["Robert'); DROP TABLE clusters;--", '<img src=x onerror=alert(1)>', "名前 \"quoted\"",
                 "back\\slash | pipe"]


def test_hostile_cluster_names_are_stored_as_data(instance: dg.DagsterInstance, data_dir: Path,
                                                  blob_movie: Path) -> None:
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    _run(instance, data_dir)
    store = Store(data_dir / "vcn.duckdb")
    tracks = store.read("clusters", "ep1")
    valid = [t for t, s in zip(tracks["track_id"].to_list(), tracks["status"].to_list(), strict=True) if s == "valid"]
    corr = Corrections()
    for track, name in zip(valid, HOSTILE_NAMES, strict=False):
        corr = corr.add_name(name, TrackRef(track))
    corr.save(data_dir / "corrections" / "ep1.json")
    _run(instance, data_dir)
    names = set(store.read("cluster_summary", "ep1")["name"].drop_nulls().to_list())
    assert names == set(HOSTILE_NAMES[: len(valid)])
    assert store.count("clusters", "ep1") == len(tracks)  # the table is still there
