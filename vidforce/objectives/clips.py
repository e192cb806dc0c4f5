"""What the video plugins of the consistency, flow-map and progressive / guided objectives share: the step's data
clips and noise, the generator's flow (live, and with its parameters held), the frozen teacher's flow (or the frozen
starting generator's), and their preconditions.

Every one of them trains the chunk-causal generator over the full sequence (``CausalWan.forward_full``,
block-causal) on data clips ``x0 [B, T, C, H, W]`` with one time per sample (the same for every frame), under
the conditional prompt; the teacher is the frozen bidirectional DiT, its conditional branch (unguided; guided
distillation also calls its unconditional one).
"""
from __future__ import annotations

import torch
from torch import Tensor

from vidforce.objectives.base import Flow2, StepContext, frozen, text_kv_of
from vidforce.sampling import Denoiser

JVP_BACKENDS = ("math", "jvp")          # attention backends with forward-mode AD (models/attention.py)


def real_clips(ctx: StepContext) -> Tensor:
    """The step's data clips cut to the teacher horizon, ``x0 [B, K, C, H, W]`` (``rollout.num_frames`` frames)."""
    if ctx.batch.latents is None:
        raise ValueError(f"objective.name={ctx.cfg.objective.name} trains on data: set data.videos")
    return ctx.batch.latents[:, : ctx.cfg.rollout.num_frames]


def data_clips(ctx: StepContext) -> tuple[Tensor, Tensor]:
    """:func:`real_clips` and fresh unit noise like them."""
    x0 = real_clips(ctx)
    return x0, ctx.noise(*x0.shape).to(x0.dtype)


def on_device(like: Tensor, *times: Tensor) -> tuple[Tensor, ...]:
    """Per-sample times drawn on ``ctx.rng``'s device, moved to the clips' device and dtype."""
    return tuple(t.to(device=like.device, dtype=like.dtype) for t in times)


def generator_flow(ctx: StepContext, w: Tensor | None = None):
    """The generator's flow ``(x, s [B], s_to [B] | None) -> v`` (block-causal, conditional prompt, with grad);
    ``w [B]``: the guidance scale of a ``w``-conditioned generator (``model.guidance_input``)."""
    return Denoiser(ctx.nets.generator.forward_full, text_kv_of(ctx, "generator", "cond"), w=w).flow


def held_flow(ctx: StepContext) -> Flow2:
    """The generator's flow with its parameters held (``sg(theta)``: no gradient to them, text K/V included)
    while its input keeps its gradient (CTM's ``G_sg(G_theta(x, t, s), s, 0)``)."""
    kv = [(k.detach(), v.detach()) for k, v in text_kv_of(ctx, "generator", "cond")]
    flow = Denoiser(ctx.nets.generator.forward_full, kv).flow

    def call(x: Tensor, s: Tensor, s_to: Tensor) -> Tensor:
        with frozen(ctx.nets.generator):
            return flow(x, s, s_to)
    return call


def teacher_flow(ctx: StepContext, which: str = "cond"):
    """The frozen teacher's flow ``(x, s) -> v`` under the prompt ``which`` (``cond`` | ``uncond``: one branch, no
    guidance), under ``no_grad``."""
    return _no_grad(Denoiser(ctx.nets.teacher, text_kv_of(ctx, "teacher", which)).flow)


def reference_flow(ctx: StepContext):
    """The frozen copy of the generator as it started (``Nets.reference``) as a teacher: its block-causal conditional
    flow ``(x, s) -> v``, run as the generator was trained, under ``no_grad``."""
    return _no_grad(Denoiser(ctx.nets.reference.forward_full, text_kv_of(ctx, "reference", "cond")).flow)


def _no_grad(flow):
    def call(x: Tensor, s: Tensor) -> Tensor:
        with torch.no_grad():
            return flow(x, s)
    return call


def require_time_to(cfg, name: str) -> None:
    """A flow-map objective needs the generator's second time input."""
    if not cfg.model.time_to:
        raise ValueError(f"objective.name={name} learns a flow map F(x, t, t_to): set model.time_to=true")


def require_jvp_attention(cfg, name: str, device: torch.device | None = None) -> None:
    """A JVP objective needs an attention backend with forward-mode AD: ``math`` or ``jvp``, or ``auto`` where it
    is ``math`` (CPU; checked once the ``device`` is known)."""
    backend = cfg.causal.attention
    if backend in JVP_BACKENDS or (backend == "auto" and (device is None or device.type == "cpu")):
        return
    where = f" on {device.type}" if device is not None else ""
    raise ValueError(f"objective.name={name} differentiates the generator forward (JVP): causal.attention must be "
                     f"one of {JVP_BACKENDS}{where}, got {backend!r} (jvp: the fused Triton kernel)")
