"""The denoiser and sampling contract: every network call from ``(x_t, sigma)`` and every sampler, once.

Conventions (docs/architecture.md, Wan flow matching): ``x_t = (1 - s) x0 + s eps``; networks take timesteps
``t = T s`` (``diffusion.t_from_sigma``) and predict the flow ``v = eps - x0``.

- :class:`Denoiser` turns a network call into flow / x0 / eps predictions at per-frame sigmas, with
  classifier-free guidance (:class:`Guidance`, both published conventions) and room for a second time
  (``sigma_to``: the end time of a flow map, forwarded to the network as ``t_to``) and a guidance scale input
  (``w``: forwarded as ``guidance [B]`` to a ``w``-conditioned network, ``model.guidance_input``; a float is
  filled per sample).
- :func:`euler` is the (guided) probability-flow ODE sampler ``x <- x + (s' - s) v(x, s)`` on a sigma grid
  (:func:`euler_grid`, :func:`ode_grid`): the teacher's sampler, its ODE pairs, the data baselines.
- :class:`Sampler` + :func:`denoise_chunk` / :func:`refresh_cache` / :func:`chunk_step` are the chunk
  sampler of the causal model on its KV cache (Self Forcing's few-step sampler with its stochastic exit
  step, or Euler per chunk), and the cache refresh that commits a chunk (training, streaming, re-cache).
  :func:`stream_step` is ``chunk_step`` at inference with the refresh deferred (:class:`PendingRefresh`):
  chunk c's refresh runs inside chunk c + 1's first forward, one forward over [context c, noisy c + 1] with
  the block-causal rule -- the same cache and outputs, one forward fewer per chunk.

Context convention (``schedule.context_noise``): the refresh pass writes the chunk's output re-noised with
fresh noise to ``context_sigma``, ``x_c = (1 - s_c) x0 + s_c eps'`` at timestep ``T s_c`` (as Self
Forcing's code); ``context_noise = 0`` writes the clean output.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import torch
from torch import Tensor

from vidforce.diffusion import (NUM_TRAIN_TIMESTEPS, cfg as guide, eps_from_flow, renoise, shift_sigma, t_from_sigma,
                                warp_steps, x0_from_flow)

CONVENTIONS = ("uncond", "cond")
SOLVERS = ("few_step", "euler")


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance ``scale`` in one of two conventions (``diffusion.cfg``):
    ``uncond``: ``u + g (c - u)`` (Wan, vidforce; g = 1 unguided); ``cond``: ``c + g (c - u)`` (Self
    Forcing's code; g = 0 unguided), so ``cond`` at g equals ``uncond`` at g + 1."""
    scale: float = 1.0
    convention: str = "uncond"

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"objective.guidance.convention must be one of {CONVENTIONS}, got {self.convention!r}")

    @classmethod
    def from_config(cls, guidance) -> "Guidance":
        """From a ``config.GuidanceConfig``."""
        return cls(float(guidance.scale), guidance.convention)

    @property
    def unguided(self) -> bool:
        """Whether the guided prediction is the conditional one (no unconditional call needed)."""
        return self.scale == (1.0 if self.convention == "uncond" else 0.0)

    def combine(self, cond: Tensor, uncond: Tensor) -> Tensor:
        return guide(uncond, cond, self.scale, self.convention)


def timesteps(sigma: Tensor | float, like: Tensor) -> Tensor:
    """Network timesteps ``T sigma``: per-frame ``[B, T]`` for a tensor ``sigma``, or ``[B, F]`` filled with
    one scalar sigma for a chunk ``like [B, F, C, H, W]``."""
    if isinstance(sigma, Tensor):
        return t_from_sigma(sigma)
    return torch.full(like.shape[:2], t_from_sigma(sigma), device=like.device, dtype=torch.float32)


def _sigma_tensor(sigma: Tensor | float, like: Tensor) -> Tensor:
    """A scalar sigma as a 0-dim fp32 tensor on ``like``'s device, filled there (no host-to-device copy, which
    would wait for the stream)."""
    return sigma if isinstance(sigma, Tensor) else torch.full((), sigma, device=like.device)


