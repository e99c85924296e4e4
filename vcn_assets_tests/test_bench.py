"""``vcn bench`` clustering results: evaluation logic on hand-made arrays, and the whole bench on a
synthetic case (coloured squares, fake backend; never ../shared).

Usage::

    pytest vcn_assets_tests/test_bench.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from vcn_assets.bench.clustering_eval import (
    GT_UNKNOWN_POLICY,
    METHOD_NAMES,
    MethodConfigs,
    evaluate,
    parse_methods,
    track_counts,
    track_identity,
    track_mean,
)
from vcn_assets.bench.frontend_metrics import Case, GtBoxes, load_case
from vcn_assets.bench.run import cache_path, run_bench, stage1, table
from vcn_assets.cli import build_parser
from vcn_assets.core.config import FinetuneConfig, ModelConfig
from vcn_assets.core.pipeline import PipelineConfig
from vcn_assets_tests.clips import blob_clip

METHOD_KEYS = {"wcp", "pcr", "nmi", "pairwise_f", "bcubed_f", "n_clusters", "n_identities",
               "n_tracks_evaluated", "unknown_share", "seconds"}
RATIOS = ("wcp", "nmi", "pairwise_f", "bcubed_f", "unknown_share")
Bench = tuple[dict[str, Any], Path, Path]  # (result, JSON path, cache dir)
SMALL_FT = MethodConfigs(finetune=FinetuneConfig(rounds=1, steps_per_round=20, batch_tracks=16))

# ---------------------------------------------------------------- evaluation logic (hand-made arrays)

# Six tracks: 0-2 valid and matched (a, a, b); 3 valid but matching no GT box; 4 unknown, 5 no_crops.
IDENTITY = ["a", "a", "b", None, "b", "c"]
STATUS = ["valid", "valid", "valid", "valid", "unknown", "no_crops"]


def test_track_identity_majority_ties_and_unmatched() -> None:
    box, far = [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]
    half = [5.0, 0.0, 15.0, 10.0]  # IoU(box, half) = 1/3
    gt = GtBoxes(np.array([0, 1, 2, 3, 4, 5, 6]), np.array([box] * 7, np.float64),
                 np.array(["bob", "alice", "alice", "bob", "zoe", "alice", "bob"]))
    case = Case("toy", Path("movie.mp4"), 25.0, 10, 100, 100, (), gt, np.zeros(0, np.int64))
    # track 9: frames 0-2 (bob, alice, alice) -> alice; track 3: frame 3 far from the GT box, frame 4 at
    # IoU 1/3 -> no match -> None; track 7: frames 5, 6 (alice, bob) tie -> alice (alphabetical)
    boxes = SimpleNamespace(frame_idx=np.array([0, 1, 2, 3, 4, 5, 6]),
                            track_id=np.array([9, 9, 9, 3, 3, 7, 7]),
                            xyxy=np.array([box, box, box, far, half, box, box], np.float32))
    result = SimpleNamespace(boxes=boxes, tracks=SimpleNamespace(track_id=np.array([3, 7, 9])))
    assert track_identity(case, result).tolist() == [None, "alice", "alice"]  # in tracks.track_id order


def test_track_counts_leave_out_unmatched_and_share_excluded() -> None:
    counts = track_counts(IDENTITY, STATUS)
    assert counts == {"n_tracks_unmatched": 1, "n_tracks_matched": 5, "n_tracks_excluded": 2,
                      "unknown_share": pytest.approx(2 / 5)}
    assert math.isnan(track_counts([None, None], ["valid", "unknown"])["unknown_share"])


def test_evaluate_scores_only_valid_matched_tracks() -> None:
    # labels for the 4 valid tracks 0..3; track 3 (unmatched) is clustered but not scored
    out = evaluate(IDENTITY, STATUS, np.array([0, 1, 1, 0]))
    # scored: tracks 0, 1, 2 = (a, cluster 0), (a, cluster 1), (b, cluster 1)
    h = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))  # both marginals are {1, 2}
    mi = (2 * math.log(1.5) + math.log(0.75)) / 3
    assert out == {
        "wcp": pytest.approx(2 / 3), "pcr": 1.0, "nmi": pytest.approx(mi / h), "pairwise_f": 0.0,
        "bcubed_f": pytest.approx(2 / 3), "n_clusters": 2, "n_identities": 2, "n_tracks_evaluated": 3,
        "unknown_share": pytest.approx(0.4),
    }
    perfect = evaluate(IDENTITY, STATUS, np.array([5, 5, 7, 5]))  # track 3's label is ignored
    assert perfect["wcp"] == perfect["nmi"] == perfect["pairwise_f"] == perfect["bcubed_f"] == 1.0


def test_evaluate_gt_unknown_is_its_own_identity() -> None:
    out = evaluate(["sheldon", "unknown_e01_1", "unknown_e01_1"], ["valid"] * 3, np.array([0, 1, 1]))
    assert out["n_identities"] == 2 and out["wcp"] == 1.0 and out["pcr"] == 1.0
    assert GT_UNKNOWN_POLICY == "own identity"


def test_evaluate_empty_and_bad_shapes() -> None:
    out = evaluate([None, "a"], ["valid", "unknown"], np.array([0]))
    assert out["n_tracks_evaluated"] == 0 and out["n_clusters"] == 0 and math.isnan(out["wcp"])
    assert out["unknown_share"] == 1.0
    with pytest.raises(ValueError, match="one entry per valid track"):
        evaluate(IDENTITY, STATUS, np.array([0, 1]))
    with pytest.raises(ValueError, match="one length"):
        evaluate(IDENTITY, STATUS[:3], np.array([0, 1, 2]))


def test_track_mean_of_selected_tracks() -> None:
    emb = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, 4.0]], np.float32)
    crop_row = np.array([0, 0, 1, 2])
    np.testing.assert_allclose(track_mean(emb, crop_row, np.array([2, 0, 3])), [[0, 4], [2, 1], [0, 0]])


def test_parse_methods() -> None:
    assert parse_methods(None) == METHOD_NAMES == parse_methods("")
    assert parse_methods(" finch, ahc ,finch") == ("finch", "ahc")
    with pytest.raises(ValueError, match="unknown clustering method"):
        parse_methods("vcn,kmeans")


def test_cli_bench_parses_methods_and_cache() -> None:
    args = build_parser().parse_args(["bench", "c1", "--methods", "ahc,finch", "--cache", "d"])
    assert args.methods == "ahc,finch" and args.cache == Path("d")
    args = build_parser().parse_args(["bench", "c1"])
    assert args.methods is None and args.cache is None and args.members is None
    assert build_parser().parse_args(["bench", "c1", "--members", "1"]).members == 1


def test_cli_bench_refuses_fewer_than_one_member() -> None:
    from vcn_assets.cli import main

    with pytest.raises(SystemExit, match="--members must be at least 1, got 0"):
        main(["bench", "c1", "--members", "0"])


# ---------------------------------------------------------------- whole bench on a synthetic case

SHOTS = [[0, 1], [2], [0], [1, 2]]  # colour indices per shot (blob_clip); 6 GT tracks, 3 identities
NAMES = ["alice", "bob", "unknown_e01_1"]
SHOT_LEN = 20


def _write_case(case_dir: Path) -> Path:
    """A case whose GT boxes are blob_clip's squares: x = 20 + 90 k + t, y = 40 + t // 2, 40 x 48."""
    blob_clip(case_dir / "movie.mp4", SHOTS, shot_len=SHOT_LEN)
    rows = ["frame,x1,y1,x2,y2,identity"]
    for s, faces in enumerate(SHOTS):
        for t in range(SHOT_LEN):
            for k, c in enumerate(faces):
                x, y = 20 + 90 * k + t, 40 + t // 2
                rows.append(f"{s * SHOT_LEN + t},{x},{y},{x + 40},{y + 48},{NAMES[c]}")
    (case_dir / "gt_faces.csv").write_text("\n".join(rows) + "\n")
    (case_dir / "gt_shots.txt").write_text("".join(f"{s * SHOT_LEN}\n" for s in range(1, len(SHOTS))))
    meta = {"name": "blob_case", "source": "test", "n_frames": SHOT_LEN * len(SHOTS), "width": 240,
            "height": 160, "fps": 25, "identities": NAMES, "notes": "synthetic"}
    (case_dir / "case.json").write_text(json.dumps(meta))
    return case_dir


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_case(tmp_path_factory.mktemp("bench") / "blob_case")


