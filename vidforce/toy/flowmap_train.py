"""Flow-map objectives on the ground-truth harness: MeanFlow, Shortcut and the three self-distillation conditions.

Reuses :mod:`vidforce.toy.train` (the flow-matching teacher, data draws, the optimiser loop, ``frozen_call``)
and calls the pure losses of :mod:`vidforce.objectives.flowmap`. Every student is a fresh two-time
:class:`MLPDenoiser` (``F(x, t, s)`` through ``Denoiser(net).flow(x, t, sigma_to=s)``) trained from scratch:
MeanFlow and Shortcut from data alone, the three flow-map conditions against the frozen teacher's velocity.
Targets are ``sg(theta)`` (the same parameters, detached; no EMA). Settings: the ``ObjectiveConfig`` sections
``meanflow``, ``shortcut`` and ``flowmap_semigroup`` (the video plugins' own); Shortcut's self-consistency share
is a fixed ``round(fraction * batch)`` here.
"""
from __future__ import annotations

import torch

from vidforce.config import ObjectiveConfig
from vidforce.objectives import flowmap as FM
from vidforce.sampling import euler_grid
from vidforce.toy.gmm import GMM
from vidforce.toy.nets import MLPDenoiser
from vidforce.toy.train import HarnessConfig, _draw, _optimise, flow2_of, flow_of, frozen_call

OBJECTIVES = ("meanflow", "shortcut", "flowmap_lagrangian", "flowmap_eulerian", "flowmap_semigroup")


def student_init(gmm: GMM, h: HarnessConfig) -> MLPDenoiser:
    torch.manual_seed(h.seed + 1)
    return MLPDenoiser(gmm.dim, h.width, h.depth, two_times=True)


def loss_fn(name: str, net, teacher, gmm: GMM, ocfg: ObjectiveConfig, h: HarnessConfig, g: torch.Generator):
    """``loss_at(step)`` of objective ``name`` on the harness."""
    t_flow = flow_of(teacher)

    def loss_at(k):
        x0, eps = _draw(gmm, h.batch, g)
        student, target = flow2_of(net), flow2_of(frozen_call(net))
        if name == "meanflow":
            t, r = FM.meanflow_times(h.batch, ocfg.meanflow.fm_fraction, g)
            return FM.meanflow_loss(student, target, x0, eps, t, r)
        if name == "shortcut":
            n_c = round(ocfg.shortcut.fraction * h.batch)
            t, d = FM.shortcut_times(h.batch, n_c, ocfg.shortcut.levels, g)
            return FM.shortcut_loss(student, target, x0, eps, t, d, n_c)
        t, u, s = FM.map_times(h.batch, g)
        if name == "flowmap_lagrangian":
            return FM.lagrangian_loss(student, target, t_flow, x0, eps, t, s)
        if name == "flowmap_eulerian":
            return FM.eulerian_loss(student, target, t_flow, x0, eps, t, s)
        if name == "flowmap_semigroup":
            return FM.semigroup_loss(student, target, t_flow, x0, eps, t, u, s, ocfg.flowmap_semigroup.diag_weight)
        raise ValueError(f"flow-map harness objective must be one of {OBJECTIVES}, got {name!r}")
    return loss_at


def train_student(name: str, teacher: MLPDenoiser, gmm: GMM, h: HarnessConfig,
                  ocfg: ObjectiveConfig | None = None, net: MLPDenoiser | None = None) -> tuple[MLPDenoiser, float]:
    """Train objective ``name`` from :func:`student_init` (or ``net``; ``ocfg``: its config sections, default
    ``ObjectiveConfig()``). Returns the net and wall seconds."""
    ocfg = ObjectiveConfig() if ocfg is None else ocfg
    net = student_init(gmm, h) if net is None else net
    for p in teacher.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(h.seed + 2)
    return net, _optimise(net, h.steps, h.lr, loss_fn(name, net, teacher, gmm, ocfg, h, g))


def map_fn(net):
    """``(x, t, s) -> X_theta(x, t, s)`` (for :func:`vidforce.toy.metrics.flow_map_error`)."""
    return lambda x, t, s: FM.apply_map(flow2_of(net), x, t, s)


def sample(net, noise, steps: int):
    """``steps`` chained jumps on ``euler_grid(steps, 1)``."""
    return FM.map_sample(flow2_of(net), noise, euler_grid(steps, 1.0))
