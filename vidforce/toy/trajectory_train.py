"""Trajectory distillation on the ground-truth harness: knowledge distillation (KD) and Reflow rounds.

Reuses :mod:`vidforce.toy.train` (the flow-matching teacher, the optimiser loop, the Euler sampler) and calls the
pure losses of :mod:`vidforce.objectives.trajectory`. The couplings are the harness's ODE pairs: ``pairs`` noise
draws ``eps`` and the *trained* teacher's endpoints ``Phi_T(eps, 1 -> 0)`` by its Euler ODE in ``ode_steps`` equal
steps (the solver of ``tools/make_ode_pairs.py``, on a fine grid), made once and shared by KD and Reflow round 1;
each minibatch draws ``batch`` of them (a fixed pool, as a pairs file is). Every student starts as a copy of the
model whose couplings it learns (the teacher; round ``k + 1`` from round ``k``): a stated choice, as ode_init's
student starts from the teacher.

- KD: :func:`vidforce.objectives.trajectory.kd_loss` on the pairs; sampled in one step ``eps - v(eps, 1)``.
- Reflow round ``k``: :func:`vidforce.objectives.trajectory.reflow_loss`, ``t ~ U[0, 1]``, on the couplings of round
  ``k - 1``'s flow (round 0: the teacher; fresh noise each round); sampled with the teacher's Euler sampler.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from vidforce.objectives import trajectory as TD
from vidforce.toy.nets import MLPDenoiser
from vidforce.toy.train import HarnessConfig, _optimise, euler_sample, flow_of, trainable_copy

OBJECTIVES = ("kd", "reflow")


@dataclass
class CouplingConfig:
    pairs: int = 50_000           # couplings per pool (one for KD and Reflow round 1, one per later round)
    ode_steps: int = 512          # Euler steps of the ODE that makes them
    rounds: int = 2               # Reflow rounds


def couplings(net: MLPDenoiser, n: int, dim: int, ode_steps: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(eps, Phi(eps))`` ``[n, dim]`` each: fresh noise and ``net``'s Euler ODE endpoint in ``ode_steps`` steps."""
    eps = torch.randn(n, dim, generator=g)
    return eps, euler_sample(net, eps, ode_steps)


def _pick(eps: Tensor, x0: Tensor, b: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    i = torch.randint(eps.shape[0], (b,), generator=g)
    return eps[i], x0[i]


def train_kd(teacher: MLPDenoiser, eps: Tensor, x0: Tensor, h: HarnessConfig) -> tuple[MLPDenoiser, float]:
    """KD on the couplings ``(eps, x0)`` from a copy of the teacher. Returns the net and wall seconds."""
    net, g = trainable_copy(teacher), torch.Generator().manual_seed(h.seed + 3)
    return net, _optimise(net, h.steps, h.lr, lambda k: TD.kd_loss(flow_of(net), *_pick(eps, x0, h.batch, g)))


def train_reflow(model: MLPDenoiser, eps: Tensor, x0: Tensor, h: HarnessConfig) -> tuple[MLPDenoiser, float]:
    """One Reflow round on the couplings ``(eps, x0)`` of ``model``, from a copy of it, ``t ~ U[0, 1]``."""
    net, g = trainable_copy(model), torch.Generator().manual_seed(h.seed + 4)

    def loss_at(k):
        e, x = _pick(eps, x0, h.batch, g)
        return TD.reflow_loss(flow_of(net), e, x, torch.rand(h.batch, generator=g))
    return net, _optimise(net, h.steps, h.lr, loss_at)


def reflow_rounds(teacher: MLPDenoiser, first: tuple[Tensor, Tensor], h: HarnessConfig,
                  c: CouplingConfig) -> list[tuple[MLPDenoiser, float]]:
    """Rounds ``1 .. c.rounds``: round 1 on the teacher's couplings ``first``, round ``k + 1`` on fresh couplings of
    round ``k``'s flow. Each entry: the net and its seconds (making its couplings included, except round 1's)."""
    out, pairs, model = [], first, teacher
    g = torch.Generator().manual_seed(h.seed + 5)
    for k in range(c.rounds):
        start = time.perf_counter()
        if k:
            pairs = couplings(model, c.pairs, first[0].shape[1], c.ode_steps, g)
        made = time.perf_counter() - start
        model, secs = train_reflow(model, *pairs, h)
        out.append((model, made + secs))
    return out


def kd_sample(net: MLPDenoiser, noise: Tensor) -> Tensor:
    """KD's one-step samples ``eps - v(eps, 1)``."""
    with torch.no_grad():
        return TD.one_step(flow_of(net), noise)
