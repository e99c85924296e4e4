"""Reading movies: probing, hashing and streaming decoded frames, with clear errors.

Usage::

    info = probe(Path("data/movies/ep1.mp4"))        # VideoInfo or VideoError naming the file
    for frame_idx, frame_bgr in iter_frames(info.path, frames={0, 10, 20}):
        ...

Frames are streamed one at a time (never all in memory). ``frame_idx`` counts decoded frames
from 0 in presentation order, the convention of the benchmark cases' ground truth. Frames come out
upright: a display matrix (a phone's "rotate 90") is applied in quarter turns as players do, and
``VideoInfo.width``/``height`` are the upright size.
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
        name = str(path) if str(path).isprintable() else ascii(str(path))
        problem = " ".join(str(problem).split())  # one line, whatever FFmpeg said
        super().__init__(f"{name}: {problem}")
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
    quarter_turns: int = 0  # counter-clockwise quarter turns that make frames upright (from probe)

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps


def content_hash(path: Path) -> str:
    """sha256 of the file's bytes: the movie's data version."""
    return file_sha256(path)


def _open(path: Path):
    """(container, its movie stream): the first video stream that is not an attached picture (cover
    art) and that this FFmpeg can decode. Raises VideoError otherwise."""
    import av

    if not path.is_file():
        raise VideoError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(path, f"not a readable video file ({_reason(exc)})") from exc
    movies = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not movies or movies[0].codec_context is None:
        container.close()
        if not movies:
            raise VideoError(path, "contains no video stream (audio-only or data file)")
        raise VideoError(path, "its video stream's codec is unknown or not decodable by this FFmpeg")
    return container, movies[0]


def _reason(exc: Exception) -> str:
    """FFmpeg's words for an error, without the errno and the file name PyAV adds."""
    return getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"


def _rotation(frame) -> int:
    """The frame's display rotation, degrees counter-clockwise (0 without a display matrix)."""
    try:
        return int(frame.rotation)
    except (ValueError, OverflowError):  # a garbled matrix
        return 0


def _quarter_turns(degrees: int) -> int:
    """Counter-clockwise quarter turns (0-3) that make a frame with this display rotation upright.

    Like FFmpeg's own autorotate, an angle that is not a multiple of 90 degrees (or a garbled
    matrix) is ignored: players show such a movie unrotated too. Mirroring in the matrix is ignored.
    """
    turns = round(degrees / 90)
    if abs(degrees) > 360 or abs(degrees - 90 * turns) > 1:
        return 0
    return turns % 4


def _scan(path: Path, container, stream) -> tuple[int, int]:
    """(video packets holding data, display rotation of the first decoded frame): one demux pass
    that decodes only until the first frame comes out."""
    import av

    n, degrees = 0, None
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue
            n += 1
            if degrees is None:
                degrees = next((_rotation(f) for f in stream.decode(packet)), None)
        if degrees is None and n:
            degrees = next((_rotation(f) for f in stream.decode(None)), None)
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"unreadable after {n} frame(s) ({_reason(exc)})") from exc
    if n and degrees is None:
        raise VideoError(path, f"none of its {n} video packets decodes to a picture")
    return n, degrees or 0


def probe(path: Path, min_frames: int = 2) -> VideoInfo:
    """Read a movie's header, count its frames and decode the first: raises :class:`VideoError` for
    unusable files. Width and height are the upright (displayed) size."""
    container, stream = _open(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
        codec = stream.codec_context.name
        if fps <= 0 or width <= 0 or height <= 0:
            raise VideoError(path, f"video stream has no usable frame rate or size ({fps} fps, {width}x{height})")
        n_frames, degrees = _scan(path, container, stream)
    if n_frames < min_frames:
        raise VideoError(path, f"has {n_frames} frame(s); at least {min_frames} are needed")
    turns = _quarter_turns(degrees)
    if degrees % 360 and not turns:
        log.warning("%s: ignoring its display rotation of %s degrees (not a quarter turn)", path, degrees)
    if turns % 2:
        width, height = height, width
    return VideoInfo(path, fps, n_frames, width, height, codec, turns)


def iter_frames(
    path: Path, frames: Container[int] | None = None, width: int | None = None
) -> Iterator[tuple[int, NDArray[np.uint8]]]:
    """Decode ``path`` once, yielding ``(frame_idx, frame_bgr)`` for the wanted frames.

    ``frames`` limits which frames are converted to arrays (all others are decoded but skipped
    cheaply); ``width`` downscales the upright frame on conversion (aspect kept). Frames are turned
    upright by the stream's display matrix. Decoding errors raise VideoError.
    """
    import av

    container, stream = _open(path)
    stream.thread_type = "AUTO"
    idx = 0
    try:
        with container:
            for frame in container.decode(stream):
                if frames is None or idx in frames:
                    yield idx, _to_bgr(frame, width)
                idx += 1
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"decoding failed at frame {idx} ({_reason(exc)})") from exc


def _scaled_size(w: int, h: int, width: int | None) -> tuple[int, int] | None:
    if width is None or width >= w:
        return None
    return width, max(2, round(h * width / w / 2) * 2)


def _to_bgr(frame, width: int | None) -> NDArray[np.uint8]:
    """The frame as an upright BGR array, downscaled to ``width`` when that is smaller."""
    turns = _quarter_turns(_rotation(frame))
    w, h = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
    size = _scaled_size(w, h, width)
    if size is None:
        bgr = frame.to_ndarray(format="bgr24")
    else:
        out_w, out_h = size[::-1] if turns % 2 else size  # scale before turning: in stored orientation
        bgr = frame.to_ndarray(format="bgr24", width=out_w, height=out_h)
    return np.ascontiguousarray(np.rot90(bgr, turns)) if turns else bgr
