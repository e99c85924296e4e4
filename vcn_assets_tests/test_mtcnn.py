"""MTCNN detector: output contract, a real group photo, downscaled detection, missing weights.

Needs facenet-pytorch's weight files (``pip install --no-deps facenet-pytorch==2.6.0``) and
insightface's bundled sample image ``insightface/data/images/t1.jpg`` (six faces).
"""

from __future__ import annotations

import shutil
from importlib.util import find_spec
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from vcn_assets.models.base import Detections, FaceDetector
from vcn_assets.models.mtcnn import (
    INSTALL_HINT,
    WEIGHT_FILES,
    MTCNNConfig,
    MTCNNDetector,
    default_weights_dir,
    nms,
)


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector(MTCNNConfig(), num_threads=2)


@pytest.fixture(scope="module")
def group_photo() -> NDArray[np.uint8]:
    spec = find_spec("insightface")
    assert spec is not None and spec.origin is not None, "insightface is a project dependency"
    image = cv2.imread(str(Path(spec.origin).parent / "data" / "images" / "t1.jpg"))
    assert image is not None
    return image


def _assert_contract(dets: Detections, n: int) -> None:
    assert len(dets) == n
    assert dets.xyxy.shape == (n, 4) and dets.score.shape == (n,) and dets.kps.shape == (n, 5, 2)
    assert dets.xyxy.dtype == dets.score.dtype == dets.kps.dtype == np.float32


def test_blank_frames_give_empty_detections(detector: MTCNNDetector) -> None:
    assert isinstance(detector, FaceDetector)
    for frame in (np.zeros((480, 640, 3), np.uint8), np.full((9, 7, 3), 128, np.uint8)):
        _assert_contract(detector.detect(frame), 0)


def test_rejects_non_bgr_input(detector: MTCNNDetector) -> None:
    with pytest.raises(ValueError, match="uint8 BGR"):
        detector.detect(np.zeros((64, 64), np.uint8))


def test_finds_the_six_faces_of_a_group_photo(
    detector: MTCNNDetector, group_photo: NDArray[np.uint8]
) -> None:
    dets = detector.detect(group_photo)
    _assert_contract(dets, 6)
    h, w = group_photo.shape[:2]
    assert (dets.score >= 0.9).all()
    assert (dets.xyxy[:, :2] >= 0).all() and (dets.xyxy[:, 2:] <= [w, h]).all()
    assert (dets.xyxy[:, 2:] - dets.xyxy[:, :2] > 40).all()  # faces here are ~100 px
    kps = dets.kps
    assert (kps >= dets.xyxy[:, None, :2]).all() and (kps <= dets.xyxy[:, None, 2:]).all()
    assert (kps[:, :2, 1].max(1) < kps[:, 3:, 1].min(1)).all(), "eyes above the mouth"
    assert (kps[:, 0, 0] < kps[:, 1, 0]).all() and (kps[:, 3, 0] < kps[:, 4, 0]).all(), "ArcFace order"


def test_max_side_maps_boxes_back(detector: MTCNNDetector, group_photo: NDArray[np.uint8]) -> None:
    full = detector.detect(group_photo)
    small = MTCNNDetector(MTCNNConfig(max_side=640)).detect(group_photo)
    _assert_contract(small, 6)
    lt = np.maximum(full.xyxy[:, None, :2], small.xyxy[None, :, :2])
    rb = np.minimum(full.xyxy[:, None, 2:], small.xyxy[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 2)
    area = np.prod(full.xyxy[:, 2:] - full.xyxy[:, :2], 1)
    iou = inter / (area[:, None] + np.prod(small.xyxy[:, 2:] - small.xyxy[:, :2], 1)[None] - inter)
    assert (iou.max(1) > 0.7).all()


def test_missing_weights_error_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        MTCNNDetector(weights_dir=tmp_path)
    message = str(err.value)
    assert INSTALL_HINT in message
    assert all(str(tmp_path / name) in message for name in WEIGHT_FILES)


def test_partly_missing_weights_are_named(tmp_path: Path) -> None:
    source = default_weights_dir()
    assert source is not None, f"install the weights: {INSTALL_HINT}"
    shutil.copy(source / "pnet.pt", tmp_path / "pnet.pt")
    with pytest.raises(FileNotFoundError, match=r"missing: rnet\.pt, onet\.pt"):
        MTCNNDetector(weights_dir=tmp_path)


def test_nms_groups_and_min_overlap() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [2, 2, 6, 6]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]
    assert nms(boxes, scores, 0.5, groups=np.array([0, 0, 1, 1])).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.5, use_min=True).tolist() == [0]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        MTCNNConfig(scale_factor=1.0)
    with pytest.raises(ValueError):
        MTCNNConfig(thresholds=(0.6, 0.7))  # type: ignore[arg-type]
