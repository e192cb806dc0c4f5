"""Flow-matching schedule of Wan2.1 as pure functions.

Conventions (docs/architecture.md): ``x_t = (1 - s) x0 + s eps`` with ``s = sigma(t)``, ``t in [0, T]`` (T = 1000
training timesteps); the network predicts the flow ``v = eps - x0`` so ``x0 = x_t - s v``.
Latents are ``[B, T, C, H, W]``; per-frame sigmas ``[B, T]`` broadcast over ``C, H, W``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(s: Tensor | float, shift: float) -> Tensor | float:
    """Timestep shift ``s' = shift * s / (1 + (shift - 1) * s)`` (SD3 / Wan)."""
    return shift * s / (1 + (shift - 1) * s)


def t_from_sigma(s: Tensor | float) -> Tensor | float:
    """Network timestep of a sigma: ``t = T s`` (a float stays a float, so a scalar is converted in double)."""
    return s * NUM_TRAIN_TIMESTEPS


def warp_steps(steps: Sequence[float], shift: float,
               num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[float]:
    """Warp a denoising step list through the shifted table (Self Forcing).

    ``[1000, 750, 500, 250]`` with shift 5 -> ``[1000, 937.5, 833.33, 625]``: step ``t`` maps to
    ``T * shift_sigma(t / T)``.
    """
    if shift <= 0:
        raise ValueError(f"schedule.shift must be > 0, got {shift}")
    out = []
    for t in steps:
        if not 0 <= t <= num_train_timesteps:
            raise ValueError(f"schedule.denoising_steps entries must lie in [0, {num_train_timesteps}], got {t}")
        out.append(num_train_timesteps * shift_sigma(t / num_train_timesteps, shift))
    return out


def expand_sigma(s: Tensor, x: Tensor) -> Tensor:
    """Broadcast sigmas ``[B]`` or ``[B, T]`` against ``x [B, T, C, H, W]``."""
    while s.dim() < x.dim():
        s = s.unsqueeze(-1)
    return s.to(x.dtype) if x.is_floating_point() else s


def add_noise(x0: Tensor, eps: Tensor, s: Tensor) -> Tensor:
    """``x_t = (1 - s) x0 + s eps``."""
    s = expand_sigma(s, x0)
    return (1 - s) * x0 + s * eps


def flow_target(x0: Tensor, eps: Tensor) -> Tensor:
    """Flow-matching regression target ``v = eps - x0``."""
    return eps - x0


def x0_from_flow(x_t: Tensor, v: Tensor, s: Tensor) -> Tensor:
    """``x0 = x_t - s v``."""
    return x_t - expand_sigma(s, x_t) * v


def eps_from_flow(x_t: Tensor, v: Tensor, s: Tensor) -> Tensor:
    """``eps = x_t + (1 - s) v``."""
    return x_t + (1 - expand_sigma(s, x_t)) * v


def cfg(uncond: Tensor, cond: Tensor, scale: float, convention: str = "uncond") -> Tensor:
    """Classifier-free guidance. ``uncond``: ``u + g (c - u)`` (Wan / vidforce: g = 1 is unguided);
    ``cond``: ``c + g (c - u)`` (Self Forcing's code: g = 0 is unguided, its g = 3 is ``uncond``'s 4).
    Applies equally to x0 and flow predictions, which are affine in each other at fixed ``x_t, s``."""
    if convention == "uncond":
        return uncond + scale * (cond - uncond)
    if convention == "cond":
        return cond + scale * (cond - uncond)
    raise ValueError(f"guidance convention must be 'uncond' or 'cond', got {convention!r}")


TIME_SAMPLING = ("range", "clamp")


def sample_train_sigma(shape: Sequence[int], shift: float, min_step: float, max_step: float,
                       generator: torch.Generator | None = None, device=None, rule: str = "range") -> Tensor:
    """Draw training sigmas ``[*shape]`` (``schedule.time_sampling``).

    - ``range``: ``u ~ U[min_step, max_step]`` (fractions of T), then shifted: ``s = shift_sigma(u)``; with
      [0, 1] every noise level is reached (the data-trained objectives).
    - ``clamp`` (Self Forcing's DMD): an integer timestep ``t ~ U{0, ..., T - 1}``, shifted, then the sigma
      clamped to ``[min_step, max_step]``: ``s = clamp(shift_sigma(t / T), min_step, max_step)``. With shift 5
      and [0.02, 0.98]: 2.1% of draws fall below sigma 0.093 (t <= 20) and 9.3% sit exactly at 0.98.
    """
    if not 0 <= min_step < max_step <= 1:
        raise ValueError(f"need 0 <= min_step < max_step <= 1, got {min_step}, {max_step}")
    if rule == "range":
        u = torch.rand(tuple(shape), generator=generator, device=device)
        return shift_sigma(min_step + (max_step - min_step) * u, shift)
    if rule == "clamp":
        t = torch.randint(NUM_TRAIN_TIMESTEPS, tuple(shape), generator=generator, device=device)
        return shift_sigma(t.float() / NUM_TRAIN_TIMESTEPS, shift).clamp(min_step, max_step)
    raise ValueError(f"schedule.time_sampling must be one of {TIME_SAMPLING}, got {rule!r}")


def wan_loss_weight(s: Tensor, shift: float, table: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    """Wan's flow-matching timestep weighting: a bell over the timestep, ``y(s) = exp(-2 (s - 1/2)^2)``, shifted
    to 0 at its minimum over the schedule's table of ``table`` shifted sigmas ``shift_sigma(linspace(1, 0))`` and
    scaled to mean 1 over that table (low and high noise get less weight, mid noise more)."""
    grid = shift_sigma(torch.linspace(1.0, 0.0, table, dtype=torch.float64), shift)
    bell = torch.exp(-2 * (grid - 0.5) ** 2)
    low = bell.min()
    scale = table / (bell - low).sum()
    return ((torch.exp(-2 * (s.double() - 0.5) ** 2) - low) * scale).to(s.dtype)


def renoise(x0: Tensor, s_next: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Few-step sampler re-noising: ``x_next = (1 - s_next) x0 + s_next eps'`` with fresh ``eps'``."""
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return add_noise(x0, eps, s_next)
