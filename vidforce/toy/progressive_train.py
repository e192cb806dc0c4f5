"""Progressive distillation on the ground-truth harness: halving rounds from the flow-matching teacher (CPU, minutes).

Reuses :mod:`vidforce.toy.train` (the teacher, data draws, the optimiser loop, the Euler sampler) and calls the pure
loss of :mod:`vidforce.objectives.progressive`. Round 1's teacher is the harness teacher sampled in
``RoundsConfig.teacher_steps`` Euler steps; round ``k``'s student takes half its teacher's steps and starts as a copy
of it, and becomes round ``k + 1``'s teacher (frozen), down to ``final_steps``. Each student step ``t -> t''`` is one
uniform step of its grid ``euler_grid(N, 1)`` (the harness sampler's), ``x_t`` a noised data draw, and every student
samples with the teacher's Euler sampler at its own step count (:func:`sample`).

Guided distillation has no harness row: the harness data are one unconditional mixture (:class:`MLPDenoiser` ignores
``text_kv``), so there is no conditional / unconditional teacher pair whose guided field ``v_u + w (v_c - v_u)`` a
student could learn. Its pure loss is tested against closed-form fields (``tests/objectives/test_progressive.py``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from vidforce.objectives import progressive as P
from vidforce.toy.gmm import GMM
from vidforce.toy.nets import MLPDenoiser
from vidforce.toy.train import HarnessConfig, _draw, _optimise, euler_sample, flow_of


@dataclass
class RoundsConfig:
    teacher_steps: int = 64       # Euler steps of round 1's teacher (the harness teacher)
    final_steps: int = 1          # Euler steps of the last round's student
    steps: int = 1000             # optimisation steps per round (h.lr, cosine decay, h.batch)

    def __post_init__(self):
        n = self.teacher_steps // max(self.final_steps, 1)
        if self.final_steps < 1 or self.teacher_steps % self.final_steps or n < 2 or n & (n - 1):
            raise ValueError(f"RoundsConfig: teacher_steps / final_steps must be a power of two >= 2, got "
                             f"{self.teacher_steps} / {self.final_steps}")

    @property
    def student_steps(self) -> list[int]:
        """The students' step counts, round by round (``teacher_steps / 2`` down to ``final_steps``)."""
        out, n = [], self.teacher_steps // 2
        while n >= self.final_steps:
            out.append(n)
            n //= 2
        return out


def train_round(teacher: MLPDenoiser, student_steps: int, gmm: GMM, h: HarnessConfig, steps: int,
                g: torch.Generator) -> tuple[MLPDenoiser, float]:
    """One round: a copy of ``teacher`` learns in ``student_steps`` Euler steps what ``teacher`` does in twice as many.
    Returns the student and its wall seconds."""
    net = copy.deepcopy(teacher).requires_grad_(True)
    t_flow = flow_of(teacher)

    def loss_at(k):
        x0, eps = _draw(gmm, h.batch, g)
        t, t_mid, t_end = P.student_times(h.batch, student_steps, 1.0, g)
        return P.progressive_loss(flow_of(net), t_flow, x0, eps, t, t_mid, t_end)
    return net, _optimise(net, steps, h.lr, loss_at)


def train_progressive(teacher: MLPDenoiser, gmm: GMM, h: HarnessConfig,
                      c: RoundsConfig | None = None) -> dict[int, tuple[MLPDenoiser, float]]:
    """Every round from ``teacher`` (frozen): ``{student_steps: (student, seconds)}``, ``c.teacher_steps / 2`` first
    (``c``: default ``RoundsConfig()``)."""
    c = RoundsConfig() if c is None else c
    teacher.requires_grad_(False)
    g = torch.Generator().manual_seed(h.seed + 6)
    out, model = {}, teacher
    for n in c.student_steps:
        model, secs = train_round(model, n, gmm, h, c.steps, g)
        model.requires_grad_(False)
        out[n] = (model, secs)
    return out


def sample(net: MLPDenoiser, noise: Tensor, steps: int) -> Tensor:
    """A student's (or the teacher's) Euler samples in ``steps`` steps on ``euler_grid(steps, 1)``."""
    return euler_sample(net, noise, steps)
