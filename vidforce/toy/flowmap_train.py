"""Flow-map objectives on the ground-truth harness: MeanFlow, Shortcut and the three self-distillation conditions.

Reuses :mod:`vidforce.toy.train` (the flow-matching teacher, data draws, the optimiser loop, ``frozen_call``)
and calls the pure losses of :mod:`vidforce.objectives.flowmap`. Every student is a fresh two-time
:class:`MLPDenoiser` (``F(x, t, s)`` through ``Denoiser(net).flow(x, t, sigma_to=s)``) trained from scratch:
MeanFlow and Shortcut from data alone, the three flow-map conditions against the frozen teacher's velocity.
Targets are ``sg(theta)`` (the same parameters, detached; no EMA).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vidforce.objectives import flowmap as FM
from vidforce.sampling import euler_grid
from vidforce.toy.gmm import GMM
from vidforce.toy.nets import MLPDenoiser
from vidforce.toy.train import HarnessConfig, _draw, _optimise, flow2_of, flow_of, frozen_call

OBJECTIVES = ("meanflow", "shortcut", "flowmap_lagrangian", "flowmap_eulerian", "flowmap_semigroup")


@dataclass
class FlowMapConfig:
    """A-priori settings (paper defaults where there is one)."""
    fm_fraction: float = 0.75           # MeanFlow: share of r = t samples (the paper's 25% r != t)
    shortcut_fraction: float = 0.25     # Shortcut: share of the batch on self-consistency (the paper's 1/4)
    shortcut_levels: int = 7            # Shortcut: d in {1/2, ..., 1/128}
    diag_weight: float = 1.0            # semigroup: weight of the teacher anchor at s = t


def student_init(gmm: GMM, h: HarnessConfig) -> MLPDenoiser:
    torch.manual_seed(h.seed + 1)
    return MLPDenoiser(gmm.dim, h.width, h.depth, two_times=True)


def loss_fn(name: str, net, teacher, gmm: GMM, f: FlowMapConfig, h: HarnessConfig, g: torch.Generator):
    """``loss_at(step)`` of objective ``name`` on the harness."""
    t_flow = flow_of(teacher)

    def loss_at(k):
        x0, eps = _draw(gmm, h.batch, g)
        student, target = flow2_of(net), flow2_of(frozen_call(net))
        if name == "meanflow":
            t, r = FM.meanflow_times(h.batch, f.fm_fraction, g)
            return FM.meanflow_loss(student, target, x0, eps, t, r)
        if name == "shortcut":
            n_c = round(f.shortcut_fraction * h.batch)
            t, d = FM.shortcut_times(h.batch, n_c, f.shortcut_levels, g)
            return FM.shortcut_loss(student, target, x0, eps, t, d, n_c)
        t, u, s = FM.map_times(h.batch, g)
        if name == "flowmap_lagrangian":
            return FM.lagrangian_loss(student, target, t_flow, x0, eps, t, s)
        if name == "flowmap_eulerian":
            return FM.eulerian_loss(student, target, t_flow, x0, eps, t, s)
        if name == "flowmap_semigroup":
            return FM.semigroup_loss(student, target, t_flow, x0, eps, t, u, s, f.diag_weight)
        raise ValueError(f"flow-map harness objective must be one of {OBJECTIVES}, got {name!r}")
    return loss_at


def train_student(name: str, teacher: MLPDenoiser, gmm: GMM, h: HarnessConfig,
                  f: FlowMapConfig | None = None, net: MLPDenoiser | None = None) -> tuple[MLPDenoiser, float]:
    """Train objective ``name`` from :func:`student_init` (or ``net``). Returns the net and wall seconds."""
    f = FlowMapConfig() if f is None else f
    net = student_init(gmm, h) if net is None else net
    for p in teacher.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(h.seed + 2)
    return net, _optimise(net, h.steps, h.lr, loss_fn(name, net, teacher, gmm, f, h, g))


def map_fn(net):
    """``(x, t, s) -> X_theta(x, t, s)`` (for :func:`vidforce.toy.metrics.flow_map_error`)."""
    return lambda x, t, s: FM.apply_map(flow2_of(net), x, t, s)


def sample(net, noise, steps: int):
    """``steps`` chained jumps on ``euler_grid(steps, 1)``."""
    return FM.map_sample(flow2_of(net), noise, euler_grid(steps, 1.0))
