"""Chunk-by-chunk few-step generation with the KV cache: the one chunk step of training and streaming.

Self Forcing (DESIGN.md): each chunk runs the few-step sampler on the student's own cache. An *exit step*
``k`` (drawn once per iteration, the same for every chunk and rank) ends the chunk: steps before ``k`` run
under ``no_grad``, step ``k`` keeps grad and its x0 prediction is the chunk's output. The detached output
is then re-run at ``context_noise`` under ``no_grad`` to write the chunk's K/V into the cache, so no
gradient crosses chunks. Streaming inference is the same step with ``k`` = the last step and no grad.
Self-Forcing++ rolls out ``N >> K`` frames and keeps grad only in a K-frame window (``grad_from``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from vidforce.diffusion import add_noise, renoise, warp_steps, x0_from_flow
from vidforce.models.causal import CausalWan
from vidforce.models.kv_cache import KVCache


@dataclass(frozen=True)
class Sampler:
    """Few-step sampler: ``sigmas`` of the denoising steps (first is the pure-noise level) and the
    refresh sigma of the clean-context pass."""
    sigmas: tuple[float, ...]
    context_sigma: float = 0.0

    @classmethod
    def from_config(cls, schedule) -> "Sampler":
        """From a ``config.ScheduleConfig``: step list warped through the shifted table (if ``warp``)."""
        steps = warp_steps(schedule.denoising_steps, schedule.shift) if schedule.warp else schedule.denoising_steps
        return cls(tuple(float(t) / 1000.0 for t in steps), float(schedule.context_noise) / 1000.0)


def frame_timesteps(sigma: float, like: Tensor) -> Tensor:
    """Per-frame timesteps ``[B, F]`` of a chunk ``like [B, F, C, H, W]``."""
    return torch.full(like.shape[:2], sigma * 1000.0, device=like.device, dtype=torch.float32)


def denoise_chunk(model: CausalWan, noise: Tensor, cache: KVCache, start: int, text_kv, sampler: Sampler,
                  exit_index: int, grad: bool, generator: torch.Generator | None = None) -> Tensor:
    """Sample one chunk from ``noise [B, F, C, H, W]`` at frames ``[start, start + F)``.

    Steps ``0 .. exit_index - 1`` run under ``no_grad`` (writing the chunk into the cache, overwritten
    each step); step ``exit_index`` runs with grad when ``grad`` (reading the cache only). Returns the
    x0 prediction of the exit step ``[B, F, C, H, W]``.
    """
    if not 0 <= exit_index < len(sampler.sigmas):
        raise ValueError(f"exit step {exit_index} outside the {len(sampler.sigmas)}-step list")
    x = noise
    for i, s in enumerate(sampler.sigmas[: exit_index + 1]):
        if i == exit_index and grad:
            v = model.forward_chunk(x, frame_timesteps(s, x), cache, start, write=False, text_kv=text_kv)
            return x0_from_flow(x, v, torch.tensor(s, device=x.device))
        with torch.no_grad():
            v = model.forward_chunk(x, frame_timesteps(s, x), cache, start, write=True, text_kv=text_kv)
            x0 = x0_from_flow(x, v, torch.tensor(s, device=x.device))
            if i < exit_index:
                x = renoise(x0, torch.tensor(sampler.sigmas[i + 1], device=x.device), generator)
    return x0


@torch.no_grad()
def refresh_cache(model: CausalWan, x0: Tensor, cache: KVCache, start: int, text_kv, sampler: Sampler,
                  generator: torch.Generator | None = None) -> None:
    """Write the chunk's clean output (re-noised to ``context_sigma``) into the cache."""
    x = x0.detach()
    if sampler.context_sigma > 0:
        x = renoise(x, torch.tensor(sampler.context_sigma, device=x.device), generator)
    model.forward_chunk(x, frame_timesteps(sampler.context_sigma, x), cache, start, write=True, text_kv=text_kv)


