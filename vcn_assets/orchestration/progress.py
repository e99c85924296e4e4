"""Progress of long asset steps: rate-limited lines in the Dagster log, and terminal progress bars.

Usage (in an asset)::

    report = step_progress(context, "tracks", "frames")
    boxes = track_faces(info, shots, detector, cfg, progress=report)
    # the run log: "tracks: 1200/5000 frames (24%), 95.1 fps, ETA 40 s" at most every 5 s, and at 100%

Usage (a process running Dagster in-process, e.g. the ``vcn`` command)::

    with terminal_progress_bars():        # one tqdm bar per step on stderr, when it is a terminal
        dg.materialize(...)

Every report also goes to the process-local listeners registered with :func:`listening`: the
in-process executor runs the assets in this process, so they reach the command's progress bars.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from tqdm import tqdm

LOG_INTERVAL_S = 5.0


@dataclass(frozen=True)
class ProgressEvent:
    step: str
    unit: str
    done: int
    total: int


Listener = Callable[[ProgressEvent], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every progress report of this process to ``listener`` while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def _notify(event: ProgressEvent) -> None:
    with _lock:
        current = tuple(_listeners)
    for listener in current:
        listener(event)


def format_duration(seconds: float) -> str:
    """``"40 s"``, ``"3 min 05 s"``, ``"2 h 07 min"``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_progress(step: str, unit: str, done: int, total: int, elapsed_s: float) -> str:
    """``"tracks: 1200/5000 frames (24%), 95.1 fps, ETA 40 s"``; at 100% the time taken instead of
    the ETA; rate and ETA are left out until time has passed."""
    pct = 100 if total <= 0 else math.floor(100 * done / total)
    line = f"{step}: {done}/{total} {unit} ({pct}%)"
    if elapsed_s <= 0 or done <= 0:
        return line
    rate = done / elapsed_s
    line += f", {rate:.1f} {'fps' if unit == 'frames' else unit + '/s'}"
    if done >= total:
        return line + f", took {format_duration(elapsed_s)}"
    return line + f", ETA {format_duration((total - done) / rate)}"


class ProgressReporter:
    """A core ``progress(done, total)`` callback that logs at most every ``interval_s`` seconds (and
    once at 100%) and notifies the process's listeners of every call.

    ``clock`` is injectable (tests use a fake one); the rate is the average since construction.
    """

    def __init__(self, step: str, unit: str, log: Callable[[str], None], interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.step, self.unit, self._log = step, unit, log
        self._interval_s, self._clock = interval_s, clock
        self._start = self._last_log = clock()
        self._finished = False

    def __call__(self, done: int, total: int) -> None:
        _notify(ProgressEvent(self.step, self.unit, done, total))
        now = self._clock()
        complete = done >= total
        if (complete and not self._finished) or (not complete and now - self._last_log >= self._interval_s):
            self._last_log, self._finished = now, complete
            self._log(format_progress(self.step, self.unit, done, total, now - self._start))


def step_progress(context: dg.AssetExecutionContext, step: str, unit: str) -> ProgressReporter:
    """A reporter for one asset step, logging to the run's log."""
    return ProgressReporter(step, unit, context.log.info)


class ProgressBars:
    """A listener drawing one tqdm bar per step on ``file``; a bar closes when its step completes
    (a step that starts again without completing, e.g. after a failure, gets a new bar)."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file
        self._bars: dict[str, tqdm] = {}

    def __call__(self, event: ProgressEvent) -> None:
        bar = self._bars.get(event.step)
        if bar is not None and event.done < bar.n:
            bar.close()
            bar = None
        if bar is None:
            from tqdm import tqdm

            bar = self._bars[event.step] = tqdm(total=event.total, desc=event.step, unit=f" {event.unit}",
                                                file=self._file, dynamic_ncols=True)
        bar.total = event.total
        bar.update(event.done - bar.n)
        if event.done >= event.total:
            bar.close()
            del self._bars[event.step]

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


@contextmanager
def terminal_progress_bars(file: IO[str] | None = None) -> Iterator[None]:
    """Progress bars on ``file`` (default stderr) while the block runs; none when it is not a
    terminal (logs and pipes get no bar-drawing control characters)."""
    file = file or sys.stderr
    if not file.isatty():
        yield
        return
    bars = ProgressBars(file)
    try:
        with listening(bars):
            yield
    finally:
        bars.close()
