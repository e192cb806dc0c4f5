"""ODE-regression initialisation of the causal student (CausVid / Self Forcing).

Data: teacher ODE trajectories ``[B, S + 1, T, C, H, W]`` -- the latent at each of the ``S`` step-list
sigmas, then the endpoint x0 (``tools/make_ode_pairs.py``). Each chunk draws its own step ``k``; the
student sees chunk ``c`` at ``x_{sigma_k(c)}`` through the block-causal full-sequence forward and regresses
the endpoint: ``L = || x0_student - x0_teacher ||^2``. The earlier chunks are attended at their noisy steps too
(block-causal over the noisy sequence), or, with ``objective.ode_init.clean_context``, as the teacher's clean
endpoints at t = 0: the context inference attends to.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from vidforce.objectives.base import Objective, StepContext, text_kv_of
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
    return (pred_x0.float() - target_x0.float()).square().mean()


class ODEInit(Objective):
    name = "ode_init"
    data = "ode_pairs"

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        traj = ctx.batch.trajectory
        if traj is None:
            raise ValueError("objective.name=ode_init needs ODE pairs: set objective.ode_init.pairs")
        n_steps = traj.shape[1] - 1
        if n_steps != len(ctx.sampler.sigmas):
            raise ValueError(f"ODE pairs hold {n_steps} steps but schedule.denoising_steps has "
                             f"{len(ctx.sampler.sigmas)}")
        chunk = ctx.cfg.causal.frames_per_chunk
        n_chunks = -(-traj.shape[2] // chunk)
        steps = torch.randint(n_steps, (traj.shape[0], n_chunks), generator=ctx.rng, device=ctx.rng.device)
        x, sigma = ode_regression_inputs(traj, torch.tensor(ctx.sampler.sigmas), steps, chunk)
        kv = text_kv_of(ctx, "generator", "cond")
        net = ctx.nets.generator.forward_full
        if self.cfg.objective.ode_init.clean_context:      # earlier chunks as inference sees them: clean
            net = partial(net, clean=traj[:, -1], clean_t=torch.zeros_like(sigma))
        pred = Denoiser(net, kv).x0(x, sigma)
        loss = ode_loss(pred, traj[:, -1])
        return loss, {"ode_loss": loss.item()}
