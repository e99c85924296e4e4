"""Stages 2-4 end to end on Stage 1's output: finetune, soft-match, cluster.

Usage::

    inputs = ClusterInputs.from_stage1(track_ids, status, crop_track_id, views, frame_of_box, track_of_box)
    out = cluster_movie(inputs, FinetuneConfig(), MatchConfig(), ClusterConfig())
    out.cluster_of_track          # (T_all,) cluster id per track, -1 for tracks excluded (unknown / no crops)
    out.members                   # the FinetuneConfig.members finetuned students (one FinetuneResult each)

    # with a reviewer's corrections (core/corrections.py) resolved to track rows:
    status = corrected_status(status, resolved)
    inputs = ClusterInputs.from_stage1(status, ...)
    final = final_clusters(inputs, members, ClusterConfig(), constraints_for(inputs, resolved))

Only ``valid`` tracks are finetuned on and clustered; the others keep cluster -1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from vcn_assets.core.adaptation import pair_loss_terms
from vcn_assets.core.clustering import (
    Constraints,
    MergeSuggestions,
    MetricTerms,
    cluster_tracks,
    consensus,
    mean_metric,
    merge_suggestions,
)
from vcn_assets.core.config import ClusterConfig, FinetuneConfig, MatchConfig
from vcn_assets.core.corrections import Resolved, link_matrices
from vcn_assets.core.crops import UNKNOWN, VALID, trunk_features
from vcn_assets.core.tracking import TrackBoxes
from vcn_assets.core.video import VideoInfo
from vcn_assets.models.base import FaceModels

NOT_FACE = "not_face"  # status of a track the reviewer marked as not a face
from vcn_assets.core.finetune import FinetuneResult, TrainingSet, finetune_members
from vcn_assets.core.progress import Progress


def cooccurrence(track_of_box: NDArray[np.int64], frame_of_box: NDArray[np.int64], n_tracks: int) -> sp.csr_matrix:
    """Sparse (T, T) bool, True where two tracks have a box in the same frame (a few pairs per track:
    stored sparse so memory grows with the tracks, not their square)."""
    if len(track_of_box) == 0:
        return sp.csr_matrix((n_tracks, n_tracks), dtype=bool)
    frames, frame_idx = np.unique(frame_of_box, return_inverse=True)
    m = sp.csr_matrix((np.ones(len(track_of_box), np.float32), (track_of_box, frame_idx)), shape=(n_tracks, len(frames)))
    a, b = (m @ m.T).nonzero()
    off = a != b
    return sp.csr_matrix((np.ones(int(off.sum()), bool), (a[off], b[off])), shape=(n_tracks, n_tracks))


@dataclass(frozen=True)
class ClusterInputs:
    """Valid tracks' crops: ``views`` (C, V, D), ``crop_track`` (C,) in 0..T-1, ``valid_index`` (T,) the
    rows of the valid tracks among all ``n_all`` tracks, ``cannot_link`` sparse (T, T) bool, and
    ``crop_rows`` (C,) the crops' rows in Stage 1's crop list."""

    views: NDArray[np.float32]
    crop_track: NDArray[np.int64]
    valid_index: NDArray[np.int64]
    n_all: int
    cannot_link: sp.csr_matrix
    crop_rows: NDArray[np.int64]

    @classmethod
    def from_stage1(cls, status: NDArray[np.str_], crop_track_row: NDArray[np.int64], views: NDArray[np.float32],
                    cooccur_all: sp.spmatrix | NDArray[np.bool_]) -> ClusterInputs:
        """``status`` (T_all,), ``crop_track_row`` (C,) row of each crop's track, ``cooccur_all`` (T_all, T_all)
        bool, sparse (as :func:`cooccurrence` returns it) or dense."""
        valid_index = np.flatnonzero(status == VALID)
        remap = np.full(len(status), -1, np.int64)
        remap[valid_index] = np.arange(len(valid_index))
        keep = remap[crop_track_row] >= 0
        cl = sp.csr_matrix(cooccur_all, dtype=bool)[valid_index][:, valid_index]
        return cls(views[keep], remap[crop_track_row[keep]], valid_index, len(status), cl, np.flatnonzero(keep))


@dataclass(frozen=True)
class ClusterOutput:
    cluster_of_track: NDArray[np.int64]
    members: list[FinetuneResult]
    n_iterations: int
    seconds: dict[str, float]
    suggestions: MergeSuggestions


def metric_terms(ft: FinetuneResult, x_teacher: NDArray[np.float32], x_student: NDArray[np.float32]) -> MetricTerms:
    """The learnt metric's terms of items whose backbone embeddings are ``x_teacher`` / ``x_student``
    (the same array unless the last block was trained: :meth:`FinetuneResult.backbone_views`)."""
    def tensor(x: NDArray[np.float32]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    p, logs = pair_loss_terms(ft.teacher, ft.student, ft.loss_fn, tensor(x_teacher), tensor(x_student))
    return MetricTerms(p.double().numpy(), logs.double().numpy())


def track_mean_inputs(views: NDArray[np.float32], crop_track: NDArray[np.int64], n: int) -> NDArray[np.float32]:
    x = F.normalize(torch.from_numpy(np.ascontiguousarray(views[:, 0])), dim=-1).numpy()
    sums = np.zeros((n, x.shape[1]), np.float32)
    np.add.at(sums, crop_track, x)
    return (sums / np.maximum(np.bincount(crop_track, minlength=n), 1)[:, None]).astype(np.float32)


@dataclass(frozen=True)
class LastBlock:
    """For ``train_last_block``: the valid crops' features before the backbone's last block
    (C, V, *F), in ``ClusterInputs`` order, and that block (``TrainableTail.tail()``)."""

    trunk: NDArray[np.float16]
    tail: torch.nn.Module


def last_block_inputs(info: VideoInfo, boxes: TrackBoxes, crop_track_id: NDArray[np.int64],
                      crop_frame_idx: NDArray[np.int64], crop_embedding: NDArray[np.float32], inputs: ClusterInputs,
                      models: FaceModels, seed: int, progress: Progress | None = None) -> LastBlock:
    """:class:`LastBlock` of the valid crops: their features re-read from the movie (Stage 1's crop list
    given as ``crop_track_id``, ``crop_frame_idx``, ``crop_embedding``) and the embedder's last block."""
    rows = inputs.crop_rows
    trunk = trunk_features(info, boxes, crop_track_id[rows], crop_frame_idx[rows], crop_embedding[rows], models,
                           inputs.views.shape[1], seed, progress)
    return LastBlock(trunk, models.trainable_tail().tail())