@pytest.fixture(scope="module")
def bench(case_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Bench:
    out = tmp_path_factory.mktemp("out")
    results = run_bench([case_dir], out / "bench.json", ModelConfig(backend="fake"), cache_dir=out / "cache",
                        method_cfgs=SMALL_FT)
    assert len(results) == 1
    return results[0], out / "bench.json", out / "cache"


def test_bench_json_shape(bench: Bench) -> None:
    r, json_path, _ = bench
    assert json.loads(json_path.read_text(), parse_constant=float) == {"cases": [json.loads(json.dumps(r))]}
    assert r["case"] == "blob_case" and r["backend"] == "fake" and r["stage1_cached"] is False
    assert set(r["stage_seconds"]) == {"probe", "shots", "tracks", "crops", "finetune_and_match", "cluster"}
    assert r["realtime_factor"] == pytest.approx(r["video_seconds"] / sum(r["stage_seconds"].values()))
    assert r["gt_unknown_policy"] == "own identity"
    assert list(r["methods"]) == list(METHOD_NAMES)
    assert all(set(m) - {"merge_suggestions", "soft_matches"} == METHOD_KEYS for m in r["methods"].values())
    assert set(r["methods"]["vcn"]["merge_suggestions"]) == {"split_clusters", "rank1_same_identity",
                                                             "top_k_same_identity"}
    rounds = r["methods"]["vcn"]["soft_matches"]
    assert len(rounds) == SMALL_FT.finetune.rounds and "soft_matches" not in r["methods"]["vcn_no_finetune"]
    assert all(set(m) == {"pairs", "scored", "same_identity", "precision", "recall", "by_normal"} for m in rounds)


def test_bench_exact_values_on_the_clean_case(bench: Bench) -> None:
    r, _, _ = bench
    assert r["frontend"]["gt_box_recall"] == 1.0 and r["frontend"]["shot_f1"] == 1.0
    assert r["frontend"]["track_purity"] == 1.0 and r["frontend"]["n_tracks"] == 6
    assert r["n_tracks_unmatched"] == 0 and r["n_tracks_matched"] == 6 and r["n_tracks_excluded"] == 0
    assert r["unknown_share"] == 0.0 and r["n_tracks_valid"] == 6


def test_bench_method_metrics_consistent(bench: Bench) -> None:
    r, _, _ = bench
    for name, m in r["methods"].items():
        assert m["n_tracks_evaluated"] == r["n_tracks_matched"] - r["n_tracks_excluded"] == 6, name
        assert m["n_identities"] == 3 and m["unknown_share"] == r["unknown_share"], name
        assert 1 <= m["n_clusters"] <= m["n_tracks_evaluated"], name
        assert m["pcr"] == pytest.approx(m["n_clusters"] / m["n_identities"]), name
        assert all(0.0 <= m[k] <= 1.0 for k in RATIOS), name
        assert m["seconds"] >= 0.0, name


def test_bench_table(bench: Bench) -> None:
    r, _, _ = bench
    text = table([r])
    assert "gt_box_recall" in text and "method | wcp | pcr | nmi | pairwise_f | bcubed_f | n_clusters" in text
    assert all(f"\n{name} | " in text for name in METHOD_NAMES)
    assert "6 tracks, 3 identities" in text
    assert "vcn soft matches: round 1: " in text


def test_match_report_counts_pairs_once_against_the_ground_truth() -> None:
    import scipy.sparse as sp

    from vcn_assets.bench.clustering_eval import match_report
    from vcn_assets.core.soft_match import SoftMatches

    identity = ["a", "a", "a", "b", "b", None]
    co = sp.csr_matrix(([True, True], ([0, 1], [1, 0])), shape=(6, 6))  # a's tracks 0 and 1 share a frame
    i = np.array
    # (0, 2) twice (both directions, once by the Normal rule), (2, 1), (3, 4), (1, 3) wrong, (4, 5) unscored
    m = SoftMatches(i([0, 2, 2, 3, 1, 4]), i([2, 0, 1, 4, 3, 5]), i([0.0, 1.0, 0.0, 0.0, 0.0, 0.0]), np.zeros(6))
    got = match_report(identity, co, m)
    # possible same-identity pairs: a: 3 - 1 sharing a frame = 2, b: 1
    assert got == {"pairs": 5, "scored": 4, "same_identity": 3, "precision": 0.75, "recall": 1.0, "by_normal": 1}
    none = match_report(identity, co, SoftMatches(i([], np.int64), i([], np.int64), np.zeros(0), np.zeros(0)))
    assert none["pairs"] == 0 and np.isnan(none["precision"]) and none["recall"] == 0.0


def test_bench_cache_reuses_stage1(case_dir: Path, bench: Bench) -> None:
    r, _, cache = bench
    path = cache_path(cache, load_case(case_dir), PipelineConfig(), "fake")
    assert path.is_file() and [p.name for p in cache.iterdir()] == [path.name]
    assert cache_path(cache, load_case(case_dir), PipelineConfig(), "dlib") != path
    again = run_bench([case_dir], None, ModelConfig(backend="fake"), methods=("ahc", "finch"),
                      cache_dir=cache)[0]
    assert again["stage1_cached"] is True and list(again["methods"]) == ["ahc", "finch"]
    assert again["frontend"] == r["frontend"]
    assert {k: again["stage_seconds"][k] for k in ("probe", "shots", "tracks", "crops")} == {
        k: r["stage_seconds"][k] for k in ("probe", "shots", "tracks", "crops")}
    assert "finetune_and_match" not in again["stage_seconds"]
    for name in ("ahc", "finch"):
        assert {k: v for k, v in again["methods"][name].items() if k != "seconds"} == {
            k: v for k, v in r["methods"][name].items() if k != "seconds"}


def test_bench_seeds_score_vcn_at_each_seed(case_dir: Path, bench: Bench, capsys: pytest.CaptureFixture[str]) -> None:
    """``--seeds``: vcn's main entry is the first seed's run; every seed's scores, the median and the
    lowest are under ``methods.vcn.seeds``; the first seed's row equals a plain run at that seed."""
    import dataclasses

    from vcn_assets.cli import main

    r, _, cache = bench
    got = run_bench([case_dir], None, ModelConfig(backend="fake"), methods=("vcn",), cache_dir=cache,
                    method_cfgs=SMALL_FT, seeds=[SMALL_FT.finetune.seed, 7])[0]["methods"]["vcn"]
    rep = got["seeds"]
    assert [row["seed"] for row in rep["by_seed"]] == [SMALL_FT.finetune.seed, 7]
    assert {k: rep["by_seed"][0][k] for k in ("wcp", "pcr", "bcubed_f", "n_clusters")} == {
        k: r["methods"]["vcn"][k] for k in ("wcp", "pcr", "bcubed_f", "n_clusters")}
    f = [row["bcubed_f"] for row in rep["by_seed"]]
    assert rep["median_bcubed_f"] == pytest.approx(float(np.median(f))) and rep["min_bcubed_f"] == min(f)
    assert rep["min_wcp"] == min(row["wcp"] for row in rep["by_seed"])
    other = dataclasses.replace(SMALL_FT, finetune=dataclasses.replace(SMALL_FT.finetune, seed=7))
    alone = run_bench([case_dir], None, ModelConfig(backend="fake"), methods=("vcn",), cache_dir=cache,
                      method_cfgs=other)[0]["methods"]["vcn"]
    assert {k: alone[k] for k in ("wcp", "pcr", "bcubed_f", "n_clusters")} == {
        k: rep["by_seed"][1][k] for k in ("wcp", "pcr", "bcubed_f", "n_clusters")}
    assert "seeds" not in alone
    main(["bench", str(case_dir), "--backend", "fake", "--methods", "vcn", "--cache", str(cache), "--seeds", "0", "1"])
    assert "vcn B-cubed F by seed: 0: " in capsys.readouterr().out


def test_track_identity_of_the_synthetic_tracks(case_dir: Path, bench: Bench) -> None:
    case = load_case(case_dir)
    result, backend, cached = stage1(case, PipelineConfig(), ModelConfig(backend="fake"), bench[2])
    assert backend == "fake" and cached
    ident = track_identity(case, result)
    assert sorted(ident.tolist()) == sorted(NAMES * 2)


def test_cli_bench_end_to_end(case_dir: Path, bench: Bench,
                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vcn_assets.cli import main

    out = tmp_path / "cli.json"
    main(["bench", str(case_dir), "--backend", "fake", "--methods", "finch,ahc", "--cache", str(bench[2]),
          "--json", str(out)])
    case = json.loads(out.read_text())["cases"][0]
    assert case["stage1_cached"] is True and list(case["methods"]) == ["finch", "ahc"]
    assert "\nfinch | " in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown clustering method"):
        main(["bench", str(case_dir), "--backend", "fake", "--methods", "kmeans"])


def test_bench_scale_reports_time_and_memory(tmp_path: Path) -> None:
    from vcn_assets.bench.scale import load_shape, run_scale, synthetic_inputs

    inputs, ident = synthetic_inputs(40, load_shape(None), crops=3)
    assert inputs.views.shape == (120, 2, 128) and len(ident) == 40
    out = tmp_path / "scale.json"
    (r,) = run_scale([40], None, out, crops=3)
    assert r["n_tracks"] == 40 and r["n_crops"] == 120 and r["peak_rss_mb"] > 0 and r["seconds"] > 0
    assert 1 <= r["n_clusters"] <= 40
    assert json.loads(out.read_text())["scale"][0]["n_tracks"] == 40


def test_bench_scale_repeat_reports_medians() -> None:
    from vcn_assets.bench.scale import _median

    runs = [{"n_tracks": 5, "seconds": s, "stage_seconds": {"cluster": s / 2}, "peak_rss_mb": m}
            for s, m in [(3.0, 100.0), (1.0, 300.0), (2.0, 200.0)]]
    r = _median(runs)
    assert (r["seconds"], r["stage_seconds"], r["peak_rss_mb"]) == (2.0, {"cluster": 1.0}, 300.0)
    assert r["repeat"] == 3 and r["all_seconds"] == [3.0, 1.0, 2.0]


def test_suggestion_report_counts_split_identities_repaired_by_suggestions() -> None:
    from vcn_assets.bench.clustering_eval import suggestion_report
    from vcn_assets.core.clustering import MergeSuggestions

    identity = ["a", "a", "a", "b", None, "c"]
    status = ["valid", "valid", "valid", "valid", "valid", "unknown"]
    labels = np.array([0, 1, 2, 3, 3])  # "a" split into clusters 0, 1, 2; "b" whole
    i = np.array
    hints = MergeSuggestions(i([0, 0, 1, 1, 2, 2, 3]), i([1, 2, 1, 2, 1, 2, 1]), i([1, 3, 3, 0, 3, 3, 0]),
                             np.zeros(7), np.zeros(7))
    assert suggestion_report(identity, status, labels, hints) == {
        "split_clusters": 3, "rank1_same_identity": 1, "top_k_same_identity": 2}


def test_bench_length_median_of_runs() -> None:
    from vcn_assets.bench.length import _median_run

    runs = [{"n_frames": 9, "seconds": {"shots": s, "tracks": 2 * s}, "peak_rss_mb": m,
             "peak_rss_mb_through": {"stage1": m - 10}}
            for s, m in [(1.0, 300.0), (5.0, 310.0), (2.0, 305.0)]]
    assert _median_run(runs) == {"n_frames": 9, "seconds": {"shots": 2.0, "tracks": 4.0}, "peak_rss_mb": 310.0,
                                 "peak_rss_mb_through": {"stage1": 300.0}}


def test_bench_length_repeats_a_movie_and_reports_rates(tmp_path: Path, blob_movie: Path) -> None:
    from vcn_assets.bench.length import length_table, run_length_bench
    from vcn_assets.core.video import probe

    base = probe(blob_movie)
    out = tmp_path / "length.json"
    results = run_length_bench([1, 2], "fake", "all", tmp_path, out, base=blob_movie)
    assert [r["n_frames"] for r in results] == [base.n_frames, 2 * base.n_frames]
    assert probe(tmp_path / f"{blob_movie.stem}_x2.mp4").n_frames == 2 * base.n_frames
    for r in results:
        assert r["repeat"] == 1 and r["peak_rss_mb"] > 0 and r["n_clusters"] >= 1
        through = r["peak_rss_mb_through"]
        assert 0 < through["stage1"] <= through["stages1_3"] <= through["stages1_4"] == r["peak_rss_mb"]
        assert set(r["seconds"]) == {"probe", "shots", "tracks", "crops", "finetune_and_match", "cluster"}
        assert r["rates"]["realtime_factor"] > 0
        # the detector ran on a stride of frames and found faces on some of them
        assert 0 < r["n_detect_frames"] < r["n_frames"] and 0 < r["n_detections"] < r["n_boxes"]
        rates = r["rates"]
        assert rates["detect_frames_per_s"] == round(r["n_detect_frames"] / r["seconds"]["tracks"], 2)
        assert rates["detections_per_s"] == round(r["n_detections"] / r["seconds"]["tracks"], 2)
    assert results[1]["n_detect_frames"] == 2 * results[0]["n_detect_frames"]
    assert json.loads(out.read_text())[1]["minutes"] == 2
    assert length_table(results).count("\n") == 3
