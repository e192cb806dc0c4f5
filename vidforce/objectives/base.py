"""The objective plugin interface.

An objective says which networks it needs, what data it eats, when the generator and the critic update,
and computes ``generator_loss(ctx)`` / ``critic_loss(ctx)`` from a :class:`StepContext`. Loss maths lives
in pure functions of each objective module; the trainer never knows which objective runs.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from vidforce.diffusion import add_noise, flow_target, sample_train_sigma
from vidforce.rollout import RolloutPlan, rollout
from vidforce.sampling import Denoiser, Guidance, Sampler

Flow = Callable[[Tensor, Tensor], Tensor]              # (x, sigma) -> v: a network as the objectives call it
Flow2 = Callable[[Tensor, Tensor, Tensor], Tensor]     # (x, sigma, sigma_to) -> v: a flow map


@dataclass
class Batch:
    """One step's inputs. ``cond`` / ``uncond``: text embeddings ``[B, L, D]``; ``latents``: data clips
    ``[B, T, C, H, W]`` (data objectives, GAN); ``trajectory``: ODE pairs ``[B, S + 1, T, C, H, W]``."""
    cond: Tensor
    uncond: Tensor
    latents: Tensor | None = None
    trajectory: Tensor | None = None


@dataclass
class Nets:
    generator: nn.Module
    critic: nn.Module | None = None
    teacher: nn.Module | None = None
    reference: nn.Module | None = None   # a frozen copy of the generator as it started (GRPO's KL anchor)


@dataclass
class StepContext:
    nets: Nets
    batch: Batch
    plan: RolloutPlan
    sampler: Sampler
    cfg: object                      # config.VidforceConfig
    rng: torch.Generator             # this rank's noise generator (seeded per step and rank)
    latent_shape: tuple[int, int, int]  # (C, H, W)
    cache: dict = field(default_factory=dict)   # per-step memo (e.g. text K/V)
    runner: object | None = None     # rollout.cuda_graphs: the generator's models.graphs.GraphedChunks (one per run)

    def noise(self, *shape: int) -> Tensor:
        dev = self.batch.cond.device
        return torch.randn(shape, generator=self.rng, device=self.rng.device).to(dev)


class Objective:
    """Base plugin: subclasses set ``networks`` / ``data``, wrap the critic in the heads they need
    (:meth:`critic_module`) and implement the losses they use."""
    name = ""
    networks: tuple[str, ...] = ("generator",)   # of generator, critic, teacher, reference
    data = "prompts"                              # prompts | videos | ode_pairs

    def __init__(self, cfg):
        self.cfg = cfg

    def critic_module(self, critic: nn.Module) -> nn.Module:
        """The module the critic engine trains, built around the plain critic DiT (default: the DiT itself)."""
        return critic

    def generator_turn(self, step: int) -> bool:
        return True

    def critic_turn(self, step: int) -> bool:
        return "critic" in self.networks

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        raise TypeError(f"objective {self.name!r} has no generator loss")

    def critic_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        raise TypeError(f"objective {self.name!r} has no critic")


def x0_of(model: nn.Module, x_t: Tensor, sigma: Tensor, text_kv) -> Tensor:
    """x0 prediction of a bidirectional model at per-frame ``sigma [B, T]``."""
    return Denoiser(model, text_kv).x0(x_t, sigma)


def teacher_x0(ctx: StepContext, x_t: Tensor, sigma: Tensor) -> Tensor:
    """The teacher's x0 with classifier-free guidance (``objective.guidance``; ``no_grad`` by caller)."""
    guidance = Guidance.from_config(ctx.cfg.objective.guidance)
    uncond = None if guidance.unguided else text_kv_of(ctx, "teacher", "uncond")
    return Denoiser(ctx.nets.teacher, text_kv_of(ctx, "teacher", "cond"), uncond, guidance).x0(x_t, sigma)


