"""Stage 2's networks and loss: a DINO-style student/teacher over a frozen face backbone.

Usage::

    net = AdaptNet(in_dim=128, cfg=FinetuneConfig())
    out = net(x)                        # (N, out_dim) prototype logits
    emb = net.embed(x)                  # (N, in_dim) adapted, unit-norm student embeddings
    loss_fn = DINOLoss(out_dim, cfg)    # the centre is a registered buffer (saved with checkpoints)

The trainable part is a residual adapter (identity at initialisation, so training starts from the
pretrained backbone's geometry) followed by DINO's projection head: MLP -> L2-normalised
bottleneck -> prototype layer with unit-norm weights (DINO's ``norm_last_layer``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vcn_assets.core.config import FinetuneConfig


class Adapter(nn.Module):
    """x + MLP(x), with the last layer zero-initialised: the identity map before training."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.gelu(self.fc1(x)))


class DINOHead(nn.Module):
    def __init__(self, dim: int, hidden: int, bottleneck: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).T


class AdaptNet(nn.Module):
    """Adapter + DINO head on backbone embeddings centred on the movie's mean face.

    Face descriptors of one movie all lie in a narrow cone (a large common component); without
    centring, the MLP sees near-identical inputs and DINO collapses to a uniform output (measured on
    tbbt_s01e01_open: teacher entropy = log K within 100 steps). ``input_mean`` is a buffer, saved
    with the checkpoint.
    """

    def __init__(self, in_dim: int, cfg: FinetuneConfig) -> None:
        super().__init__()
        self.adapter = Adapter(in_dim, cfg.hidden_dim)
        self.head = DINOHead(in_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim)
        self.register_buffer("input_mean", torch.zeros(in_dim))

    def set_input_mean(self, x: Tensor) -> None:
        self.input_mean.copy_(F.normalize(x, dim=-1).mean(0))

    def embed(self, x: Tensor) -> Tensor:
        return F.normalize(self.adapter(F.normalize(F.normalize(x, dim=-1) - self.input_mean, dim=-1)), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


class DINOLoss(nn.Module):
    """``-softmax((t - c) / temp_t) . log_softmax(s / temp_s)``, symmetrised over the two views."""

    def __init__(self, out_dim: int, cfg: FinetuneConfig) -> None:
        super().__init__()
        self.teacher_temp = cfg.teacher_temp
        self.student_temp = cfg.student_temp
        self.center_momentum = cfg.center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_out: Tensor) -> Tensor:
        return F.softmax((teacher_out - self.center) / self.teacher_temp, dim=-1)

    def student_logp(self, student_out: Tensor) -> Tensor:
        return F.log_softmax(student_out / self.student_temp, dim=-1)

    def forward(self, s1: Tensor, s2: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
        """Mean loss over the batch: teacher(view 1) vs student(view 2) and vice versa."""
        p1, p2 = self.teacher_probs(t1), self.teacher_probs(t2)
        loss = -(p1 * self.student_logp(s2)).sum(-1) - (p2 * self.student_logp(s1)).sum(-1)
        return loss.mean() / 2

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        batch_center = teacher_out.mean(dim=0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


def pair_loss_terms(teacher: AdaptNet, student: AdaptNet, loss: DINOLoss, x_teacher: Tensor,
                    x_student: Tensor) -> tuple[Tensor, Tensor]:
    """Per-item teacher probabilities P (N, K) and student log-probabilities logS (N, K) of items whose
    backbone embeddings are ``x_teacher`` / ``x_student`` (one tensor twice unless each network has its own
    trained last block): the learnt metric between items i and j is ``-(P_i . logS_j + P_j . logS_i) / 2``."""
    with torch.no_grad():
        return loss.teacher_probs(teacher(x_teacher)), loss.student_logp(student(x_student))
