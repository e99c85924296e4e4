"""Finetuned checkpoints as safetensors files (tensors only: nothing is ever unpickled).

Usage::

    sha = save_checkpoint(path, members, in_dim=128, cfg=FinetuneConfig())
    members = load_checkpoint(path, in_dim=128)      # CheckpointError on a corrupt / mismatched file

The file holds, for each finetuned member (``FinetuneConfig.members``; tensors named ``member<k>.``),
the student, the teacher, the loss centre and every round's soft matches, and as metadata the
config and each member's loss curve and round statistics. A file of the earlier format
(``vcn-adapt-1``, one student, no prefix) reads as one member. With ``train_last_block`` it also holds the
trained last backbone block of each network and the crops' backbone views through them (what
Stages 3-4 read: they cannot recompute them without re-reading the movie). It is written to a temporary file and
renamed, so a reader never sees half a checkpoint; a failed write removes the temporary file, and a
full disk is a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from vcn_assets.core.adaptation import AdaptNet, DINOLoss
from vcn_assets.core.config import FinetuneConfig
from vcn_assets.core.files import is_disk_full
from vcn_assets.core.finetune import FinetuneResult
from vcn_assets.core.soft_match import SoftMatches

FORMAT = "vcn-adapt-2"
SINGLE = "vcn-adapt-1"  # the format before members: one student's tensors without a prefix


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def _tensors(result: FinetuneResult) -> dict[str, torch.Tensor]:
    out = {f"student.{k}": v for k, v in result.student.state_dict().items()}
    out |= {f"teacher.{k}": v for k, v in result.teacher.state_dict().items()}
    out["loss.center"] = result.loss_fn.center
    if result.tail_views is not None and result.tail_weights is not None:
        out["tail_views.student"], out["tail_views.teacher"] = (torch.from_numpy(v) for v in result.tail_views)
        for name, weights in zip(("student_tail", "teacher_tail"), result.tail_weights):
            out |= {f"{name}.{k}": v for k, v in weights.items()}
    for r, m in enumerate(result.round_matches, start=1):
        out[f"matches.{r}.pairs"] = torch.from_numpy(np.stack([m.track_a, m.track_b], 1).reshape(-1, 2))
        out[f"matches.{r}.scores"] = torch.from_numpy(np.stack([m.log_pdf, m.threshold], 1).reshape(-1, 2))
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def content_digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """sha256 over the sorted tensor names and bytes and the sorted metadata. The file's own bytes are
    not canonical (safetensors writes its header in hash-map order), so this is the checkpoint's hash."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].numpy().tobytes())
    return h.hexdigest()


def _recorded_config(cfg: dict) -> dict:
    """The config written into the file, without ``device``: where the weights were trained is not part
    of what they are, so the same weights keep the same content hash (GPU-trained weights differ anyway)."""
    return {k: v for k, v in cfg.items() if k != "device"}


def save_checkpoint(path: Path, members: list[FinetuneResult], in_dim: int, cfg: FinetuneConfig) -> str:
    """Write atomically; returns the checkpoint's content hash (:func:`content_digest`)."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    if len(members) != cfg.members:
        raise ValueError(f"{len(members)} finetuned members given, the config asks for {cfg.members}")
    meta = {"format": FORMAT, "in_dim": str(in_dim), "config": json.dumps(_recorded_config(asdict(cfg))),
            "rounds": json.dumps([m.rounds for m in members]),
            "losses": json.dumps([[round(x, 5) for x in m.losses] for m in members])}
    tmp = path.with_name(path.name + ".tmp")
    tensors = {f"member{k}.{name}": v for k, m in enumerate(members) for name, v in _tensors(m).items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except Exception as exc:  # safetensors reports I/O failures as its own error type
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise CheckpointError(f"{path}: the disk is full, the checkpoint was not written ({exc}); "
                                  f"free space on the disk holding {path.parent} and re-run") from exc
        raise
    return content_digest(tensors, meta)


def discard_partial(path: Path) -> list[Path]:
    """Delete what an interrupted :func:`save_checkpoint` to ``path`` may have left (``path`` and its
    temporary file); returns the files deleted."""
    gone = [p for p in (path, path.with_name(path.name + ".tmp")) if p.is_file()]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint missing: materialise `finetuned_checkpoint` first")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # safetensors raises several error types for damaged files
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    if meta.get("format") not in (FORMAT, SINGLE):
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    return tensors, meta


def checkpoint_digest(path: Path) -> str:
    """The content hash of the checkpoint file at ``path``: what :func:`save_checkpoint` returned when
    it wrote these weights (CheckpointError when the file is missing or unreadable)."""
    return content_digest(*_read(path))


def load_checkpoint(path: Path, in_dim: int) -> list[FinetuneResult]:
    """Rebuild each member's networks, centre and round matches; errors name the file and the mismatch."""
    tensors, meta = _read(path)
    if int(meta["in_dim"]) != in_dim:
        raise CheckpointError(f"{path}: made for {meta['in_dim']}-d embeddings, these are {in_dim}-d")
    config = json.loads(meta["config"])
    if meta["format"] == SINGLE:
        config["members"] = 1
        rounds, losses, prefixes = [json.loads(meta["rounds"])], [json.loads(meta["losses"])], [""]
    else:
        rounds, losses = json.loads(meta["rounds"]), json.loads(meta["losses"])
        prefixes = [f"member{k}." for k in range(len(rounds))]
    cfg = FinetuneConfig(**config)
    held = [p for p in prefixes if any(k.startswith(p) for k in tensors)]
    if len(held) != cfg.members or len(prefixes) != cfg.members:
        raise CheckpointError(f"{path}: its config asks for {cfg.members} finetuned members, the file holds {len(held)}")
    return [_member(path, {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}, in_dim, cfg, r, loss)
            for p, r, loss in zip(prefixes, rounds, losses, strict=True)]


def _member(path: Path, tensors: dict[str, torch.Tensor], in_dim: int, cfg: FinetuneConfig, rounds: list[dict],
            losses: list[float]) -> FinetuneResult:
    nets = []
    for prefix in ("student.", "teacher."):
        net = AdaptNet(in_dim, cfg)
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the configured network ({exc})") from exc
        nets.append(net.eval().requires_grad_(False))
    loss_fn = DINOLoss(cfg.out_dim, cfg)
    loss_fn.center.copy_(tensors["loss.center"])
    matches = [_matches(tensors, r) for r in range(1, len(rounds) + 1)]
    result = FinetuneResult(nets[0], nets[1], loss_fn, losses, rounds, matches)
    if ("tail_views.student" in tensors) != cfg.train_last_block:
        raise CheckpointError(f"{path}: train_last_block is {cfg.train_last_block} in its config but the file "
                              f"{'lacks' if cfg.train_last_block else 'has'} the block's views")
    if cfg.train_last_block:
        result.tail_views = (tensors["tail_views.student"].numpy(), tensors["tail_views.teacher"].numpy())
        result.tail_weights = tuple({k[len(p) + 1:]: v for k, v in tensors.items() if k.startswith(p + ".")}
                                    for p in ("student_tail", "teacher_tail"))
    return result


def _matches(tensors: dict[str, torch.Tensor], r: int) -> SoftMatches:
    pairs = tensors[f"matches.{r}.pairs"].numpy().astype(np.int64)
    scores = tensors[f"matches.{r}.scores"].numpy().astype(np.float64)
    return SoftMatches(pairs[:, 0], pairs[:, 1], scores[:, 0], scores[:, 1])
