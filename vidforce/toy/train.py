"""Training loop of the harness: a flow-matching teacher, then each consistency objective (CPU, seconds).

Every objective calls the same pure loss as its video plugin (``vidforce.objectives.consistency``) with the
settings of its config section (``ObjectiveConfig.cd`` ...). Networks are :class:`MLPDenoiser` called through
``vidforce.sampling.Denoiser``; targets are ``sg(theta)`` (the same parameters, detached). CT and the
teacher start from scratch, CD / LCM / sCM from the teacher, CTM from the teacher with a zero-initialised
second time embedding (so it starts as the Euler jump ``x - (t - s) v(x, t)``). On class-conditional data
(:class:`LabelledGMM`) the teacher is a classifier-free-guidance teacher: trained on each draw's class, replaced by
the null label with probability ``CFG_DROP``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vidforce.config import ObjectiveConfig
from vidforce.diffusion import add_noise, renoise
from vidforce.objectives import consistency as C
from vidforce.objectives.flowmap import map_times
from vidforce.sampling import Denoiser, Guidance, euler, euler_grid
from vidforce.toy.gmm import GMM, LabelledGMM
from vidforce.toy.nets import MLPDenoiser

OBJECTIVES = ("cd", "ct", "lcm", "scm", "ctm")
CFG_DROP = 0.1                # label dropout of a class-conditional teacher


@dataclass
class HarnessConfig:
    steps: int = 3000
    teacher_steps: int = 4000
    batch: int = 512
    lr: float = 5e-4              # students (cosine decay to 10%)
    teacher_lr: float = 1e-3
    width: int = 128
    depth: int = 3
    seed: int = 0


def flow_of(net, labels: Tensor | None = None, guidance: Guidance = Guidance()) -> C.Flow:
    """``flow(x [B, D], s [B]) -> v`` through the denoiser contract; for a class-conditional ``net``, of the classes
    ``labels [B]``, guided ``v_u + w (v_c - v_u)`` against its null label (two calls) unless ``guidance`` is
    unguided."""
    uncond = None if guidance.unguided else net.null(labels)
    return lambda x, s: Denoiser(net, labels, uncond, guidance).flow(x, s)


def flow2_of(net) -> C.Flow2:
    return lambda x, s, s_to: Denoiser(net, None).flow(x, s, sigma_to=s_to)


def trainable_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose parameters all train (a student's initialisation from its teacher)."""
    return copy.deepcopy(net).requires_grad_(True)


def frozen_call(net: nn.Module):
    """``net`` with detached parameters (``theta^-``): gradients still flow to its inputs."""
    params = {k: p.detach() for k, p in net.named_parameters()}
    return lambda *args, **kw: torch.func.functional_call(net, params, args, kw)


def _optimise(net: nn.Module, steps: int, lr: float, loss_at) -> float:
    """Adam with cosine decay to ``0.1 lr``; ``loss_at(step) -> loss``. Returns the wall time in seconds."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.1 + 0.45 * (1 + math.cos(math.pi * k / steps)))
    start = time.perf_counter()
    for k in range(steps):
        loss = loss_at(k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - start


def _draw(gmm: GMM, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    return gmm.sample(n, g).float(), torch.randn(n, gmm.dim, generator=g)


def _draw_labelled(gmm: GMM, n: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`_draw` and the draws' classes ``[n]`` (``None`` unless ``gmm`` is a :class:`LabelledGMM`)."""
    if not isinstance(gmm, LabelledGMM):
        return *_draw(gmm, n, g), None
    x0, c = gmm.sample_labelled(n, g)
    return x0.float(), torch.randn(n, gmm.dim, generator=g), c


def train_teacher(gmm: GMM, h: HarnessConfig) -> tuple[MLPDenoiser, float]:
    """Flow matching ``|| v(x_s, s) - (eps - x0) ||^2``, ``s ~ U[0, 1]``; on a :class:`LabelledGMM`, of the class
    of ``x0`` (the null label with probability ``CFG_DROP``)."""
    torch.manual_seed(h.seed)
    classes = gmm.classes if isinstance(gmm, LabelledGMM) else 0
    net, g = MLPDenoiser(gmm.dim, h.width, h.depth, classes=classes), torch.Generator().manual_seed(h.seed)

    def loss_at(k):
        x0, eps, c = _draw_labelled(gmm, h.batch, g)
        if classes:
            c = torch.where(torch.rand(h.batch, generator=g) < CFG_DROP, net.null(c), c)
        s = torch.rand(h.batch, generator=g)
        return (flow_of(net, c)(add_noise(x0, eps, s), s) - (eps - x0)).square().mean()
    return net, _optimise(net, h.teacher_steps, h.teacher_lr, loss_at)


