"""Consistency objectives: CD, CT, LCM (discrete), sCM (continuous, TrigFlow), CTM (anytime-to-anytime).

Flow-matching coordinates (docs/architecture.md): ``x_s = (1 - s) x0 + s eps``; networks predict the flow ``v``. The
consistency function uses the boundary parameterisation ``f(x, s) = c_skip(s) x + c_out(s) F`` with
``c_skip = 1``, ``c_out = -s`` and ``F = v`` (:func:`consistency_fn`: the x0 prediction), so ``f(x, 0) = x``
holds exactly. CTM's ``G(x, t, s) = (s/t) x + (1 - s/t) g(x, t, s)`` with ``g = x - t v`` is the same as
``x - (t - s) v(x, t, s)`` (:func:`flow_map`): an average flow with the second time ``t_to``.

A ``Flow`` is ``flow(x [B, ...], s [B] or [B, T]) -> v`` (``Denoiser(...).flow``); a ``Flow2`` also takes
``s_to``. Targets are ``sg(theta)`` networks (``theta^- = theta`` under ``no_grad``: iCT / sCM, no EMA).
The video plugins run the causal student over the full sequence (block-causal) and the frozen bidirectional
teacher, one sigma per sample (:mod:`vidforce.objectives.clips`); CTM's student needs the DiT's second time
input (``model.time_to``), sCM a JVP of the DiT (attention ``math`` or ``jvp``). The ground-truth harness
(``vidforce/toy``) calls the same losses.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import Tensor

from vidforce.diffusion import add_noise, expand_sigma
from vidforce.objectives import clips
from vidforce.objectives.base import Flow, Flow2, Objective, StepContext, text_kv_of
from vidforce.objectives.flowmap import map_times
from vidforce.sampling import Denoiser, Guidance

SOLVERS = ("euler", "heun")


# ---------------------------------------------------------------- parameterisation and schedules

def c_skip_out(s: Tensor) -> tuple[Tensor, Tensor]:
    """Boundary coefficients ``c_skip(s) = 1``, ``c_out(s) = -s``: ``c_skip(0) = 1``, ``c_out(0) = 0``."""
    return torch.ones_like(s), -s


def consistency_fn(x: Tensor, v: Tensor, s: Tensor) -> Tensor:
    """``f(x, s) = c_skip(s) x + c_out(s) v`` ``[B, ...]`` (CM eq. 3, flow-matching form)."""
    c_skip, c_out = c_skip_out(expand_sigma(s, x))
    return c_skip * x + c_out * v


def flow_map(x: Tensor, v: Tensor, s: Tensor, s_to: Tensor) -> Tensor:
    """CTM's ``G(x, s, s_to) = x - (s - s_to) v`` with ``v`` the average flow over ``[s_to, s]``."""
    return x - expand_sigma(s - s_to, x) * v


def karras_grid(n: int, rho: float, s_max: float = 1.0) -> Tensor:
    """``n + 1`` increasing sigmas ``s_i = s_max (i / n)^rho`` (``s_0 = 0``, the boundary; ``s_n = s_max``)."""
    if n < 1:
        raise ValueError(f"consistency grid needs n >= 1 intervals, got {n}")
    return s_max * (torch.arange(n + 1, dtype=torch.float64) / n) ** rho


