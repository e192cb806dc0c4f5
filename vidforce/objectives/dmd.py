"""Distribution Matching Distillation on self-rollouts (Self Forcing).

Generator: ``grad = (x0_fake - x0_real) / mean|x - x0_real|`` (per sample), ``loss = 0.5 ||x - sg(x - grad)||^2``;
its gradient w.r.t. ``x`` is ``grad / numel``, so descent moves the rollout toward the teacher's x0 and away
from the critic's. Critic ("fake score"): flow matching on detached rollouts. Two time scales: critic every
step, generator every ``objective.gen_update_every`` steps.
"""
from __future__ import annotations

import torch
from torch import Tensor

from vidforce.objectives.base import (Objective, StepContext, flow_matching_loss, generate, noised, teacher_x0,
                                      text_kv_of, x0_of)
from vidforce.sampling import Denoiser


def dmd_direction(x: Tensor, real_x0: Tensor, fake_x0: Tensor) -> Tensor:
    """DMD update direction ``(fake - real) / mean|x - real|`` per sample; all ``[B, ...]``. A sample whose
    normaliser is 0 (``x`` equals the teacher's x0) gets direction 0, not inf or NaN."""
    dims = tuple(range(1, x.dim()))
    norm = (x.float() - real_x0.float()).abs().mean(dim=dims, keepdim=True)
    diff = fake_x0.float() - real_x0.float()
    return torch.where(norm > 0, diff / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(diff))


def dmd_loss(x: Tensor, direction: Tensor) -> Tensor:
    """``0.5 * mean((x - sg(x - direction))^2)``: a surrogate whose gradient is ``direction / numel``."""
    target = (x.float() - direction).detach()
    return 0.5 * (x.float() - target).square().mean()


class DMD(Objective):
    name = "dmd"
    networks = ("generator", "critic", "teacher")

    def generator_turn(self, step: int) -> bool:
        return step % self.cfg.objective.gen_update_every == 0

    def student(self, ctx: StepContext, grad: bool) -> Tensor:
        """The generated window the losses score: the self-rollout (:func:`objectives.base.generate`)."""
        return generate(ctx, grad)

    def scores(self, ctx: StepContext, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x_t`` at a DMD time, the teacher's guided x0 and the critic's x0 (``no_grad``)."""
        with torch.no_grad():
            x_t, _, sigma = noised(ctx, x.detach())
            real = teacher_x0(ctx, x_t, sigma)
            fake = x0_of(ctx.nets.critic, x_t, sigma, text_kv_of(ctx, "critic", "cond"))
        return x_t, real, fake

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x = self.student(ctx, grad=True)
        _, real, fake = self.scores(ctx, x)
        direction = dmd_direction(x.detach(), real, fake)
        loss = dmd_loss(x, direction)
        return loss, {"dmd_loss": loss.item(), "dmd_grad_norm": direction.norm().item()}

    def critic_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            x = self.student(ctx, grad=False)
        x_t, eps, sigma = noised(ctx, x)
        pred = Denoiser(ctx.nets.critic, text_kv_of(ctx, "critic", "cond")).flow(x_t, sigma)
        loss = flow_matching_loss(pred, x, eps)
        return loss, {"critic_loss": loss.item()}
