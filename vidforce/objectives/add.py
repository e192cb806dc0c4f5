"""Adversarial Diffusion Distillation (ADD, Sauer et al. 2023) for the causal student.

Generator: ``L = L_adv + lambda L_distill`` (lambda = ``add.distill_weight``, ADD's 2.5), on the student's window
``x`` (student inputs: real clips noised to the exit step's sigma, as ADD; the Self Forcing rollout with
``add.backward_simulation``):

- score distillation (:func:`distillation_loss`): ``x`` re-noised to a training sigma ``s`` (``x_t`` detached),
  denoised by the guided teacher, ``L_distill = mean(c(s) (x - sg(x0_T(x_t, s)))^2)`` with ADD's exponential
  weighting ``c(s) = alpha_s``, here ``1 - s``;
- adversarial (hinge): ``L_adv = -mean_h D_h(x)``, the heads reading a frozen feature network on the clean window.

Discriminator (every step, 1:1 with the generator): ``mean relu(1 - D(real)) + mean relu(1 + D(fake)) +
gamma R1`` (``add.r1_weight``; the finite-difference R1 of :mod:`~vidforce.objectives.gan` at
``objective.gan.r_sigma``), real clips against detached windows.

The frozen feature network: ADD's is DINOv2 on decoded pixels, which has no video counterpart here. It is the
critic DiT (by default the teacher's copy; ``critic.*`` may name another pretrained DiT) read at sigma 0 on
clean latents, frozen, with a trainable head after each block of ``add.feature_layers``
(:func:`~vidforce.objectives.discriminator.dit_discriminator`). LADD differs by reading the teacher at a
sampled noise level and by dropping the distillation term.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from vidforce.diffusion import expand_sigma
from vidforce.objectives.base import Objective, StepContext, frozen, generate, noised, teacher_x0, text_kv_of
from vidforce.objectives.clips import real_clips
from vidforce.objectives.discriminator import dit_discriminator
from vidforce.objectives.dmd2 import check_short_rollout, noised_data_rollout
from vidforce.objectives.gan import finite_difference_penalty, hinge_discriminator_loss, hinge_generator_loss


def distillation_loss(x: Tensor, teacher_x0: Tensor, sigma: Tensor) -> Tensor:
    """ADD's score-distillation loss ``mean((1 - s) (x - sg(x0_T))^2)``; ``x``, ``teacher_x0`` ``[B, T, ...]``,
    ``sigma [B, T]`` the per-frame noise level the teacher saw. Its gradient is ``2 (1 - s) (x - x0_T) / numel``."""
    w = expand_sigma(1 - sigma.float(), x.float())
    return (w * (x.float() - teacher_x0.detach().float()).square()).mean()


class ADD(Objective):
    name = "add"
    networks = ("generator", "critic", "teacher")
    data = "videos"

    def __init__(self, cfg):
        super().__init__(cfg)
        if not cfg.objective.add.backward_simulation:
            check_short_rollout(cfg, "objective.add.backward_simulation")

    def critic_module(self, critic: nn.Module) -> nn.Module:
        disc = dit_discriminator(critic, self.cfg.objective.add.feature_layers, True, "objective.add.feature_layers")
        return disc.to(next(critic.parameters()).device)

    def student(self, ctx: StepContext, grad: bool) -> Tensor:
        if self.cfg.objective.add.backward_simulation:
            return generate(ctx, grad)
        return noised_data_rollout(ctx, real_clips(ctx), grad)

    def _logits(self, ctx: StepContext, x: Tensor) -> Tensor:
        """Per-head logits ``[B, H]`` of clean clips (timestep 0)."""
        t = torch.zeros(x.shape[:2], device=x.device)
        return ctx.nets.critic.logits(x, t, text_kv_of(ctx, "critic", "cond"))

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x = self.student(ctx, grad=True)
        with torch.no_grad():
            x_t, _, sigma = noised(ctx, x.detach())
            target = teacher_x0(ctx, x_t, sigma)
        distill = distillation_loss(x, target, sigma)
        with frozen(ctx.nets.critic):
            adv = hinge_generator_loss(self._logits(ctx, x))
        loss = adv + self.cfg.objective.add.distill_weight * distill
        return loss, {"add_distill_loss": distill.item(), "gen_gan_loss": adv.item()}

    def critic_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        o, r_sigma = self.cfg.objective.add, self.cfg.objective.gan.r_sigma
        with torch.no_grad():
            fake = self.student(ctx, grad=False)
        real = real_clips(ctx)
        real_logits = self._logits(ctx, real)
        d = hinge_discriminator_loss(real_logits, self._logits(ctx, fake))
        loss = d
        if o.r1_weight:
            pert = self._logits(ctx, real + r_sigma * ctx.noise(*real.shape).to(real.dtype))
            loss = loss + o.r1_weight * finite_difference_penalty(real_logits, pert, r_sigma)
        return loss, {"disc_loss": d.item()}
