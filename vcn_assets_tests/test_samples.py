"""The generated sample case: file format, readback, GT sanity, determinism and detectability.

Usage::

    pytest vcn_assets_tests/test_samples.py -q
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from vcn_assets.bench.frontend_metrics import frontend_metrics, gt_tracks, load_case, pairwise_iou
from vcn_assets.core.samples import SampleSpec, load_source_faces, make_blank_movie, make_sample_case

CASE_FILES = ("movie.mp4", "gt_faces.csv", "gt_shots.txt", "case.json")


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    movie = make_sample_case(tmp_path_factory.mktemp("sample") / "sample_case")
    return movie.parent


def _decode_bgr(movie: Path) -> list[np.ndarray]:
    with av.open(str(movie)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def _dlib_boxes(frame_bgr: np.ndarray) -> np.ndarray:
    import dlib

    rects = dlib.get_frontal_face_detector()(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB), 1)
    boxes = [[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects]
    return np.array(boxes, np.float64).reshape(-1, 4)


def test_source_faces_are_the_eight_identities() -> None:
    names = [s.identity for s in load_source_faces()]
    assert names == [f"person_{i}" for i in range(1, 7)] + ["tom_hanks", "astronaut"]


def test_case_dir_has_the_four_files(sample_dir: Path) -> None:
    assert all((sample_dir / name).is_file() for name in CASE_FILES)
    meta = json.loads((sample_dir / "case.json").read_text())
    assert set(meta) >= {"name", "source", "n_frames", "width", "height", "fps", "identities", "notes"}
    assert (meta["width"], meta["height"], meta["fps"]) == (640, 360, 25)
    assert len(meta["identities"]) == 8


def test_movie_reads_back_with_case_json_frames_and_fps(sample_dir: Path) -> None:
    meta = json.loads((sample_dir / "case.json").read_text())
    with av.open(str(sample_dir / "movie.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == meta["fps"]
        assert (stream.codec_context.width, stream.codec_context.height) == (meta["width"], meta["height"])
        n_decoded = sum(1 for _ in container.decode(video=0))
    assert n_decoded == meta["n_frames"]


def test_gt_boxes_inside_frame_and_shots_consistent(sample_dir: Path) -> None:
    case = load_case(sample_dir)
    xyxy = case.gt_boxes.xyxy
    assert len(xyxy) > 0
    assert (xyxy[:, :2] >= 0).all() and (xyxy[:, 2] <= case.width).all() and (xyxy[:, 3] <= case.height).all()
    assert len(case.gt_cuts) == SampleSpec().n_shots - 1
    heights = xyxy[:, 3] - xyxy[:, 1]
    assert heights.min() > 0.8 * SampleSpec().face_height_px[0] * (1 - 0.1)


def test_every_identity_appears_in_two_shots(sample_dir: Path) -> None:
    case = load_case(sample_dir)
    shot = np.searchsorted(case.gt_cuts, case.gt_boxes.frame, side="right")
    shots_of: dict[str, set[int]] = defaultdict(set)
    for ident, s in zip(case.gt_boxes.identity.tolist(), shot.tolist()):
        shots_of[ident].add(s)
    assert set(shots_of) == set(case.identities)
    assert min(len(v) for v in shots_of.values()) >= 2


def test_gt_is_a_perfect_prediction(sample_dir: Path) -> None:
    case = load_case(sample_dir)
    g = case.gt_boxes
    m = frontend_metrics(case, case.gt_cuts, g.frame, g.xyxy, gt_tracks(g, case.gt_cuts))
    assert m["shot_f1"] == m["gt_box_recall"] == m["track_purity"] == m["tracks_per_gt_track"] == 1.0


def test_dlib_finds_the_faces_of_the_first_shot(sample_dir: Path) -> None:
    case = load_case(sample_dir)
    middle = int(case.gt_cuts[0]) // 2
    frame = _decode_bgr(case.movie)[middle]
    gt = case.gt_boxes.xyxy[case.gt_boxes.frame == middle]
    found = _dlib_boxes(frame)
    assert len(gt) >= 1 and len(found) >= 1
    assert (pairwise_iou(gt, found).max(axis=1) >= 0.3).all()


def _small_spec(seed: int) -> SampleSpec:
    return SampleSpec(n_shots=3, shot_seconds=(0.2, 0.3), identities=2, width=320, height=240,
                      face_height_px=(50, 70), seed=seed)


def test_same_seed_same_gt(tmp_path: Path) -> None:
    a = make_sample_case(tmp_path / "a", _small_spec(3)).parent
    b = make_sample_case(tmp_path / "b", _small_spec(3)).parent
    c = make_sample_case(tmp_path / "c", _small_spec(4)).parent
    gt_a = (a / "gt_faces.csv").read_text()
    assert gt_a == (b / "gt_faces.csv").read_text()
    assert (a / "gt_shots.txt").read_text() == (b / "gt_shots.txt").read_text()
    assert gt_a != (c / "gt_faces.csv").read_text()
    rows = list(csv.reader(gt_a.splitlines()))
    assert rows[0] == ["frame", "x1", "y1", "x2", "y2", "identity"]


def test_spec_rejects_too_few_face_slots() -> None:
    with pytest.raises(ValueError, match="twice"):
        SampleSpec(n_shots=3, faces_per_shot=(1, 2), identities=8)
    with pytest.raises(ValueError, match="even"):
        SampleSpec(width=641)


def test_blank_movie_has_no_faces_and_a_cut(tmp_path: Path) -> None:
    movie = make_blank_movie(tmp_path / "blank.mp4", 20, 320, 240, 25)
    frames = _decode_bgr(movie)
    assert len(frames) == 20 and frames[0].shape == (240, 320, 3)
    assert len(_dlib_boxes(frames[5])) == 0 and len(_dlib_boxes(frames[15])) == 0
    jump = np.abs(frames[10].astype(np.float32) - frames[9].astype(np.float32)).mean()
    steady = np.abs(frames[9].astype(np.float32) - frames[8].astype(np.float32)).mean()
    assert jump > 3 * steady
