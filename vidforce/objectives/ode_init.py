"""ODE-regression initialisation of the causal student (CausVid / Self Forcing).

Data: teacher ODE trajectories ``[B, S + 1, T, C, H, W]`` -- the latent at each of the ``S`` step-list
sigmas, then the endpoint x0 (``tools/make_ode_pairs.py``). Each chunk draws its own step ``k``; the
student sees chunk ``c`` at ``x_{sigma_k(c)}`` through the block-causal full-sequence forward and regresses
the endpoint: ``L = || x0_student - x0_teacher ||^2``. The earlier chunks are attended at their noisy steps too
(block-causal over the noisy sequence), or, with ``objective.ode_init.clean_context``, as the teacher's clean
endpoints at t = 0: the context inference attends to.

The pairs file, its reader (``train.data.ODEPairs``, ``objective.ode_init.pairs``), :func:`pairs_of`,
:func:`endpoint_loss` and :func:`student_denoiser` also serve the couplings ``(x[:, 0], x[:, -1])`` (pure noise at
sigma 1, the endpoint) of knowledge distillation and Reflow (:mod:`vidforce.objectives.trajectory`).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from vidforce.diffusion import x0_from_flow
from vidforce.objectives.base import Flow, Objective, StepContext, text_kv_of, weighted_mse
from vidforce.sampling import Denoiser



def ode_regression_inputs(trajectory: Tensor, sigmas: Tensor, steps: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """Pick per-chunk inputs: ``trajectory [B, S+1, T, ...]``, ``steps [B, n_chunks]`` -> ``x [B, T, ...]``,
    per-frame ``sigma [B, T]``."""
    b, _, t = trajectory.shape[:3]
    per_frame = steps.repeat_interleave(chunk, dim=1)[:, :t].to(trajectory.device)     # [B, T]
    idx = per_frame[:, None, :, None, None, None].expand(b, 1, t, *trajectory.shape[3:])
    x = trajectory.gather(1, idx).squeeze(1)
    return x, sigmas.to(trajectory.device)[per_frame]


def ode_loss(pred_x0: Tensor, target_x0: Tensor) -> Tensor:
    """``mean || x0_pred - x0_teacher ||^2`` (fp32)."""
    return weighted_mse(pred_x0, target_x0)


def endpoint_loss(student: Flow, x: Tensor, sigma: Tensor, target_x0: Tensor) -> Tensor:
    """Regression onto the teacher's endpoint from ``x`` at ``sigma``: ``|| (x - sigma v_theta(x, sigma)) - x0 ||^2``
    (mean over elements); ``sigma`` per sample ``[B]`` or per frame ``[B, T]``."""
    return ode_loss(x0_from_flow(x, student(x, sigma), sigma), target_x0)


def pairs_of(ctx: StepContext) -> Tensor:
    """The step's ODE pairs ``[B, S + 1, T, C, H, W]`` (every ``ode_pairs`` objective reads the file of
    ``objective.ode_init.pairs``)."""
    if ctx.batch.trajectory is None:
        raise ValueError(f"objective.name={ctx.cfg.objective.name} needs ODE pairs: set objective.ode_init.pairs")
    return ctx.batch.trajectory


def student_denoiser(ctx: StepContext, clean: Tensor | None) -> Denoiser:
    """The generator's block-causal full-sequence forward under the conditional prompt, with grad; with ``clean``
    ``[B, T, C, H, W]`` (the teacher's endpoints) the earlier chunks are attended as those clean frames at t = 0."""
    net = ctx.nets.generator.forward_full
    if clean is not None:
        net = partial(net, clean=clean, clean_t=torch.zeros(clean.shape[:2], device=clean.device))
    return Denoiser(net, text_kv_of(ctx, "generator", "cond"))


class ODEInit(Objective):
    name = "ode_init"
    data = "ode_pairs"

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        traj = pairs_of(ctx)
        n_steps = traj.shape[1] - 1
        if n_steps != len(ctx.sampler.sigmas):
            raise ValueError(f"ODE pairs hold {n_steps} steps but schedule.denoising_steps has "
                             f"{len(ctx.sampler.sigmas)}")
        chunk = ctx.cfg.causal.frames_per_chunk
        n_chunks = -(-traj.shape[2] // chunk)
        steps = torch.randint(n_steps, (traj.shape[0], n_chunks), generator=ctx.rng, device=ctx.rng.device)
        x, sigma = ode_regression_inputs(traj, torch.tensor(ctx.sampler.sigmas), steps, chunk)
        clean = traj[:, -1] if self.cfg.objective.ode_init.clean_context else None
        loss = endpoint_loss(student_denoiser(ctx, clean).flow, x, sigma, traj[:, -1])
        return loss, {"ode_loss": loss.item()}
