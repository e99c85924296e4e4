"""Stage 2 (with Stage 3 between rounds): self-supervised adaptation to one movie's faces.

Usage::

    data = TrainingSet.build(views, crop_track, n_tracks, cannot_link)
    result = finetune(data, FinetuneConfig(), MatchConfig())
    result.student, result.teacher, result.loss_fn       # for Stage 4's learnt metric
    result.round_matches[-1]                             # the last round's soft matches
    members = finetune_members(data, cfg, MatchConfig()) # cfg.members such runs, seeds seed, seed+1, ...

Round r trains for ``steps_per_round`` steps on pairs of crops of one track (temporal positives);
from round 2 a pair's second crop comes, with probability ``match_prob``, from a track that the
previous round soft-matched. Each crop is seen through one of its stored augmented views (mirror /
jitter, or dropout samples) plus light feature noise. The teacher is an EMA of the student.

Training runs on ``cfg.device`` (``core/devices.py``); initialisation and every random draw happen on
the CPU either way, and the returned networks are moved back to the CPU.

With ``cfg.train_last_block`` the backbone's last block is trained too: the set then holds each crop
view's backbone features before that block (``trunk``, from :func:`vcn_assets.core.crops.trunk_features`)
and :func:`finetune` gets the block (``tail``, from the backbone's ``TrainableTail``). Student and
teacher each have their copy of the block (the teacher's an EMA of the student's, like the rest),
so after training the crops' backbone embeddings differ per network: ``FinetuneResult.tail_views``
holds both, and Stages 3-4 read them through :meth:`FinetuneResult.backbone_views`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
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
    trunk: NDArray[np.float16] | None = None  # (C, V, *F) features before the backbone's last block

    @classmethod
    def build(cls, views: NDArray[np.float32], crop_track: NDArray[np.int64], n_tracks: int,
              cannot_link: sp.spmatrix | NDArray[np.bool_], trunk: NDArray[np.float16] | None = None) -> TrainingSet:
        if views.ndim != 3 or len(views) != len(crop_track):
            raise ValueError(f"views must be (C, V, D) with C = len(crop_track), got {views.shape}")
        if trunk is not None and trunk.shape[:2] != views.shape[:2]:
            raise ValueError(f"trunk features {trunk.shape[:2]} do not match the views {views.shape[:2]} (crops, views)")
        order = np.argsort(crop_track, kind="stable")
        crops_of = np.split(order, np.cumsum(np.bincount(crop_track, minlength=n_tracks))[:-1])
        return cls(views.astype(np.float32), crop_track.astype(np.int64), n_tracks, cannot_link, crops_of, trunk)


@dataclass
class FinetuneResult:
    student: AdaptNet
    teacher: AdaptNet
    loss_fn: DINOLoss
    losses: list[float]
    rounds: list[dict]
    round_matches: list[SoftMatches]
    # train_last_block: the crops' backbone views (C, V, D) through the student's and the teacher's trained
    # block, and the blocks' weights (student, teacher)
    tail_views: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None
    tail_weights: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None

    def backbone_views(self, views: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(student's, teacher's) backbone views of the crops whose Stage 1 ``views`` are given: those
        views themselves, or with the last block trained, the views through each network's block."""
        if self.tail_views is None:
            return views, views
        if self.tail_views[0].shape != views.shape:
            raise ValueError(f"the checkpoint's block-trained views are {self.tail_views[0].shape}, the movie's crops "
                             f"{views.shape}: the checkpoint was made for other crops")
        return self.tail_views


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
           state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) inputs of one view of each crop: its unit-norm backbone embedding plus
    feature noise (the same for both networks; through each network's own last block when trained)."""
    device = state["device"]
    pick = rng.integers(0, data.views.shape[1], len(crops))
    if state["tails"] is None:
        v = data.views[crops, pick]
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        v = v + rng.normal(0.0, cfg.feature_noise, v.shape).astype(np.float32)
        x = torch.from_numpy(v.astype(np.float32)).to(device)  # drawn on the CPU, so any device sees the same
        return x, x
    noise = torch.from_numpy(rng.normal(0.0, cfg.feature_noise, (len(crops), data.views.shape[2])).astype(np.float32))
    f = torch.from_numpy(data.trunk[crops, pick].astype(np.float32)).to(device)
    tail_s, tail_t = state["tails"]
    with torch.no_grad():
        xt = F.normalize(tail_t(f), dim=-1) + noise.to(device)
    return F.normalize(tail_s(f), dim=-1) + noise.to(device), xt


def _train_round(state: dict, data: TrainingSet, partners: list[NDArray[np.int64]] | None,
                 cfg: FinetuneConfig, first_round: bool, rng: np.random.Generator) -> list[float]:
    student, teacher, loss_fn, opt, ema = state["student"], state["teacher"], state["loss"], state["opt"], state["ema"]
    losses = []
    for step in range(cfg.steps_per_round):
        frozen = first_round and step < cfg.warmup_steps
        student.adapter.requires_grad_(not frozen)
        if state["tails"] is not None:
            state["tails"][0].requires_grad_(not frozen)
        a, b = _sample_pairs(data, partners, cfg, rng)
        (x1, y1), (x2, y2) = _views(data, a, cfg, rng, state), _views(data, b, cfg, rng, state)
        s1, s2 = student(x1), student(x2)
        with torch.no_grad():
            t1, t2 = teacher(y1), teacher(y2)
        loss = loss_fn(s1, s2, t1, t2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            m = float(ema[state["step"]])
            for ps, pt in zip(_trained(student, state["tails"], 0), _trained(teacher, state["tails"], 1)):
                pt.mul_(m).add_(ps.detach() * (1 - m))
            loss_fn.update_center(torch.cat([t1, t2]))
        state["step"] += 1
        state["progress"].update(state["step"])
        losses.append(float(loss.detach()))
    return losses


def _trained(net: AdaptNet, tails: tuple[torch.nn.Module, torch.nn.Module] | None, which: int) -> list[torch.Tensor]:
    """The parameters of one network (0 student, 1 teacher), its last backbone block's included."""
    return list(net.parameters()) + (list(tails[which].parameters()) if tails is not None else [])


def tail_outputs(tail: torch.nn.Module, trunk: NDArray[np.float16], dim: int, device: str) -> NDArray[np.float32]:
    """Backbone embeddings (C, V, dim) of trunk features (C, V, *F) through ``tail``, ``TAIL_BATCH`` at a time."""
    flat = trunk.reshape(-1, *trunk.shape[2:])
    with torch.no_grad():
        parts = [tail(torch.from_numpy(flat[i:i + TAIL_BATCH].astype(np.float32)).to(device)).cpu().numpy()
                 for i in range(0, len(flat), TAIL_BATCH)]
    out = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return out.reshape(trunk.shape[0], trunk.shape[1], dim).astype(np.float32)


TAIL_BATCH = 512  # crop views through the last block at once (a few MB of activations)
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
             progress: Progress | None = None, tail: torch.nn.Module | None = None) -> FinetuneResult:
    """All rounds of finetune -> soft-match; deterministic for ``cfg.seed``.

    ``progress(done, total)`` counts training steps over all rounds (total 0 without tracks).
    ``tail``: the backbone's last block, trained when ``cfg.train_last_block`` (then ``data.trunk`` is needed).
    """
    if cfg.train_last_block and (tail is None or data.trunk is None):
        raise ValueError("train_last_block needs the backbone's last block and the crops' features before it")
    if not cfg.train_last_block:
        with _single_thread():
            return _finetune(data, cfg, match_cfg, progress, None)
    return _finetune(data, cfg, match_cfg, progress, tail)  # convolutions: intra-op threads pay off


def finetune_members(data: TrainingSet, cfg: FinetuneConfig, match_cfg: MatchConfig,
                     progress: Progress | None = None, tail: torch.nn.Module | None = None) -> list[FinetuneResult]:
    """``cfg.members`` independent :func:`finetune` runs at seeds ``cfg.seed``, ``cfg.seed + 1``, ...
    (the first is exactly ``finetune(data, cfg, ...)``); ``progress`` counts the steps of all of them."""
    if cfg.members < 1:
        raise ValueError(f"members must be at least 1, got {cfg.members}")
    steps = cfg.rounds * cfg.steps_per_round if data.n_tracks else 0
    counter = ProgressCounter(cfg.members * steps, progress)
    out = []
    for k in range(cfg.members):
        def part(done: int, _total: int, k: int = k) -> None:
            counter.update(k * steps + done)

        out.append(finetune(data, replace(cfg, seed=cfg.seed + k), match_cfg, part, tail))
    counter.finish()
    return out


def _finetune(data: TrainingSet, cfg: FinetuneConfig, match_cfg: MatchConfig,
              progress: Progress | None, tail: torch.nn.Module | None) -> FinetuneResult:
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    log.info("finetuning on %s (device %r)%s", device, cfg.device, " with the last backbone block" if tail else "")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = AdaptNet(data.views.shape[2], cfg)  # initialised on the CPU, so any device starts alike
    if len(data.views):
        student.set_input_mean(torch.from_numpy(data.views[:, 0]))
    student.to(device)
    teacher = copy.deepcopy(student).requires_grad_(False)
    loss_fn = DINOLoss(cfg.out_dim, cfg).to(device)
    tails = None if tail is None else (copy.deepcopy(tail).to(device), copy.deepcopy(tail).to(device).requires_grad_(False))
    groups = [{"params": list(student.parameters())}]
    if tails is not None:
        groups.append({"params": list(tails[0].parameters()), "lr": cfg.lr * cfg.last_block_lr_scale})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"student": student, "teacher": teacher, "loss": loss_fn, "opt": opt, "step": 0, "device": device,
             "tails": tails, "ema": _ema_schedule(cfg, cfg.rounds * cfg.steps_per_round),
             "progress": ProgressCounter(cfg.rounds * cfg.steps_per_round if data.n_tracks else 0, progress)}
    losses, rounds, matches = [], [], []
    partners = None
    for r in range(1, cfg.rounds + 1):
        round_losses = _train_round(state, data, partners, cfg, r == 1, rng) if data.n_tracks else []
        losses += round_losses
        views = data.views if tails is None else tail_outputs(tails[0], data.trunk, data.views.shape[2], device)
        samples, sample_track = flatten_views(views, data.crop_track, match_cfg.use_views)
        emb = student_embeddings(student, samples)
        m = soft_match(emb, sample_track, data.n_tracks, data.cannot_link, match_cfg)
        partners = m.partners(data.n_tracks)
        matches.append(m)
        rounds.append({"round": r, "final_loss": float(np.mean(round_losses[-20:])) if round_losses else math.nan,
                       "n_matches": len(m)})
        log.info("round %d: loss %.4f, %d soft matches", r, rounds[-1]["final_loss"], len(m))
    state["progress"].finish()
    result = FinetuneResult(student.cpu(), teacher.cpu(), loss_fn.cpu(), losses, rounds, matches)
    if tails is None:
        return result
    result.tail_views = tuple(tail_outputs(t, data.trunk, data.views.shape[2], device) for t in tails)
    result.tail_weights = tuple({k: v.detach().cpu() for k, v in t.state_dict().items()} for t in tails)
    return result
