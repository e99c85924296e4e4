"""Stage 2 (with Stage 3 between rounds): self-supervised adaptation to one movie's faces.

Usage::

    data = TrainingSet.build(views, crop_track, n_tracks, cannot_link)
    result = finetune(data, FinetuneConfig(), MatchConfig())
    result.student, result.teacher, result.loss_fn       # for Stage 4's learnt metric
    result.round_matches[-1]                             # the last round's soft matches

Round r trains for ``steps_per_round`` steps on pairs of crops of one track (temporal positives);
from round 2 a pair's second crop comes, with probability ``match_prob``, from a track that the
previous round soft-matched. Each crop is seen through one of its stored augmented views (mirror /
jitter, or dropout samples) plus light feature noise. The teacher is an EMA of the student.

Training runs on ``cfg.device`` (``core/devices.py``); initialisation and every random draw happen on
the CPU either way, and the returned networks are moved back to the CPU.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from numpy.typing import NDArray

from vcn_assets.core.adaptation import AdaptNet, DINOLoss
from vcn_assets.core.config import FinetuneConfig, MatchConfig
from vcn_assets.core.devices import resolve_device
from vcn_assets.core.progress import Progress, ProgressCounter
from vcn_assets.core.soft_match import SoftMatches, flatten_views, soft_match

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSet:
    """Crops of the valid tracks: ``views`` (C, V, D), ``crop_track`` (C,) in 0..n_tracks-1,
    ``cannot_link`` (T, T) bool, sparse or dense (tracks sharing a frame)."""

    views: NDArray[np.float32]
    crop_track: NDArray[np.int64]
    n_tracks: int
    cannot_link: sp.spmatrix | NDArray[np.bool_]
    crops_of: list[NDArray[np.int64]] = field(default_factory=list)

    @classmethod
    def build(cls, views: NDArray[np.float32], crop_track: NDArray[np.int64], n_tracks: int,
              cannot_link: sp.spmatrix | NDArray[np.bool_]) -> TrainingSet:
        if views.ndim != 3 or len(views) != len(crop_track):
            raise ValueError(f"views must be (C, V, D) with C = len(crop_track), got {views.shape}")
        order = np.argsort(crop_track, kind="stable")
        crops_of = np.split(order, np.cumsum(np.bincount(crop_track, minlength=n_tracks))[:-1])
        return cls(views.astype(np.float32), crop_track.astype(np.int64), n_tracks, cannot_link, crops_of)


@dataclass
class FinetuneResult:
    student: AdaptNet
    teacher: AdaptNet
    loss_fn: DINOLoss
    losses: list[float]
    rounds: list[dict]
    round_matches: list[SoftMatches]


def _ema_schedule(cfg: FinetuneConfig, total: int) -> NDArray[np.float64]:
    """DINO's cosine schedule of the teacher momentum, from ``ema_start`` to 1, indexed by step."""
    steps = np.arange(total)
    return 1.0 - (1.0 - cfg.ema_start) * (np.cos(np.pi * steps / max(total, 1)) + 1) / 2


def _sample_pairs(data: TrainingSet, partners: list[NDArray[np.int64]] | None, cfg: FinetuneConfig,
                  rng: np.random.Generator) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    tracks = rng.integers(0, data.n_tracks, cfg.batch_tracks)
    first = np.empty(len(tracks), np.int64)
    second = np.empty(len(tracks), np.int64)
    for i, t in enumerate(tracks):
        own = data.crops_of[t]
        first[i] = own[rng.integers(len(own))]
        source = own
        if partners is not None and len(partners[t]) and rng.random() < cfg.match_prob:
            source = data.crops_of[partners[t][rng.integers(len(partners[t]))]]
        second[i] = source[rng.integers(len(source))]
    return first, second


def _views(data: TrainingSet, crops: NDArray[np.int64], cfg: FinetuneConfig, rng: np.random.Generator,
           device: str) -> torch.Tensor:
    v = data.views[crops, rng.integers(0, data.views.shape[1], len(crops))]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    v = v + rng.normal(0.0, cfg.feature_noise, v.shape).astype(np.float32)
    return torch.from_numpy(v.astype(np.float32)).to(device)  # drawn on the CPU, so any device sees the same