class Denoiser:
    """A network as a denoiser. ``net(x, t, text_kv=..., **net_kwargs) -> flow`` (a bidirectional
    ``WanModel``, or a chunk call ``partial(CausalWan.forward_chunk, cache=..., start=..., write=...)``).

    Guidance applies in the space of the prediction asked for (flow for :meth:`flow`, x0 for :meth:`x0`):
    the two are affine in each other at fixed ``x_t, sigma``, so either is the same guided field.
    ``out_dtype``: cast the network's output before anything is combined (e.g. fp32 ODE solves of a bf16
    teacher); ``None`` keeps the network's dtype. ``w``: the guidance scale input of a ``w``-conditioned network
    (a float, or per sample ``[B]``), given to every call (both CFG branches); ``None``: the network has none.
    """

    def __init__(self, net: Callable[..., Tensor], text_kv, uncond_kv=None, guidance: Guidance = Guidance(), *,
                 out_dtype: torch.dtype | None = None, uncond_net: Callable[..., Tensor] | None = None,
                 w: float | Tensor | None = None, **net_kwargs):
        if not guidance.unguided and uncond_kv is None:
            raise ValueError("guided denoising needs the unconditional text K/V")
        self.net, self.text_kv, self.uncond_kv, self.guidance = net, text_kv, uncond_kv, guidance
        self.uncond_net = net if uncond_net is None else uncond_net     # a causal model's own uncond cache
        self.out_dtype, self.w, self.net_kwargs = out_dtype, w, net_kwargs

    def _call(self, net, x: Tensor, sigma: Tensor | float, text_kv, sigma_to: Tensor | float | None) -> Tensor:
        extra = dict(self.net_kwargs)
        if sigma_to is not None:
            extra["t_to"] = timesteps(sigma_to, x)
        if self.w is not None:
            extra["guidance"] = (self.w if isinstance(self.w, Tensor)
                                 else torch.full(x.shape[:1], self.w, device=x.device, dtype=torch.float32))
        v = net(x, timesteps(sigma, x), text_kv=text_kv, **extra)
        return v if self.out_dtype is None else v.to(self.out_dtype)

    def _guided(self, predict: Callable[[Callable, object], Tensor]) -> Tensor:
        cond = predict(self.net, self.text_kv)
        if self.guidance.unguided:
            return cond
        return self.guidance.combine(cond, predict(self.uncond_net, self.uncond_kv))

    def flow(self, x: Tensor, sigma: Tensor | float, sigma_to: Tensor | float | None = None) -> Tensor:
        """Guided flow ``v [B, T, C, H, W]`` at ``x [B, T, C, H, W]``, per-frame ``sigma [B, T]`` or a scalar."""
        return self._guided(lambda net, kv: self._call(net, x, sigma, kv, sigma_to))

    def x0(self, x: Tensor, sigma: Tensor | float, sigma_to: Tensor | float | None = None) -> Tensor:
        """Guided ``x0 = x_t - s v``."""
        s = _sigma_tensor(sigma, x)
        return self._guided(lambda net, kv: x0_from_flow(x, self._call(net, x, sigma, kv, sigma_to), s))

    def eps(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Guided ``eps = x_t + (1 - s) v``."""
        return eps_from_flow(x, self.flow(x, sigma), _sigma_tensor(sigma, x))


# ---------------------------------------------------------------- sigma grids and the Euler ODE sampler

def euler_grid(steps: int, shift: float) -> tuple[float, ...]:
    """Decreasing Euler grid ``shift_sigma(linspace(1, 0, steps + 1))`` (``steps + 1`` sigmas, last 0)."""
    if steps < 1:
        raise ValueError(f"euler steps must be >= 1, got {steps}")
    return tuple(shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).tolist())


def ode_grid(marks: tuple[float, ...], steps: int, shift: float) -> tuple[float, ...]:
    """:func:`euler_grid` with the sigmas ``marks`` in place of any grid point within 1e-6 of one, so an
    Euler solve passes exactly through each mark (the ODE pairs record the latent there)."""
    fine = torch.tensor(euler_grid(steps, shift), dtype=torch.float64)
    points = torch.tensor(marks, dtype=torch.float64)
    fine = fine[(fine[:, None] - points[None]).abs().min(dim=1).values > 1e-6]
    return tuple(torch.cat([fine, points]).sort(descending=True).values.tolist())


def euler(flow: Callable[[Tensor, float], Tensor], x: Tensor, sigmas: tuple[float, ...],
          record: tuple[float, ...] = ()) -> tuple[Tensor, list[Tensor]]:
    """Euler ODE ``x <- x + (s_next - s) v(x, s)`` from ``x`` at ``sigmas[0]`` along ``sigmas``; returns the
    endpoint and the latents met at the ``record`` sigmas (in grid order)."""
    met = []
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        if s in record:
            met.append(x.clone())
        x = x + (s_next - s) * flow(x, s)
    return x, met


# ---------------------------------------------------------------- the chunk sampler on the KV cache

@dataclass(frozen=True)
class Sampler:
    """Chunk sampler of the causal model: ``sigmas`` of the steps (first the pure-noise level), the
    refresh sigma of the context pass, the ``solver``: ``few_step`` (x0 prediction, then fresh noise to
    the next sigma: Self Forcing) or ``euler`` (an ODE solve whose ``sigmas`` end at 0), and the CFG of the
    causal model itself (``guidance``; guided sampling keeps a second cache written under the negative
    prompt: ``cache`` and ``text_kv`` are then ``(cond, uncond)`` pairs, see :func:`chunk_denoiser`). ``w``: the
    guidance scale input of a ``w``-conditioned generator (``model.guidance_input``), given to every forward
    (denoising steps and refreshes); ``None`` for a generator without it."""
    sigmas: tuple[float, ...]
    context_sigma: float = 0.0
    solver: str = "few_step"
    guidance: Guidance = Guidance()
    w: float | None = None

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"sampler solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.solver == "euler" and (len(self.sigmas) < 2 or self.sigmas[-1] != 0.0):
            raise ValueError("an euler chunk sampler needs at least two sigmas ending at 0")

    @classmethod
    def from_config(cls, schedule) -> "Sampler":
        """Few-step sampler of a ``config.ScheduleConfig``: the step list warped through the shifted table
        (if ``warp``), the refresh at ``context_noise``."""
        steps = warp_steps(schedule.denoising_steps, schedule.shift) if schedule.warp else schedule.denoising_steps
        return cls(tuple(float(t) / NUM_TRAIN_TIMESTEPS for t in steps),
                   float(schedule.context_noise) / NUM_TRAIN_TIMESTEPS)

    @classmethod
    def for_generator(cls, cfg) -> "Sampler":
        """The generator's few-step sampler (:meth:`from_config` of ``cfg.schedule``; training rollouts, drift,
        ``vidforce generate`` / ``serve``): a ``w``-conditioned generator (``model.guidance_input``) samples at
        ``w = objective.guidance.scale`` (its convention, as the ``guided`` objective trained it)."""
        w = float(cfg.objective.guidance.scale) if cfg.model.guidance_input else None
        return replace(cls.from_config(cfg.schedule), w=w)

    @property
    def last(self) -> int:
        """Index of the exit step of inference (the last step)."""
        return len(self.sigmas) - 1 if self.solver == "few_step" else 0


@dataclass(frozen=True)
class PendingRefresh:
    """A chunk's refresh not run yet: its input ``x [B, F, C, H, W]`` (:func:`context_input`), timesteps
    ``t [B, F]`` and first frame ``start``; the next chunk's first forward writes it (:func:`stream_step`)."""
    x: Tensor
    t: Tensor
    start: int


