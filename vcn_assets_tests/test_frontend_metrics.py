"""Frontend metrics against hand-computed expectations.

Usage::

    pytest vcn_assets_tests/test_frontend_metrics.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vcn_assets.bench.frontend_metrics import (
    Case,
    GtBoxes,
    frontend_metrics,
    gt_tracks,
    load_case,
    match_boxes,
    pairwise_iou,
    shot_f1,
    track_identities,
)

BOX_A = [0.0, 0.0, 10.0, 10.0]
BOX_B = [100.0, 0.0, 110.0, 10.0]


def _gt(rows: list[tuple[int, list[float], str]]) -> GtBoxes:
    return GtBoxes(
        frame=np.array([r[0] for r in rows], np.int64),
        xyxy=np.array([r[1] for r in rows], np.float64).reshape(-1, 4),
        identity=np.array([r[2] for r in rows], dtype=str),
    )


def _case(gt: GtBoxes, cuts: list[int], n_frames: int = 10) -> Case:
    cuts_arr = np.array(cuts, np.int64)
    return Case("toy", Path("movie.mp4"), 25.0, n_frames, 200, 100, ("alice", "bob"), gt, cuts_arr)


# ---------------------------------------------------------------- shot_f1


@pytest.mark.parametrize(
    ("pred", "gt", "tolerance", "expected"),
    [
        pytest.param([11, 53, 90], [10, 50, 90], 1, 4 / 6, id="one-off-by-1-matches-one-off-by-3-does-not"),
        pytest.param([11, 53, 90], [10, 50, 90], 3, 1.0, id="tolerance-3-matches-all"),
        pytest.param([10], [10, 11], 1, 2 / 3, id="one-to-one"),
        pytest.param([10, 10], [10], 1, 1.0, id="duplicate-pred-is-one-cut"),
        pytest.param([11, 12], [10, 11], 1, 1.0, id="maximum-matching-not-nearest-first"),
        pytest.param([], [], 1, 1.0, id="both-empty"),
        pytest.param([], [10], 1, 0.0, id="no-pred"),
        pytest.param([10], [], 1, 0.0, id="no-gt"),
    ],
)
def test_shot_f1(pred: list[int], gt: list[int], tolerance: int, expected: float) -> None:
    assert shot_f1(np.array(pred), np.array(gt), tolerance) == pytest.approx(expected)


# ---------------------------------------------------------------- gt_tracks


def test_gt_tracks_splits_on_identity_shot_and_gap() -> None:
    gt = _gt(
        [(0, BOX_A, "alice"), (1, BOX_A, "alice"), (2, BOX_A, "alice"), (8, BOX_A, "alice")]  # gap 6 > 5
        + [(3, BOX_B, "bob"), (4, BOX_B, "bob"), (5, BOX_B, "bob"), (6, BOX_B, "bob")]  # cut at 5
        + [(6, BOX_B, "carol"), (11, BOX_B, "carol")]  # gap 5 <= 5
    )
    tracks = gt_tracks(gt, np.array([5]), max_gap=5)
    # tracks by first frame: alice@0 -> 0, bob@3 -> 1, bob@5 -> 2, carol@6 -> 3, alice@8 -> 4
    np.testing.assert_array_equal(tracks, [0, 0, 0, 4, 1, 1, 2, 2, 3, 3])


def test_gt_tracks_empty() -> None:
    assert gt_tracks(_gt([]), np.array([3])).shape == (0,)


# ---------------------------------------------------------------- match_boxes


def test_pairwise_iou_values() -> None:
    iou = pairwise_iou(np.array([BOX_A]), np.array([[5.0, 0.0, 15.0, 10.0], BOX_B, BOX_A]))
    np.testing.assert_allclose(iou, [[50 / 150, 0.0, 1.0]])


def test_match_boxes_hungarian_beats_greedy() -> None:
    # IoU(A,P)=9/11, IoU(A,Q)=7/13, IoU(B,P)=8/12, IoU(B,Q)=4/16 < 0.5.
    # Greedy (best pair first) takes A-P and leaves B unmatched; max summed IoU takes A-Q and B-P.
    gt = _gt([(0, [0, 0, 10, 10], "a"), (0, [3, 0, 13, 10], "b")])
    pred_xyxy = np.array([[1, 0, 11, 10], [-3, 0, 7, 10]], np.float64)  # P, Q
    np.testing.assert_array_equal(match_boxes(gt, np.array([0, 0]), pred_xyxy), [1, 0])


def test_match_boxes_respects_frame_and_threshold() -> None:
    gt = _gt([(0, BOX_A, "a"), (1, BOX_A, "a"), (2, BOX_A, "a")])
    pred_frame = np.array([1, 2, 5])
    pred_xyxy = np.array([BOX_A, [6.0, 0.0, 16.0, 10.0], BOX_A])  # frame 2: IoU 4/16
    np.testing.assert_array_equal(match_boxes(gt, pred_frame, pred_xyxy), [-1, 0, -1])
    np.testing.assert_array_equal(match_boxes(gt, pred_frame, pred_xyxy, iou_min=0.2), [-1, 0, 1])


def test_match_boxes_empty_inputs() -> None:
    gt = _gt([(0, BOX_A, "a")])
    np.testing.assert_array_equal(match_boxes(gt, np.zeros(0, np.int64), np.zeros((0, 4))), [-1])
    assert match_boxes(_gt([]), np.array([0]), np.array([BOX_A])).shape == (0,)


def test_match_boxes_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="pred_xyxy"):
        match_boxes(_gt([]), np.array([0, 1]), np.zeros((2, 5)))


# ---------------------------------------------------------------- frontend_metrics


def _two_track_toy() -> tuple[Case, np.ndarray, np.ndarray, np.ndarray]:
    """alice at BOX_A and bob at BOX_B on frames 0-3, one shot (2 GT tracks, 8 GT boxes).

    track 0: A@0, A@1, A@2, then switches to B@3; track 1: B@0, B@1; track 3: B@2 shifted (IoU 0.6);
    track 2: a false positive. A@3 is missed.
    """
    gt = _gt([(f, BOX_A, "alice") for f in range(4)] + [(f, BOX_B, "bob") for f in range(4)])
    shifted_b = [102.5, 0.0, 112.5, 10.0]  # IoU with BOX_B = 7.5 / 12.5 = 0.6
    preds = [(0, BOX_A, 0), (1, BOX_A, 0), (2, BOX_A, 0), (3, BOX_B, 0), (0, BOX_B, 1), (1, BOX_B, 1)]
    preds += [(0, [50.0, 50.0, 60.0, 60.0], 2), (2, shifted_b, 3)]
    frame = np.array([p[0] for p in preds])
    xyxy = np.array([p[1] for p in preds], np.float64)
    track = np.array([p[2] for p in preds])
    return _case(gt, []), frame, xyxy, track


def test_frontend_metrics_two_track_toy() -> None:
    case, frame, xyxy, track = _two_track_toy()
    m = frontend_metrics(case, np.array([], np.int64), frame, xyxy, track)
    expected = {"shot_f1": 1.0, "gt_box_recall": 7 / 8, "track_purity": 6 / 7, "tracks_per_gt_track": 3 / 2}
    assert m == pytest.approx({**expected, "n_tracks": 4})


def test_track_identities_majority_and_unmatched() -> None:
    case, frame, xyxy, track = _two_track_toy()
    match = match_boxes(case.gt_boxes, frame, xyxy)
    assert track_identities(case.gt_boxes, match, track) == {0: "alice", 1: "bob", 2: None, 3: "bob"}


def test_track_identities_tie_goes_to_first_name() -> None:
    gt = _gt([(0, BOX_A, "zed"), (1, BOX_A, "amy")])
    match = np.array([0, 1])
    assert track_identities(gt, match, np.array([7, 7])) == {7: "amy"}


def test_frontend_metrics_no_predictions() -> None:
    case, *_ = _two_track_toy()
    m = frontend_metrics(case, np.array([4]), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64))
    assert m["shot_f1"] == 0.0 and m["gt_box_recall"] == 0.0 and m["tracks_per_gt_track"] == 0.0
    assert math.isnan(m["track_purity"]) and m["n_tracks"] == 0


def test_frontend_metrics_no_gt_no_predictions() -> None:
    case = _case(_gt([]), [5])
    m = frontend_metrics(case, np.array([5]), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64))
    assert m["shot_f1"] == 1.0 and m["n_tracks"] == 0
    assert all(math.isnan(m[k]) for k in ("gt_box_recall", "track_purity", "tracks_per_gt_track"))


def test_frontend_metrics_rejects_bad_track_shape() -> None:
    case, frame, xyxy, track = _two_track_toy()
    with pytest.raises(ValueError, match="pred_track"):
        frontend_metrics(case, np.array([]), frame, xyxy, track[:-1])


# ---------------------------------------------------------------- load_case


def _write_case(
    d: Path, csv_text: str = "frame,x1,y1,x2,y2,identity\n0,1.0,2.0,11.0,12.5,alice\n3,5,5,9,9,bob\n",
    shots: str = "2\n4\n", meta: dict | None = None,
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "movie.mp4").write_bytes(b"")
    (d / "gt_faces.csv").write_text(csv_text)
    (d / "gt_shots.txt").write_text(shots)
    meta = meta or {"name": "toy", "source": "test", "n_frames": 6, "width": 32, "height": 24, "fps": 25,
                    "identities": ["alice", "bob"], "notes": ""}
    (d / "case.json").write_text(json.dumps(meta))
    return d


def test_load_case_reads_columns(tmp_path: Path) -> None:
    case = load_case(_write_case(tmp_path / "c"))
    assert (case.name, case.n_frames, case.fps, case.width, case.height) == ("toy", 6, 25.0, 32, 24)
    assert case.movie == tmp_path / "c" / "movie.mp4"
    np.testing.assert_array_equal(case.gt_boxes.frame, [0, 3])
    np.testing.assert_allclose(case.gt_boxes.xyxy, [[1, 2, 11, 12.5], [5, 5, 9, 9]])
    assert case.gt_boxes.identity.tolist() == ["alice", "bob"]
    np.testing.assert_array_equal(case.gt_cuts, [2, 4])


def test_load_case_empty_gt(tmp_path: Path) -> None:
    case = load_case(_write_case(tmp_path / "c", csv_text="frame,x1,y1,x2,y2,identity\n", shots=""))
    assert len(case.gt_boxes) == 0 and case.gt_boxes.xyxy.shape == (0, 4) and case.gt_cuts.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"csv_text": "frame,x,y,w,h,name\n"}, r"gt_faces\.csv: header", id="bad-header"),
        pytest.param({"csv_text": "frame,x1,y1,x2,y2,identity\n0,1,1,2,2,a\n0,5,1,2,2,a\n"},
                     r"gt_faces\.csv:3: box", id="inverted-box"),
        pytest.param({"csv_text": "frame,x1,y1,x2,y2,identity\n9,1,1,2,2,a\n"},
                     r"gt_faces\.csv:2: frame 9", id="frame-out-of-range"),
        pytest.param({"csv_text": "frame,x1,y1,x2,y2,identity\n0,1,one,2,2,a\n"},
                     r"gt_faces\.csv:2: bad number", id="not-a-number"),
        pytest.param({"csv_text": "frame,x1,y1,x2,y2,identity\n0,1,1,2,2\n"},
                     r"gt_faces\.csv:2: expected 6 fields", id="short-row"),
        pytest.param({"shots": "4\n2\n"}, r"gt_shots\.txt:2: cut 2", id="cuts-not-increasing"),
        pytest.param({"shots": "2.5\n"}, r"gt_shots\.txt:1: expected a frame index", id="cut-not-int"),
        pytest.param({"meta": {"name": "x", "fps": 25}}, r"case\.json: missing keys", id="json-missing-keys"),
    ],
)
def test_load_case_rejects_malformed(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_case(_write_case(tmp_path / "c", **kwargs))


def test_load_case_invalid_json_and_missing_file(tmp_path: Path) -> None:
    d = _write_case(tmp_path / "c")
    (d / "case.json").write_text("{nope")
    with pytest.raises(ValueError, match=r"case\.json: not valid JSON"):
        load_case(d)
    (d / "gt_shots.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"gt_shots\.txt"):
        load_case(d)
