"""Score identity Distillation (SiD, Zhou et al. 2024) on self-rollouts.

With teacher x0 ``f_r`` and critic x0 ``f_f`` evaluated at ``x_t`` of the generated ``x`` -- gradients flow
through both networks' *inputs* into ``x`` (their parameters stay frozen for this loss):
``L = w * [ (1 - alpha) ||f_r - f_f||^2 + (f_r - f_f)^T (f_f - x) ]``, ``w = 1 / mean|x - f_r|`` per sample
(the DMD normaliser, detached). ``alpha = 1.2`` in the paper. The critic trains as in DMD.
"""
from __future__ import annotations

from torch import Tensor

from vidforce.objectives.base import StepContext, frozen, generate, noised, teacher_x0, text_kv_of, x0_of
from vidforce.objectives.dmd import DMD


def sid_loss(x: Tensor, real_x0: Tensor, fake_x0: Tensor, alpha: float) -> Tensor:
    """SiD generator loss (mean over elements); all ``[B, ...]``, every input may carry grad."""
    dims = tuple(range(1, x.dim()))
    w = 1.0 / (x.float() - real_x0.float()).abs().mean(dim=dims, keepdim=True).detach().clamp_min(1e-8)
    diff = real_x0.float() - fake_x0.float()
    return (w * ((1 - alpha) * diff.square() + diff * (fake_x0.float() - x.float()))).mean()


class SiD(DMD):
    name = "sid"

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x = generate(ctx, grad=True)
        x_t, _, sigma = noised(ctx, x)
        with frozen(ctx.nets.critic):
            real = teacher_x0(ctx, x_t, sigma)
            fake = x0_of(ctx.nets.critic, x_t, sigma, text_kv_of(ctx, "critic", "cond"))
        loss = sid_loss(x, real, fake, ctx.cfg.objective.sid.alpha)
        return loss, {"sid_loss": loss.item()}
