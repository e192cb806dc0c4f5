"""Harness metrics: sample distance to data and flow-map error against the oracle.

- :func:`sliced_w2`: sliced Wasserstein-2 ``SW2(P, Q) = sqrt(mean_j W2^2(<P, theta_j>, <Q, theta_j>))`` over a
  fixed set of ``projections`` unit directions (seeded), each 1-D W2 exact by sorting two equal-size sets.
  Compared against a fresh data draw, so even data scores a small floor (:func:`data_floor`).
- :func:`flow_map_error`: RMS ``sqrt(E ||Phi_theta(x_t, t -> s) - Phi(x_t, t -> s)||^2 / D)`` with
  ``x_t = (1 - t) x0 + t eps`` from the data and the pairs ``(t, s)`` drawn ``t ~ U(0, 1]``, ``s ~ U[0, t]``
  (``s = 0`` for a consistency model, which only learns the map to data).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def projections(dim: int, n: int = 256, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return d / d.norm(dim=1, keepdim=True)


def sliced_w2(a: Tensor, b: Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced W2 between sample sets ``a [N, D]`` and ``b [N, D]`` (equal ``N``)."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_w2 needs equal-size sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    p = projections(a.shape[1], n_proj, seed)
    pa, _ = (a.double() @ p.T).sort(dim=0)
    pb, _ = (b.double() @ p.T).sort(dim=0)
    return (pa - pb).square().mean().sqrt().item()


def data_floor(gmm, n: int, seed: int = 1) -> float:
    """SW2 between two independent data draws of size ``n``: the estimator's floor."""
    g = torch.Generator().manual_seed(seed)
    return sliced_w2(gmm.sample(n, g), gmm.sample(n, g))


@torch.no_grad()
def flow_map_error(learned: Callable[[Tensor, Tensor, Tensor], Tensor], gmm, n: int = 512, to_zero: bool = False,
                   seed: int = 2) -> float:
    """RMS error per coordinate of ``learned(x, t [n], s [n]) -> Phi_theta(x, t -> s)`` against the oracle."""
    g = torch.Generator().manual_seed(seed)
    x0, eps = gmm.sample(n, g), torch.randn(n, gmm.dim, generator=g, dtype=torch.float64)
    t = 1 - torch.rand(n, generator=g, dtype=torch.float64)
    s = torch.zeros_like(t) if to_zero else t * torch.rand(n, generator=g, dtype=torch.float64)
    x = (1 - t[:, None]) * x0 + t[:, None] * eps
    err = learned(x.float(), t.float(), s.float()).double() - gmm.flow_map(x, t, s)
    return err.square().mean().sqrt().item()