def student_init(name: str, teacher: MLPDenoiser, gmm: GMM, h: HarnessConfig) -> MLPDenoiser:
    torch.manual_seed(h.seed + 1)
    net = MLPDenoiser(gmm.dim, h.width, h.depth, two_times=name == "ctm")
    if name == "ct":
        return net
    with torch.no_grad():
        for (_, a), (_, b) in zip(net.named_parameters(), teacher.named_parameters()):
            if a.shape == b.shape:
                a.copy_(b)
            else:                               # the first layer of CTM: t_to columns start at zero
                a.zero_()
                a[:, : b.shape[1]].copy_(b)
    return net


def _grid_pair(n_int: int, rho: float, skip: int, b: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    grid = C.karras_grid(n_int, rho).float()
    n = torch.randint(n_int - skip + 1, (b,), generator=g)
    return grid[n + skip], grid[n]


def loss_fn(name: str, net, teacher, gmm: GMM, ocfg: ObjectiveConfig, h: HarnessConfig, g: torch.Generator):
    """``loss_at(step)`` of objective ``name`` on the harness."""
    t_flow = flow_of(teacher)

    def loss_at(k):
        x0, eps = _draw(gmm, h.batch, g)
        student, target = flow_of(net), flow_of(frozen_call(net))
        if name in ("cd", "ct"):
            c = getattr(ocfg, name)
            s, s_prev = _grid_pair(C.curriculum_n(k, h.steps, c.n_start, c.n_end), c.rho, 1, h.batch, g)
            if name == "cd":
                return C.cd_loss(student, target, t_flow, x0, eps, s, s_prev, c.solver, c.huber_c)
            return C.ct_loss(student, target, x0, eps, s, s_prev, c.huber_c)
        if name == "lcm":
            c = ocfg.lcm
            s, s_prev = _grid_pair(c.num_steps, c.rho, c.skip, h.batch, g)
            return C.lcm_loss(student, target, t_flow, None, Guidance(), x0, eps, s, s_prev, c.huber_c)
        if name == "scm":
            c = ocfg.scm
            t = C.scm_time((h.batch,), c.p_mean, c.p_std, c.sigma_data, g)
            return C.scm_distill_loss(student, target, t_flow, x0, eps, t, C.tangent_warmup(k, c.warmup_steps),
                                      c.sigma_data, c.tangent, c.norm_c)
        if name == "ctm":
            c = ocfg.ctm
            t, u, s = map_times(h.batch, g)
            frozen2 = flow2_of(frozen_call(net))
            return C.ctm_loss(flow2_of(net), frozen2, frozen2, t_flow, x0, eps, t, u, s, c.teacher_steps,
                              c.dsm_weight, c.solver)[0]
        raise ValueError(f"harness objective must be one of {OBJECTIVES}, got {name!r}")
    return loss_at


def train_student(name: str, teacher: MLPDenoiser, gmm: GMM, h: HarnessConfig,
                  ocfg: ObjectiveConfig | None = None) -> tuple[MLPDenoiser, float]:
    """Train objective ``name`` (``ocfg``: its config sections; default ``ObjectiveConfig()``)."""
    ocfg = ObjectiveConfig() if ocfg is None else ocfg
    net = student_init(name, teacher, gmm, h)
    for p in teacher.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(h.seed + 2)
    return net, _optimise(net, h.steps, h.lr, loss_fn(name, net, teacher, gmm, ocfg, h, g))


# ---------------------------------------------------------------- samplers of the table

def _full(s: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), s, dtype=x.dtype)


@torch.no_grad()
def euler_sample(net, noise: Tensor, steps: int, labels: Tensor | None = None,
                 guidance: Guidance = Guidance()) -> Tensor:
    """The teacher's Euler ODE on ``euler_grid(steps, 1)`` (:func:`flow_of` ``labels``, ``guidance``)."""
    flow = flow_of(net, labels, guidance)
    return euler(lambda x, s: flow(x, _full(s, x)), noise, euler_grid(steps, 1.0))[0]


@torch.no_grad()
def cm_sample(net, noise: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
    """Consistency multistep sampling on ``euler_grid(steps, 1)``: ``x0 = f(x, s_i)``, fresh noise to ``s_{i+1}``."""
    sig, x, flow = euler_grid(steps, 1.0), noise, flow_of(net)
    for s, s_next in zip(sig[:-1], sig[1:]):
        x0 = C.consistency_fn(x, flow(x, _full(s, x)), _full(s, x))
        x = renoise(x0, torch.tensor(s_next), generator) if s_next > 0 else x0
    return x


def sample(name: str, net, noise: Tensor, steps: int, gamma: float, generator: torch.Generator) -> Tensor:
    if name == "ctm":
        return C.ctm_sample(flow2_of(net), noise, euler_grid(steps, 1.0), gamma, generator)
    return cm_sample(net, noise, steps, generator)


def map_fn(name: str, net):
    """``(x, t, s) -> Phi_theta(x, t -> s)`` of a trained student (a CM maps to 0 only)."""
    if name == "ctm":
        return lambda x, t, s: C.flow_map(x, flow2_of(net)(x, t, s), t, s)
    return lambda x, t, s: C.consistency_fn(x, flow_of(net)(x, t), t)
