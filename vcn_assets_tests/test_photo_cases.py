"""Benchmark cases from a labelled photo set, leaving out photos other cases use (held-out cases)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vcn_assets.bench.photo_cases import make_photo_case, used_photos
from vcn_assets.core.samples import SampleSpec, load_source_faces


def _photo_set(root: Path) -> Path:
    """Three people x two photos (a bundled face and its mirror image), labels.csv beside them."""
    rows = []
    for face in load_source_faces()[:3]:
        (root / face.identity).mkdir(parents=True)
        for k, img in enumerate((face.patch_bgr, face.patch_bgr[:, ::-1])):
            name = f"{face.identity}/{face.identity}_{k + 1:04d}.jpg"
            cv2.imwrite(str(root / name), np.ascontiguousarray(img))
            rows.append((name, face.identity))
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "identity"), *rows])
    return root


def test_photo_case_uses_only_held_out_photos(tmp_path: Path) -> None:
    photos = _photo_set(tmp_path / "photos")
    other = tmp_path / "other_shots.json"
    other.write_text(json.dumps([{"shot": 0, "photos": ["person_1_0001.jpg"], "identities": ["person_1"]}]))
    spec = SampleSpec(n_shots=6, identities=3, width=320, height=240, faces_per_shot=(1, 2),
                      face_height_px=(60, 90), shot_seconds=(0.3, 0.4), seed=4)
    movie = make_photo_case(tmp_path / "case", photos, spec, used_photos([other]))
    meta = json.loads((tmp_path / "case" / "case.json").read_text())
    assert movie.is_file() and meta["identities"] == ["person_1", "person_2", "person_3"]
    assert "person_1/person_1_0001.jpg" not in meta["photos"]
    assert set(meta["photos"]) <= {f"person_{i}/person_{i}_{k:04d}.jpg" for i in (1, 2, 3) for k in (1, 2)}
    with open(tmp_path / "case" / "gt_faces.csv") as f:
        gt = list(csv.DictReader(f))
    assert {r["identity"] for r in gt} == set(meta["identities"])
    assert int(gt[-1]["frame"]) == meta["n_frames"] - 1
    # same seed, same case (GT and photos; the mp4 container differs in its header)
    make_photo_case(tmp_path / "again", photos, spec, used_photos([other]))
    assert (tmp_path / "again" / "gt_faces.csv").read_text() == (tmp_path / "case" / "gt_faces.csv").read_text()
    assert json.loads((tmp_path / "again" / "case.json").read_text())["photos"] == meta["photos"]


def test_used_photos_names_a_file_that_is_not_a_shots_list(tmp_path: Path) -> None:
    bad = tmp_path / "x_shots.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match=f"{bad}: not a case's shots list"):
        used_photos([bad])
