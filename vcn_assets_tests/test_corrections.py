"""Reviewer corrections: the file, its resolution to tracks, Stage 4 honouring it, and re-runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from vcn_assets.cli import main
from vcn_assets.core.clustering import Constraints, cluster_tracks, merge_suggestions
from vcn_assets.core.config import ClusterConfig
from vcn_assets.core.corrections import Corrections, CorrectionsError, TrackRef, link_matrices, resolve
from vcn_assets.definitions import ALL_ASSETS
from vcn_assets.orchestration.resources import VcnResource
from vcn_assets.store.db import Store
from vcn_assets.store.lineage import lineage_report
from vcn_assets_tests.test_caching import _cache, _run
from vcn_assets_tests.test_identity_core import _blob_terms

# two tracks: track 5 on frames 0-2 at the left, track 9 on frames 1-3 at the right
TRACK = np.array([5, 5, 5, 9, 9, 9])
FRAME = np.array([0, 1, 2, 1, 2, 3])
XYXY = np.array([[0, 0, 10, 10]] * 3 + [[50, 0, 60, 10]] * 3, np.float32)


def test_file_round_trip_and_canonical_form(tmp_path: Path) -> None:
    ref5 = TrackRef.of_track(5, TRACK, FRAME, XYXY)
    assert ref5 == TrackRef(5, 1, 5.0, 5.0)
    corr = Corrections().add_name("Penny", ref5).add_cannot_link(ref5, TrackRef(9)).add_not_face(TrackRef(12))
    path = tmp_path / "c" / "ep.json"
    corr.save(path)
    again = Corrections.load(path)
    assert again == corr and again.canonical() == corr.canonical() and len(again) == 3
    assert json.loads(path.read_text())["names"] == {"Penny": [{"track": 5, "frame": 1, "x": 5.0, "y": 5.0}]}
    renamed = again.add_name("Leonard", ref5)  # a track carries one name
    assert dict(renamed.names) == {"Leonard": (ref5,)}


@pytest.mark.parametrize("text, problem", [
    ("{", "not a readable corrections file"),
    ('{"must_link": [[1]]}', "pair of track references"),
    ('{"names": {"": [1]}}', "a name must be"),
    ('{"nmes": {}}', "unknown keys"),
    ('{"version": 2}', "version 2"),
    ('{"not_face": ["x"]}', "track reference"),
    ('{"must_link": [[{"track": 1, "frame": 3}, 2]]}', "frame/x/y together"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "ep.json"
    path.write_text(text)
    with pytest.raises(CorrectionsError, match=problem) as err:
        Corrections.load(path)
    assert str(path) in str(err.value)


def test_missing_file_means_no_corrections(tmp_path: Path) -> None:
    assert len(Corrections.load(tmp_path / "absent.json")) == 0


def test_anchors_follow_renumbered_tracks_and_unresolved_are_reported() -> None:
    corr = Corrections().add_name("Sheldon", TrackRef(5, 2, 4.0, 4.0)).add_not_face(TrackRef(9, 3, 55.0, 5.0))
    corr = corr.add_must_link(TrackRef(5, 7, 1.0, 1.0), TrackRef(77))  # frame 7 has no box; track 77 gone
    renumbered = np.where(TRACK == 5, 105, 109)  # Stage 1 re-run: new ids, same faces
    r = resolve(corr, renumbered, FRAME, XYXY, np.array([105, 109]))
    assert r.name_of == {0: "Sheldon"} and r.not_face == [1] and r.must_link == []
    assert r.unresolved == ["track 5 (frame 7 at 1,1)", "track 77"]


def test_names_become_links_and_contradictions_are_errors() -> None:
    corr = Corrections().add_name("A", TrackRef(5)).add_name("A", TrackRef(9))
    comp, cannot = link_matrices(2, resolve(corr, TRACK, FRAME, XYXY, np.array([5, 9])))
    assert comp[0] == comp[1] and not cannot.any()
    corr = Corrections().add_name("A", TrackRef(5)).add_name("B", TrackRef(9))
    _, cannot = link_matrices(2, resolve(corr, TRACK, FRAME, XYXY, np.array([5, 9])))
    assert cannot[0, 1] and cannot[1, 0]
    bad = corr.add_must_link(TrackRef(5), TrackRef(9))
    with pytest.raises(CorrectionsError, match="tracks 5 and 9 are both linked"):
        resolve(bad, TRACK, FRAME, XYXY, np.array([5, 9]))
    with pytest.raises(CorrectionsError, match="not a face and also"):
        resolve(Corrections().add_name("A", TrackRef(5)).add_not_face(TrackRef(5)), TRACK, FRAME, XYXY,
                np.array([5, 9]))


def test_stage4_honours_must_and_cannot_links() -> None:
    crops, tracks, crop_track, _ = _blob_terms(2, 2, 4)  # tracks 0,1 = person 0; 2,3 = person 1
    free, _ = cluster_tracks(crops, tracks, crop_track, None, ClusterConfig())
    assert free[0] == free[1] and free[0] != free[2]
    cannot = np.zeros((4, 4), bool)
    cannot[0, 1] = cannot[1, 0] = True
    user = Constraints(np.array([0, 1, 0, 2]), cannot)  # 0 and 2 must link; 0 and 1 must not
    labels, _ = cluster_tracks(crops, tracks, crop_track, None, ClusterConfig(), user)
    assert labels[0] == labels[2] and labels[0] != labels[1]
    # a must-link overrides the co-occurrence rule for that pair
    co = np.zeros((4, 4), bool)
    co[0, 2] = co[2, 0] = True
    labels, _ = cluster_tracks(crops, tracks, crop_track, co, ClusterConfig(), Constraints(np.array([0, 1, 0, 2]),
                                                                                           np.zeros((4, 4), bool)))
    assert labels[0] == labels[2]


def test_merge_suggestions_rank_nearest_and_skip_blocked_pairs() -> None:
    crops, tracks, crop_track, _ = _blob_terms(3, 1, 4)
    labels = np.arange(3)
    s = merge_suggestions(crops, tracks, crop_track, labels, None, ClusterConfig(), k=2)
    assert s.cluster.tolist() == [0, 0, 1, 1, 2, 2] and s.rank.tolist() == [1, 2] * 3
    assert np.all(np.diff(s.margin.reshape(3, 2), axis=1) >= 0) and (s.other != s.cluster).all()
    co = np.zeros((3, 3), bool)
    co[0, 1] = co[1, 0] = True
    s = merge_suggestions(crops, tracks, crop_track, labels, co, ClusterConfig(), k=2)
    assert s.other[s.cluster == 0].tolist() == [2]
    assert len(merge_suggestions(crops, tracks, crop_track, np.zeros(3, np.int64), None, ClusterConfig())) == 0


def _stored(data_dir: Path, table: str) -> pl.DataFrame:
    return Store(data_dir / "vcn.duckdb").read(table, "ep1")


def test_corrections_survive_reruns_and_rerun_only_clusters(instance: dg.DagsterInstance, data_dir: Path,
                                                           blob_movie: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    _run(instance, data_dir)
    clusters = _stored(data_dir, "clusters")
    valid = clusters.filter(pl.col("status") == "valid")["track_id"].to_list()
    assert len(valid) >= 3
    first, second, third = valid[:3]
    monkeypatch.setenv("VCN_DATA_DIR", str(data_dir))
    main(["correct", "ep1", "--name-track", str(first), "Ada", "--must-link", str(first), str(second),
          "--not-face", str(third)])
    assert "3 corrections" in capsys.readouterr().out

    mats = _run(instance, data_dir)
    assert _cache(mats) == {a: "hit" for a in _cache(mats) if a != "clusters"} | {"clusters": "miss"}
    checks = _checks(instance, data_dir)
    assert checks == {"every_valid_track_in_one_cluster": True, "no_empty_cluster": True,
                      "corrections_honoured": True}
    clusters = _stored(data_dir, "clusters")
    row = {r["track_id"]: r for r in clusters.iter_rows(named=True)}
    assert row[first]["cluster_id"] == row[second]["cluster_id"] >= 0
    assert row[first]["name"] == row[second]["name"] == "Ada"
    assert row[third]["status"] == "not_face" and row[third]["cluster_id"] == -1
    summary = _stored(data_dir, "cluster_summary")
    assert summary.filter(pl.col("cluster_id") == row[first]["cluster_id"])["name"].to_list() == ["Ada"]
    report = lineage_report(Store(data_dir / "vcn.duckdb"), "ep1", "clusters")
    assert "input:corrections" in next(e for e in report["history"] if e["cache"] == "miss")["changed"]

    # cluster ids change with another Stage 4 setting; the name stays with its tracks
    _run(instance, data_dir, ops={"clusters": {"config": {"max_iterations": 1}}})
    again = {r["track_id"]: r for r in _stored(data_dir, "clusters").iter_rows(named=True)}
    assert again[first]["name"] == again[second]["name"] == "Ada"
    assert again[third]["status"] == "not_face"
    hints = _stored(data_dir, "merge_suggestions")
    n_clusters = _stored(data_dir, "cluster_summary").height
    assert hints["cluster_id"].n_unique() <= n_clusters and (hints["cluster_id"] != hints["other_cluster_id"]).all()

    # the review page of the real result shows the name, the merge suggestions and the not-a-face track
    main(["export", "ep1", "--out", str(data_dir / "exports")])
    page = (data_dir / "exports" / "ep1" / "index.html").read_text()
    assert "Ada" in page and "not_face" in page
    assert hints.height == 0 or "may be the same person as" in page


def _checks(instance: dg.DagsterInstance, data_dir: Path) -> dict[str, bool]:
    """Materialise ``clusters`` again (a cache hit) and return its check outcomes."""
    result = dg.materialize(
        ALL_ASSETS, selection=["clusters"], partition_key="ep1", instance=instance,
        resources={"vcn": VcnResource(data_dir=str(data_dir), backend="fake")},
    )
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_correct_command_errors_are_one_line(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VCN_DATA_DIR", str(data_dir))
    with pytest.raises(SystemExit, match="vcn correct: movie 'nope': no tracks stored"):
        main(["correct", "nope", "--not-face", "3"])

