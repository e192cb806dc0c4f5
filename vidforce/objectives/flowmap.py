"""Flow-map objectives: MeanFlow, Shortcut models and the three flow-map self-distillation conditions.

Flow-matching coordinates (docs/architecture.md): ``x_s = (1 - s) x0 + s eps``, flow ``v = eps - x0``, data at
``s = 0``, noise at ``s = 1``. A flow map ``X(x, t, s)`` (``s <= t``) carries ``x_t`` along ``dx/ds = v(x, s)``
to time ``s``. Every network here is a ``Flow2`` ``F(x, t, s)`` (``Denoiser(net).flow(x, t, sigma_to=s)``: the
DiT's second time input ``t_to`` is the map's end time) and every map is parameterised as

    X(x, t, s) = x + (s - t) F(x, t, s),

so ``X(x, t, t) = x`` exactly and ``F(x, t, t)`` is the instantaneous flow. This is CTM's ``G`` of
``vidforce.objectives.consistency.flow_map``; ``F`` is an *average* flow over ``[s, t]``:

- MeanFlow's ``u(z, r, t)`` is ``F(z, t, r)`` (``r`` the end time, one-step jump ``x_r = z - (t - r) u``);
- a Shortcut model's ``s(x, t, d)`` is ``F(x, t, t - d)`` (step size ``d`` encoded as ``t_to = t - d``);
- the self-distillation flow map's ``w(x, t, s)`` is ``F(x, t, s)``.

Losses are regressions ``|| F_theta - sg(F_tgt) ||^2`` (mean over elements); each target is built under
``no_grad`` from a ``target`` network (``sg(theta)``: the same parameters, detached) and, for the three
conditions, a frozen teacher velocity ``teacher(x, s)`` (a ``Flow``). The value of each loss equals the squared
residual of its condition (written in ``F``-units: the residual of ``X`` per unit of ``t - s`` for the
semigroup), and its gradient is the one of the condition with the derivative terms held fixed (the MeanFlow /
sCM stop-gradient). Weighting: uniform over ``(t, s)`` in these ``F``-units (a simple stated choice; the
per-time weights of the self-distillation paper are not used).

Video plugins (``meanflow``, ``shortcut``, ``flowmap_lagrangian``, ``flowmap_eulerian``, ``flowmap_semigroup``):
the chunk-causal generator with its second time input (``model.time_to``) over the full sequence on data clips,
one ``(t, s)`` per sample (:mod:`vidforce.objectives.clips`); MeanFlow and the Lagrangian and Eulerian conditions
differentiate the DiT by JVP (attention ``math`` or ``jvp``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from vidforce.diffusion import add_noise, expand_sigma
from vidforce.objectives import clips
from vidforce.objectives.base import Flow, Flow2, Objective, StepContext



def _sq(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample mean squared error ``[B]``."""
    return (a.float() - b.float()).square().flatten(1).mean(1)


# ---------------------------------------------------------------- the map and its sampler

def apply_map(net: Flow2, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """``X(x, t, s) = x + (s - t) F(x, t, s)`` ``[B, ...]``; ``t``, ``s``: per-sample times ``[B]``."""
    return x + expand_sigma(s - t, x) * net(x, t, s)


@torch.no_grad()
def map_sample(net: Flow2, noise: Tensor, sigmas: tuple[float, ...]) -> Tensor:
    """Chain the jumps ``x <- X(x, s_i, s_{i+1})`` along decreasing ``sigmas`` (first 1, last 0): MeanFlow's
    ``x_r = z - (t - r) u(z, r, t)``, a Shortcut model's ``x - d s(x, t, d)``, a flow map's ``X``."""
    x = noise
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        st = torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device)
        x = apply_map(net, x, st, torch.full_like(st, s_next))
    return x


# ---------------------------------------------------------------- MeanFlow

def meanflow_times(b: int, fm_fraction: float = 0.75, generator=None, device=None) -> tuple[Tensor, Tensor]:
    """``(t, r)`` ``[B]``: two uniform draws sorted (``r <= t``), then ``r = t`` (plain flow matching) on a
    random ``fm_fraction`` of the samples (MeanFlow's default: 25% with ``r != t``)."""
    a, c = torch.rand(2, b, generator=generator, device=device)
    t, r = torch.maximum(a, c), torch.minimum(a, c)
    same = torch.rand(b, generator=generator, device=device) < fm_fraction
    return t, torch.where(same, t, r)


