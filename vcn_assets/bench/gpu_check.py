"""``vcn gpu-check``: is the GPU stack usable, and what does the pipeline do on it?

Usage::

    vcn gpu-check                         # checks, then the 1-minute 720p sample with device=cuda, JSON out
    vcn gpu-check --backend dlib --minutes 1 5 --json gpu.json

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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

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