def _train_round(state: dict, data: TrainingSet, partners: list[NDArray[np.int64]] | None,
                 cfg: FinetuneConfig, first_round: bool, rng: np.random.Generator) -> list[float]:
    student, teacher, loss_fn, opt, ema = state["student"], state["teacher"], state["loss"], state["opt"], state["ema"]
    losses = []
    for step in range(cfg.steps_per_round):
        frozen = first_round and step < cfg.warmup_steps
        student.adapter.requires_grad_(not frozen)
        a, b = _sample_pairs(data, partners, cfg, rng)
        x1, x2 = _views(data, a, cfg, rng, state["device"]), _views(data, b, cfg, rng, state["device"])
        s1, s2 = student(x1), student(x2)
        with torch.no_grad():
            t1, t2 = teacher(x1), teacher(x2)
        loss = loss_fn(s1, s2, t1, t2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            m = float(ema[state["step"]])
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(m).add_(ps.detach() * (1 - m))
            loss_fn.update_center(torch.cat([t1, t2]))
        state["step"] += 1
        state["progress"].update(state["step"])
        losses.append(float(loss.detach()))
    return losses


EMBED_BATCH = 4096  # rows embedded at once: bounds the MLP's activations whatever the movie's length


def student_embeddings(net: AdaptNet, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """``net``'s embeddings of ``x`` (N, D), computed on the device ``net`` is on, in batches of
    ``EMBED_BATCH`` rows."""
    x = np.ascontiguousarray(x, np.float32)
    device = net.input_mean.device
    with torch.no_grad():
        parts = [net.embed(torch.from_numpy(x[i:i + EMBED_BATCH]).to(device)).cpu().numpy()
                 for i in range(0, max(len(x), 1), EMBED_BATCH)]
    return np.concatenate(parts)


@contextmanager
def _single_thread() -> Iterator[None]:
    """The adapter and head are tiny: intra-op threads cost more in synchronisation than they give
    (measured: 9 ms/step on one thread vs 0.75 s/step with two threads on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def finetune(data: TrainingSet, cfg: FinetuneConfig, match_cfg: MatchConfig,
             progress: Progress | None = None) -> FinetuneResult:
    """All rounds of finetune -> soft-match; deterministic for ``cfg.seed``.

    ``progress(done, total)`` counts training steps over all rounds (total 0 without tracks).
    """
    with _single_thread():
        return _finetune(data, cfg, match_cfg, progress)


def _finetune(data: TrainingSet, cfg: FinetuneConfig, match_cfg: MatchConfig,
              progress: Progress | None = None) -> FinetuneResult:
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    log.info("finetuning on %s (device %r)", device, cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = AdaptNet(data.views.shape[2], cfg)  # initialised on the CPU, so any device starts alike
    if len(data.views):
        student.set_input_mean(torch.from_numpy(data.views[:, 0]))
    student.to(device)
    teacher = copy.deepcopy(student).requires_grad_(False)
    loss_fn = DINOLoss(cfg.out_dim, cfg).to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"student": student, "teacher": teacher, "loss": loss_fn, "opt": opt, "step": 0, "device": device,
             "ema": _ema_schedule(cfg, cfg.rounds * cfg.steps_per_round),
             "progress": ProgressCounter(cfg.rounds * cfg.steps_per_round if data.n_tracks else 0, progress)}
    losses, rounds, matches = [], [], []
    partners = None
    for r in range(1, cfg.rounds + 1):
        round_losses = _train_round(state, data, partners, cfg, r == 1, rng) if data.n_tracks else []
        losses += round_losses
        samples, sample_track = flatten_views(data.views, data.crop_track, match_cfg.use_views)
        emb = student_embeddings(student, samples)
        m = soft_match(emb, sample_track, data.n_tracks, data.cannot_link, match_cfg)
        partners = m.partners(data.n_tracks)
        matches.append(m)
        rounds.append({"round": r, "final_loss": float(np.mean(round_losses[-20:])) if round_losses else math.nan,
                       "n_matches": len(m)})
        log.info("round %d: loss %.4f, %d soft matches", r, rounds[-1]["final_loss"], len(m))
    state["progress"].finish()
    return FinetuneResult(student.cpu(), teacher.cpu(), loss_fn.cpu(), losses, rounds, matches)