def meanflow_target(u: Flow2, z: Tensor, r: Tensor, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(u(z, r, t), u_tgt)`` with the MeanFlow identity (Geng et al. 2025, eq. 6 / 10)

        u(z, r, t) = v(z, t) - (t - r) d/dt u(z, r, t),   d/dt u = v . grad_z u + d_t u,

    the total derivative one ``torch.func.jvp`` of ``(z, r, t) -> u`` along ``(v, 0, 1)``; under ``no_grad``
    (the stop-gradient target ``sg(u_tgt)``). ``u(z, r, t)`` is ``F(z, t, r)``."""
    with torch.no_grad():
        u_val, du_dt = torch.func.jvp(lambda z_, r_, t_: u(z_, t_, r_), (z, r, t),
                                      (v, torch.zeros_like(r), torch.ones_like(t)))
        return u_val, v - expand_sigma(t - r, z) * du_dt


def meanflow_loss(student: Flow2, target: Flow2, x0: Tensor, eps: Tensor, t: Tensor, r: Tensor,
                  v: Tensor | None = None) -> Tensor:
    """MeanFlow (eq. 9): ``z = (1 - t) x0 + t eps``, ``L = || u_theta(z, r, t) - sg(v - (t - r) du/dt) ||^2``
    with ``v = eps - x0`` (the conditional flow; ``v`` overrides it, e.g. the exact marginal velocity) and
    ``du/dt`` from :func:`meanflow_target` on the ``target`` network. At ``r = t`` this is flow matching."""
    z = add_noise(x0, eps, t)
    v = eps - x0 if v is None else v
    _, u_tgt = meanflow_target(target, z, r, t, v)
    return _sq(student(z, t, r), u_tgt).mean()


# ---------------------------------------------------------------- Shortcut models

def shortcut_times(b: int, n_consistency: int, levels: int = 7, generator=None,
                   device=None) -> tuple[Tensor, Tensor]:
    """``(t, d)`` ``[B]``: the first ``b - n_consistency`` samples are the empirical (flow-matching) part with
    ``d = 0``, ``t ~ U[0, 1]``; the last ``n_consistency`` have ``d = 2^-j``, ``j ~ U{1..levels}`` (so ``2d`` runs
    over ``1, 1/2, ..., 2^(1 - levels)``) and ``t ~ U[2d, 1]`` (the two half steps end at ``t - 2d >= 0``)."""
    n_emp = b - n_consistency
    j = torch.randint(1, levels + 1, (n_consistency,), generator=generator, device=device)
    d = torch.cat([torch.zeros(n_emp, device=device), 2.0 ** (-j.float())])
    u = torch.rand(b, generator=generator, device=device)
    return 2 * d + (1 - 2 * d) * u, d


def shortcut_loss(student: Flow2, target: Flow2, x0: Tensor, eps: Tensor, t: Tensor, d: Tensor,
                  n_consistency: int) -> Tensor:
    """Shortcut models (Frans et al. 2024, eq. 5): ``s(x, t, d) = F(x, t, t - d)``, ``x = (1 - t) x0 + t eps``.
    Empirical part (first ``B - n_consistency`` samples, ``d = 0``): ``|| s_theta(x, t, 0) - (eps - x0) ||^2``.
    Consistency part (last ``n_consistency``): ``|| s_theta(x, t, 2d) - sg(s_tgt) ||^2``,
    ``s_tgt = (s(x, t, d) + s(x', t - d, d)) / 2``, ``x' = x - d s(x, t, d)`` (the ``target`` network).
    The loss is the mean over the whole batch (the paper's split batch)."""
    x = add_noise(x0, eps, t)
    n_emp = x.shape[0] - n_consistency
    losses = []
    if n_emp > 0:
        xe, te = x[:n_emp], t[:n_emp]
        losses.append(_sq(student(xe, te, te), (eps - x0)[:n_emp]))
    if n_consistency > 0:
        xc, tc, dc = x[n_emp:], t[n_emp:], d[n_emp:]
        with torch.no_grad():
            s1 = target(xc, tc, tc - dc)
            x_mid = xc - expand_sigma(dc, xc) * s1
            s2 = target(x_mid, tc - dc, tc - 2 * dc)
            s_tgt = 0.5 * (s1 + s2)
        losses.append(_sq(student(xc, tc, tc - 2 * dc), s_tgt))
    return torch.cat(losses).mean()


# ---------------------------------------------------------------- flow-map self-distillation (Boffi et al. 2025)

def map_times(b: int, generator=None, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """``(t, u, s)`` ``[B]``: ``t ~ U(0, 1]``, ``s ~ U[0, t]``, ``u ~ U[s, t]`` (the semigroup's middle time)."""
    t = 1 - torch.rand(b, generator=generator, device=device)
    s = t * torch.rand(b, generator=generator, device=device)
    return t, s + (t - s) * torch.rand(b, generator=generator, device=device), s


def lagrangian_loss(student: Flow2, target: Flow2, teacher: Flow, x0: Tensor, eps: Tensor, t: Tensor,
                    s: Tensor) -> Tensor:
    """Lagrangian condition ``d/ds X(x, t, s) = v(X(x, t, s), s)`` (the end point moves with the flow).
    With ``X = x + (s - t) w``: ``d_s X = w + (s - t) d_s w``, so the residual is ``w - w_tgt`` with
    ``w_tgt = v(X, s) - (s - t) d_s w`` (``d_s w`` one jvp of ``s -> w(x, t, s)`` along 1, ``X`` and ``v(X, s)``
    from the ``target`` network and the teacher, all stop-gradient). ``x = (1 - t) x0 + t eps``."""
    x = add_noise(x0, eps, t)
    with torch.no_grad():
        w, dw_ds = torch.func.jvp(lambda s_: target(x, t, s_), (s,), (torch.ones_like(s),))
        gap = expand_sigma(s - t, x)
        w_tgt = teacher(x + gap * w, s) - gap * dw_ds
    return _sq(student(x, t, s), w_tgt).mean()


def eulerian_loss(student: Flow2, target: Flow2, teacher: Flow, x0: Tensor, eps: Tensor, t: Tensor,
                  s: Tensor) -> Tensor:
    """Eulerian condition ``d_t X(x, t, s) + v(x, t) . grad_x X(x, t, s) = 0`` (the end point is constant along
    the trajectory through ``x``). With ``X = x + (s - t) w``: the left side is ``v - w + (s - t) dw`` with
    ``dw = d_t w + v . grad_x w``, one jvp of ``(x, t) -> w(x, t, s)`` along ``(v, 1)``; the residual is
    ``w_tgt - w``, ``w_tgt = v + (s - t) dw`` (stop-gradient: MeanFlow's target with the teacher's velocity)."""
    x = add_noise(x0, eps, t)
    with torch.no_grad():
        v = teacher(x, t)
        _, dw = torch.func.jvp(lambda x_, t_: target(x_, t_, s), (x, t), (v, torch.ones_like(t)))
        w_tgt = v + expand_sigma(s - t, x) * dw
    return _sq(student(x, t, s), w_tgt).mean()


def semigroup_loss(student: Flow2, target: Flow2, teacher: Flow, x0: Tensor, eps: Tensor, t: Tensor,
                   u: Tensor, s: Tensor, diag_weight: float = 1.0) -> Tensor:
    """Semigroup condition ``X(x, t, s) = X(X(x, t, u), u, s)``, ``s <= u <= t``, with both maps on the right from
    the stop-gradient ``target`` network. In ``w``-units (the residual of ``X`` over ``t - s``):
    ``w_tgt = ((t - u) w(x, t, u) + (u - s) w(x', u, s)) / (t - s)``, ``x' = X(x, t, u)`` (exact, no division of a
    small difference), ``L_sg = || w_theta(x, t, s) - sg(w_tgt) ||^2``. The condition alone admits any flow, so
    the diagonal is anchored to the teacher: ``L = L_sg + diag_weight || w_theta(x, t, t) - v(x, t) ||^2``."""
    x = add_noise(x0, eps, t)
    with torch.no_grad():
        w1 = target(x, t, u)
        x_mid = x + expand_sigma(u - t, x) * w1
        w2 = target(x_mid, u, s)
        span = t - s
        a = torch.where(span > 1e-6, (t - u) / span.clamp_min(1e-6), torch.ones_like(span))   # s = t: w1
        w_tgt = expand_sigma(a, x) * w1 + expand_sigma(1 - a, x) * w2
        v = teacher(x, t)
    return _sq(student(x, t, s), w_tgt).mean() + diag_weight * _sq(student(x, t, t), v).mean()


# ---------------------------------------------------------------- video plugins (MeanFlow, Shortcut, flow maps)

class _VideoFlowMap(Objective):
    """Data clips; the student is the generator's flow map ``F(x, t, t_to)``, its target the same network under
    ``no_grad`` (``sg(theta)``)."""
    data = "videos"

    def __init__(self, cfg):
        super().__init__(cfg)
        clips.require_time_to(cfg, self.name)


class _JVPFlowMap(_VideoFlowMap):
    """A flow map whose target holds a ``torch.func.jvp`` through the generator: its attention needs forward-mode AD
    (``causal.attention`` ``math`` or ``jvp``), checked at build and, once the device is known, on each step's
    clips (:meth:`checked_clips`)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        clips.require_jvp_attention(cfg, self.name)

    def checked_clips(self, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """The step's data clips and noise (:func:`clips.data_clips`), after the device check."""
        x0, eps = clips.data_clips(ctx)
        clips.require_jvp_attention(self.cfg, self.name, x0.device)
        return x0, eps


class MeanFlow(_JVPFlowMap):
    name = "meanflow"

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x0, eps = self.checked_clips(ctx)
        t, r = clips.on_device(x0, *meanflow_times(x0.shape[0], self.cfg.objective.meanflow.fm_fraction, ctx.rng,
                                                   ctx.rng.device))
        u = clips.generator_flow(ctx)
        loss = meanflow_loss(u, u, x0, eps, t, r)
        return loss, {"meanflow_loss": loss.item()}


class Shortcut(_VideoFlowMap):
    """The self-consistency share is drawn per sample (``objective.shortcut.fraction``), so a batch of one
    trains either part."""
    name = "shortcut"

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg.objective.shortcut
        x0, eps = clips.data_clips(ctx)
        b = x0.shape[0]
        n_c = int((torch.rand(b, generator=ctx.rng, device=ctx.rng.device) < c.fraction).sum())
        t, d = clips.on_device(x0, *shortcut_times(b, n_c, c.levels, ctx.rng, ctx.rng.device))
        s = clips.generator_flow(ctx)
        loss = shortcut_loss(s, s, x0, eps, t, d, n_c)
        return loss, {"shortcut_loss": loss.item(), "shortcut_consistency_share": n_c / b}


class Semigroup(_VideoFlowMap):
    """Semigroup self-distillation anchored to the frozen teacher's conditional flow on the diagonal."""
    name = "flowmap_semigroup"
    networks = ("generator", "teacher")

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x0, eps = clips.data_clips(ctx)
        t, u, s = clips.on_device(x0, *map_times(x0.shape[0], ctx.rng, ctx.rng.device))
        w = clips.generator_flow(ctx)
        loss = semigroup_loss(w, w, clips.teacher_flow(ctx), x0, eps, t, u, s,
                              self.cfg.objective.flowmap_semigroup.diag_weight)
        return loss, {"semigroup_loss": loss.item()}


class _DifferentialCondition(_JVPFlowMap):
    """A flow-map condition with a derivative of the map (``loss``: a pure ``(student, target, teacher, x0, eps,
    t, s) -> L``), against the frozen teacher's conditional flow; ``(t, s)`` from :func:`map_times`.

    Its target is one ``torch.func.jvp`` through the generator (the ``target`` network, ``sg(theta)``), so the
    generator's attention needs forward-mode AD (``causal.attention`` ``math`` or ``jvp``, as MeanFlow). The
    teacher is only evaluated, never differentiated: its attention is free. Both conditions anchor the diagonal
    themselves (at ``s = t`` the target is ``v(x, t)``), so they have no settings."""
    networks = ("generator", "teacher")
    loss: Callable[..., Tensor]
    metric: str

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x0, eps = self.checked_clips(ctx)
        t, _, s = clips.on_device(x0, *map_times(x0.shape[0], ctx.rng, ctx.rng.device))
        w = clips.generator_flow(ctx)
        loss = self.loss(w, w, clips.teacher_flow(ctx), x0, eps, t, s)
        return loss, {self.metric: loss.item()}


class Lagrangian(_DifferentialCondition):
    """Lagrangian self-distillation (:func:`lagrangian_loss`): the JVP runs along the generator's end time
    ``t_to = s``, whose embedding modulates every block, so the tangent passes through the attention."""
    name = "flowmap_lagrangian"
    loss = staticmethod(lagrangian_loss)
    metric = "lagrangian_loss"


class Eulerian(_DifferentialCondition):
    """Eulerian self-distillation (:func:`eulerian_loss`): the JVP runs along the generator's input and time
    ``(x, t)`` in the direction ``(v_teacher(x, t), 1)``."""
    name = "flowmap_eulerian"
    loss = staticmethod(eulerian_loss)
    metric = "eulerian_loss"
