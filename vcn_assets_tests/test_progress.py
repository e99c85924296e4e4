"""Progress: the core's (done, total) callbacks, the rate-limited reporter, listeners and bars."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from vcn_assets.core.config import (
    CropConfig,
    FinetuneConfig,
    MatchConfig,
    ModelConfig,
    ShotConfig,
    TrackConfig,
)
from vcn_assets.core.crops import extract_crops, sample_rows, size_filter
from vcn_assets.core.finetune import TrainingSet, finetune
from vcn_assets.core.progress import ProgressCounter
from vcn_assets.core.shots import Shots, detect_shots
from vcn_assets.core.tracking import detection_frames, track_faces
from vcn_assets.core.video import probe
from vcn_assets.models.registry import build_models
from vcn_assets.orchestration.progress import (
    ProgressBars,
    ProgressEvent,
    ProgressReporter,
    format_duration,
    format_progress,
    listening,
    terminal_progress_bars,
)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))

    def assert_complete(self, total: int) -> None:
        done = [d for d, _ in self.calls]
        assert self.calls, "progress was never reported"
        assert all(t == total for _, t in self.calls)
        assert np.all(np.diff(done) > 0), "done must strictly increase"
        assert done[-1] == total and max(done) == total


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counter_clamps_skips_repeats_and_finishes() -> None:
    rec = Recorder()
    c = ProgressCounter(5, rec)
    c.update(2)
    c.update(2)
    c.update(1)  # going back is ignored
    c.advance(10)  # clamped to the total
    c.finish()
    assert rec.calls == [(2, 5), (5, 5)]
    empty = Recorder()
    ProgressCounter(0, empty).finish()
    assert empty.calls == [(0, 0)]
    ProgressCounter(3, None).finish()  # no callback: nothing to do
    with pytest.raises(ValueError):
        ProgressCounter(-1, rec)


def test_detect_shots_reports_every_frame(blob_movie: Path) -> None:
    info = probe(blob_movie)
    rec = Recorder()
    shots = detect_shots(info, ShotConfig(), progress=rec)
    assert len(shots) == 3
    rec.assert_complete(info.n_frames)
    assert len(rec.calls) == info.n_frames


def test_track_faces_and_extract_crops_report_progress(blob_movie: Path) -> None:
    info = probe(blob_movie)
    shots = Shots.from_cuts([20, 40], info.n_frames)
    models = build_models(ModelConfig(backend="fake"))
    cfg = TrackConfig()
    rec = Recorder()
    boxes = track_faces(info, shots, models.detector, cfg, progress=rec)
    rec.assert_complete(len(detection_frames(shots, cfg.detect_stride)))
    plain = track_faces(info, shots, models.detector, cfg)
    for column in ("track_id", "frame_idx", "xyxy", "kps", "score", "detected"):  # results unchanged
        np.testing.assert_array_equal(getattr(boxes, column), getattr(plain, column))
    rec = Recorder()
    crops = extract_crops(info, boxes, models, CropConfig(), progress=rec)
    rec.assert_complete(len(size_filter(boxes, sample_rows(boxes, CropConfig()), CropConfig())))
    np.testing.assert_array_equal(crops.embedding, extract_crops(info, boxes, models, CropConfig()).embedding)


def test_finetune_reports_steps() -> None:
    rng = np.random.default_rng(0)
    views = rng.normal(size=(12, 2, 16)).astype(np.float32)
    data = TrainingSet.build(views, np.repeat(np.arange(4), 3), 4, np.zeros((4, 4), bool))
    cfg = FinetuneConfig(rounds=2, steps_per_round=7, warmup_steps=2, batch_tracks=4, hidden_dim=16,
                         bottleneck_dim=8, out_dim=8)
    rec = Recorder()
    with_progress = finetune(data, cfg, MatchConfig(), progress=rec)
    rec.assert_complete(14)
    assert len(rec.calls) == 14
    assert with_progress.losses == finetune(data, cfg, MatchConfig()).losses  # results unchanged
    none = Recorder()
    finetune(TrainingSet.build(views[:0], np.zeros(0, np.int64), 0, np.zeros((0, 0), bool)), cfg, MatchConfig(),
             progress=none)
    assert none.calls == [(0, 0)]


def test_format_progress() -> None:
    assert format_progress("tracks", "frames", 1200, 5000, 1200 / 95.1) == \
        "tracks: 1200/5000 frames (24%), 95.1 fps, ETA 40 s"
    assert format_progress("crops", "crops", 30, 40, 10.0) == "crops: 30/40 crops (75%), 3.0 crops/s, ETA 3 s"
    assert format_progress("shots", "frames", 500, 500, 250.0) == "shots: 500/500 frames (100%), 2.0 fps, took 4 min 10 s"
    assert format_progress("shots", "frames", 0, 500, 0.0) == "shots: 0/500 frames (0%)"
    assert format_progress("finetune", "steps", 0, 0, 1.0) == "finetune: 0/0 steps (100%)"
    assert format_progress("tracks", "frames", 1, 10**6, 1.0).endswith("ETA 277 h 46 min")
    assert [format_duration(s) for s in (0.4, 59.6, 61, 3600 * 2 + 7 * 60 + 3)] == ["0 s", "1 min 00 s", "1 min 01 s",
                                                                                  "2 h 07 min"]


def test_reporter_logs_at_most_every_interval_and_once_at_100_percent() -> None:
    clock, lines = FakeClock(), []
    report = ProgressReporter("tracks", "frames", lines.append, interval_s=5.0, clock=clock)
    for done in range(1, 101):  # 100 frames at 2 frames per second: 50 s
        clock.now += 0.5
        report(done, 100)
    report(100, 100)  # a repeated final call logs nothing more
    assert lines == [
        "tracks: 10/100 frames (10%), 2.0 fps, ETA 45 s",
        "tracks: 20/100 frames (20%), 2.0 fps, ETA 40 s",
        "tracks: 30/100 frames (30%), 2.0 fps, ETA 35 s",
        "tracks: 40/100 frames (40%), 2.0 fps, ETA 30 s",
        "tracks: 50/100 frames (50%), 2.0 fps, ETA 25 s",
        "tracks: 60/100 frames (60%), 2.0 fps, ETA 20 s",
        "tracks: 70/100 frames (70%), 2.0 fps, ETA 15 s",
        "tracks: 80/100 frames (80%), 2.0 fps, ETA 10 s",
        "tracks: 90/100 frames (90%), 2.0 fps, ETA 5 s",
        "tracks: 100/100 frames (100%), 2.0 fps, took 50 s",
    ]


def test_reporter_short_step_logs_only_completion() -> None:
    clock, lines = FakeClock(), []
    report = ProgressReporter("shots", "frames", lines.append, clock=clock)
    for done in range(1, 61):
        clock.now += 0.01
        report(done, 60)
    assert lines == ["shots: 60/60 frames (100%), 100.0 fps, took 1 s"]


def test_listeners_receive_every_report_while_registered() -> None:
    events: list[ProgressEvent] = []
    report = ProgressReporter("crops", "crops", lambda line: None, clock=FakeClock())
    with listening(events.append):
        report(1, 2)
        report(2, 2)
    report(2, 2)  # after the block: not delivered
    assert events == [ProgressEvent("crops", "crops", 1, 2), ProgressEvent("crops", "crops", 2, 2)]


def test_progress_bars_draw_one_bar_per_step() -> None:
    out = io.StringIO()
    bars = ProgressBars(out)
    for done in (10, 20, 40):
        bars(ProgressEvent("tracks", "frames", done, 40))
    bars(ProgressEvent("crops", "crops", 3, 8))
    bars(ProgressEvent("crops", "crops", 1, 8))  # restarted (e.g. a new movie): a new bar
    bars.close()
    text = out.getvalue()
    assert "tracks: 100%" in text and "40/40" in text and "crops:" in text


def test_terminal_progress_bars_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    report = ProgressReporter("tracks", "frames", lambda line: None, clock=FakeClock())
    pipe = io.StringIO()
    with terminal_progress_bars(pipe):
        report(5, 10)
    assert pipe.getvalue() == ""
    tty = Tty()
    with terminal_progress_bars(tty):
        report(5, 10)
    assert "tracks:" in tty.getvalue() and "5/10" in tty.getvalue()
