"""Core units with exact expected outputs (no Dagster, no model files)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from vcn_assets.core.align import align_faces, similarity_transform
from vcn_assets.core.config import CropConfig, ModelConfig, ShotConfig, TrackConfig
from vcn_assets.core.crops import NO_CROPS, UNKNOWN, VALID, sample_rows, size_filter, summarise_tracks
from vcn_assets.core.devices import threads_per_worker
from vcn_assets.core.pipeline import PipelineConfig, run_stage1
from vcn_assets.core.quality import frontalness, mad_outliers, serfiq_quality
from vcn_assets.core.shots import Shots, detect_shots
from vcn_assets.core.tracking import (
    ShotTracker,
    TrackBoxes,
    detect_ahead,
    detection_frames,
    iou_matrix,
    track_faces,
)
from vcn_assets.core.video import probe
from vcn_assets.models.base import ARCFACE_ALIGNMENT, ARCFACE_TEMPLATE_112, Detections
from vcn_assets.models.fake import FakeDetector
from vcn_assets.models.registry import build_models


def test_similarity_transform_recovers_known_transform() -> None:
    angle, scale, t = math.radians(10), 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    src = ARCFACE_TEMPLATE_112.astype(np.float64)
    dst = src @ rot.T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_align_faces_identity_on_template() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    out = align_faces(frame, ARCFACE_TEMPLATE_112[None], ARCFACE_ALIGNMENT)
    assert out.shape == (1, 112, 112, 3)
    np.testing.assert_array_equal(out[0], frame)
    assert align_faces(frame, np.zeros((0, 5, 2), np.float32), ARCFACE_ALIGNMENT).shape == (0, 112, 112, 3)


def test_shots_from_cuts_and_lookup() -> None:
    shots = Shots.from_cuts([40, 20, 20, 0, 99], n_frames=60)
    assert shots.start_frame.tolist() == [0, 20, 40]
    assert shots.end_frame.tolist() == [19, 39, 59]
    assert shots.cuts.tolist() == [20, 40]
    assert shots.shot_of(np.array([0, 19, 20, 59])).tolist() == [0, 0, 1, 2]


def test_detect_shots_golden_cuts(blob_movie: Path) -> None:
    shots = detect_shots(probe(blob_movie), ShotConfig())
    assert shots.cuts.tolist() == [20, 40]


def test_iou_matrix_exact() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]], rtol=1e-6)
    assert iou_matrix(a, np.zeros((0, 4), np.float32)).shape == (1, 0)


def _dets(*boxes: tuple[float, float, float, float]) -> Detections:
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    kps = np.repeat(xyxy[:, None, :2], 5, axis=1)
    return Detections(xyxy, np.ones(len(xyxy), np.float32), kps)


def test_tracker_follows_moving_boxes_and_starts_new_ones() -> None:
    tracker = ShotTracker(TrackConfig(min_detections=1))
    app = np.eye(2, 32, dtype=np.float32)
    tracker.update(0, _dets((0, 0, 10, 10), (50, 50, 60, 60)), app)
    tracker.update(3, _dets((52, 50, 62, 60), (1, 0, 11, 10)), app[::-1].copy())
    tracker.update(6, _dets((100, 100, 110, 110)), app[:1])
    tracks = {t.track_id: t.frames for t in tracker.reset()}
    assert tracks == {0: [0, 3], 1: [0, 3], 2: [6]}


def test_tracker_drops_short_tracks_and_resets() -> None:
    tracker = ShotTracker(TrackConfig(min_detections=2))
    tracker.update(0, _dets((0, 0, 10, 10)), np.eye(1, 32, dtype=np.float32))
    assert tracker.reset() == []
    assert tracker.reset() == []


def test_detection_frames_include_shot_ends() -> None:
    shots = Shots.from_cuts([7], 12)
    assert detection_frames(shots, 3).tolist() == [0, 3, 6, 7, 10, 11]


def test_track_faces_never_cross_cuts_and_interpolate(blob_movie: Path) -> None:
    info = probe(blob_movie)
    shots = detect_shots(info, ShotConfig())
    boxes = track_faces(info, shots, FakeDetector(), TrackConfig(detect_stride=3))
    assert boxes.n_tracks == 4
    for tid in range(4):
        frames = boxes.frame_idx[boxes.track_id == tid]
        assert len(set(shots.shot_of(frames).tolist())) == 1
        assert np.all(np.diff(frames) == 1)  # dense: interpolated between detections
    # the first square drifts 1 px per frame: interpolated x1 is exact
    t0 = (boxes.track_id == 0)
    np.testing.assert_allclose(boxes.xyxy[t0, 0], 20 + boxes.frame_idx[t0], atol=0.01)
    assert boxes.detected[t0].sum() == 8  # frames 0,3,...,18 and 19


def test_sample_rows_interval_and_cap() -> None:
    n = 40
    boxes = TrackBoxes(
        np.zeros(n, np.int64), np.arange(n), np.tile([0, 0, 30, 30], (n, 1)).astype(np.float32),
        np.zeros((n, 5, 2), np.float32), np.ones(n, np.float32), np.arange(n) % 2 == 0,
    )
    rows = sample_rows(boxes, CropConfig(crop_interval=5, max_crops_per_track=100))
    assert boxes.frame_idx[rows].tolist() == [0, 6, 12, 18, 24, 30, 36]
    rows = sample_rows(boxes, CropConfig(crop_interval=5, max_crops_per_track=3))
    assert boxes.frame_idx[rows].tolist() == [0, 18, 36]


def test_size_filter_min_area_and_top_k() -> None:
    xyxy = np.array([[0, 0, 30, 30], [0, 0, 50, 50], [0, 0, 40, 40], [0, 0, 10, 10]], np.float32)
    boxes = TrackBoxes(
        np.arange(4), np.zeros(4, np.int64), xyxy, np.zeros((4, 5, 2), np.float32),
        np.ones(4, np.float32), np.ones(4, bool),
    )
    kept = size_filter(boxes, np.arange(4), CropConfig(min_face_px=24, top_k_per_frame=2))
    assert kept.tolist() == [1, 2]


def test_serfiq_quality_formula() -> None:
    same = np.ones((1, 4, 3), np.float32)
    assert serfiq_quality(same)[0] == pytest.approx(1.0)
    two = np.array([[[1, 0], [0, 1]]], np.float32)  # distance sqrt(2)
    assert serfiq_quality(two)[0] == pytest.approx(2 / (1 + math.exp(math.sqrt(2))), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        serfiq_quality(np.ones((1, 1, 3), np.float32))


def test_mad_outliers_low_side_only() -> None:
    q = np.array([0.80, 0.82, 0.81, 0.79, 0.80, 0.30, 0.99], np.float32)
    assert mad_outliers(q, 3.0, 5).tolist() == [False] * 5 + [True, False]
    assert mad_outliers(q[:4], 3.0, 5).tolist() == [False] * 4
    tight = np.array([0.90, 0.902, 0.898, 0.901, 0.899, 0.873], np.float32)  # MAD 0.001
    assert mad_outliers(tight, 3.0, 5).tolist() == [False] * 5 + [True]
    assert mad_outliers(tight, 3.0, 5, min_gap=0.05).tolist() == [False] * 6


def test_frontalness() -> None:
    frontal = ARCFACE_TEMPLATE_112[None].copy()
    turned = frontal.copy()
    turned[0, 2, 0] = frontal[0, 1, 0]  # nose under the right eye
    np.testing.assert_allclose(frontalness(frontal), [0.999965], atol=1e-5)  # template is ~frontal
    assert frontalness(turned)[0] == pytest.approx(0.0, abs=0.01)  # nose offset = half the eye distance


def test_run_stage1_fake_backend_end_to_end(blob_movie: Path) -> None:
    cfg = PipelineConfig(tracks=TrackConfig(detect_stride=3), crops=CropConfig(crop_interval=6))
    result = run_stage1(blob_movie, cfg, build_models(ModelConfig(backend="fake")))
    assert len(result.shots) == 3
    assert result.tracks.track_id.tolist() == [0, 1, 2, 3]
    assert result.tracks.n_crops.tolist() == [4, 4, 4, 4]
    assert set(result.tracks.status.tolist()) == {VALID}
    assert result.crops.embedding.shape == (16, 16)
    assert all(j[:2] == b"\xff\xd8" for j in result.crops.jpeg)
    # the same colour (track 0 in shot 0 and track 3 in shot 2) embeds closer than different colours
    e = result.crops.embedding
    mean = np.stack([e[result.crops.track_id == t].mean(0) for t in range(4)])
    d = np.linalg.norm(mean[:, None] - mean[None], axis=2)
    assert d[0, 3] < d[0, 1] and d[0, 3] < d[0, 2]


def test_summarise_tracks_marks_outliers_and_empty() -> None:
    from vcn_assets.core.crops import Crops

    n_tracks = 7
    boxes = TrackBoxes(
        np.arange(n_tracks), np.zeros(n_tracks, np.int64), np.zeros((n_tracks, 4), np.float32),
        np.zeros((n_tracks, 5, 2), np.float32), np.ones(n_tracks, np.float32), np.ones(n_tracks, bool),
    )
    q = np.array([0.8, 0.81, 0.79, 0.8, 0.82, 0.2], np.float32)  # track 6 has no crop
    crops = Crops(
        np.arange(6), np.zeros(6, np.int64), np.zeros((6, 4), np.float32), np.zeros((6, 2), np.float32),
        q, np.ones(6, np.float32), np.ones(6, np.float32), np.zeros((6, 2, 2), np.float32), [b""] * 6,
    )
    s = summarise_tracks(boxes, crops, CropConfig())
    assert s.status.tolist() == [VALID] * 5 + [UNKNOWN, NO_CROPS]
    assert s.rep_crop.tolist() == [0, 1, 2, 3, 4, 5, -1]
    assert math.isnan(s.quality[6])


def test_contact_sheet_layout() -> None:
    import cv2

    from vcn_assets.core.contact_sheet import contact_sheet

    red = cv2.imencode(".jpg", np.full((112, 112, 3), (0, 0, 255), np.uint8))[1].tobytes()
    sheet = cv2.imdecode(np.frombuffer(contact_sheet([[red, red], [red]], thumb=20, per_row=3), np.uint8), 1)
    assert sheet.shape == (40, 60, 3)
    assert sheet[10, 10, 2] > 200 and sheet[30, 30, 2] < 60  # row 2 has one crop; the rest is background
    with pytest.raises(ValueError, match="at least one row"):
        contact_sheet([])


class _SlowEarlyFrames(FakeDetector):
    """Earlier frames take longer, so threads finish out of order."""

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        time.sleep(0.02 * (int(frame_bgr[0, 0, 0]) % 3))
        return super().detect(frame_bgr)


def test_detect_ahead_keeps_frame_order_and_results() -> None:
    frames = [(i, np.full((8, 8, 3), i, np.uint8)) for i in range(10)]
    seq = list(detect_ahead(iter(frames), _SlowEarlyFrames(), 1))
    par = list(detect_ahead(iter(frames), _SlowEarlyFrames(), 3))
    assert [i for i, _, _ in par] == list(range(10))
    for (_, f1, d1), (_, f2, d2) in zip(seq, par):
        assert f1 is f2 or np.array_equal(f1, f2)
        np.testing.assert_array_equal(d1.xyxy, d2.xyxy)


def test_track_faces_same_tracks_with_detector_threads(blob_movie: Path) -> None:
    info = probe(blob_movie)
    shots = detect_shots(info, ShotConfig())
    one = track_faces(info, shots, FakeDetector(), TrackConfig(detect_stride=3), workers=1)
    many = track_faces(info, shots, FakeDetector(), TrackConfig(detect_stride=3), workers=3)
    for name in ("track_id", "frame_idx", "xyxy", "detected"):
        np.testing.assert_array_equal(getattr(one, name), getattr(many, name))


def test_threads_per_worker_splits_and_restores() -> None:
    import torch

    before = torch.get_num_threads()
    with threads_per_worker(before + 5):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