def adapt(inputs: ClusterInputs, ft_cfg: FinetuneConfig, match_cfg: MatchConfig,
          progress: Progress | None = None, last_block: LastBlock | None = None) -> list[FinetuneResult]:
    """Stages 2 and 3: all finetune -> soft-match rounds on the valid tracks, for each of
    ``ft_cfg.members`` students."""
    trunk = last_block.trunk if last_block is not None else None
    data = TrainingSet.build(inputs.views, inputs.crop_track, len(inputs.valid_index), inputs.cannot_link, trunk)
    return finetune_members(data, ft_cfg, match_cfg, progress, last_block.tail if last_block is not None else None)


def corrected_status(status: NDArray[np.str_], resolved: Resolved) -> NDArray[np.str_]:
    """Track status after the reviewer's corrections: ``not_face`` tracks leave the clustering;
    quality outliers (``unknown``) that the reviewer linked or named join it."""
    out = status.astype(object).copy()
    out[resolved.not_face] = NOT_FACE
    linked = np.array(sorted(resolved.linked), np.int64)
    if len(linked):
        out[linked[out[linked] == UNKNOWN]] = VALID
    return out.astype(str)


def constraints_for(inputs: ClusterInputs, resolved: Resolved) -> Constraints:
    """The reviewer's links restricted to the tracks being clustered."""
    comp, cannot = link_matrices(inputs.n_all, resolved)
    vi = inputs.valid_index
    return Constraints(np.unique(comp[vi], return_inverse=True)[1].astype(np.int64), cannot[np.ix_(vi, vi)])


