"""GAN objectives on critic features, with real clips from the video dataset: ``dmd_gan`` (DMD + GAN,
DMD2-style) and ``gan`` (GAN only, Self Forcing's GAN variant).

The discriminator is a small head on the critic's token features at the noisy input ``x_t``
(:class:`CriticWithHead`). Losses (pure functions): non-saturating ``softplus(-D(fake))`` for the
generator, ``softplus(-D(real)) + softplus(D(fake))`` for the discriminator, or their relativistic
pairing ``softplus(-(D(real) - D(fake)))``; the hinge pair of ADD / LADD; finite-difference R1 / R2 penalties
``||D(x + s n) - D(x)||^2 / s^2`` on real / fake inputs approximate the gradient penalties without
double backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidforce.diffusion import add_noise, t_from_sigma
from vidforce.objectives.base import StepContext, flow_matching_loss, frozen, noised, text_kv_of
from vidforce.objectives.dmd import DMD, dmd_direction, dmd_loss
from vidforce.sampling import Denoiser


def discriminator_head(dim: int) -> nn.Sequential:
    """A discriminator head: pooled features ``[B, dim]`` -> logits ``[B, 1]`` (LayerNorm, Linear, SiLU, Linear)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))


class CriticWithHead(nn.Module):
    """A critic DiT plus a discriminator head on its tokens after ``feature_layer`` blocks.

    ``forward`` is the plain critic (flow); ``logits(x_t, t, text_kv) -> [B]``.
    """

    def __init__(self, model: nn.Module, feature_layer: int | None = None):
        super().__init__()
        self.model = model
        dim = model.arch.dim
        self.feature_layer = feature_layer if feature_layer is not None else max(1, model.arch.num_layers // 2)
        self.disc_head = discriminator_head(dim)

    @property
    def arch(self):
        return self.model.arch

    def text_kv(self, context: Tensor):
        return self.model.text_kv(context)

    def forward(self, x: Tensor, t: Tensor, context=None, text_kv=None) -> Tensor:
        return self.model(x, t, context, text_kv=text_kv)

    def logits(self, x: Tensor, t: Tensor, text_kv) -> Tensor:
        tokens = self.model(x, t, text_kv=text_kv, features_at=self.feature_layer)
        pooled = tokens.float().mean(dim=1).to(self.disc_head[1].weight.dtype)
        return self.disc_head(pooled).squeeze(-1).float()


def generator_gan_loss(fake_logits: Tensor, real_logits: Tensor | None = None) -> Tensor:
    if real_logits is not None:
        return F.softplus(-(fake_logits - real_logits)).mean()
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, relativistic: bool) -> Tensor:
    if relativistic:
        return F.softplus(-(real_logits - fake_logits)).mean()
    return (F.softplus(-real_logits) + F.softplus(fake_logits)).mean()


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Hinge loss (ADD, LADD): ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``; logits of any equal shape."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    """The generator's side of the hinge GAN: ``-mean(D(fake))``."""
    return -fake_logits.mean()


def finite_difference_penalty(logits: Tensor, perturbed_logits: Tensor, sigma: float) -> Tensor:
    """``mean((D(x + sigma n) - D(x))^2) / sigma^2``: a first-order estimate of ``E||grad D||^2`` along n."""
    return (perturbed_logits - logits).square().mean() / sigma ** 2


class DMDGAN(DMD):
    """DMD + a GAN on critic features (DMD2-style): the generator adds ``gan.weight`` x the GAN loss to DMD's;
    the critic adds ``gan.weight`` x the discriminator loss to its flow matching."""
    name = "dmd_gan"
    data = "videos"

    def critic_module(self, critic: nn.Module) -> nn.Module:
        return CriticWithHead(critic).to(next(critic.parameters()).device)

    def _logits(self, ctx: StepContext, x_t: Tensor, sigma: Tensor) -> Tensor:
        return ctx.nets.critic.logits(x_t, t_from_sigma(sigma), text_kv_of(ctx, "critic", "cond"))

    def _real_noisy(self, ctx: StepContext, sigma: Tensor) -> Tensor:
        real = ctx.batch.latents
        if real is None:
            raise ValueError(f"objective.name={self.name} needs real clips: set data.videos")
        k = ctx.cfg.rollout.num_frames
        real = real[:, :k]
        return add_noise(real, ctx.noise(*real.shape).to(real.dtype), sigma)

    def _generator_gan(self, ctx: StepContext, x: Tensor) -> Tensor:
        """The generator's GAN loss on a fresh noising of the rollout ``x`` (critic frozen)."""
        x_t_grad, _, sigma = noised(ctx, x)
        with frozen(ctx.nets.critic):
            fake_logits = self._logits(ctx, x_t_grad, sigma)
            real_logits = None
            if self.cfg.objective.gan.relativistic:
                with torch.no_grad():
                    real_logits = self._logits(ctx, self._real_noisy(ctx, sigma), sigma)
        return generator_gan_loss(fake_logits, real_logits)

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        x = self.student(ctx, grad=True)
        x_t, real_x0, fake_x0 = self.scores(ctx, x)
        direction = dmd_direction(x.detach(), real_x0, fake_x0)
        gan = self._generator_gan(ctx, x)
        loss = dmd_loss(x, direction) + self.cfg.objective.gan.weight * gan
        return loss, {"dmd_grad_norm": direction.norm().item(), "gen_gan_loss": gan.item()}

    def _discriminator(self, ctx: StepContext, x: Tensor, x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``gan.weight`` x (discriminator loss + R1 / R2 penalties) on real clips vs ``x_t``, and the plain
        discriminator loss."""
        o = self.cfg.objective.gan
        real_t = self._real_noisy(ctx, sigma)
        real_logits, fake_logits = self._logits(ctx, real_t, sigma), self._logits(ctx, x_t, sigma)
        d = discriminator_loss(real_logits, fake_logits, o.relativistic)
        loss = o.weight * d
        if o.r1_weight:
            pert = self._logits(ctx, real_t + o.r_sigma * ctx.noise(*real_t.shape), sigma)
            loss = loss + o.r1_weight * finite_difference_penalty(real_logits, pert, o.r_sigma)
        if o.r2_weight:
            pert = self._logits(ctx, x_t + o.r_sigma * ctx.noise(*x_t.shape), sigma)
            loss = loss + o.r2_weight * finite_difference_penalty(fake_logits, pert, o.r_sigma)
        return loss, d

    def critic_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            x = self.student(ctx, grad=False)
        x_t, eps, sigma = noised(ctx, x)
        kv = text_kv_of(ctx, "critic", "cond")
        fm = flow_matching_loss(Denoiser(ctx.nets.critic, kv).flow(x_t, sigma), x, eps)
        disc, d = self._discriminator(ctx, x, x_t, sigma)
        return fm + disc, {"critic_loss": fm.item(), "disc_loss": d.item()}


class GAN(DMDGAN):
    """GAN only (Self Forcing's GAN variant): no DMD term for the generator, no flow matching for the
    discriminator; the critic DiT (initialised from the teacher) is the discriminator's backbone."""
    name = "gan"
    networks = ("generator", "critic")

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        gan = self._generator_gan(ctx, self.student(ctx, grad=True))
        return self.cfg.objective.gan.weight * gan, {"gen_gan_loss": gan.item()}

    def critic_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            x = self.student(ctx, grad=False)
        x_t, _, sigma = noised(ctx, x)
        disc, d = self._discriminator(ctx, x, x_t, sigma)
        return disc, {"disc_loss": d.item()}
