"""Gaussian-mixture data with a closed-form flow-matching velocity: the ground truth of the objective zoo.

Convention (vidforce, docs/architecture.md): ``x_s = (1 - s) x0 + s eps``, ``s`` in [0, 1], flow ``v = eps - x0``.
Data: ``x0 ~ sum_k pi_k N(m_k, c_k^2 I)`` in ``D`` dimensions. Given the component ``k``,

    x_s | k ~ N((1 - s) m_k, v_k I),        v_k = (1 - s)^2 c_k^2 + s^2,
    E[x0  | x_s, k] = m_k + (1 - s) c_k^2 / v_k (x_s - (1 - s) m_k),
    E[eps | x_s, k] = s / v_k (x_s - (1 - s) m_k)

(both linear-Gaussian: ``Cov(x0, x_s | k) = (1 - s) c_k^2 I``, ``Cov(eps, x_s | k) = s I``), and the posterior
over components is ``w_k(x_s) ~ pi_k N(x_s; (1 - s) m_k, v_k I)``. The exact velocity is
``u(x, s) = E[eps - x0 | x_s = x] = sum_k w_k (E[eps | x, k] - E[x0 | x, k])`` and the oracle flow map
``Phi(x, t -> s)`` solves ``dx/ds = u(x, s)`` from ``t`` to ``s`` with RK4 in float64.

Class-conditional data (:class:`LabelledGMM`): component ``k`` has class ``k mod C``, so class ``c`` is the
sub-mixture ``p(x0 | c)`` of its components with weights ``pi_k / pi_c`` (``pi_c``: their total), and
``p(x0) = sum_c pi_c p(x0 | c)`` is the whole mixture. Both flows are then the formula above: the conditional
``u_c = E[eps - x0 | x_s = x, c]`` is the sub-mixture's :meth:`GMM.velocity`, the unconditional the mixture's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

VAR_FLOOR = 1e-12     # v_k at s = 0 of a zero-width component (a point mass)


@dataclass
class GMM:
    """Mixture of ``K`` isotropic Gaussians: ``means [K, D]``, ``stds [K]``, ``weights [K]`` (sum 1)."""
    means: Tensor
    stds: Tensor
    weights: Tensor

    @classmethod
    def ring(cls, modes: int = 8, radius: float = 1.5, std: float = 0.2, dim: int = 2) -> "GMM":
        """``modes`` equal-weight components on a circle in the first two coordinates (the harness default)."""
        angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
        means = torch.zeros(modes, dim, dtype=torch.float64)
        means[:, 0], means[:, 1 % dim] = radius * torch.cos(angle), radius * torch.sin(angle)
        return cls(means, torch.full((modes,), std, dtype=torch.float64),
                   torch.full((modes,), 1.0 / modes, dtype=torch.float64))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample_components(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` data points ``[n, D]`` (float64) and their components ``k [n]``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z, k

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` data points ``[n, D]`` (float64)."""
        return self.sample_components(n, generator)[0]

    def _posterior(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component ``w [B, K]``, centred ``d = x - (1 - s) m_k [B, K, D]`` and ``v [B, K]``."""
        x, s = x.double(), s.double().reshape(-1, 1)
        v = ((1 - s) ** 2 * self.stds.square() + s ** 2).clamp_min(VAR_FLOOR)               # [B, K]
        d = x[:, None, :] - (1 - s)[:, :, None] * self.means[None]                           # [B, K, D]
        logp = self.weights.log() - 0.5 * d.square().sum(-1) / v - 0.5 * self.dim * v.log()
        return torch.softmax(logp, dim=-1), d, v

    def x0_eps(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """``E[x0 | x_s = x]``, ``E[eps | x_s = x]``, each ``[B, D]``; ``x [B, D]``, ``s [B]``."""
        w, d, v = self._posterior(x, s)
        s = s.double().reshape(-1, 1, 1)
        x0 = self.means[None] + (1 - s) * self.stds.square()[None, :, None] / v[..., None] * d
        eps = s / v[..., None] * d
        return (w[..., None] * x0).sum(1), (w[..., None] * eps).sum(1)

    def velocity(self, x: Tensor, s: Tensor) -> Tensor:
        """The exact flow ``u(x, s) = E[eps - x0 | x_s = x]`` ``[B, D]`` (float64)."""
        x0, eps = self.x0_eps(x, s)
        return eps - x0

    def flow_map(self, x: Tensor, t: Tensor | float, s: Tensor | float, steps: int = 256) -> Tensor:
        """Oracle ``Phi(x, t -> s)``: RK4 on ``dx/ds = u`` with ``steps`` equal steps per sample (float64).
        ``t``, ``s``: ``[B]`` or scalars; ``t = s`` is the identity."""
        b = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64).expand(b)
        s = torch.as_tensor(s, dtype=torch.float64).expand(b)
        h = ((s - t) / steps)[:, None]
        y, r = x.double(), t.clone()
        for _ in range(steps):
            k1 = self.velocity(y, r)
            k2 = self.velocity(y + 0.5 * h * k1, r + 0.5 * h[:, 0])
            k3 = self.velocity(y + 0.5 * h * k2, r + 0.5 * h[:, 0])
            k4 = self.velocity(y + h * k3, r + h[:, 0])
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            r = r + h[:, 0]
        return y


@dataclass
class LabelledGMM(GMM):
    """A :class:`GMM` whose component ``k`` has class ``k mod classes`` (``LabelledGMM.ring()``: the 8-mode ring
    in 2 classes of 4 alternating modes). Its own flow is the unconditional one."""
    classes: int = 2

    def part(self, c: int) -> GMM:
        """Class ``c``'s data ``p(x0 | c)``: its components, weights renormalised (its velocity is ``u_c``)."""
        k = torch.arange(c, self.means.shape[0], self.classes)
        return GMM(self.means[k], self.stds[k], self.weights[k] / self.weights[k].sum())

    def sample_labelled(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` data points ``[n, D]`` (float64) and their classes ``[n]`` (long), drawn jointly."""
        x, k = self.sample_components(n, generator)
        return x, k % self.classes
