"""Progress of long core steps, reported through an optional ``(done, total)`` callback.

Usage::

    def show(done: int, total: int) -> None: ...
    boxes = track_faces(info, shots, detector, cfg, progress=show)

    counter = ProgressCounter(total=len(work), progress=progress)   # inside a core step
    for item in work:
        ...
        counter.advance()
    counter.finish()

The core never decides how progress is shown (the Dagster layer logs it, the CLI draws a bar): it
only promises that ``done`` strictly increases, never exceeds ``total``, and ends at ``total``.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
"""``progress(done, total)``: ``done`` units of a step's ``total`` are finished."""


class ProgressCounter:
    """Counts finished units towards ``total`` and reports each increase to ``progress`` (if any).

    ``done`` is clamped to ``total`` (a movie may decode a few frames more than its header counted),
    so the callback sees strictly increasing values ending with exactly one ``(total, total)``.
    """

    def __init__(self, total: int, progress: Progress | None) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total = total
        self.done = 0
        self._progress = progress
        self._reported = -1

    def update(self, done: int) -> None:
        """Set the number of finished units (values below the current one are ignored)."""
        self.done = max(self.done, min(done, self.total))
        if self._progress is not None and self.done > self._reported:
            self._reported = self.done
            self._progress(self.done, self.total)

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def finish(self) -> None:
        """Report ``(total, total)`` unless already reported (also for an empty step: ``(0, 0)``)."""
        self.update(self.total)
