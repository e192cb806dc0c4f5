"""Chunk-by-chunk few-step generation with the KV cache: the one chunk step of training and streaming.

Self Forcing (docs/architecture.md): each chunk runs the few-step sampler on the student's own cache. An *exit step*
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

from vidforce.models.causal import CausalWan
from vidforce.models.kv_cache import KVCache
from vidforce.sampling import Sampler, chunk_step

CACHE_GRAD = ("detach", "exit_step")


def rollout(model: CausalWan, noise: Tensor, text_kv, sampler: Sampler, exit_index: int, *,
            grad_from: int = 0, keep_from: int = 0, stop: int | None = None,
            generator: torch.Generator | None = None, cache: KVCache | None = None,
            on_chunk: Callable[[int, Tensor], None] | None = None,
            edit: Callable[[int, Tensor], Tensor] | None = None, cache_grad: str = "detach") -> Tensor:
    """Self-rollout of ``noise [B, N, C, H, W]`` chunk by chunk.

    Chunks starting before frame ``grad_from`` run entirely under ``no_grad``; later ones keep grad at
    the exit step (when grad is enabled). Generation stops at frame ``stop`` (default ``N``); only frames
    ``[keep_from, stop)`` are kept and returned, so a long ``no_grad`` prefix holds no activations and
    no frames. ``on_chunk(start, x0)`` sees every chunk as it is made (drift hooks, streaming);
    ``edit(start, x0) -> x0'`` replaces a chunk's output before it is committed (error-injection probes).
    ``cache_grad``: ``detach`` | ``exit_step`` (module docstring). A guided ``sampler`` (CFG of the causal model,
    evaluation) takes ``text_kv = (cond, uncond)`` and keeps one cache per branch.
    """
    n, f = noise.shape[1], model.frames_per_chunk
    stop = n if stop is None else stop
    if stop % f or grad_from % f or keep_from % f or not 0 <= keep_from <= grad_from <= stop <= n:
        raise ValueError(f"rollout bounds must be chunk-aligned with keep_from <= grad_from <= stop <= N: "
                         f"keep_from={keep_from}, grad_from={grad_from}, stop={stop}, N={n}, chunk={f}")
    guided = not sampler.guidance.unguided
    if guided and not (isinstance(text_kv, tuple) and len(text_kv) == 2):
        raise ValueError("a guided sampler rolls out from (cond, uncond) text K/V")
    if cache is None:
        pending = (stop - grad_from) if model.gradient_checkpointing and torch.is_grad_enabled() else 0
        make = lambda: model.new_cache(noise.shape[0], noise.shape[3], noise.shape[4], stop, noise.device,  # noqa: E731
                                       next(model.parameters()).dtype, extra_capacity=pending)
        cache = (make(), make()) if guided else make()
    if cache_grad not in CACHE_GRAD:
        raise ValueError(f"rollout.cache_grad must be one of {CACHE_GRAD}, got {cache_grad!r}")
    for c in cache if guided else (cache,):
        c.keep_grad = cache_grad == "exit_step"
    outs = []
    for start in range(0, stop, f):
        grad = start >= grad_from and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            x0 = chunk_step(model, noise[:, start:start + f], cache, start, text_kv, sampler, exit_index, grad,
                            generator, edit)
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
