"""Clustering evaluation of one benchmark case: VCN (with and without finetuning) and the baselines.

Usage::

    case, result = load_case(case_dir), run_stage1(case.movie, PipelineConfig(), models)
    scores = evaluate_case(case, result, METHOD_NAMES, MethodConfigs())
    scores["methods"]["vcn"]       # {"wcp": 0.93, "pcr": 1.33, "nmi": ..., "pairwise_f": ...,
                                   #  "bcubed_f": ..., "n_clusters": 4, "n_identities": 3,
                                   #  "n_tracks_evaluated": 14, "unknown_share": 0.125, "seconds": 3.1}
    scores["n_tracks_unmatched"], scores["gt_unknown_policy"], scores["stage_seconds"]

Protocol. Items are Stage 1's predicted tracks. A track takes the GT identity of the majority of
its boxes matched to a GT box at IoU >= 0.5 (``match_boxes`` + ``track_identities``; ties go to
the alphabetically first identity). Tracks with no matched box are left out and counted
(``n_tracks_unmatched``). Of the matched tracks, those the quality filter marks ``unknown`` or
``no_crops`` are left out of the metrics; their share of the matched tracks is ``unknown_share``.
GT background identities (``unknown_e01_1`` ...) are identities of their own
(``GT_UNKNOWN_POLICY``).

Every method clusters the same tracks, all ``valid`` ones (unmatched valid tracks too, as in a real
run; they are dropped only when scoring):

- ``vcn``: :func:`cluster_movie` with the given Finetune/Match/ClusterConfig (Stages 2-4).
- ``vcn_no_finetune``: the same with ``rounds=0`` (Stage 4 on the untrained networks: the consensus of
  ``members`` randomly initialised ones).
- ``ahc``, ``hdbscan``, ``chinese_whispers``, ``finch``: :mod:`vcn_assets.core.baselines` at their
  defaults on each track's mean backbone embedding (the mean of its crops' ``Crops.embedding``,
  not normalised: for dlib that is ``views[:, 0]`` in its 128-d Euclidean space); ``ahc`` gets the
  co-occurrence cannot-link (two tracks sharing a frame), the others no constraint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from vcn_assets.bench.frontend_metrics import Case, match_boxes, track_identities
from vcn_assets.core.baselines import ahc, chinese_whispers, finch_first_partition, hdbscan_labels
from vcn_assets.core.clustering import MergeSuggestions
from vcn_assets.core.config import ClusterConfig, FinetuneConfig, MatchConfig
from vcn_assets.core.crops import VALID
from vcn_assets.core.identity import ClusterInputs, LastBlock, cluster_movie, cooccurrence
from vcn_assets.core.metrics import clustering_report
from vcn_assets.core.pipeline import Stage1Result
from vcn_assets.core.soft_match import SoftMatches

METHOD_NAMES: tuple[str, ...] = ("vcn", "vcn_no_finetune", "ahc", "hdbscan", "chinese_whispers", "finch")
GT_UNKNOWN_POLICY = "own identity"
REPORTED = ("wcp", "pcr", "nmi", "pairwise_f", "bcubed_f", "n_clusters", "n_identities")


@dataclass(frozen=True)
class MethodConfigs:
    """The Stage 2-4 configuration of the ``vcn`` methods (defaults = the pipeline's defaults)."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


@dataclass(frozen=True)
class ClusterData:
    """What every method clusters: ``inputs`` (the valid tracks, as the pipeline builds them) and
    ``track_emb`` (T_valid, D) float64, the valid tracks' mean backbone embeddings, in the same order;
    ``last_block`` what ``vcn`` trains when its FinetuneConfig has ``train_last_block``."""

    inputs: ClusterInputs
    track_emb: NDArray[np.float64]
    last_block: LastBlock | None = None


@dataclass(frozen=True)
class MethodRun:
    """One method's labels (T_valid,) for the valid tracks and its timings in seconds."""

    labels: NDArray[np.int64]
    seconds: dict[str, float]
    suggestions: MergeSuggestions | None = None  # vcn's Stage 4 merge suggestions
    round_matches: list[SoftMatches] | None = None  # vcn's Stage 3 matches (member 0), one entry per round


# ---------------------------------------------------------------- inputs


def parse_methods(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Method names from a comma list (or a sequence); None or "" means all, in ``METHOD_NAMES`` order.

    Unknown names raise ValueError listing the valid ones; duplicates are dropped.
    """
    if spec is None:
        return METHOD_NAMES
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown:
        raise ValueError(f"unknown clustering method(s) {unknown}; choose from {', '.join(METHOD_NAMES)}")
    return tuple(dict.fromkeys(names)) or METHOD_NAMES


def _rows_of(track_ids: NDArray[np.int64], ids: NDArray[np.int64], what: str) -> NDArray[np.int64]:
    """Row in ``track_ids`` (sorted, unique) of each id in ``ids``; an id without a row raises."""
    rows = np.searchsorted(track_ids, ids)
    if len(ids) and (rows.max() >= len(track_ids) or np.any(track_ids[rows] != ids)):
        raise ValueError(f"Stage 1 result: {what} has track ids missing from the track summary")
    return rows.astype(np.int64)


def cluster_data(result: Stage1Result) -> ClusterData:
    """The valid tracks' ClusterInputs (co-occurrence cannot-link) and mean backbone embeddings."""
    track_ids = np.asarray(result.tracks.track_id, np.int64)
    crop_row = _rows_of(track_ids, np.asarray(result.crops.track_id, np.int64), "crops")
    box_row = _rows_of(track_ids, np.asarray(result.boxes.track_id, np.int64), "boxes")
    co = cooccurrence(box_row, np.asarray(result.boxes.frame_idx, np.int64), len(track_ids))
    inputs = ClusterInputs.from_stage1(np.asarray(result.tracks.status), crop_row, result.crops.views, co)
    return ClusterData(inputs, track_mean(result.crops.embedding, crop_row, inputs.valid_index))


def track_mean(embedding: NDArray[np.floating], crop_row: NDArray[np.int64],
               rows: NDArray[np.int64]) -> NDArray[np.float64]:
    """(len(rows), D) mean crop embedding of each track row in ``rows`` (0 for a track without crops)."""
    pos = np.full(int(max(crop_row.max(initial=-1), rows.max(initial=-1))) + 1, -1, np.int64)
    pos[rows] = np.arange(len(rows))
    keep = pos[crop_row] >= 0
    sums = np.zeros((len(rows), embedding.shape[1]), np.float64)
    np.add.at(sums, pos[crop_row[keep]], embedding[keep].astype(np.float64))
    counts = np.bincount(pos[crop_row[keep]], minlength=len(rows))
    return sums / np.maximum(counts, 1)[:, None]


def track_identity(case: Case, result: Stage1Result, iou_min: float = 0.5) -> NDArray[np.object_]:
    """GT identity (str) of each track of ``result.tracks`` (same order), None where no box matched."""
    boxes = result.boxes
    match = match_boxes(case.gt_boxes, boxes.frame_idx, boxes.xyxy, iou_min)
    majority = track_identities(case.gt_boxes, match, boxes.track_id)
    return np.array([majority.get(int(t)) for t in result.tracks.track_id], dtype=object)


# ---------------------------------------------------------------- methods


def _vcn(data: ClusterData, cfgs: MethodConfigs, rounds: int | None) -> MethodRun:
    ft = cfgs.finetune if rounds is None else dataclasses.replace(cfgs.finetune, rounds=rounds)
    if ft.train_last_block and data.last_block is None:
        raise ValueError("train_last_block: the case's crops were not re-read for the last block")
    out = cluster_movie(data.inputs, ft, cfgs.match, cfgs.cluster, data.last_block if ft.train_last_block else None)
    return MethodRun(out.cluster_of_track[data.inputs.valid_index], dict(out.seconds), out.suggestions,
                     out.members[0].round_matches)


Baseline = Callable[[ClusterData], NDArray[np.int64]]
BASELINES: dict[str, Baseline] = {
    "ahc": lambda d: ahc(d.track_emb, cannot_link=d.inputs.cannot_link.toarray()),
    "hdbscan": lambda d: hdbscan_labels(d.track_emb),
    "chinese_whispers": lambda d: chinese_whispers(d.track_emb),
    "finch": lambda d: finch_first_partition(d.track_emb),
}


def run_method(name: str, data: ClusterData, cfgs: MethodConfigs) -> MethodRun:
    """Cluster the valid tracks with method ``name`` (one of ``METHOD_NAMES``)."""
    if name == "vcn":
        return _vcn(data, cfgs, None)
    if name == "vcn_no_finetune":
        return _vcn(data, cfgs, 0)
    if name not in BASELINES:
        raise ValueError(f"unknown clustering method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    t0 = time.perf_counter()
    labels = BASELINES[name](data)
    return MethodRun(np.asarray(labels, np.int64), {"cluster": time.perf_counter() - t0})


# ---------------------------------------------------------------- scoring


def track_counts(identity: Sequence[str | None], status: Sequence[str]) -> dict[str, Any]:
    """Counts of the protocol: unmatched tracks (left out), matched ones, and the share of matched
    tracks that are not ``valid`` (``unknown_share``, NaN when no track matched)."""
    ident, stat = _check_tracks(identity, status)
    matched = _is_matched(ident)
    excluded = matched & (stat != VALID)
    n_matched = int(matched.sum())
    return {
        "n_tracks_unmatched": int((~matched).sum()),
        "n_tracks_matched": n_matched,
        "n_tracks_excluded": int(excluded.sum()),
        "unknown_share": float(excluded.sum()) / n_matched if n_matched else float("nan"),
    }


def _is_matched(identity: NDArray[np.object_]) -> NDArray[np.bool_]:
    return np.array([i is not None for i in identity], bool)


def _check_tracks(identity: Sequence[str | None], status: Sequence[str]) -> tuple[NDArray, NDArray]:
    ident = np.asarray(list(identity), dtype=object)
    stat = np.asarray(list(status), dtype=str)
    if ident.ndim != 1 or ident.shape != stat.shape:
        raise ValueError(f"identity and status must be 1-D of one length, got {ident.shape} and {stat.shape}")
    return ident, stat


def evaluate(
    identity: Sequence[str | None], status: Sequence[str], labels: NDArray[np.integer]
) -> dict[str, Any]:
    """Scores of one method's ``labels`` (one per ``valid`` track, in track order) against ``identity``
    (T_all,) and ``status`` (T_all,): the keys of ``REPORTED`` plus ``n_tracks_evaluated`` (valid,
    matched tracks) and ``unknown_share``. Ratios are NaN when no track is evaluated."""
    ident, stat = _check_tracks(identity, status)
    valid = np.flatnonzero(stat == VALID)
    labels = np.asarray(labels)
    if labels.shape != (len(valid),):
        raise ValueError(f"labels must have one entry per valid track ({len(valid)}), got {labels.shape}")
    scored = _is_matched(ident[valid])
    report = clustering_report(ident[valid][scored].tolist(), labels[scored].tolist())
    out: dict[str, Any] = {k: report[k] for k in REPORTED}
    out["n_tracks_evaluated"] = int(scored.sum())
    out["unknown_share"] = track_counts(ident, stat)["unknown_share"]
    return out


def suggestion_report(identity: Sequence[str | None], status: Sequence[str], labels: NDArray[np.integer],
                      hints: MergeSuggestions) -> dict[str, int]:
    """How well the merge suggestions repair an over-split: among clusters whose majority identity
    (of their matched valid tracks) is also another cluster's, how many have a cluster of the same
    identity as their rank-1 suggestion, and among their top suggestions."""
    ident, stat = _check_tracks(identity, status)
    valid_ident = ident[stat == VALID]
    majority: dict[int, str] = {}
    for c in np.unique(labels).tolist():
        ids = [i for i in valid_ident[labels == c] if i is not None]
        if ids:
            majority[c] = max(sorted(set(ids)), key=ids.count)
    split = [c for c, i in majority.items() if sum(1 for d, j in majority.items() if j == i and d != c)]
    same = lambda c, o: majority.get(int(o)) == majority[c]
    rank1 = sum(1 for c in split if any(same(c, o) for o in hints.other[(hints.cluster == c) & (hints.rank == 1)]))
    top = sum(1 for c in split if any(same(c, o) for o in hints.other[hints.cluster == c]))
    return {"split_clusters": len(split), "rank1_same_identity": rank1, "top_k_same_identity": top}


def match_report(identity: Sequence[str | None], cannot_link: sp.spmatrix, matches: SoftMatches) -> dict[str, Any]:
    """Stage 3's pairs against the ground truth, over the valid tracks (``identity`` (T_valid,), None
    for a track matching no GT box): unordered ``pairs``; ``scored`` (both tracks identified);
    ``same_identity``; ``precision`` = same / scored; ``recall`` = same / all same-identity pairs of
    identified tracks that do not share a frame; ``by_normal``: pairs the paper's rule made (in
    either direction)."""
    ident = np.asarray(list(identity), dtype=object)
    n = len(ident)
    known = _is_matched(ident)
    code = np.full(n, -1, np.int64)  # identity index, -1 for a track matching no GT box
    code[known] = np.unique(ident[known].astype(str), return_inverse=True)[1]
    lo, hi = np.minimum(matches.track_a, matches.track_b), np.maximum(matches.track_a, matches.track_b)
    key, inverse = np.unique(lo * n + hi, return_inverse=True)
    a, b = key // max(n, 1), key % max(n, 1)
    scored = (code[a] >= 0) & (code[b] >= 0)
    same = scored & (code[a] == code[b])
    sizes = np.bincount(code[code >= 0])
    ca, cb = sp.triu(sp.csr_matrix(cannot_link, dtype=bool), 1).nonzero()
    apart = int(((code[ca] >= 0) & (code[ca] == code[cb])).sum())
    possible = int((sizes * (sizes - 1) // 2).sum()) - apart
    ratio = lambda x, y: float(x) / y if y else float("nan")
    return {"pairs": len(key), "scored": int(scored.sum()), "same_identity": int(same.sum()),
            "precision": ratio(same.sum(), scored.sum()), "recall": ratio(same.sum(), possible),
            "by_normal": int((np.bincount(inverse, weights=matches.by_normal, minlength=len(key)) > 0).sum())}


SEED_FIELDS = ("wcp", "pcr", "bcubed_f", "n_clusters")


def seed_report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``vcn`` over several Stage 2 seeds: each seed's scores, the median and lowest B-cubed F and the
    lowest WCP (a wrong merge at any seed shows there)."""
    f = [r["bcubed_f"] for r in rows]
    return {"by_seed": rows, "median_bcubed_f": float(np.median(f)), "min_bcubed_f": min(f),
            "min_wcp": min(r["wcp"] for r in rows)}


def _with_seed(cfgs: MethodConfigs, seed: int) -> MethodConfigs:
    return dataclasses.replace(cfgs, finetune=dataclasses.replace(cfgs.finetune, seed=seed))


def _other_seeds(data: ClusterData, cfgs: MethodConfigs, seeds: Sequence[int], identity: NDArray[np.object_],
                 status: NDArray[np.str_]) -> list[dict[str, Any]]:
    rows = []
    for seed in seeds:
        run = run_method("vcn", data, _with_seed(cfgs, seed))
        scores = evaluate(identity, status, run.labels)
        rows.append({"seed": seed, **{k: scores[k] for k in SEED_FIELDS}})
    return rows


def evaluate_case(
    case: Case, result: Stage1Result, methods: Sequence[str], cfgs: MethodConfigs,
    seeds: Sequence[int] | None = None, last_block: Callable[[ClusterInputs], LastBlock] | None = None,
) -> dict[str, Any]:
    """Run and score ``methods`` on a case's Stage 1 result.

    Returns ``{"gt_unknown_policy", "n_tracks_unmatched", "n_tracks_matched", "n_tracks_excluded",
    "unknown_share", "n_tracks_valid", "stage_seconds", "methods": {name: evaluate(...) + "seconds"}}``;
    ``stage_seconds`` holds the ``vcn`` run's ``finetune_and_match`` and ``cluster`` seconds (empty
    when ``vcn`` is not among the methods). With ``seeds`` (Stage 2 seeds), ``vcn`` is scored at the
    first and also run at the others; ``methods.vcn.seeds`` is then :func:`seed_report`. ``last_block``
    makes the ``train_last_block`` inputs of the valid crops (needed when ``cfgs.finetune`` asks for it).
    """
    if seeds:
        cfgs = _with_seed(cfgs, seeds[0])
    identity, status = track_identity(case, result), np.asarray(result.tracks.status)
    data = cluster_data(result)
    if last_block is not None:
        data = dataclasses.replace(data, last_block=last_block(data.inputs))
    scores: dict[str, Any] = {}
    stage_seconds: dict[str, float] = {}
    for name in parse_methods(methods):
        run = run_method(name, data, cfgs)
        seconds = round(sum(run.seconds.values()), 3)
        scores[name] = {**evaluate(identity, status, run.labels), "seconds": seconds}
        if run.suggestions is not None:
            scores[name]["merge_suggestions"] = suggestion_report(identity, status, run.labels, run.suggestions)
        if run.round_matches:
            valid_ident = identity[data.inputs.valid_index]
            scores[name]["soft_matches"] = [match_report(valid_ident, data.inputs.cannot_link, m)
                                            for m in run.round_matches]
        if name == "vcn":
            stage_seconds = {k: round(v, 3) for k, v in run.seconds.items()}
            if seeds and len(seeds) > 1:
                first = {"seed": seeds[0], **{k: scores[name][k] for k in SEED_FIELDS}}
                scores[name]["seeds"] = seed_report([first, *_other_seeds(data, cfgs, seeds[1:], identity, status)])
    return {"gt_unknown_policy": GT_UNKNOWN_POLICY, **track_counts(identity, status),
            "n_tracks_valid": len(data.inputs.valid_index), "stage_seconds": stage_seconds, "methods": scores}