def curriculum_n(step: int, total: int, n_start: int, n_end: int) -> int:
    """iCT's discretisation curriculum ``N(k) = min(s0 2^floor(k / K'), s1)``, ``K' = floor(K / (log2(s1/s0) + 1))``
    (intervals; iCT counts ``N + 1`` points)."""
    k_prime = max(1, math.floor(total / (math.log2(n_end / n_start) + 1)))
    return min(n_start * 2 ** (step // k_prime), n_end)


def ode_step(flow: Flow, x: Tensor, s: Tensor, s_next: Tensor, solver: str) -> Tensor:
    """One teacher ODE step ``s -> s_next`` of ``dx/ds = v``: ``euler`` (= DDIM) or ``heun`` (EDM's)."""
    h = expand_sigma(s_next - s, x)
    v = flow(x, s)
    if solver == "euler":
        return x + h * v
    if solver == "heun":
        x_e = x + h * v
        return x + 0.5 * h * (v + flow(x_e, s_next))
    raise ValueError(f"consistency solver must be one of {SOLVERS}, got {solver!r}")


def _per_sample(s: Tensor) -> Tensor:
    """The one sigma of each sample ``[B]`` from ``[B]`` or per-frame ``[B, T]`` (equal across frames)."""
    return s.reshape(s.shape[0], -1)[:, 0]


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """iCT's ``d(a, b) = sqrt(||a - b||^2 / n + c^2) - c`` per sample ``[B]`` (n elements per sample)."""
    sq = (a.float() - b.float()).square().flatten(1).mean(1)
    return (sq + c * c).sqrt() - c


# ---------------------------------------------------------------- discrete consistency losses

def cd_loss(student: Flow, target: Flow, teacher: Flow, x0: Tensor, eps: Tensor, s: Tensor, s_prev: Tensor,
            solver: str = "heun", huber_c: float = 0.03) -> Tensor:
    """Consistency distillation (Song et al. 2023, eq. 7): ``x_{n+1} = (1 - s) x0 + s eps``,
    ``x^_n = ODE_teacher(x_{n+1}, s -> s_prev)``, ``L = E[lambda d(f_theta(x_{n+1}, s), f_sg(x^_n, s_prev))]``
    with ``lambda = 1 / (s - s_prev)`` (iCT). ``s``, ``s_prev``: per-sample sigmas ``[B]`` or ``[B, T]``."""
    x = add_noise(x0, eps, s)
    with torch.no_grad():
        x_prev = ode_step(teacher, x, s, s_prev, solver)
        tgt = consistency_fn(x_prev, target(x_prev, s_prev), s_prev)
    pred = consistency_fn(x, student(x, s), s)
    return (pseudo_huber(pred, tgt, huber_c) / _per_sample(s - s_prev)).mean()


def ct_loss(student: Flow, target: Flow, x0: Tensor, eps: Tensor, s: Tensor, s_prev: Tensor,
            huber_c: float = 0.03) -> Tensor:
    """Consistency training (Song et al. 2023, eq. 10): the teacher step replaced by the one-sample estimator
    ``x_n = (1 - s_prev) x0 + s_prev eps`` with the same ``(x0, eps)`` as ``x_{n+1}``; ``lambda = 1 / (s - s_prev)``."""
    x = add_noise(x0, eps, s)
    with torch.no_grad():
        x_prev = add_noise(x0, eps, s_prev)
        tgt = consistency_fn(x_prev, target(x_prev, s_prev), s_prev)
    pred = consistency_fn(x, student(x, s), s)
    return (pseudo_huber(pred, tgt, huber_c) / _per_sample(s - s_prev)).mean()


def lcm_loss(student: Flow, target: Flow, teacher_cond: Flow, teacher_uncond: Flow | None, guidance: Guidance,
             x0: Tensor, eps: Tensor, s: Tensor, s_prev: Tensor, huber_c: float = 0.03) -> Tensor:
    """Latent consistency distillation (Luo et al. 2023, eq. 9) with ``w`` baked into the student: the guided
    DDIM (Euler) step over the skipping interval ``s = s_{n+k} -> s_prev = s_n``,
    ``x^_n = x + Psi_u + g (Psi_c - Psi_u)`` (``Guidance.combine``; unguided: ``x + Psi_c``), then
    ``L = E[d(f_theta(x_{n+k}, s), f_sg(x^_n, s_prev))]``."""
    x = add_noise(x0, eps, s)
    with torch.no_grad():
        step_c = ode_step(teacher_cond, x, s, s_prev, "euler") - x
        step = step_c if guidance.unguided else guidance.combine(step_c, ode_step(teacher_uncond, x, s, s_prev,
                                                                                   "euler") - x)
        x_prev = x + step
        tgt = consistency_fn(x_prev, target(x_prev, s_prev), s_prev)
    return pseudo_huber(consistency_fn(x, student(x, s), s), tgt, huber_c).mean()


# ---------------------------------------------------------------- sCM in TrigFlow

def fm_sigma_of_trig(t: Tensor, sigma_data: float = 1.0) -> Tensor:
    """TrigFlow time ``t`` in ``[0, pi/2]`` -> flow-matching sigma ``s = sd sin t / (cos t + sd sin t)``."""
    return sigma_data * torch.sin(t) / (torch.cos(t) + sigma_data * torch.sin(t))


def trig_of_fm_sigma(s: Tensor, sigma_data: float = 1.0) -> Tensor:
    """Inverse of :func:`fm_sigma_of_trig`: ``t = atan(s / (sd (1 - s)))``."""
    return torch.atan2(s, sigma_data * (1 - s))


def trig_scale(t: Tensor, sigma_data: float = 1.0) -> Tensor:
    """``x_trig = (cos t + sd sin t) x_fm``: TrigFlow's ``cos t x0 + sin t sd z`` over FM's ``(1 - s) x0 + s z``
    at ``s = fm_sigma_of_trig(t)`` (unit noise ``z`` in both)."""
    return torch.cos(t) + sigma_data * torch.sin(t)


def trig_flow_of_fm(flow: Flow, sigma_data: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """The TrigFlow field ``F(x_t, t)`` (``dx_t/dt = sd F``, sCM eq. 7) of a flow-matching network (unit noise):
    ``x_s = x_t / (cos t + sd sin t)``, ``x0 = x_s - s v``, ``z = x_s + (1 - s) v``,
    ``F = (cos t sd z - sin t x0) / sd``. Then ``cos t x_t - sin t sd F = x0`` (the consistency function)."""
    def trig(x: Tensor, t: Tensor) -> Tensor:
        s = fm_sigma_of_trig(t, sigma_data)
        x_s = x / expand_sigma(trig_scale(t, sigma_data), x)
        v = flow(x_s, s)
        se = expand_sigma(s, x)
        x0, noise = x_s - se * v, x_s + (1 - se) * v
        return expand_sigma(torch.cos(t), x) * noise - expand_sigma(torch.sin(t) / sigma_data, x) * x0
    return trig


def scm_time(shape, p_mean: float, p_std: float, sigma_data: float, generator=None, device=None) -> Tensor:
    """sCM's proposal ``t = atan(e^tau / sd)``, ``tau ~ N(P_mean, P_std^2)``."""
    tau = p_mean + p_std * torch.randn(shape, generator=generator, device=device)
    return torch.atan(tau.exp() / sigma_data)


def tangent_warmup(step: int, warmup_steps: int) -> float:
    """sCM's tangent warm-up ``r = min(1, step / warmup_steps)`` (``warmup_steps = 0``: r = 1)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def normalize_tangent(g: Tensor, c: float) -> Tensor:
    """Tangent normalisation ``g / (||g|| + c)`` per sample (sCM sec. 4.2)."""
    return g / (g.float().flatten(1).norm(dim=1).to(g.dtype)[(...,) + (None,) * (g.dim() - 1)] + c)


def scm_tangent(target_trig: Callable, dxdt: Tensor, x: Tensor, t: Tensor, r: float,
                sigma_data: float = 1.0) -> tuple[Tensor, Tensor]:
    """``F^-`` and the sCM tangent (eq. 8) ``g = -cos^2 t (sd F^- - dx/dt) - r cos t sin t (x_t + sd dF^-/dt)``,
    with ``cos t sin t dF^-/dt`` one ``torch.func.jvp`` of ``F^-`` along ``(cos t sin t dx/dt, cos t sin t)``."""
    cs = torch.cos(t) * torch.sin(t)
    with torch.no_grad():
        f_minus, jvp = torch.func.jvp(target_trig, (x, t), (expand_sigma(cs, x) * dxdt, cs))
    cos2 = expand_sigma(torch.cos(t) ** 2, x)
    g = -cos2 * (sigma_data * f_minus - dxdt) - r * (expand_sigma(cs, x) * x + sigma_data * jvp)
    return f_minus, g


def scm_loss(student_trig: Callable, f_minus: Tensor, g: Tensor, x: Tensor, t: Tensor, tangent: str = "normalize",
             norm_c: float = 0.1) -> Tensor:
    """sCM objective (eq. 8): ``L = E || F_theta(x_t, t) - F^- - g ||^2`` with ``g`` stabilised: ``normalize``
    (``g / (||g|| + c)``) or ``clip`` (to [-1, 1]); its gradient is ``-2 g dF_theta/dtheta`` at ``theta^- = theta``."""
    if tangent == "normalize":
        g = normalize_tangent(g, norm_c)
    elif tangent == "clip":
        g = g.clamp(-1.0, 1.0)
    else:
        raise ValueError(f"objective.scm.tangent must be 'normalize' or 'clip', got {tangent!r}")
    return (student_trig(x, t).float() - f_minus.float() - g.float()).square().mean()


def scm_distill_loss(student: Flow, target: Flow, teacher: Flow, x0: Tensor, eps: Tensor, t: Tensor, r: float,
                     sigma_data: float = 1.0, tangent: str = "normalize", norm_c: float = 0.1) -> Tensor:
    """Continuous-time consistency distillation (sCD) of flow-matching networks in TrigFlow:
    ``x_t = cos t x0 + sin t sd eps`` (``t [B]`` in ``(0, pi/2)``), the teacher's ``dx_t/dt = sd F_teacher``, the
    tangent of :func:`scm_tangent` on ``F^-`` (``target``) with warm-up ``r``, the loss of :func:`scm_loss`.
    In flow-matching coordinates (r = 1) the tangent is MeanFlow's residual at ``r = 0`` (003):
    ``g = sd cos t / (cos t + sd sin t)^2 (u_tgt - u)``, ``u`` the target's flow, ``u_tgt = v - s du/ds``."""
    x = expand_sigma(torch.cos(t), x0) * x0 + expand_sigma(torch.sin(t) * sigma_data, x0) * eps
    with torch.no_grad():
        dxdt = sigma_data * trig_flow_of_fm(teacher, sigma_data)(x, t)
    f_minus, g = scm_tangent(trig_flow_of_fm(target, sigma_data), dxdt, x, t, r, sigma_data)
    return scm_loss(trig_flow_of_fm(student, sigma_data), f_minus, g, x, t, tangent, norm_c)


# ---------------------------------------------------------------- CTM

def ctm_loss(student: Flow2, target: Flow2, frozen_student: Flow2, teacher: Flow, x0: Tensor, eps: Tensor,
             t: Tensor, u: Tensor, s: Tensor, teacher_steps: int = 2, dsm_weight: float = 1.0,
             solver: str = "heun") -> tuple[Tensor, Tensor]:
    """CTM (Kim et al. 2024, eqs. 7-9): soft consistency matching and the DSM auxiliary loss, ``0 <= s <= u < t``:
    ``x^_u = ODE_teacher(x_t, t -> u)`` (``teacher_steps`` steps), ``L_CTM = || G_sg(G_theta(x_t, t, s), s, 0) -
    G_sg(G_sg(x^_u, u, s), s, 0) ||^2`` (compared in data space through the stop-grad network ``frozen_student``),
    ``L_DSM = || x0 - g_theta(x_t, t, t) ||^2`` with the denoiser ``g = x_t - t v_theta(x_t, t, t)``, i.e.
    ``t^2 || v_theta(x_t, t, t) - (eps - x0) ||^2`` (data space, as ``L_CTM``: 001's ``L_DM`` with ``w(t) = t^2``).
    Returns ``(L_CTM + dsm_weight L_DSM, L_DSM)``."""
    x = add_noise(x0, eps, t)
    zero = torch.zeros_like(s)
    with torch.no_grad():
        y = x
        for i in range(teacher_steps):
            a, b = t + (u - t) * i / teacher_steps, t + (u - t) * (i + 1) / teacher_steps
            y = ode_step(teacher, y, a, b, solver)
        mid = flow_map(y, target(y, u, s), u, s)
        tgt = flow_map(mid, target(mid, s, zero), s, zero)
    jump = flow_map(x, student(x, t, s), t, s)
    pred = flow_map(jump, frozen_student(jump, s, zero), s, zero)
    dsm = (consistency_fn(x, student(x, t, t), t).float() - x0.float()).square().mean()
    return (pred.float() - tgt.float()).square().mean() + dsm_weight * dsm, dsm


def gamma_sigma(s_next: Tensor, gamma: float) -> Tensor:
    """CTM's gamma-sampling jump target: ``x_next = a G(x, s, s~) + gamma s_next eps'`` reaches ``s_next`` with
    unit noise when ``s~ / (1 - s~) = sqrt(1 - gamma^2) s_next / (1 - s_next)`` (flow-matching form)."""
    r = math.sqrt(1 - gamma * gamma) * s_next / (1 - s_next)
    return r / (1 + r)


@torch.no_grad()
def ctm_sample(flow2: Flow2, noise: Tensor, sigmas: tuple[float, ...], gamma: float,
               generator: torch.Generator | None = None) -> Tensor:
    """Gamma-sampling along decreasing ``sigmas`` (first 1, last 0): ``gamma = 0`` chains deterministic jumps
    ``G(x, s_i, s_{i+1})``; ``gamma = 1`` is CM multistep sampling (jump to 0, fresh noise to ``s_{i+1}``)."""
    x = noise
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        b = x.shape[0]
        mid = 0.0 if s_next == 0 else gamma_sigma(s_next, gamma)
        st, sm = torch.full((b,), s, dtype=x.dtype), torch.full((b,), mid, dtype=x.dtype)
        x = flow_map(x, flow2(x, st, sm), st, sm)
        if s_next > 0 and gamma > 0:
            x = (1 - s_next) / (1 - mid) * x + gamma * s_next * torch.randn(x.shape, generator=generator,
                                                                           dtype=x.dtype)
    return x


# ---------------------------------------------------------------- video plugins (CD, CT, LCM, sCM, CTM)

class _VideoClips(Objective):
    """A video plugin on data clips with the frozen teacher; ``step`` is the latest :meth:`generator_turn`'s
    (called by the trainer before each generator loss), read by curricula and warm-ups."""
    data = "videos"
    networks = ("generator", "teacher")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.step = 0

    def generator_turn(self, step: int) -> bool:
        self.step = step
        return True


class _VideoConsistency(_VideoClips, ABC):
    """Data clips ``x0 [B, T, C, H, W]``; one grid pair ``(s_{n+k}, s_n)`` per sample, the same for every frame.
    Student: the causal generator over the full sequence; target: the same network under ``no_grad``. The
    curriculum reads the step of :meth:`generator_turn`; subclasses give the :meth:`loss` of one grid pair."""

    def grid(self) -> tuple[int, float, int]:
        """``(intervals, rho, skip)`` of this step."""
        c = getattr(self.cfg.objective, self.name)
        return curriculum_n(self.step, self.cfg.train.steps, c.n_start, c.n_end), c.rho, 1

    def teacher_flow(self, ctx: StepContext, which: str) -> Flow:
        with torch.no_grad():
            return Denoiser(ctx.nets.teacher, text_kv_of(ctx, "teacher", which)).flow

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x0, eps = clips.data_clips(ctx)
        b, t = x0.shape[:2]
        n_int, rho, skip = self.grid()
        grid = karras_grid(n_int, rho).float()
        n = torch.randint(n_int - skip + 1, (b,), generator=ctx.rng, device=ctx.rng.device).cpu()
        s, s_prev = (grid[i].to(x0.device)[:, None].expand(b, t) for i in (n + skip, n))
        loss = self.loss(ctx, clips.generator_flow(ctx), x0, eps, s, s_prev)
        return loss, {f"{self.name}_loss": loss.item(), f"{self.name}_intervals": float(n_int)}

    @abstractmethod
    def loss(self, ctx: StepContext, student: Flow, x0: Tensor, eps: Tensor, s: Tensor, s_prev: Tensor) -> Tensor:
        """The scalar loss of the grid pair ``s = s_{n+k}``, ``s_prev = s_n`` (``[B, T]``) on ``(x0, eps)``."""


class CD(_VideoConsistency):
    name = "cd"

    def loss(self, ctx, student, x0, eps, s, s_prev):
        c = self.cfg.objective.cd
        return cd_loss(student, student, self.teacher_flow(ctx, "cond"), x0, eps, s, s_prev, c.solver, c.huber_c)


class CT(_VideoConsistency):
    name = "ct"
    networks = ("generator",)

    def loss(self, ctx, student, x0, eps, s, s_prev):
        return ct_loss(student, student, x0, eps, s, s_prev, self.cfg.objective.ct.huber_c)


class LCM(_VideoConsistency):
    name = "lcm"

    def grid(self) -> tuple[int, float, int]:
        c = self.cfg.objective.lcm
        if not 1 <= c.skip <= c.num_steps:
            raise ValueError(f"objective.lcm.skip must lie in [1, num_steps={c.num_steps}], got {c.skip}")
        return c.num_steps, c.rho, c.skip

    def loss(self, ctx, student, x0, eps, s, s_prev):
        guidance = Guidance.from_config(self.cfg.objective.guidance)
        uncond = None if guidance.unguided else self.teacher_flow(ctx, "uncond")
        return lcm_loss(student, student, self.teacher_flow(ctx, "cond"), uncond, guidance, x0, eps, s, s_prev,
                        self.cfg.objective.lcm.huber_c)


class SCM(_VideoClips):
    """sCD on data clips: TrigFlow time ``t`` per sample from sCM's proposal, the teacher's ``dx/dt``, the tangent
    of the generator's own stop-gradient copy (one ``torch.func.jvp`` through the block-causal DiT), tangent
    warm-up over the generator's turns."""
    name = "scm"

    def __init__(self, cfg):
        super().__init__(cfg)
        clips.require_jvp_attention(cfg, self.name)

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg.objective.scm
        x0, eps = clips.data_clips(ctx)
        clips.require_jvp_attention(self.cfg, self.name, x0.device)
        t, = clips.on_device(x0, scm_time((x0.shape[0],), c.p_mean, c.p_std, c.sigma_data, ctx.rng, ctx.rng.device))
        r = tangent_warmup(self.step, c.warmup_steps)
        student = clips.generator_flow(ctx)
        loss = scm_distill_loss(student, student, clips.teacher_flow(ctx), x0, eps, t, r, c.sigma_data, c.tangent,
                                c.norm_c)
        return loss, {"scm_loss": loss.item(), "scm_warmup": r}


class CTM(_VideoClips):
    """CTM on data clips: ``(t, u, s)`` per sample (:func:`vidforce.objectives.flowmap.map_times`), the student
    ``G_theta(x, t, s)`` through the generator's second time, ``G_sg`` the same network held, the teacher's ODE."""
    name = "ctm"

    def __init__(self, cfg):
        super().__init__(cfg)
        clips.require_time_to(cfg, self.name)

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg.objective.ctm
        x0, eps = clips.data_clips(ctx)
        t, u, s = clips.on_device(x0, *map_times(x0.shape[0], ctx.rng, ctx.rng.device))
        student = clips.generator_flow(ctx)
        loss, dsm = ctm_loss(student, student, clips.held_flow(ctx), clips.teacher_flow(ctx), x0, eps, t, u, s,
                             c.teacher_steps, c.dsm_weight, c.solver)
        return loss, {"ctm_loss": loss.item(), "ctm_dsm": dsm.item()}
