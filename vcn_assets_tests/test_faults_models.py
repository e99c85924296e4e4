"""Missing or wrong face-model files fail with one clear line naming the expected path and the fix.

Through the registry (``build_models``, what the assets call): MTCNN's weights (facenet-pytorch's
wheel), dlib's descriptor (face-recognition-models), an insightface pack folder that lacks a file or
holds a damaged or wrong ONNX; and through one Dagster materialisation each of a missing file and a
wrong file (a one-line ``dg.Failure``). The path lookups are monkeypatched to temporary folders.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from vcn_assets.core.config import ModelConfig
from vcn_assets.models import dlib_backend, mtcnn
from vcn_assets.models.base import ModelFileError
from vcn_assets.models.registry import build_models
from vcn_assets_tests.faults import KEY, Baseline, baseline, failure, materialize, restore
from vcn_assets_tests.test_insightface_backend import make_tiny_arcface_torch, make_tiny_scrfd

MTCNN_FILES = mtcnn.default_weights_dir()
needs_weights = pytest.mark.skipif(MTCNN_FILES is None or not (MTCNN_FILES / "pnet.pt").is_file(),
                                   reason="facenet-pytorch's MTCNN weights are not installed")
DLIB = ModelConfig(backend="dlib", device="cpu", embed_workers=1)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------- MTCNN (facenet-pytorch)


def test_mtcnn_weights_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mtcnn, "default_weights_dir", lambda: tmp_path / "facenet_pytorch" / "data")
    with pytest.raises(FileNotFoundError) as err:
        build_models(DLIB)
    text = _one_line(err)
    assert f"expected {tmp_path / 'facenet_pytorch' / 'data' / 'pnet.pt'}" in text
    assert "missing: pnet.pt, rnet.pt, onet.pt" in text and mtcnn.INSTALL_HINT in text


def test_mtcnn_package_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mtcnn, "default_weights_dir", lambda: None)
    with pytest.raises(FileNotFoundError) as err:
        build_models(DLIB)
    assert "<site-packages>/facenet_pytorch/data/pnet.pt" in _one_line(err) and mtcnn.INSTALL_HINT in str(err.value)


@needs_weights
@pytest.mark.parametrize("how", ["garbage", "truncated", "other_net"])
def test_mtcnn_weights_wrong(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "data"
    shutil.copytree(MTCNN_FILES, folder)
    bad = folder / "rnet.pt"
    if how == "garbage":
        bad.write_bytes(os.urandom(2000))
    elif how == "truncated":
        bad.write_bytes((MTCNN_FILES / "rnet.pt").read_bytes()[:3000])
    else:
        shutil.copy(MTCNN_FILES / "onet.pt", bad)  # a valid weights file of another net
    monkeypatch.setattr(mtcnn, "default_weights_dir", lambda: folder)
    with pytest.raises(ModelFileError) as err:
        build_models(DLIB)
    text = _one_line(err)
    assert text.startswith(f"{bad}: ") and "MTCNN RNet weights" in text and "--force-reinstall" in text


# ----------------------------------------------------------------------------- dlib (face-recognition-models)


@needs_weights
def test_dlib_model_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlib_backend, "models_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        build_models(DLIB)
    text = _one_line(err)
    assert f"expected {tmp_path / dlib_backend.RESNET_FILE}" in text and dlib_backend.INSTALL_HINT in text


def test_dlib_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlib_backend, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as err:
        dlib_backend.models_dir()
    text = _one_line(err)
    assert f"<site-packages>/face_recognition_models/models/{dlib_backend.RESNET_FILE}" in text
    assert dlib_backend.INSTALL_HINT in text


@needs_weights
@pytest.mark.parametrize("runtime", dlib_backend.RUNTIMES)
@pytest.mark.parametrize("how", ["garbage", "truncated", "tail cut"])
def test_dlib_model_wrong(how: str, runtime: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / dlib_backend.RESNET_FILE
    real = dlib_backend.models_dir() / dlib_backend.RESNET_FILE
    cut = {"garbage": b"", "truncated": real.read_bytes()[:100_000], "tail cut": real.read_bytes()[:-2_000]}[how]
    bad.write_bytes(cut or os.urandom(5000))
    monkeypatch.setattr(dlib_backend, "models_dir", lambda: tmp_path)
    with pytest.raises(ModelFileError) as err:
        build_models(dataclasses.replace(DLIB, dlib_runtime=runtime))
    text = _one_line(err)
    assert text.startswith(f"{bad}: not dlib's face descriptor model") and "--force-reinstall" in text


# ----------------------------------------------------------------------------- insightface pack folder


@pytest.fixture(scope="module")
def good_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pack = tmp_path_factory.mktemp("pack")
    make_tiny_scrfd(pack / "det_10g.onnx")
    make_tiny_arcface_torch(pack / "w600k_r50.onnx")
    return pack


def _pack(good_pack: Path, tmp_path: Path, how: str) -> tuple[Path, Path]:
    """A copy of the pack damaged as ``how`` says, and the file the error must name."""
    pack = tmp_path / "buffalo_l"
    shutil.copytree(good_pack, pack)
    det, rec = pack / "det_10g.onnx", pack / "w600k_r50.onnx"
    if how == "no_detector":
        det.unlink()
        return pack, pack / "det_*.onnx"
    if how == "no_recogniser":
        rec.unlink()
        return pack, pack / "w600k_*.onnx"
    if how == "garbage_detector":
        det.write_bytes(os.urandom(3000))
        return pack, det
    if how == "truncated_recogniser":
        rec.write_bytes(rec.read_bytes()[:5000])
        return pack, rec
    if how == "recogniser_as_detector":
        shutil.copy(rec, det)
        return pack, det
    shutil.copy(det, rec)  # detector_as_recogniser
    return pack, rec


def _insightface(pack: Path) -> ModelConfig:
    return ModelConfig(backend="insightface", insightface_pack=str(pack), device="cpu")


@pytest.mark.parametrize("how, error, says", [
    ("no_detector", FileNotFoundError, "no detector in"),
    ("no_recogniser", FileNotFoundError, "no recogniser in"),
    ("garbage_detector", ModelFileError, "not a usable ONNX model"),
    ("truncated_recogniser", ModelFileError, "not a usable ONNX model"),
    ("recogniser_as_detector", ModelFileError, "is this the pack's detector file?"),
    ("detector_as_recogniser", ModelFileError, "is this the pack's recogniser file?"),
])
def test_insightface_pack_problems(how: str, error: type, says: str, good_pack: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VCN_INSIGHTFACE_PACK", raising=False)
    pack, named = _pack(good_pack, tmp_path, how)
    with pytest.raises(error) as err:
        build_models(_insightface(pack))
    text = _one_line(err)
    assert str(named) in text and says in text


# ----------------------------------------------------------------------------- through Dagster


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    return baseline(tmp_path_factory)


@pytest.mark.parametrize("case", ["mtcnn_missing", "insightface_wrong_onnx"])
def test_materialisation_fails_in_one_line_naming_the_file(case: str, base: Baseline, good_pack: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from vcn_assets.orchestration import resources

    monkeypatch.setattr(resources, "_MODELS", {})  # no face models loaded by earlier tests in this process
    monkeypatch.delenv("VCN_INSIGHTFACE_PACK", raising=False)
    data = restore(base, tmp_path / "data")
    if case == "mtcnn_missing":
        monkeypatch.setattr(mtcnn, "default_weights_dir", lambda: tmp_path / "gone")
        backend, named = {"backend": "dlib"}, tmp_path / "gone" / "pnet.pt"
    else:
        pack, named = _pack(good_pack, tmp_path, "garbage_detector")
        backend = {"backend": "insightface", "insightface_pack": str(pack), "device": "cpu"}
    result = materialize(data, base.movies, KEY, select=["tracks"], force=True, **backend)
    assert not result.success
    step, message = failure(result)
    assert step == "tracks" and "\n" not in message and str(named) in message