def chunk_denoiser(model, cache, start: int, text_kv, write: bool, guidance: Guidance = Guidance(),
                   pending: PendingRefresh | None = None, w: float | None = None) -> Denoiser:
    """The causal model's chunk call at frames ``[start, start + F)`` on ``cache`` as a :class:`Denoiser`.
    Guided: ``cache`` = (cond cache, uncond cache) and ``text_kv`` = (cond, uncond); each branch attends its
    own cache, the context as written under its own prompt. ``pending`` (unguided only): written first, in the
    same forward. ``w``: the guidance scale input of a ``w``-conditioned model (:attr:`Sampler.w`)."""
    if pending is not None:
        if not guidance.unguided or pending.start + pending.x.shape[1] != start:
            raise ValueError(f"a pending refresh (frames from {pending.start}) fuses only into the unguided "
                             f"forward of the chunk right after it, not one at frame {start}")
        return Denoiser(partial(model.forward_chunk, cache=cache, start=start, write=write,
                                pending=(pending.x, pending.t)), text_kv, w=w)
    if guidance.unguided:
        return Denoiser(partial(model.forward_chunk, cache=cache, start=start, write=write), text_kv, w=w)
    (cond_cache, uncond_cache), (cond_kv, uncond_kv) = cache, text_kv
    return Denoiser(partial(model.forward_chunk, cache=cond_cache, start=start, write=write), cond_kv, uncond_kv,
                    guidance, uncond_net=partial(model.forward_chunk, cache=uncond_cache, start=start, write=write),
                    w=w)


