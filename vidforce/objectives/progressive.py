"""Progressive distillation (Salimans & Ho 2022) and guided distillation (Meng et al. 2023).

Flow-matching coordinates (docs/architecture.md): ``x_s = (1 - s) x0 + s eps``, flow ``v = eps - x0``, data at
``s = 0``, noise at ``s = 1``. Networks are ``Flow`` callables ``(x, s) -> v`` (``vidforce.sampling.Denoiser.flow``);
a sampler of ``N`` steps is the Euler ODE ``x <- x + (s' - s) v(x, s)`` on ``euler_grid(N, shift)``. An Euler step is
the DDIM step of this convention: with ``x0^ = x - s v`` and ``eps^ = x + (1 - s) v``,
``(1 - s') x0^ + s' eps^ = x + (s' - s) v``.

**Progressive distillation.** The teacher samples in ``2N`` Euler steps on ``euler_grid(2N, shift)``, the student in
``N`` on ``euler_grid(N, shift)`` (every second point of the teacher's grid). For a student step ``t -> t''`` with the
teacher's midpoint ``t'`` (:func:`student_times`), the teacher's two steps from ``x = x_t`` are

    x'  = x  + (t' - t) v_T(x, t),        x'' = x' + (t'' - t') v_T(x', t'),

and the student's one step ``x + (t'' - t) v_S(x, t)`` must land on ``x''``. The paper's x-prediction target is the
``x0~`` whose DDIM step from ``x_t`` ends at ``x''``: ``x'' = (t''/t) x + (1 - t''/t) x0~``, so

    x0~ = (t x'' - t'' x) / (t - t''),

(Salimans & Ho's Algorithm 2 with ``alpha = 1 - t``, ``sigma = t``), and as a velocity ``v~ = (x - x0~) / t``:

    v~ = (x - x'') / (t - t'') = ((t - t') v_T(x, t) + (t' - t'') v_T(x', t')) / (t - t''),

the step-weighted mean of the teacher's two velocities (:func:`progressive_target`, computed in this last form:
no division of a small difference). The loss is ``|| v_S(x_t, t) - sg(v~) ||^2`` (mean over elements), which is
``|| x0^_S - x0~ ||^2 / t^2``: the paper's x-space error with weight ``1 / t^2``, within a factor 4 of its
truncated-SNR weight ``max(SNR, 1) = max((1 - t)^2, t^2) / t^2``. ``x_t`` is a noised data sample (the paper's
``z_t = alpha x + sigma eps``). Round ``k``'s student (``N`` steps) is round ``k + 1``'s teacher (``N / 2`` steps
for its student), and each student starts as a copy of its teacher.

**Guided distillation** (stage 1). The student reproduces the classifier-free-guided teacher in one call,

    v_S(x_t, t) = v_u(x_t, t) + w (v_c(x_t, t) - v_u(x_t, t))      (Meng et al.'s stage 1, in flow units),

``L = || v_S - sg(v_u + w (v_c - v_u)) ||^2`` (:func:`guided_loss`; ``w`` a float or per sample, either guidance
convention of ``diffusion.cfg``). Meng et al. condition the student on ``w`` drawn from a range: with the DiT's
guidance scale input (``model.guidance_input``, a zero-initialised embedding of ``w``, ``models/wan.py``) the video
plugin draws ``w`` per sample uniformly from ``objective.guided.w_range`` and regresses ``v_S(x_t, t, w)`` onto the
teacher's CFG at that ``w``; without it, it bakes the one ``objective.guidance`` scale into the student (as LCM
does). A ``w``-conditioned student samples at ``w = objective.guidance.scale`` (``sampling.Sampler.for_generator``).
Stage 2 is progressive distillation with the stage-1 student as the teacher: it is unguided, one call per teacher
step (of a baked student; a ``w``-conditioned teacher is not wired into ``progressive``).

Video plugins (``progressive``, ``guided``): the chunk-causal generator over the full sequence on data clips, one
time per sample, conditional prompt (:mod:`vidforce.objectives.clips`). One training run is one round:

- ``progressive``: ``objective.progressive.student_steps = N`` (the teacher runs ``2N``); the teacher is
  ``teacher.checkpoint`` run bidirectionally (``objective.progressive.teacher: bidirectional``) or the frozen copy
  of the generator as it starts, run block-causally as it was trained (``causal``: ``Nets.reference``, weights from
  ``model.checkpoint``); its conditional branch only (unguided: distil CFG first with ``guided``). Chain: round
  ``k``'s export (``train/checkpoint.py``) is round ``k + 1``'s ``model.checkpoint`` (the student starts as its
  teacher) and, with ``bidirectional``, its ``teacher.checkpoint``; ``student_steps`` halves each round. Sample a
  student with the Euler chunk sampler on its grid, ``Sampler(euler_grid(N, schedule.shift), solver="euler")``.
- ``guided``: the teacher's CFG (both branches: two calls) regressed into the generator's one conditional call, one
  shifted training sigma per sample (``schedule``), ``objective.guided.weighting``; the scale is
  ``objective.guidance.scale`` (baked), or with ``model.guidance_input`` a ``w`` per sample drawn after the sigma on
  the step's rng, uniform in ``objective.guided.w_range``, given to the generator too. Its (baked) export is the
  teacher of stage 2 (``progressive`` rounds).
"""
from __future__ import annotations

