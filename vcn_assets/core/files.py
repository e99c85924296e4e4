"""File helpers shared by the core, the model backends and the benchmarks."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, read in chunks (movies can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` reports a full disk: an ``OSError`` with ``ENOSPC``, or a library error (DuckDB,
    safetensors) that carries the operating system's "No space left on device" in its message."""
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)