def text_kv_of(ctx: StepContext, net: str, which: str):
    """Cross-attention K/V of ``ctx.batch.<which>`` for network ``net``, computed once per step and grad mode."""
    key = (net, which, torch.is_grad_enabled())
    if key not in ctx.cache:
        ctx.cache[key] = getattr(ctx.nets, net).text_kv(getattr(ctx.batch, which))
    return ctx.cache[key]


def generate(ctx: StepContext, grad: bool) -> Tensor:
    """The student's self-rollout under ``ctx.plan``: the K-frame window ``[window_start, +K)`` ``[B, K, C, H, W]``.

    Chunks before the window run under ``no_grad`` and are dropped; with ``rollout.grad_chunks = n > 0``
    only the window's last ``n`` chunks keep grad. With ``ctx.runner`` (``rollout.cuda_graphs``) the ``no_grad``
    chunk forwards replay CUDA graphs.
    """
    p, r = ctx.plan, ctx.cfg.rollout
    stop = p.window_start + r.num_frames
    noise = ctx.noise(ctx.batch.cond.shape[0], p.num_frames, *ctx.latent_shape)
    model = ctx.nets.generator if ctx.runner is None else ctx.runner
    with torch.set_grad_enabled(grad):
        kv = text_kv_of(ctx, "generator", "cond")
        return rollout(model, noise, kv, ctx.sampler, p.exit_index, grad_from=grad_start(ctx),
                       keep_from=p.window_start, stop=stop, generator=ctx.rng, cache_grad=r.cache_grad)


def grad_start(ctx: StepContext) -> int:
    """First frame of the window that keeps grad: the window's start, or with ``rollout.grad_chunks = n > 0`` the
    start of its last ``n`` chunks."""
    p, r = ctx.plan, ctx.cfg.rollout
    stop = p.window_start + r.num_frames
    if r.grad_chunks:
        return max(p.window_start, stop - r.grad_chunks * ctx.cfg.causal.frames_per_chunk)
    return p.window_start


def train_sigma(ctx: StepContext, x: Tensor, per_frame: bool = False) -> Tensor:
    """A shifted training sigma per frame ``[B, T]`` of clips ``x [B, T, ...]``: one per sample, or one per chunk."""
    s = ctx.cfg.schedule
    b, t = x.shape[:2]
    if per_frame:
        chunk = ctx.cfg.causal.frames_per_chunk
        n_chunks = -(-t // chunk)
        sig = sample_train_sigma((b, n_chunks), s.shift, s.min_step, s.max_step, ctx.rng, ctx.rng.device,
                                 s.time_sampling)
        return sig.to(x.device).repeat_interleave(chunk, dim=1)[:, :t]
    sig = sample_train_sigma((b, 1), s.shift, s.min_step, s.max_step, ctx.rng, ctx.rng.device, s.time_sampling)
    return sig.to(x.device).expand(b, t)


def noised(ctx: StepContext, x: Tensor, per_frame: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``x_t, eps, sigma [B, T]`` with a shifted training sigma (:func:`train_sigma`) and fresh noise."""
    sigma = train_sigma(ctx, x, per_frame)
    eps = ctx.noise(*x.shape).to(x.dtype)
    return add_noise(x, eps, sigma), eps, sigma


@contextmanager
def frozen(module: nn.Module | None):
    """Temporarily stop parameter grads of ``module`` (scores used inside another network's loss)."""
    params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def weighted_mse(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """``mean(w || pred - target ||^2)`` over elements, in fp32; ``weight [B]`` or ``[B, T]`` (``None``: plain)."""
    err = (pred.float() - target.float()).square()
    if weight is None:
        return err.mean()
    return (err * weight.float()[(...,) + (None,) * (err.dim() - weight.dim())]).mean()


def flow_matching_loss(pred_flow: Tensor, x0: Tensor, eps: Tensor, weight: Tensor | None = None) -> Tensor:
    """Flow-matching MSE ``mean(w || v_pred - (eps - x0) ||^2)``; ``weight [B, T]`` per frame (``None``: plain)."""
    return weighted_mse(pred_flow, flow_target(x0, eps), weight)
