"""The torch device a config names: ``auto``, ``cpu`` or ``cuda``.

Usage::

    resolve_device("auto")     # "cuda" when torch sees a GPU, else "cpu"
    resolve_device("cuda")     # DeviceError on a machine where torch sees no GPU (never silently CPU)
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """The configured device is unknown or not available on this machine."""


def resolve_device(name: str) -> str:
    """``"cpu"`` or ``"cuda"`` for a configured ``auto`` / ``cpu`` / ``cuda``."""
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if name == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if name == "cuda":
        raise DeviceError(f"device 'cuda' was asked for, but torch {torch.__version__} sees no CUDA device "
                          f"(a CPU build of torch, or no GPU driver); use 'auto' or 'cpu' here")
    return "cpu"
