"""Flow-matching schedule of Wan2.1 as pure functions.

Conventions (DESIGN.md): ``x_t = (1 - s) x0 + s eps`` with ``s = sigma(t)``, ``t in [0, T]`` (T = 1000
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


def sigma_from_t(t: Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    """Sigma of a (possibly warped) timestep: ``s = t / T``; ``t`` any shape."""
    return t.float() / num_train_timesteps


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


def flow_from_x0(x_t: Tensor, x0: Tensor, s: Tensor) -> Tensor:
    """``v = (x_t - x0) / s`` (undefined at ``s = 0``; callers keep ``s > 0``)."""
    return (x_t - x0) / expand_sigma(s, x_t)


def cfg(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance ``uncond + g (cond - uncond)`` (Self-Forcing / Wan convention: g = 1 is
    unguided). Applies equally to x0 and flow predictions, which are affine in each other at fixed ``x_t, s``."""
    return uncond + scale * (cond - uncond)


def sample_train_sigma(shape: Sequence[int], shift: float, min_step: float, max_step: float,
                       generator: torch.Generator | None = None, device=None) -> Tensor:
    """Draw training sigmas: ``u ~ U[min_step, max_step]`` (fractions of T), shifted.

    This is DMD's ``t`` draw (Self Forcing: uniform timestep index clamped to [0.02, 0.98] T, then
    looked up in the shifted table).
    """
    if not 0 <= min_step < max_step <= 1:
        raise ValueError(f"need 0 <= min_step < max_step <= 1, got {min_step}, {max_step}")
    u = torch.rand(tuple(shape), generator=generator, device=device)
    return shift_sigma(min_step + (max_step - min_step) * u, shift)


def renoise(x0: Tensor, s_next: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Few-step sampler re-noising: ``x_next = (1 - s_next) x0 + s_next eps'`` with fresh ``eps'``."""
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return add_noise(x0, eps, s_next)
