"""``vcn gpu-check``: is the GPU stack usable, and what does the pipeline do on it?

Usage::

    vcn gpu-check                         # checks, then the 1-minute 720p sample with device=cuda, JSON out
    vcn gpu-check --backend dlib --minutes 1 5 --json gpu.json
    vcn gpu-check --core --tracks 2000 5000 [--dlib-model FILE]   # torch + numpy + scipy only (below)

First the checks: torch sees a CUDA device, and onnxruntime offers ``CUDAExecutionProvider``. The
second is what the ``insightface`` backend runs on, so it is required for that backend (and for
``auto``, which picks insightface when a model pack is found); the ``dlib`` and ``fake`` backends do
not use onnxruntime, and for them its status is only reported. When a required check fails the
command exits with status 1 and one line saying what is missing; nothing runs.

Then ``vcn bench-length``'s measurement with every device knob set to ``cuda`` (the face models'
``ModelConfig.device`` and Stage 2's ``FinetuneConfig.device``), printed as JSON: per-stage seconds
and throughput, the real-time factor and peak RSS, plus the checks' findings. What runs where: the
MTCNN detector and dlib's descriptor network run in torch (``dlib`` backend), SCRFD and ArcFace
(``insightface``, through onnxruntime) and the Stage 2 training on the GPU; decoding, shot detection,
tracking and Stages 3-4 on the CPU.

``--core`` (:func:`compare_devices`) needs only torch, numpy and scipy (no Dagster, video or model
packages), so it also runs where the project is not installed: Stages 2-4 on ``vcn bench-scale``'s
synthetic episode-shaped embeddings with Stage 2 on the CPU and then on CUDA (seconds, soft matches per
round, clusters, and how far the two clusterings agree), and dlib's descriptor network on both (ms per
chip, largest descriptor difference) when its model file is found.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CUDA_PROVIDER = "CUDAExecutionProvider"
ONNX_BACKENDS = ("insightface",)  # the backends that run on onnxruntime


@dataclass(frozen=True)
class GpuStatus:
    """What this machine's torch and onnxruntime see."""

    torch_version: str
    torch_cuda: bool
    torch_cuda_version: str | None
    gpu_name: str | None
    onnxruntime_version: str
    onnxruntime_providers: tuple[str, ...]


class NoGpu(RuntimeError):
    """A required part of the GPU stack is missing; the message says which and what to install."""


def gpu_status() -> GpuStatus:
    import onnxruntime
    import torch

    cuda = torch.cuda.is_available()
    return GpuStatus(torch.__version__, cuda, torch.version.cuda, torch.cuda.get_device_name(0) if cuda else None,
                     onnxruntime.__version__, tuple(onnxruntime.get_available_providers()))


def problems(status: GpuStatus, backend: str) -> list[str]:
    """What keeps ``backend`` (already resolved: insightface, dlib or fake) from running on the GPU."""
    found = []
    if not status.torch_cuda:
        build = "a CPU build" if status.torch_cuda_version is None else f"built for CUDA {status.torch_cuda_version}"
        found.append(f"torch {status.torch_version} ({build}) sees no CUDA device: install the torch build for "
                     "this machine's CUDA and check that `nvidia-smi` lists the GPU")
    if backend in ONNX_BACKENDS and CUDA_PROVIDER not in status.onnxruntime_providers:
        found.append(f"onnxruntime {status.onnxruntime_version} has no {CUDA_PROVIDER} (it offers "
                     f"{', '.join(status.onnxruntime_providers)}), which the {backend} backend needs: install "
                     "onnxruntime-gpu in place of onnxruntime")
    return found


def run_gpu_check(backend: str, minutes: list[int], cache: Path, json_out: Path | None, repeat: int = 1) -> dict:
    """The checks, then ``bench-length`` on ``cuda``; raises :class:`NoGpu` when a check fails."""
    from vcn_assets.bench.length import run_length_bench
    from vcn_assets.core.config import ModelConfig
    from vcn_assets.models.registry import resolve_backend

    status = gpu_status()
    resolved = resolve_backend(ModelConfig(backend=backend))
    missing = problems(status, resolved)
    if missing:
        raise NoGpu("; ".join(missing))
    runs = run_length_bench(minutes, resolved, "all", cache, None, repeat, device="cuda")
    report = {"gpu": asdict(status), "backend": resolved, "device": "cuda", "runs": runs}
    if json_out:
        import json

        json_out.write_text(json.dumps(report, indent=2))
    return report


