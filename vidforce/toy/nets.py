"""Small networks of the harness with the DiT's denoiser contract (``vidforce.sampling.Denoiser``).

``net(x [B, D], t [B], text_kv=None, t_to=None) -> flow [B, D]``: ``t = 1000 sigma``; ``t_to`` is the second
time of a flow map (CTM's ``G(x, t, s)``); ``text_kv`` is accepted and ignored (unconditional data), except by a
class-conditional MLP (``classes > 0``), for which it is the class label ``[B]`` (long; :meth:`MLPDenoiser.null`
the unconditional branch of classifier-free guidance).

The MLP embeds the sigma ``s = t / 1000`` itself (sCM's identity time transformation ``c_noise(s) = s``), so
every embedding feature has ``|d emb / ds| <= 1``. The objectives that differentiate the network in time
(sCM's tangent, MeanFlow, the Eulerian / Lagrangian flow maps: all by JVP) need this bound: an embedding of
``t = 1000 s`` has ``|d emb / ds|`` up to 1000, and their time-derivative targets then grow without limit.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vidforce.diffusion import NUM_TRAIN_TIMESTEPS


def sinusoidal(s: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of sigmas ``s [B]`` in ``[0, 1]``: ``[cos(w_i s), sin(w_i s)]``,
    ``w_i = 1000^(-i / (dim / 2))`` (frequencies 1 .. 1/1000, so ``|d emb_i / ds| <= 1``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(NUM_TRAIN_TIMESTEPS) * torch.arange(half, dtype=s.dtype, device=s.device) / half)
    angle = s[:, None] * freqs[None]
    return torch.cat([angle.cos(), angle.sin()], dim=-1)


class MLPDenoiser(nn.Module):
    """``x`` and the time embedding(s) concatenated, ``depth`` SiLU layers of ``width``, a linear flow head.
    With ``two_times`` the network also embeds ``t_to`` (default ``t_to = t``: the instantaneous flow); with
    ``classes > 0`` it also concatenates a learned embedding of the label ``text_kv`` in ``0 .. classes``, the last
    one the null label (``classes = 0`` builds and runs exactly the unconditional network)."""

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, embed: int = 32, two_times: bool = False,
                 classes: int = 0):
        super().__init__()
        self.embed, self.two_times, self.classes = embed, two_times, classes
        layers, n_in = [], dim + embed * (2 if two_times else 1) + (embed if classes else 0)
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), nn.SiLU()]
            n_in = width
        self.body = nn.Sequential(*layers, nn.Linear(width, dim))
        if classes:
            self.label = nn.Embedding(classes + 1, embed)

    def null(self, labels: Tensor) -> Tensor:
        """The null label (the unconditional branch) in the shape of ``labels``."""
        return torch.full_like(labels, self.classes)

    def forward(self, x: Tensor, t: Tensor, text_kv=None, t_to: Tensor | None = None) -> Tensor:
        s = t.to(x.dtype).expand(x.shape[0]) / NUM_TRAIN_TIMESTEPS
        feats = [x, sinusoidal(s, self.embed)]
        if self.two_times:
            s_to = s if t_to is None else t_to.to(x.dtype).expand(x.shape[0]) / NUM_TRAIN_TIMESTEPS
            feats.append(sinusoidal(s_to, self.embed))
        elif t_to is not None:
            raise ValueError("this MLPDenoiser has one time input: build it with two_times=True for t_to")
        if self.classes:
            feats.append(self.label(text_kv.expand(x.shape[0])))
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