import torch
from torch import Tensor

from vidforce.diffusion import add_noise, cfg as guide, expand_sigma
from vidforce.objectives import clips
from vidforce.objectives.base import Flow, Objective, StepContext, train_sigma, weighted_mse
from vidforce.objectives.forcing import loss_weight
from vidforce.sampling import Guidance, euler_grid

NETWORKS = {"bidirectional": ("generator", "teacher"), "causal": ("generator", "reference")}   # per
# objective.progressive.teacher (its choices are checked by the config)


# ---------------------------------------------------------------- progressive distillation

def student_times(b: int, student_steps: int, shift: float = 1.0, generator: torch.Generator | None = None,
                  device=None) -> tuple[Tensor, Tensor, Tensor]:
    """``(t, t', t'')`` ``[B]``: a uniform student step ``i`` of ``N = student_steps``, ``t = g[2i]``,
    ``t' = g[2i + 1]``, ``t'' = g[2i + 2]`` on the teacher's grid ``g = euler_grid(2N, shift)`` (its even points are
    the student's grid)."""
    grid = torch.tensor(euler_grid(2 * student_steps, shift), dtype=torch.float32, device=device)
    i = 2 * torch.randint(student_steps, (b,), generator=generator, device=device)
    return grid[i], grid[i + 1], grid[i + 2]


@torch.no_grad()
def progressive_target(teacher: Flow, x: Tensor, t: Tensor, t_mid: Tensor, t_end: Tensor) -> Tensor:
    """``v~ = ((t - t') v_T(x, t) + (t' - t'') v_T(x', t')) / (t - t'')``, ``x' = x + (t' - t) v_T(x, t)``: the velocity
    of the student's one Euler step ``t -> t''`` that lands on the teacher's two (``x [B, ...]``, times ``[B]``;
    its x0 form ``x - t v~`` is Salimans & Ho's ``x0~``)."""
    v1 = teacher(x, t)
    v2 = teacher(x + expand_sigma(t_mid - t, x) * v1, t_mid)
    a = expand_sigma((t - t_mid) / (t - t_end), x)
    return a * v1 + (1 - a) * v2


def progressive_loss(student: Flow, teacher: Flow, x0: Tensor, eps: Tensor, t: Tensor, t_mid: Tensor,
                     t_end: Tensor) -> Tensor:
    """Progressive distillation: ``x = (1 - t) x0 + t eps``, ``L = || v_S(x, t) - sg(v~) ||^2`` with
    :func:`progressive_target` from the frozen ``teacher`` (the module docstring derives it)."""
    x = add_noise(x0, eps, t)
    return weighted_mse(student(x, t), progressive_target(teacher, x, t, t_mid, t_end))


# ---------------------------------------------------------------- guided distillation (stage 1)

