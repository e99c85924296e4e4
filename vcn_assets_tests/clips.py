"""Tiny generated clips for tests: coloured bright 'faces' on dark backgrounds, with hard cuts."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

BACKGROUNDS = [(40, 10, 10), (10, 40, 10), (10, 10, 40), (35, 35, 5)]
FACE_COLOURS = [(250, 200, 160), (160, 250, 200), (200, 160, 250)]


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="bgr24")))
        out.mux(stream.encode())
    return path


def blob_clip(path: Path, shots: list[list[int]], shot_len: int = 20, size: tuple[int, int] = (160, 240)) -> Path:
    """A clip of ``len(shots)`` shots; shot i shows bright squares of the colours listed in shots[i],
    drifting slowly, on a distinct dark background."""
    h, w = size
    frames = []
    for s, faces in enumerate(shots):
        for t in range(shot_len):
            f = np.zeros((h, w, 3), np.uint8)
            f[:] = BACKGROUNDS[s % len(BACKGROUNDS)]
            f[(np.arange(h) // 8 % 2 == 0)] += 8  # texture so each shot has edges
            for k, c in enumerate(faces):
                x, y = 20 + 90 * k + t, 40 + (t // 2)
                f[y : y + 48, x : x + 40] = FACE_COLOURS[c]
            frames.append(f)
    return write_video(path, frames)
