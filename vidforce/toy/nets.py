"""Small networks of the harness with the DiT's denoiser contract (``vidforce.sampling.Denoiser``).

``net(x [B, D], t [B], text_kv=None, t_to=None) -> flow [B, D]``: ``t = 1000 sigma``; ``t_to`` is the second
time of a flow map (CTM's ``G(x, t, s)``); ``text_kv`` is accepted and ignored (unconditional data).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vidforce.diffusion import NUM_TRAIN_TIMESTEPS


def sinusoidal(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of timesteps ``t [B]`` in ``[0, 1000]`` (frequencies 1 .. 1/1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(NUM_TRAIN_TIMESTEPS) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angle = t[:, None] * freqs[None]
    return torch.cat([angle.cos(), angle.sin()], dim=-1)


class MLPDenoiser(nn.Module):
    """``x`` and the time embedding(s) concatenated, ``depth`` SiLU layers of ``width``, a linear flow head.
    With ``two_times`` the network also embeds ``t_to`` (default ``t_to = t``: the instantaneous flow)."""

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, embed: int = 32, two_times: bool = False):
        super().__init__()
        self.embed, self.two_times = embed, two_times
        layers, n_in = [], dim + embed * (2 if two_times else 1)
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), nn.SiLU()]
            n_in = width
        self.body = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: Tensor, t: Tensor, text_kv=None, t_to: Tensor | None = None) -> Tensor:
        t = t.to(x.dtype).expand(x.shape[0])
        feats = [x, sinusoidal(t, self.embed)]
        if self.two_times:
            feats.append(sinusoidal(t if t_to is None else t_to.to(x.dtype).expand(x.shape[0]), self.embed))
        elif t_to is not None:
            raise ValueError("this MLPDenoiser has one time input: build it with two_times=True for t_to")
        return self.body(torch.cat(feats, dim=-1))


class OracleFlowMap(nn.Module):
    """The exact flow map as a network (for tests): the average flow ``(x - Phi(x, t -> t_to)) / (t - t_to)``
    of :meth:`GMM.flow_map` (``t_to = 0`` by default, so ``x - s v`` is the oracle consistency function), and
    the exact instantaneous flow at ``t_to = t``. ``bump`` adds ``bump * s * sin(3 x)`` to the flow (a
    perturbed map that is no longer consistent)."""

    def __init__(self, gmm, steps: int = 128, bump: float = 0.0):
        super().__init__()
        self.gmm, self.steps, self.bump = gmm, steps, bump

    def forward(self, x: Tensor, t: Tensor, text_kv=None, t_to: Tensor | None = None) -> Tensor:
        s = (t / NUM_TRAIN_TIMESTEPS).double().expand(x.shape[0])
        s_to = torch.zeros_like(s) if t_to is None else (t_to / NUM_TRAIN_TIMESTEPS).double().expand(x.shape[0])
        gap = s - s_to
        same = gap.abs() < 1e-9
        end = self.gmm.flow_map(x, s, s_to, self.steps)
        v = torch.where(same[:, None], self.gmm.velocity(x, s),
                        (x.double() - end) / torch.where(same, torch.ones_like(gap), gap)[:, None])
        v = v + self.bump * s[:, None] * torch.sin(3 * x.double())
        return v.to(x.dtype)