def denoise_chunk(model, noise: Tensor, cache, start: int, text_kv, sampler: Sampler, exit_index: int,
                  grad: bool, generator: torch.Generator | None = None,
                  pending: PendingRefresh | None = None) -> Tensor:
    """Sample one chunk from ``noise [B, F, C, H, W]`` at frames ``[start, start + F)``.

    ``few_step``: steps ``0 .. exit_index - 1`` run under ``no_grad`` (writing the chunk into the cache,
    overwritten each step); step ``exit_index`` runs with grad when ``grad`` (reading the cache only, or
    writing it with its history when ``cache.keep_grad``). ``euler``: the whole ODE, no grad. Returns the
    chunk's x0 ``[B, F, C, H, W]``. ``pending`` (few-step, no grad): the previous chunk's refresh, run inside
    step 0. A flow-map generator (``model.arch.time_to``) takes each few-step x0 as its jump to 0,
    ``x - s F(x, s, 0)`` (``sigma_to = 0``).
    """
    g = sampler.guidance
    if pending is not None and (sampler.solver != "few_step" or grad):
        raise ValueError("a pending refresh fuses only into a few-step chunk sampled without grad")
    if sampler.solver == "euler" or not g.unguided:
        if grad or exit_index != sampler.last:
            raise ValueError("the euler and the guided chunk samplers run every step without grad")
    if sampler.solver == "euler":
        with torch.no_grad():
            return euler(chunk_denoiser(model, cache, start, text_kv, True, g, w=sampler.w).flow, noise,
                         sampler.sigmas)[0]
    if not 0 <= exit_index < len(sampler.sigmas):
        raise ValueError(f"exit step {exit_index} outside the {len(sampler.sigmas)}-step list")
    x, end = noise, (0.0 if model.arch.time_to else None)
    for i, s in enumerate(sampler.sigmas[: exit_index + 1]):
        if i == exit_index and grad:
            return chunk_denoiser(model, cache, start, text_kv, write=cache.keep_grad, w=sampler.w).x0(x, s, end)
        with torch.no_grad():
            x0 = chunk_denoiser(model, cache, start, text_kv, True, g, pending if i == 0 else None,
                                sampler.w).x0(x, s, end)
            if i < exit_index:
                x = renoise(x0, _sigma_tensor(sampler.sigmas[i + 1], x), generator)
    return x0


def context_input(x0: Tensor, sampler: Sampler, generator: torch.Generator | None = None) -> Tensor:
    """The refresh pass's input: ``x0 [B, F, C, H, W]`` detached, re-noised with fresh noise to ``context_sigma``
    when it is > 0."""
    x = x0.detach()
    if sampler.context_sigma > 0:
        x = renoise(x, _sigma_tensor(sampler.context_sigma, x), generator)
    return x


@torch.no_grad()
def refresh_cache(model, x0: Tensor, cache, start: int, text_kv, sampler: Sampler,
                  generator: torch.Generator | None = None) -> None:
    """Commit a chunk: write its output ``x0 [B, F, C, H, W]`` (re-noised to ``context_sigma``) into the cache
    (guided: into both caches, each under its own prompt)."""
    x = context_input(x0, sampler, generator)
    branches = [(cache, text_kv)] if sampler.guidance.unguided else list(zip(cache, text_kv))
    for branch_cache, branch_kv in branches:
        chunk_denoiser(model, branch_cache, start, branch_kv, write=True, w=sampler.w).flow(x, sampler.context_sigma)


def chunk_step(model, noise: Tensor, cache, start: int, text_kv, sampler: Sampler, exit_index: int, grad: bool,
               generator: torch.Generator | None = None,
               edit: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
    """Generate one chunk and commit it to the cache; returns its output ``[B, F, C, H, W]``. ``edit(start,
    x0) -> x0'`` (an error-injection probe) replaces the output before it is committed."""
    x0 = denoise_chunk(model, noise, cache, start, text_kv, sampler, exit_index, grad, generator)
    if edit is not None:
        x0 = edit(start, x0)
    refresh_cache(model, x0, cache, start, text_kv, sampler, generator)
    return x0


@torch.no_grad()
def stream_step(model, noise: Tensor, cache, start: int, text_kv, sampler: Sampler,
                generator: torch.Generator | None, pending: PendingRefresh | None) -> tuple[Tensor, PendingRefresh]:
    """:func:`chunk_step` of inference (unguided few-step, last exit, no grad) with the refresh deferred: runs
    ``pending`` (the previous chunk's refresh) inside this chunk's first forward and returns this chunk's x0
    ``[B, F, C, H, W]`` and refresh, pending. The refresh noise is drawn where ``chunk_step`` draws it, so a
    stream of these equals a stream of ``chunk_step`` (cache and outputs) but for the last chunk's refresh."""
    x0 = denoise_chunk(model, noise, cache, start, text_kv, sampler, sampler.last, False, generator, pending)
    x = context_input(x0, sampler, generator)
    return x0, PendingRefresh(x, timesteps(sampler.context_sigma, x), start)
