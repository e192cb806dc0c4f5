"""Latent Adversarial Diffusion Distillation (LADD, Sauer et al. 2024) for the causal student.

The discriminator reads the teacher's own generative features: generated and data windows are re-noised to one
sampled level ``s = sigmoid(ladd.sigma_loc + ladd.sigma_scale z)``, ``z ~ N(0, 1)`` (a logit-normal; the default
loc 1 favours high noise, where LADD finds the feedback is about global structure rather than texture), passed
through the frozen teacher, and a trainable head after each block of ``ladd.feature_layers`` turns that block's
tokens into a logit. Hinge losses
(:mod:`~vidforce.objectives.gan`): the generator minimises ``-mean_h D_h(x_s)``, the discriminator
``mean relu(1 - D(real_s)) + mean relu(1 + D(fake_s))``; one update each per step. No distillation loss.

The teacher is the critic DiT (it must be the teacher's copy: ``critic.preset: teacher``), so the teacher's
weights are held once. The data side: real clips (``data.videos``), or with ``ladd.teacher_steps = n > 0``
synthetic clips that the same teacher samples from noise with its n-step guided Euler ODE every turn
(``objective.guidance``; LADD trains on teacher samples). Student inputs: data clips noised to the exit step's
sigma, or the Self Forcing rollout with ``ladd.backward_simulation``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from vidforce.config import critic_copies_teacher
from vidforce.diffusion import add_noise, t_from_sigma
from vidforce.objectives.base import Objective, StepContext, frozen, generate, text_kv_of
from vidforce.objectives.clips import real_clips
from vidforce.objectives.discriminator import dit_discriminator
from vidforce.objectives.dmd2 import check_short_rollout, noised_data_rollout
from vidforce.objectives.gan import hinge_discriminator_loss, hinge_generator_loss
from vidforce.sampling import Denoiser, Guidance, euler, euler_grid


def logit_normal_sigma(n: int, loc: float, scale: float, generator: torch.Generator) -> Tensor:
    """``n`` noise levels ``sigmoid(loc + scale z)``, ``z ~ N(0, 1)`` (on ``generator``'s device)."""
    z = torch.randn(n, generator=generator, device=generator.device)
    return torch.sigmoid(loc + scale * z)


class LADD(Objective):
    name = "ladd"
    networks = ("generator", "critic")

    def __init__(self, cfg):
        super().__init__(cfg)
        o = cfg.objective.ladd
        if not critic_copies_teacher(cfg):
            raise ValueError("objective.name=ladd reads the teacher's features: set critic.preset=teacher")
        if not o.backward_simulation:
            check_short_rollout(cfg, "objective.ladd.backward_simulation")
        self.data = "prompts" if o.teacher_steps else "videos"

    def critic_module(self, critic: nn.Module) -> nn.Module:
        disc = dit_discriminator(critic, self.cfg.objective.ladd.feature_layers, True,
                                 "objective.ladd.feature_layers")
        return disc.to(next(critic.parameters()).device)

    def data_clips(self, ctx: StepContext) -> Tensor:
        """Real clips, or this step's teacher samples ``[B, K, C, H, W]`` (drawn once per step context)."""
        steps = self.cfg.objective.ladd.teacher_steps
        if not steps:
            return real_clips(ctx)
        if "ladd_clips" not in ctx.cache:
            guidance = Guidance.from_config(ctx.cfg.objective.guidance)
            uncond = None if guidance.unguided else text_kv_of(ctx, "critic", "uncond")
            teacher = Denoiser(ctx.nets.critic, text_kv_of(ctx, "critic", "cond"), uncond, guidance)
            noise = ctx.noise(ctx.batch.cond.shape[0], ctx.cfg.rollout.num_frames, *ctx.latent_shape)
            with torch.no_grad():
                ctx.cache["ladd_clips"] = euler(teacher.flow, noise, euler_grid(steps, ctx.cfg.schedule.shift))[0]
        return ctx.cache["ladd_clips"]

    def student(self, ctx: StepContext, grad: bool) -> Tensor:
        if self.cfg.objective.ladd.backward_simulation:
            return generate(ctx, grad)
        return noised_data_rollout(ctx, self.data_clips(ctx), grad)

    def _sigma(self, ctx: StepContext, x: Tensor) -> Tensor:
        """One discriminator noise level per sample, ``[B, T]``."""
        o = self.cfg.objective.ladd
        return logit_normal_sigma(x.shape[0], o.sigma_loc, o.sigma_scale, ctx.rng).to(x.device)[:, None].expand(
            x.shape[:2])

    def _logits(self, ctx: StepContext, x: Tensor, sigma: Tensor) -> Tensor:
        """Per-head logits ``[B, H]`` of ``x`` re-noised to ``sigma [B, T]`` (gradients reach ``x``)."""
        x_s = add_noise(x, ctx.noise(*x.shape).to(x.dtype), sigma)
        return ctx.nets.critic.logits(x_s, t_from_sigma(sigma), text_kv_of(ctx, "critic", "cond"))

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x = self.student(ctx, grad=True)
        with frozen(ctx.nets.critic):
            adv = hinge_generator_loss(self._logits(ctx, x, self._sigma(ctx, x)))
        return adv, {"gen_gan_loss": adv.item()}

    def critic_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            fake = self.student(ctx, grad=False)
        real = self.data_clips(ctx)
        sigma = self._sigma(ctx, fake)
        d = hinge_discriminator_loss(self._logits(ctx, real, sigma), self._logits(ctx, fake, sigma))
        return d, {"disc_loss": d.item()}