def _stage2_to_4(n_tracks: int, crops: int, device: str) -> tuple[dict[str, Any], Any]:
    """Stages 2-4 on bench-scale's synthetic inputs with Stage 2 on ``device``: figures and labels."""
    from vcn_assets.bench.scale import load_shape, synthetic_inputs
    from vcn_assets.core.config import ClusterConfig, FinetuneConfig, MatchConfig
    from vcn_assets.core.identity import adapt, final_clusters
    from vcn_assets.core.metrics import nmi

    inputs, truth = synthetic_inputs(n_tracks, load_shape(None), crops)
    t0 = time.perf_counter()
    members = adapt(inputs, FinetuneConfig(device=device), MatchConfig())
    t1 = time.perf_counter()
    labels = final_clusters(inputs, members, ClusterConfig()).cluster_of_track[inputs.valid_index]
    t2 = time.perf_counter()
    return {"finetune_and_match_s": round(t1 - t0, 2), "cluster_s": round(t2 - t1, 2),
            "soft_matches_per_round": [[len(m) for m in ft.round_matches] for ft in members], "n_clusters": int(labels.max() + 1),
            "nmi_vs_synthetic_truth": round(float(nmi(truth, labels)), 4)}, labels


def _dlib_net(model: Path, devices: tuple[str, ...], chips: int, repeat: int) -> dict[str, Any]:
    """ms per chip (median of ``repeat`` batches) of dlib's network on each device, and the largest
    difference between their descriptors of the same random chips."""
    import numpy as np
    import torch

    from vcn_assets.models.dlib_torch import load_dlib_resnet

    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (chips, 3, 150, 150)).astype(np.float32))
    out: dict[str, Any] = {"chips": chips, "repeat": repeat}
    desc = []
    for device in devices:
        net, xd = load_dlib_resnet(model).eval().to(device), x.to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        times = []
        with torch.no_grad():
            net(xd[:2])  # warm-up (kernel selection)
            for _ in range(repeat):
                sync()
                t0 = time.perf_counter()
                d = net(xd)
                sync()
                times.append((time.perf_counter() - t0) / chips)
        out[f"{device}_ms_per_chip"] = round(statistics.median(times) * 1e3, 4)
        desc.append(d.cpu())
    out["max_abs_descriptor_diff"] = float((desc[0] - desc[-1]).abs().max())
    return out


def compare_devices(tracks: list[int], crops: int = 10, dlib_model: Path | None = None, chips: int = 256,
                    repeat: int = 3, devices: tuple[str, str] = ("cpu", "cuda")) -> dict[str, Any]:
    """Stages 2-4 with Stage 2 on each of ``devices`` (one run each: the training is deterministic per
    seed, so one run gives the result; its time is a single measurement), and dlib's network on each
    (``repeat`` timed batches of ``chips`` random 150x150 chips). Raises :class:`NoGpu` when a device is
    ``cuda`` and torch sees none, ``FileNotFoundError`` naming ``dlib_model`` when it is not a file."""
    import torch

    from vcn_assets.core.metrics import nmi

    if "cuda" in devices and not torch.cuda.is_available():
        raise NoGpu(problems(gpu_status(), "fake")[0])
    if dlib_model is not None and not dlib_model.is_file():
        raise FileNotFoundError(f"{dlib_model}: no such file (dlib_face_recognition_resnet_model_v1.dat expected)")
    report: dict[str, Any] = {"torch": torch.__version__, "devices": list(devices),
                              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                              "stages_2_4": []}
    for n in tracks:
        row: dict[str, Any] = {"n_tracks": n, "crops_per_track": crops}
        labels = []
        for device in devices:
            row[device], lab = _stage2_to_4(n, crops, device)
            labels.append(lab)
        row["nmi_between_devices"] = round(float(nmi(labels[0], labels[-1])), 4)
        report["stages_2_4"].append(row)
    if dlib_model is None:
        from vcn_assets.models.dlib_backend import RESNET_FILE, models_dir

        try:
            dlib_model = models_dir() / RESNET_FILE
        except FileNotFoundError:
            dlib_model = None
    if dlib_model is not None:
        report["dlib_network"] = _dlib_net(dlib_model, devices, chips, repeat)
    return report
