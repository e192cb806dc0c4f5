"""Data-trained objectives: the bidirectional teacher and the causal baselines.

- ``flow_matching``: bidirectional flow matching (the teacher; CFG dropout replaces the prompt by the
  negative one with probability ``objective.flow_matching.cfg_dropout``).
- ``teacher_forcing``: each chunk noised at its own sigma; noisy chunk ``c`` sees the *clean* frames of
  earlier chunks (full-sequence forward with a clean stream).
- ``diffusion_forcing``: independent per-chunk noise levels, block-causal over the noisy sequence.
All regress the flow ``eps - x0``: plain MSE, or with Wan's timestep weighting (``objective.<name>.weighting:
wan``, ``diffusion.wan_loss_weight``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from vidforce.diffusion import t_from_sigma, wan_loss_weight
from vidforce.objectives.base import Objective, StepContext, flow_matching_loss, noised


def loss_weight(ctx: StepContext, section, sigma: Tensor) -> Tensor | None:
    """Per-frame flow-matching weights ``[B, T]`` of ``section.weighting`` (``None``: uniform)."""
    if section.weighting == "wan":
        return wan_loss_weight(sigma, ctx.cfg.schedule.shift)
    return None


def _latents(ctx: StepContext, name: str) -> Tensor:
    x = ctx.batch.latents
    if x is None:
        raise ValueError(f"objective.name={name} trains on data: set data.videos")
    return x[:, : ctx.cfg.rollout.num_frames]


def dropout_context(cond: Tensor, uncond: Tensor, p: float, rng: torch.Generator) -> Tensor:
    """Replace each sample's prompt embedding by the negative one with probability ``p``."""
    drop = (torch.rand(cond.shape[0], generator=rng, device=rng.device) < p).to(cond.device)
    return torch.where(drop[:, None, None], uncond.expand_as(cond), cond)


class FlowMatching(Objective):
    name = "flow_matching"
    data = "videos"

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x = _latents(ctx, self.name)
        x_t, eps, sigma = noised(ctx, x)
        ctx_emb = dropout_context(ctx.batch.cond, ctx.batch.uncond, self.cfg.objective.flow_matching.cfg_dropout, ctx.rng)
        pred = ctx.nets.generator(x_t, t_from_sigma(sigma), ctx_emb)
        loss = flow_matching_loss(pred, x, eps, loss_weight(ctx, self.cfg.objective.flow_matching, sigma))
        return loss, {"fm_loss": loss.item()}


class DiffusionForcing(Objective):
    name = "diffusion_forcing"
    data = "videos"

    def context(self, x: Tensor, sigma: Tensor) -> dict:
        """Extra inputs of the full-sequence forward: none (block-causal over the noisy frames)."""
        return {}

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x = _latents(ctx, self.name)
        x_t, eps, sigma = noised(ctx, x, per_frame=True)
        pred = ctx.nets.generator.forward_full(x_t, t_from_sigma(sigma), ctx.batch.cond, **self.context(x, sigma))
        loss = flow_matching_loss(pred, x, eps, loss_weight(ctx, getattr(self.cfg.objective, self.name), sigma))
        return loss, {f"{self.name}_loss": loss.item()}


class TeacherForcing(DiffusionForcing):
    name = "teacher_forcing"

    def context(self, x: Tensor, sigma: Tensor) -> dict:
        """The clean frames (at ``objective.teacher_forcing.context_noise``) as the causal context."""
        return {"clean": x, "clean_t": torch.full_like(sigma, self.cfg.objective.teacher_forcing.context_noise)}
