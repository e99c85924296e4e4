"""Devices: the ``auto``/``cpu``/``cuda`` knobs, Stage 2 on a configured device, and ``vcn gpu-check``
(on a machine without a GPU: its message; the GPU run itself needs a GPU machine)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch

from vcn_assets.bench.gpu_check import CUDA_PROVIDER, GpuStatus, problems
from vcn_assets.core.checkpoint import load_checkpoint, save_checkpoint
from vcn_assets.core.config import MatchConfig
from vcn_assets.core.devices import DeviceError, resolve_device, usable_cpus
from vcn_assets.core.finetune import TrainingSet, finetune
from vcn_assets.orchestration.assets import user_errors
from vcn_assets_tests.test_identity_core import SMALL, _blob_views

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without a GPU")


def _data() -> TrainingSet:
    views, crop_track, ident = _blob_views(3, 3, 6)
    return TrainingSet.build(views, crop_track, len(ident), np.zeros((len(ident),) * 2, bool))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")


@no_gpu
def test_cuda_without_a_gpu_is_an_error_not_the_cpu() -> None:
    with pytest.raises(DeviceError, match="sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="sees no CUDA device"):
        finetune(_data(), dataclasses.replace(SMALL, device="cuda"), MatchConfig())


def test_a_device_error_fails_the_step_in_one_line() -> None:
    with pytest.raises(dg.Failure, match="sees no CUDA device"), user_errors():
        raise DeviceError("device 'cuda' was asked for, but torch sees no CUDA device")


@no_gpu
def test_cpu_and_auto_train_the_same_checkpoint(tmp_path: Path) -> None:
    """On a CPU machine ``auto`` is ``cpu``; the device is not written into the checkpoint, so the
    same weights have the same content hash whichever value asked for them."""
    a = finetune(_data(), dataclasses.replace(SMALL, device="auto"), MatchConfig())
    b = finetune(_data(), dataclasses.replace(SMALL, device="cpu"), MatchConfig())
    assert a.losses == b.losses
    for (ka, va), (kb, vb) in zip(a.teacher.state_dict().items(), b.teacher.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb) and va.device.type == "cpu"
    in_dim = _data().views.shape[2]
    digests = [save_checkpoint(tmp_path / f"{name}.safetensors", [r], in_dim,
                               dataclasses.replace(SMALL, device=name, members=1)) for name, r in (("auto", a), ("cpu", b))]
    assert digests[0] == digests[1]
    [back] = load_checkpoint(tmp_path / "cpu.safetensors", in_dim)
    assert all(torch.equal(v, b.student.state_dict()[k]) for k, v in back.student.state_dict().items())


def _status(torch_cuda: bool, providers: tuple[str, ...]) -> GpuStatus:
    return GpuStatus("2.13.0", torch_cuda, "12.8" if torch_cuda else None, "H200" if torch_cuda else None,
                     "1.32.0", providers)


def test_gpu_check_problems() -> None:
    cpu_only = ("CPUExecutionProvider",)
    assert problems(_status(True, (CUDA_PROVIDER, *cpu_only)), "insightface") == []
    assert problems(_status(True, cpu_only), "dlib") == []  # dlib and fake do not run on onnxruntime
    (onnx,) = problems(_status(True, cpu_only), "insightface")
    assert CUDA_PROVIDER in onnx and "onnxruntime-gpu" in onnx
    (torch_only,) = problems(_status(False, cpu_only), "fake")
    assert "a CPU build" in torch_only and "sees no CUDA device" in torch_only
    assert len(problems(_status(False, cpu_only), "insightface")) == 2


@no_gpu
def test_vcn_gpu_check_without_a_gpu_exits_with_the_reason(tmp_path: Path) -> None:
    from vcn_assets.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["gpu-check", "--backend", "fake", "--cache", str(tmp_path)])
    assert str(stop.value).startswith("vcn gpu-check: no usable GPU: torch ")
    assert "sees no CUDA device" in str(stop.value)
    assert list(tmp_path.iterdir()) == []  # nothing ran


@no_gpu
def test_detector_threads_default_to_the_usable_cpus() -> None:
    from vcn_assets.core.config import ModelConfig
    from vcn_assets.models.registry import build_models

    assert build_models(ModelConfig(backend="dlib", device="cpu")).detect_workers == usable_cpus()
    assert build_models(ModelConfig(backend="dlib", device="cpu", detect_workers=1)).detect_workers == 1


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, 1.5 CPUs -> 2 threads
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, None),  # no quota: the affinity mask
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_usable_cpus_honours_the_cgroup_quota(files: dict[str, str], expected: int | None, tmp_path: Path) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    mask = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (min(expected, mask) if expected else mask)


def test_compare_devices_reports_both_runs_and_their_agreement() -> None:
    """The ``--core`` comparison's logic, with the CPU standing in for both devices: the same seed on
    the same device gives the same clustering (NMI 1) and the same descriptors (difference 0)."""
    from vcn_assets.bench.gpu_check import compare_devices

    report = compare_devices([40], crops=3, chips=4, repeat=1, devices=("cpu", "cpu"))
    (row,) = report["stages_2_4"]
    assert row["n_tracks"] == 40 and row["nmi_between_devices"] == 1.0
    assert len(row["cpu"]["soft_matches_per_round"]) == 3 and row["cpu"]["n_clusters"] >= 1
    assert 0.0 <= row["cpu"]["nmi_vs_synthetic_truth"] <= 1.0
    net = report["dlib_network"]
    assert net["max_abs_descriptor_diff"] == 0.0 and net["cpu_ms_per_chip"] > 0


@no_gpu
def test_vcn_gpu_check_core_without_a_gpu_exits_with_the_reason() -> None:
    from vcn_assets.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["gpu-check", "--core", "--tracks", "40"])
    assert str(stop.value).startswith("vcn gpu-check: no usable GPU: torch ") and "sees no CUDA device" in str(stop.value)


def test_compare_devices_names_a_missing_or_wrong_dlib_model(tmp_path: Path) -> None:
    from vcn_assets.bench.gpu_check import compare_devices
    from vcn_assets.cli import main
    from vcn_assets.models.base import ModelFileError

    missing = tmp_path / "nope.dat"
    with pytest.raises(FileNotFoundError, match="nope.dat: no such file"):
        compare_devices([], dlib_model=missing, devices=("cpu", "cpu"))
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"not a dlib model")
    with pytest.raises(ModelFileError, match="junk.dat"):
        compare_devices([], dlib_model=junk, chips=1, repeat=1, devices=("cpu", "cpu"))
    if not torch.cuda.is_available():
        return  # the CLI checks the GPU first
    with pytest.raises(SystemExit, match="nope.dat: no such file"):
        main(["gpu-check", "--core", "--tracks", "40", "--dlib-model", str(missing)])