@dataclass(frozen=True)
class FinalClusters:
    cluster_of_track: NDArray[np.int64]  # (T_all,), -1 for tracks not clustered
    n_iterations: int
    suggestions: MergeSuggestions


def final_clusters(inputs: ClusterInputs, members: list[FinetuneResult], cl_cfg: ClusterConfig,
                   user: Constraints | None = None, n_suggestions: int = 3) -> FinalClusters:
    """Stage 4: cluster id per track (all tracks; -1 for excluded ones), the iterations run (the most
    any member needed), and each cluster's nearest other clusters. Each finetuned member clusters with
    its own metric; the result is their :func:`consensus`, and the suggestions use their mean metric."""
    if not members:
        raise ValueError("final_clusters needs at least one finetuned member")
    n = len(inputs.valid_index)
    out = np.full(inputs.n_all, -1, np.int64)
    if n == 0:
        return FinalClusters(out, 0, merge_suggestions(*_no_terms(), np.zeros(0, np.int64), None, cl_cfg))
    terms = [_stage4_terms(inputs, ft, cl_cfg) for ft in members]
    crop_track = np.repeat(inputs.crop_track, len(terms[0][0].p) // max(len(inputs.crop_track), 1))
    runs = [cluster_tracks(crops, tracks, crop_track, inputs.cannot_link, cl_cfg, user) for crops, tracks in terms]
    labels = consensus([labels for labels, _ in runs], inputs.cannot_link, cl_cfg, user)
    crops, tracks = (mean_metric([t[i] for t in terms]) for i in (0, 1))
    hints = merge_suggestions(crops, tracks, crop_track, labels, inputs.cannot_link, cl_cfg, user, n_suggestions)
    out[inputs.valid_index] = labels
    return FinalClusters(out, max(it for _, it in runs), hints)


def _stage4_terms(inputs: ClusterInputs, ft: FinetuneResult, cl_cfg: ClusterConfig) -> tuple[MetricTerms, MetricTerms]:
    """One member's learnt-metric terms of the crops (each view a crop when ``use_views``) and of the
    track means."""
    student_views, teacher_views = ft.backbone_views(inputs.views)
    used = slice(None) if cl_cfg.use_views else slice(0, 1)
    flat_t, flat_s = (v[:, used].reshape(-1, v.shape[2]) for v in (teacher_views, student_views))
    n = len(inputs.valid_index)
    tracks = metric_terms(ft, *(track_mean_inputs(v, inputs.crop_track, n) for v in (teacher_views, student_views)))
    return metric_terms(ft, flat_t, flat_s), tracks


def _no_terms() -> tuple[MetricTerms, MetricTerms, NDArray[np.int64]]:
    empty = MetricTerms(np.zeros((0, 1)), np.zeros((0, 1)))
    return empty, empty, np.zeros(0, np.int64)


def cluster_names(cluster_of_track: NDArray[np.int64], resolved: Resolved) -> dict[int, str]:
    """Cluster id -> the name the reviewer gave one of its tracks (names attach to tracks)."""
    return {int(cluster_of_track[r]): name for r, name in resolved.name_of.items() if cluster_of_track[r] >= 0}


def cluster_movie(inputs: ClusterInputs, ft_cfg: FinetuneConfig, match_cfg: MatchConfig,
                  cl_cfg: ClusterConfig, last_block: LastBlock | None = None) -> ClusterOutput:
    """Stages 2-4 in one call (what the three assets do in sequence)."""
    t0 = time.perf_counter()
    members = adapt(inputs, ft_cfg, match_cfg, last_block=last_block)
    t1 = time.perf_counter()
    final = final_clusters(inputs, members, cl_cfg)
    seconds = {"finetune_and_match": t1 - t0, "cluster": time.perf_counter() - t1}
    return ClusterOutput(final.cluster_of_track, members, final.n_iterations, seconds, final.suggestions)