@torch.no_grad()
def guided_target(cond: Flow, uncond: Flow, x: Tensor, t: Tensor, w: float | Tensor,
                  convention: str = "uncond") -> Tensor:
    """The teacher's guided flow ``v_u + w (v_c - v_u)`` (``convention`` ``cond``: ``v_c + w (v_c - v_u)``) at
    ``x [B, ...]``, ``t`` ``[B]`` or ``[B, T]``; ``w`` a float or per sample ``[B]``."""
    scale = expand_sigma(w, x) if isinstance(w, Tensor) else w
    return guide(uncond(x, t), cond(x, t), scale, convention)


def guided_loss(student: Flow, cond: Flow, uncond: Flow, x0: Tensor, eps: Tensor, t: Tensor, w: float | Tensor,
                convention: str = "uncond", weight: Tensor | None = None) -> Tensor:
    """Guided distillation (Meng et al. 2023, stage 1): ``x = (1 - t) x0 + t eps``,
    ``L = || v_S(x, t) - sg(v_u + w (v_c - v_u)) ||^2`` (:func:`guided_target`; a ``w``-conditioned student closes
    over the same ``w``); ``weight`` per sample or frame (``None``: plain)."""
    x = add_noise(x0, eps, t)
    return weighted_mse(student(x, t), guided_target(cond, uncond, x, t, w, convention), weight)


# ---------------------------------------------------------------- video plugins (progressive, guided)

class Progressive(Objective):
    """One round: the generator's one Euler step over ``[t'', t]`` against the teacher's two (see the module)."""
    name = "progressive"
    data = "videos"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.networks = NETWORKS[cfg.objective.progressive.teacher]

    def teacher(self, ctx: StepContext) -> Flow:
        return clips.teacher_flow(ctx) if "teacher" in self.networks else clips.reference_flow(ctx)

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        n = self.cfg.objective.progressive.student_steps
        x0, eps = clips.data_clips(ctx)
        t, t_mid, t_end = clips.on_device(x0, *student_times(x0.shape[0], n, self.cfg.schedule.shift, ctx.rng,
                                                             ctx.rng.device))
        loss = progressive_loss(clips.generator_flow(ctx), self.teacher(ctx), x0, eps, t, t_mid, t_end)
        return loss, {"progressive_loss": loss.item()}


class Guided(Objective):
    """Stage 1: the teacher's CFG at ``objective.guidance`` baked into the generator's conditional flow, or at a
    per-sample ``w`` (``objective.guided.w_range``) given to a ``w``-conditioned generator
    (``model.guidance_input``)."""
    name = "guided"
    data = "videos"
    networks = ("generator", "teacher")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.guidance = Guidance.from_config(cfg.objective.guidance)
        self.w_input = cfg.model.guidance_input
        if self.guidance.unguided and not self.w_input:
            raise ValueError(f"objective.name=guided distils classifier-free guidance: objective.guidance.scale "
                             f"{self.guidance.scale} is unguided in the {self.guidance.convention!r} convention")

    def draw_w(self, ctx: StepContext, like: Tensor) -> Tensor:
        """A guidance scale per sample ``[B]`` (fp32, on ``like``'s device) of ``like [B, ...]``, uniform in
        ``objective.guided.w_range`` (drawn on the step's rng)."""
        lo, hi = self.cfg.objective.guided.w_range
        u = torch.rand(like.shape[0], generator=ctx.rng, device=ctx.rng.device)
        return (lo + (hi - lo) * u).to(like.device)

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x0, eps = clips.data_clips(ctx)
        sigma = train_sigma(ctx, x0)
        w = self.draw_w(ctx, x0) if self.w_input else None
        g, teacher = self.guidance, clips.teacher_flow
        loss = guided_loss(clips.generator_flow(ctx, w), teacher(ctx, "cond"), teacher(ctx, "uncond"), x0, eps,
                           sigma, g.scale if w is None else w, g.convention,
                           loss_weight(ctx, self.cfg.objective.guided, sigma))
        return loss, {"guided_loss": loss.item()}
