"""Progressive distillation on the ground-truth harness: halving rounds from the flow-matching teacher (CPU, minutes).

Reuses :mod:`vidforce.toy.train` (the teacher, data draws, the optimiser loop, the Euler sampler) and calls the pure
loss of :mod:`vidforce.objectives.progressive`. Round 1's teacher is the harness teacher sampled in
``RoundsConfig.teacher_steps`` Euler steps; round ``k``'s student takes half its teacher's steps and starts as a copy
of it, and becomes round ``k + 1``'s teacher (frozen), down to ``final_steps``. Each student step ``t -> t''`` is one
uniform step of its grid ``euler_grid(N, 1)`` (the harness sampler's), ``x_t`` a noised data draw, and every student
samples with the teacher's Euler sampler at its own step count (:func:`vidforce.toy.train.euler_sample`).

Guided distillation runs on the class-conditional ring (:class:`LabelledGMM`: 2 classes of 4 alternating modes) with
its classifier-free-guidance teacher (``train_teacher``: label dropout ``CFG_DROP``). Stage 1 (:func:`train_guided`):
a copy of the teacher, conditioned on the class, learns the teacher's guided flow ``v_u + w (v_c - v_u)`` at
``GUIDANCE`` (``w = 2``, ``uncond`` convention) in one call with ``guided_loss``, ``x_t`` a noised draw of the class;
stage 2: progressive rounds from it (class-conditional, one call per step). The guided teacher's samples are not the
data (CFG is not the flow of a distribution), so :func:`guided_rows` scores every sampler against the teacher's own
``RoundsConfig.teacher_steps``-step guided Euler samples of the same noise and classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vidforce.objectives import progressive as P
from vidforce.sampling import Guidance
from vidforce.toy import metrics
from vidforce.toy.gmm import GMM, LabelledGMM
from vidforce.toy.nets import MLPDenoiser
from vidforce.toy.train import (HarnessConfig, _draw_labelled, _optimise, euler_sample, flow_of, train_teacher,
                                trainable_copy)

GUIDANCE = Guidance(2.0)      # the guided teacher: v_u + 2 (v_c - v_u)


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
    """One round: a copy of ``teacher`` learns in ``student_steps`` Euler steps what ``teacher`` does in twice as many
    (both of the draw's class on a :class:`LabelledGMM`). Returns the student and its wall seconds."""
    net = trainable_copy(teacher)

    def loss_at(k):
        x0, eps, c = _draw_labelled(gmm, h.batch, g)
        t, t_mid, t_end = P.student_times(h.batch, student_steps, 1.0, g)
        return P.progressive_loss(flow_of(net, c), flow_of(teacher, c), x0, eps, t, t_mid, t_end)
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


def train_guided(teacher: MLPDenoiser, gmm: LabelledGMM, h: HarnessConfig, steps: int,
                 guidance: Guidance = GUIDANCE) -> tuple[MLPDenoiser, float]:
    """Stage 1: a copy of the class-conditional ``teacher`` (frozen) learns its guided flow in one call,
    ``|| v_S(x_t, t; c) - sg(v_u + w (v_c - v_u)) ||^2``, ``(x0, c)`` a labelled draw, ``t ~ U[0, 1]``
    (``guided_loss``). Returns the student and its wall seconds."""
    teacher.requires_grad_(False)
    net, g = trainable_copy(teacher), torch.Generator().manual_seed(h.seed + 7)

    def loss_at(k):
        x0, eps, c = _draw_labelled(gmm, h.batch, g)
        t = torch.rand(h.batch, generator=g)
        return P.guided_loss(flow_of(net, c), flow_of(teacher, c), flow_of(teacher, teacher.null(c)), x0, eps, t,
                             guidance.scale, guidance.convention)
    return net, _optimise(net, steps, h.lr, loss_at)


def guided_rows(teacher_steps: int, steps: int, n: int, seed: int, round_steps: int | None = None,
                guidance: Guidance = GUIDANCE) -> list[tuple[str, int, float, int, float]]:
    """``(name, steps, sw2, calls per sample, train seconds)``: the guided teacher's Euler (2 calls a step) and the
    stage-1 student's (1 call) at 1 / 2 / 4 / ``RoundsConfig.teacher_steps`` steps, the unguided (conditional)
    teacher's at ``RoundsConfig.teacher_steps`` (how far guidance moves the samples), and with ``round_steps`` the
    progressive students from it at 4 / 2 / 1. ``sw2``: the mean over classes of the sliced W2 of each class's
    ``n / classes`` samples against the guided teacher's ``RoundsConfig.teacher_steps``-step samples of the same
    noise and class (the reference row scores 0 by construction). ``teacher_steps`` / ``steps``: optimisation steps
    of the teacher / the stage-1 student."""
    gmm, h = LabelledGMM.ring(), HarnessConfig(teacher_steps=teacher_steps, seed=seed)
    ref_steps = RoundsConfig().teacher_steps
    g = torch.Generator().manual_seed(seed + 10)
    noise, labels = torch.randn(n, gmm.dim, generator=g), torch.arange(n) % gmm.classes
    teacher, t_secs = train_teacher(gmm, h)
    ref = euler_sample(teacher, noise, ref_steps, labels, guidance)

    def sw2(x: Tensor) -> float:
        return sum(metrics.sliced_w2(x[labels == c], ref[labels == c]) for c in range(gmm.classes)) / gmm.classes

    student, s_secs = train_guided(teacher, gmm, h, steps, guidance)
    out = []
    for k in (1, 2, 4, ref_steps):
        out.append(("teacher (guided Euler)", k, sw2(euler_sample(teacher, noise, k, labels, guidance)), 2 * k, t_secs))
    out.append(("teacher (unguided Euler)", ref_steps, sw2(euler_sample(teacher, noise, ref_steps, labels)), ref_steps,
                t_secs))
    for k in (1, 2, 4, ref_steps):
        out.append(("guided student", k, sw2(euler_sample(student, noise, k, labels)), k, s_secs))
    if round_steps:
        rounds = train_progressive(student, gmm, h, RoundsConfig(steps=round_steps))
        secs = sum(s for _, s in rounds.values())
        for k in (4, 2, 1):
            out.append(("guided + progressive", k, sw2(euler_sample(rounds[k][0], noise, k, labels)), k, secs))
    return out
