"""Trajectory distillation on the teacher's noise-data couplings: knowledge distillation (KD) and Reflow.

A coupling is a noise draw ``eps`` and the teacher's ODE endpoint from it, ``x0 = Phi_T(eps, 1 -> 0)`` (the
probability-flow ODE ``dx/ds = v_T(x, s)`` solved from ``s = 1`` to ``s = 0``). Flow-matching coordinates:
``x_s = (1 - s) x0 + s eps``, flow ``v = eps - x0``, data at ``s = 0``, noise at ``s = 1``. Networks are ``Flow``
callables ``(x, sigma) -> v`` (``vidforce.sampling.Denoiser.flow``).

- **KD** (Luhman & Luhman 2021): a one-step student ``G_theta(eps) = eps - v_theta(eps, 1)`` (the x0 of its flow at
  pure noise) regressed onto the endpoint, ``L = || G_theta(eps) - Phi_T(eps, 1 -> 0) ||^2``. KD *is* ODE-regression
  init (:mod:`vidforce.objectives.ode_init`) restricted to the pure-noise input: ode_init regresses the same
  endpoint from the trajectory's latent at a random step-list sigma per chunk (``x_{sigma_k}``, ``k`` drawn); KD
  always takes ``k = 0`` (sigma 1, the pair's noise itself) and never sees the intermediate latents, so only the
  pair ``(x[:, 0], x[:, -1])`` of a trajectory matters. Both share the pairs file and its reader, the regression
  (:func:`vidforce.objectives.ode_init.endpoint_loss`) and the clean-context forward.
- **Reflow** (Liu et al. 2023, rectified flow): flow matching on the couplings instead of independent
  ``(x0, eps)``: ``x_t = (1 - t) Phi_T(eps) + t eps``, ``L = E_t || v_theta(x_t, t) - (eps - Phi_T(eps)) ||^2``. The
  optimum is ``E[eps - Phi_T(eps) | x_t]``: paths that cross are averaged, so the new flow's paths are straighter and
  its few-step Euler samples better. Round ``k + 1`` trains on the couplings of round ``k``'s flow
  (``Phi_T`` replaced by that model's ODE): the harness runs rounds (:mod:`vidforce.toy.trajectory_train`); at video
  scale a round is new pairs (``tools/make_ode_pairs.py`` with ``teacher.checkpoint`` the round's export).

Video plugins (``kd``, ``reflow``): data ``ode_pairs`` from ``objective.ode_init.pairs`` (the ode_init file: no
second format), the coupling of each pair ``eps = trajectory[:, 0]`` (its first recorded sigma must be 1: the step
list starts at 1000, as every shipped schedule does) and ``x0 = trajectory[:, -1]``. The chunk-causal generator
runs over the full sequence under the conditional prompt (guidance is the teacher's, baked into the pairs), with
the earlier chunks attended as the clean endpoints at t = 0 (``objective.<name>.clean_context``, the context that
inference attends to). KD needs a one-step sampler (``schedule.denoising_steps: [1000]``); Reflow draws one
training sigma per chunk (``schedule``: shift, range) and may weight it (``objective.reflow.weighting``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from vidforce.diffusion import add_noise, x0_from_flow
from vidforce.objectives.base import Flow, Objective, StepContext, flow_matching_loss, train_sigma
from vidforce.objectives.forcing import loss_weight
from vidforce.objectives.ode_init import endpoint_loss, pairs_of, student_denoiser
from vidforce.sampling import Sampler



def noise_sigma(eps: Tensor) -> Tensor:
    """Sigma 1 in the network's time layout: per frame ``[B, T]`` for clips ``[B, T, C, H, W]``, else per sample
    ``[B]`` (the harness's ``[B, D]`` points)."""
    return torch.ones(eps.shape[:2] if eps.dim() == 5 else eps.shape[:1], device=eps.device)


def one_step(student: Flow, eps: Tensor) -> Tensor:
    """KD's one-step generator ``G(eps) = eps - v(eps, 1)`` (the x0 of the flow at pure noise), shaped like ``eps``."""
    sigma = noise_sigma(eps)
    return x0_from_flow(eps, student(eps, sigma), sigma)


def kd_loss(student: Flow, eps: Tensor, x0: Tensor) -> Tensor:
    """KD (Luhman & Luhman 2021): ``L = || (eps - v_theta(eps, 1)) - Phi_T(eps, 1 -> 0) ||^2`` (mean over elements),
    ``x0 = Phi_T(eps, 1 -> 0)`` the teacher's endpoint: ode_init's :func:`endpoint_loss` at sigma 1."""
    return endpoint_loss(student, eps, noise_sigma(eps), x0)


def reflow_loss(student: Flow, eps: Tensor, x0: Tensor, sigma: Tensor, weight: Tensor | None = None) -> Tensor:
    """Reflow (Liu et al. 2023, the rectified-flow objective on a coupling): flow matching on ``(eps, x0 = Phi(eps))``,

        x_t = (1 - t) Phi(eps) + t eps,    L = E_t || v_theta(x_t, t) - (eps - Phi(eps)) ||^2,

    ``sigma``: the times ``t`` per sample ``[B]`` or per frame ``[B, T]``; ``weight`` per frame (``None``: plain)."""
    return flow_matching_loss(student(add_noise(x0, eps, sigma), sigma), x0, eps, weight)


# ---------------------------------------------------------------- video plugins (KD, Reflow)

class _Coupled(Objective):
    """Reads the couplings ``(eps, x0)`` of the step's ODE pairs; the student is the generator's full-sequence flow."""
    data = "ode_pairs"

    def coupling(self, ctx: StepContext) -> tuple[Tensor, Tensor]:
        traj = pairs_of(ctx)
        return traj[:, 0], traj[:, -1]

    def student(self, ctx: StepContext, x0: Tensor) -> Flow:
        clean = x0 if getattr(self.cfg.objective, self.name).clean_context else None
        return student_denoiser(ctx, clean).flow


class KD(_Coupled):
    name = "kd"

    def __init__(self, cfg):
        super().__init__(cfg)
        sigmas = Sampler.from_config(cfg.schedule).sigmas
        if sigmas != (1.0,):
            raise ValueError(f"objective.name=kd trains a one-step student from pure noise: set "
                             f"schedule.denoising_steps=[1000] (its sampler's sigmas are {sigmas})")

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        eps, x0 = self.coupling(ctx)
        loss = kd_loss(self.student(ctx, x0), eps, x0)
        return loss, {"kd_loss": loss.item()}


class Reflow(_Coupled):
    name = "reflow"

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        eps, x0 = self.coupling(ctx)
        sigma = train_sigma(ctx, x0, per_frame=True)
        loss = reflow_loss(self.student(ctx, x0), eps, x0, sigma, loss_weight(ctx, self.cfg.objective.reflow, sigma))
        return loss, {"reflow_loss": loss.item()}
