"""Reading movies: probing, hashing and streaming decoded frames, with clear errors.

Usage::

    info = probe(Path("data/movies/ep1.mp4"))        # VideoInfo or VideoError naming the file
    for frame_idx, frame_bgr in iter_frames(info.path, frames={0, 10, 20}):
        ...

Frames are streamed one at a time (never all in memory). ``frame_idx`` counts decoded frames
from 0 in presentation order, the convention of the benchmark cases' ground truth.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from vcn_assets.core.files import file_sha256

log = logging.getLogger(__name__)


class VideoError(ValueError):
    """A movie file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float
    n_frames: int
    width: int
    height: int
    codec: str

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps


def content_hash(path: Path) -> str:
    """sha256 of the file's bytes: the movie's data version."""
    return file_sha256(path)


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(path, f"not a readable video file ({type(exc).__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(path, "contains no video stream (audio-only or data file)")
    return container


def _count_frames(path: Path) -> int:
    import av

    container = _open(path)
    n = 0
    try:
        with container:
            for packet in container.demux(video=0):
                if packet.size:
                    n += 1
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"unreadable after {n} frames ({exc})") from exc
    return n


def probe(path: Path, min_frames: int = 2) -> VideoInfo:
    """Read a movie's header (and count its frames): raises :class:`VideoError` for unusable files."""
    container = _open(path)
    with container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
        codec = stream.codec_context.name
    if fps <= 0 or width <= 0 or height <= 0:
        raise VideoError(path, f"video stream has no usable frame rate or size ({fps} fps, {width}x{height})")
    n_frames = _count_frames(path)
    if n_frames < min_frames:
        raise VideoError(path, f"has {n_frames} frame(s); at least {min_frames} are needed")
    return VideoInfo(path, fps, n_frames, width, height, codec)


def iter_frames(
    path: Path, frames: Container[int] | None = None, width: int | None = None
) -> Iterator[tuple[int, NDArray[np.uint8]]]:
    """Decode ``path`` once, yielding ``(frame_idx, frame_bgr)`` for the wanted frames.

    ``frames`` limits which frames are converted to arrays (all others are decoded but skipped
    cheaply); ``width`` downscales on conversion (aspect kept). Decoding errors raise VideoError.
    """
    import av

    container = _open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    size = _scaled_size(stream.codec_context.width, stream.codec_context.height, width)
    idx = 0
    try:
        with container:
            for frame in container.decode(stream):
                if frames is None or idx in frames:
                    yield idx, _to_bgr(frame, size)
                idx += 1
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"decoding failed at frame {idx} ({exc})") from exc


def _scaled_size(w: int, h: int, width: int | None) -> tuple[int, int] | None:
    if width is None or width >= w:
        return None
    return width, max(2, int(round(h * width / w / 2)) * 2)


def _to_bgr(frame, size: tuple[int, int] | None) -> NDArray[np.uint8]:
    if size is None:
        return frame.to_ndarray(format="bgr24")
    return frame.to_ndarray(format="bgr24", width=size[0], height=size[1])