def chunk_step(model: CausalWan, noise: Tensor, cache: KVCache, start: int, text_kv, sampler: Sampler,
               exit_index: int, grad: bool, generator: torch.Generator | None = None) -> Tensor:
    """Generate one chunk and commit it to the cache; returns its output ``[B, F, C, H, W]``."""
    x0 = denoise_chunk(model, noise, cache, start, text_kv, sampler, exit_index, grad, generator)
    refresh_cache(model, x0, cache, start, text_kv, sampler, generator)
    return x0


def rollout(model: CausalWan, noise: Tensor, text_kv, sampler: Sampler, exit_index: int, *,
            grad_from: int = 0, keep_from: int = 0, stop: int | None = None,
            generator: torch.Generator | None = None, cache: KVCache | None = None,
            on_chunk: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """Self-rollout of ``noise [B, N, C, H, W]`` chunk by chunk.

    Chunks starting before frame ``grad_from`` run entirely under ``no_grad``; later ones keep grad at
    the exit step (when grad is enabled). Generation stops at frame ``stop`` (default ``N``); only frames
    ``[keep_from, stop)`` are kept and returned, so a long ``no_grad`` prefix holds no activations and
    no frames. ``on_chunk(start, x0)`` sees every chunk as it is made (drift hooks, streaming).
    """
    n, f = noise.shape[1], model.frames_per_chunk
    stop = n if stop is None else stop
    if stop % f or grad_from % f or keep_from % f or not 0 <= keep_from <= grad_from <= stop <= n:
        raise ValueError(f"rollout bounds must be chunk-aligned with keep_from <= grad_from <= stop <= N: "
                         f"keep_from={keep_from}, grad_from={grad_from}, stop={stop}, N={n}, chunk={f}")
    if cache is None:
        pending = (stop - grad_from) if model.gradient_checkpointing and torch.is_grad_enabled() else 0
        cache = model.new_cache(noise.shape[0], noise.shape[3], noise.shape[4], stop, noise.device,
                                next(model.parameters()).dtype, extra_capacity=pending)
    outs = []
    for start in range(0, stop, f):
        grad = start >= grad_from and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            x0 = chunk_step(model, noise[:, start:start + f], cache, start, text_kv, sampler, exit_index, grad,
                            generator)
        if on_chunk is not None:
            on_chunk(start, x0.detach())
        if start >= keep_from:
            outs.append(x0)
    return torch.cat(outs, dim=1)


@dataclass(frozen=True)
class RolloutPlan:
    """Every random choice that changes the graph of one iteration (drawn on rank 0, then broadcast)."""
    exit_index: int
    num_frames: int      # frames rolled out (N)
    window_start: int    # first frame of the K-frame window that keeps grad


def draw_plan(rollout_cfg, num_steps: int, chunk: int, rng: torch.Generator,
              broadcast: Callable[[list[int]], list[int]] = lambda v: v) -> RolloutPlan:
    """Draw the exit step, the rollout length and the window start; ``broadcast`` makes rank 0's draw
    everyone's (``train.dist.broadcast_ints``)."""
    k = rollout_cfg.num_frames
    exit_index = num_steps - 1 if rollout_cfg.exit_step == "last" else int(torch.randint(num_steps, (1,), generator=rng))
    n = k
    if rollout_cfg.long_frames:
        if rollout_cfg.long_sampling == "fixed":
            n = rollout_cfg.long_frames
        else:
            n = k + chunk * int(torch.randint((rollout_cfg.long_frames - k) // chunk + 1, (1,), generator=rng))
    starts = (n - k) // chunk + 1
    u = float(torch.rand((), generator=rng))
    if rollout_cfg.window_sampling == "beta":       # Beta(1, 2) by inverse CDF: favours early windows
        u = 1.0 - (1.0 - u) ** 0.5
    start_chunk = min(int(u * starts), starts - 1)
    exit_index, n, window_start = broadcast([exit_index, n, start_chunk * chunk])
    return RolloutPlan(exit_index, n, window_start)
