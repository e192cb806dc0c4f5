"""DMD2 (Yin et al. 2024): DMD without the regression loss, two time scales, a GAN on the critic's features and
backward simulation for multi-step students.

- Generator (every ``objective.gen_update_every`` steps: the two-time-scale rule): DMD's direction loss plus
  ``gan.weight`` x the non-saturating GAN loss of a head on the critic's features (``dmd_gan``'s losses and
  :class:`~vidforce.objectives.gan.CriticWithHead`); no regression to teacher samples.
- Critic (every step): flow matching on the student's detached windows (the fake score) plus ``gan.weight`` x
  the discriminator loss, real clips against those windows.
- Backward simulation (``dmd2.backward_simulation``): a multi-step student trains its step k on the input its
  own steps 0..k-1 made from noise, the input it meets at inference. For the causal student that is the Self
  Forcing rollout (:func:`~vidforce.objectives.base.generate`: with it on, ``dmd2`` trains as ``dmd_gan``);
  for a bidirectional student its own chain (:func:`backward_simulation`, the harness). Off, step k denoises a
  real clip noised to sigma_k (:func:`noised_data_rollout`): the train/inference mismatch DMD2 removes.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from vidforce.diffusion import add_noise, renoise
from vidforce.objectives.base import StepContext, generate, grad_start, text_kv_of
from vidforce.objectives.clips import real_clips
from vidforce.objectives.gan import DMDGAN
from vidforce.rollout import rollout
from vidforce.sampling import Sampler


def backward_simulation(x0_of: Callable[[Tensor, float], Tensor], noise: Tensor, sigmas: tuple[float, ...],
                        exit_index: int, generator: torch.Generator | None = None) -> Tensor:
    """The input of step ``exit_index`` of a bidirectional few-step student's own chain, under ``no_grad``:
    ``x_0 = noise``, ``x_{i+1} = (1 - s_{i+1}) x0_of(x_i, s_i) + s_{i+1} eps_i`` (fresh ``eps_i``) for
    ``i < exit_index``. ``x0_of(x [B, ...], s) -> x0 [B, ...]``; ``sigmas``: the student's decreasing step
    sigmas, first the pure-noise level."""
    if not 0 <= exit_index < len(sigmas):
        raise ValueError(f"exit step {exit_index} outside the {len(sigmas)}-step list")
    x = noise
    with torch.no_grad():
        for i in range(exit_index):
            x = renoise(x0_of(x, sigmas[i]), torch.tensor(sigmas[i + 1], device=x.device), generator)
    return x


def noised_data_rollout(ctx: StepContext, clips: Tensor, grad: bool) -> Tensor:
    """The causal student's K-frame window without backward simulation ``[B, K, C, H, W]``: every chunk's exit
    step ``k = plan.exit_index`` denoises ``clips [B, K, C, H, W]`` noised to ``sigma_k`` (fresh noise), and
    attends the student's own earlier outputs (committed by the ordinary cache refresh). The one rollout of
    :mod:`vidforce.rollout`, with the one-step sampler ``(sigma_k,)``."""
    p = ctx.plan
    if p.num_frames != ctx.cfg.rollout.num_frames:
        raise ValueError("training on noised clips needs a K-frame rollout: set rollout.long_frames=0")
    sigma = ctx.sampler.sigmas[p.exit_index]
    x = add_noise(clips, ctx.noise(*clips.shape).to(clips.dtype), torch.tensor(sigma, device=clips.device))
    with torch.set_grad_enabled(grad):
        kv = text_kv_of(ctx, "generator", "cond")
        return rollout(ctx.nets.generator, x, kv, Sampler((sigma,), ctx.sampler.context_sigma), 0,
                       grad_from=grad_start(ctx), generator=ctx.rng, cache_grad=ctx.cfg.rollout.cache_grad)


def check_short_rollout(cfg, field_name: str) -> None:
    """Student inputs from noised clips need K-frame rollouts (a clip has K latent frames)."""
    if cfg.rollout.long_frames:
        raise ValueError(f"{field_name}=false trains on noised K-frame clips: set rollout.long_frames=0")


class DMD2(DMDGAN):
    name = "dmd2"

    def __init__(self, cfg):
        super().__init__(cfg)
        if not cfg.objective.dmd2.backward_simulation:
            check_short_rollout(cfg, "objective.dmd2.backward_simulation")

    def student(self, ctx: StepContext, grad: bool) -> Tensor:
        if self.cfg.objective.dmd2.backward_simulation:
            return generate(ctx, grad)
        return noised_data_rollout(ctx, real_clips(ctx), grad)
