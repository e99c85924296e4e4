"""`vcn export`: CSV, JSON, thumbnails and the static review page, from a synthetic store."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest

from vcn_assets.cli import main
from vcn_assets.export.report import build_report, timecode
from vcn_assets.store.db import Store

KEY = "synth"
HOSTILE = "<script>alert(1)</script>"
# track id -> (start_frame, end_frame, cluster_id, status); fps 25, 3000 frames = 120 s
TRACKS = {
    0: (1500, 1599, 0, "valid"),  # 00:01:00.000 - 00:01:04.000
    1: (0, 49, 0, "valid"),
    2: (200, 449, 1, "valid"),  # 10 s: the largest cluster
    3: (2000, 2099, 2, "valid"),
    4: (500, 524, -1, "unknown"),
    5: (600, 624, -1, "no_crops"),
    6: (700, 749, -1, "not_face"),
}
NAMES = {0: "Penny", 1: HOSTILE, 2: None}
REP = {0: 1, 1: 4, 2: 6}  # cluster -> representative crop id


def jpeg(seed: int) -> bytes:
    img = np.full((112, 112, 3), (40 * seed) % 256, np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def col(i: int) -> list:
    """Field i of every track in TRACKS, in track id order."""
    return [TRACKS[t][i] for t in TRACKS]


def synthetic_tables() -> dict[str, pl.DataFrame]:
    ids = list(TRACKS)
    crop_tracks = [t for t in ids if TRACKS[t][3] != "no_crops" for _ in range(2)]  # 2 crops per track
    n = len(crop_tracks)
    return {
        "movies": pl.DataFrame({"movie_key": [KEY], "path": ["/movies/Synth, 'one'.mp4"], "fps": [25.0],
                                "n_frames": [3000], "duration_s": [120.0]}),
        "tracks": pl.DataFrame({"movie_key": KEY, "track_id": ids, "shot_idx": 0, "start_frame": col(0),
                                "end_frame": col(1), "n_boxes": 10, "n_detections": 3}),
        "crops": pl.DataFrame({"movie_key": KEY, "crop_id": list(range(n)), "track_id": crop_tracks,
                               "frame_idx": 0, "quality": np.linspace(0.5, 0.9, n), "frontal": 1.0,
                               "jpeg": pl.Series([jpeg(i) for i in range(n)], dtype=pl.Binary)}),
        "clusters": pl.DataFrame({"movie_key": KEY, "track_id": ids, "cluster_id": col(2), "status": col(3),
                                  "name": [NAMES.get(c) for c in col(2)]}, schema_overrides={"name": pl.String}),
        "cluster_summary": pl.DataFrame(
            {"movie_key": KEY, "cluster_id": [0, 1, 2], "n_tracks": [2, 1, 1], "n_crops": [4, 2, 2],
             "rep_crop_id": [REP[c] for c in range(3)], "first_frame": [0, 200, 2000],
             "last_frame": [1599, 449, 2099], "name": [NAMES[c] for c in range(3)]},
            schema_overrides={"name": pl.String}),
        "merge_suggestions": pl.DataFrame(
            {"movie_key": KEY, "cluster_id": [2, 0], "rank": [1, 1], "other_cluster_id": [0, 2],
             "score": [0.5, 0.5], "threshold": [0.38, 0.38], "margin": [0.12, 0.12]}),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(tmp_path_factory.mktemp("store") / "vcn.duckdb")
    store.replace(KEY, synthetic_tables())
    store.replace("bare", {"movies": pl.DataFrame({"movie_key": ["bare"], "path": ["/m/bare.mp4"], "fps": [25.0]})})
    return store


@pytest.fixture(scope="module")
def exported(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    main(["export", KEY, "--store", str(store.path), "--out", str(out)])
    return out / KEY


def test_timecode() -> None:
    assert timecode(1500 / 25) == "00:01:00.000"
    assert timecode(3723.4567) == "01:02:03.457"
    with pytest.raises(ValueError, match="negative"):
        timecode(-1)


def test_export_writes_every_format_and_prints_it(store: Store, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    main(["export", KEY, "--store", str(store.path), "--out", str(tmp_path)])
    folder = tmp_path / KEY
    printed = capsys.readouterr().out
    for name in ("clusters.csv", "clusters.json", "index.html"):
        assert (folder / name).is_file() and str(folder / name) in printed
    assert "(10 thumbnails)" in printed  # clusters 0, 1, 2: 4 + 2 + 2 crops; unknown tracks 4 and 6: 1 each


def test_csv_has_one_row_per_appearance_with_timecodes(exported: Path) -> None:
    with (exported / "clusters.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["cluster_id"]), int(r["track_id"])) for r in rows] == [(1, 2), (0, 1), (0, 0), (2, 3)]
    penny = rows[2]
    assert penny["name"] == "Penny" and penny["start_tc"] == "00:01:00.000" and penny["end_tc"] == "00:01:04.000"
    assert float(penny["duration_s"]) == 4.0 and float(penny["screen_time_s"]) == 6.0
    assert penny["cluster_first_tc"] == "00:00:00.000" and penny["cluster_last_tc"] == "00:01:04.000"
    assert rows[0]["name"] == HOSTILE and rows[3]["name"] == ""


def test_json_nests_appearances_unknown_tracks_and_suggestions(exported: Path) -> None:
    data = json.loads((exported / "clusters.json").read_text(encoding="utf-8"))
    assert data["movie"] == {"key": KEY, "name": "Synth, 'one'.mp4", "path": "/movies/Synth, 'one'.mp4",
                             "fps": 25.0, "n_frames": 3000, "duration_s": 120.0, "duration_tc": "00:02:00.000"}
    assert [c["cluster_id"] for c in data["clusters"]] == [1, 0, 2]
    penny = data["clusters"][1]
    assert penny["name"] == "Penny" and penny["n_tracks"] == 2 and penny["screen_time_s"] == 6.0
    assert penny["appearances"][1] == {"track_id": 0, "start_frame": 1500, "end_frame": 1599, "start_s": 60.0,
                                       "end_s": 64.0, "start_tc": "00:01:00.000", "end_tc": "00:01:04.000",
                                       "duration_s": 4.0}
    assert penny["merge_suggestions"] == [{"other_cluster_id": 2, "rank": 1, "score": 0.5, "threshold": 0.38,
                                           "margin": 0.12}]
    assert data["clusters"][0]["merge_suggestions"] == [] and data["clusters"][2]["name"] is None
    unknown = {u["track_id"]: (u["status"], u["thumbnail"]) for u in data["unknown_tracks"]}
    assert unknown == {4: ("unknown", "thumbs/track_4.jpg"), 5: ("no_crops", None),
                       6: ("not_face", "thumbs/track_6.jpg")}


def test_thumbnails_are_the_representative_then_best_crops(exported: Path, store: Store) -> None:
    data = json.loads((exported / "clusters.json").read_text(encoding="utf-8"))
    penny = data["clusters"][1]
    # representative first, then each track's best crop (quality rises with crop id), then the rest
    assert penny["thumbnails"] == [f"thumbs/cluster_0{s}.jpg" for s in ("", "_1", "_2", "_3")]
    crops = store.read("crops", KEY)
    for c in data["clusters"]:
        rep = crops.filter(pl.col("crop_id") == REP[c["cluster_id"]])["jpeg"][0]
        assert (exported / c["thumbnails"][0]).read_bytes() == rep
    assert (exported / "thumbs/cluster_0_1.jpg").read_bytes() == crops["jpeg"][3]  # track 1's best crop
    thumbs = sorted((exported / "thumbs").iterdir())
    assert len(thumbs) == 10
    for path in thumbs:
        assert cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR).shape == (112, 112, 3)


def test_html_escapes_names_and_is_offline(exported: Path) -> None:
    page = (exported / "index.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "http://" not in page and "https://" not in page
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith(("thumbs/", "#")) for link in links)
    assert all((exported / link).is_file() for link in links if link.startswith("thumbs/"))
    assert {f"#cluster-{c}" for c in range(3)} | {"#unknown"} <= set(links)
    assert page.index('id="cluster-1"') < page.index('id="cluster-0"') < page.index('id="cluster-2"')
    assert "Synth, &#x27;one&#x27;.mp4" in page and "00:02:00.000" in page
    assert 'title="Penny: 00:01:00.000 – 00:01:04.000 (track 0)"' in page
    assert "may be the same person as cluster 2</a> (margin 0.12)" in page
    assert "may be the same person as Penny (cluster 0)</a> (margin 0.12)" in page
    assert "track 5 · no_crops" in page and 'src="thumbs/track_4.jpg"' in page


def test_format_option_is_repeatable_and_comma_separated(store: Store, tmp_path: Path) -> None:
    main(["export", KEY, "--store", str(store.path), "--out", str(tmp_path), "--format", "csv"])
    assert sorted(p.name for p in (tmp_path / KEY).iterdir()) == ["clusters.csv"]
    main(["export", KEY, "--store", str(store.path), "--out", str(tmp_path / "b"), "--format", "csv,json",
          "--format", "html"])
    assert sorted(p.name for p in (tmp_path / "b" / KEY).iterdir()) == [
        "clusters.csv", "clusters.json", "index.html", "thumbs"]


def test_unknown_format_is_an_argparse_error(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", KEY, "--store", str(store.path), "--out", str(tmp_path), "--format", "csv,pdf"])
    assert exc.value.code == 2 and "formats are csv, json, html" in capsys.readouterr().err


def test_unknown_movie_names_the_key_and_the_stored_keys(store: Store, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"movie 'nope' is not in .*; stored movies: bare, synth"):
        main(["export", KEY, "nope", "--store", str(store.path), "--out", str(tmp_path)])
    assert not (tmp_path / KEY).exists()  # nothing written when any key fails


def test_movie_without_clusters_asks_to_materialise(store: Store, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="materialise `clusters` for bare first"):
        main(["export", "bare", "--store", str(store.path), "--out", str(tmp_path)])


def test_missing_store_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no DuckDB store there"):
        main(["export", KEY, "--store", str(tmp_path / "none.duckdb"), "--out", str(tmp_path)])
    assert not (tmp_path / "none.duckdb").exists()


def test_store_of_an_older_version_without_names_or_suggestions() -> None:
    tables = synthetic_tables()
    tables["cluster_summary"] = tables["cluster_summary"].drop("name")
    tables["clusters"] = tables["clusters"].drop("name")
    tables["merge_suggestions"] = pl.DataFrame()  # what Store.read gives when the table does not exist
    report = build_report(KEY, tables)
    assert [c.label for c in report.clusters] == ["cluster 1", "cluster 0", "cluster 2"]
    assert all(c.suggestions == () for c in report.clusters)



def test_movie_without_faces_exports_an_empty_page(tmp_path: Path) -> None:
    # a materialised `clusters` with no rows (a movie without faces) is a result, not a missing one
    store = Store(tmp_path / "vcn.duckdb")
    store.replace("faceless", {"movies": pl.DataFrame({"movie_key": ["faceless"], "path": ["/m/f.mp4"],
                                                       "fps": [25.0], "n_frames": [50]}),
                               "clusters": synthetic_tables()["clusters"].clear()},
                  cache_entry=("clusters", "fingerprint", "version"))
    main(["export", "faceless", "--store", str(store.path), "--out", str(tmp_path)])
    data = json.loads((tmp_path / "faceless" / "clusters.json").read_text(encoding="utf-8"))
    assert data["clusters"] == [] and data["unknown_tracks"] == [] and data["movie"]["duration_s"] == 2.0
    assert "No face clusters" in (tmp_path / "faceless" / "index.html").read_text(encoding="utf-8")


def test_csv_names_cannot_start_a_spreadsheet_formula() -> None:
    from vcn_assets.export.files import csv_text

    assert csv_text("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert [csv_text(v) for v in ("+1", "-1", "@SUM(A1)", "\tx")] == ["'+1", "'-1", "'@SUM(A1)", "'\tx"]
    assert [csv_text(v) for v in ("Penny", "", "Dr. = Who")] == ["Penny", "", "Dr. = Who"]
