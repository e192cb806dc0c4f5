"""GRPO (Shao et al. 2024) on the causal student's few-step rollouts: Self-Forcing++'s reward option against drift.

The policy. Self Forcing's few-step sampler calls its network deterministically but draws fresh noise between
steps: from ``x_i`` at sigma ``s_i`` it predicts ``x0_theta(x_i, s_i)`` and moves to ``x_{i+1} = (1 - s_{i+1}) x0_theta
+ s_{i+1} eps``, ``eps ~ N(0, I)``. That re-noising makes it a stochastic policy of Gaussian transitions

    pi_theta(x_{i+1} | x_i, context) = N((1 - s_{i+1}) x0_theta(x_i, s_i | context), s_{i+1}^2 I),   i < n - 1

(:func:`transition_logp`); the last step's x0 is the chunk's output, a function of ``x_{n-1}``. With
``schedule.context_noise`` ``s_c > 0`` the cache refresh ``x_c = (1 - s_c) x0 + s_c eps'`` is one more transition
of that form (it feeds every later chunk). A one-step sampler has no transition, hence no policy gradient: GRPO
needs >= 2 denoising steps. Log-densities are means over elements (as Flow-GRPO's), so a ratio is the geometric
mean of the per-element ratios and the clip range ``grpo.clip`` is small.

One generator turn:

1. ``grpo.group_size`` (G) rollouts per prompt from the current weights, every step, ``no_grad``, of the plan's
   ``N`` frames (Self-Forcing++'s long rollouts when ``rollout.long_frames`` is set); a forward pre-hook on the
   generator records every network input, so the trajectory (``x_i`` per chunk and step, ``x_c``) is known.
2. Rewards of the decoded videos (:func:`vidforce.rewards.video_rewards`: ``motion``, or ``drift`` over windows
   of K frames with the default ``BallWorldSpec``'s smallest disc) and the group-normalised advantages
   ``A = clip((r - mean_G r) / (std_G r + 1e-4), +-grpo.adv_clip)``
   (:func:`group_advantages`).
3. The transitions of the plan's K-frame window are scored again with grad, chunk by chunk on a fresh cache fed
   the recorded context (each score sees what the sampler saw), and by the reference (the generator as it
   started: ``Nets.reference``, its own cache):
   ``L = -mean_b mean_t min(rho A_b, clip(rho, 1 - eps, 1 + eps) A_b) + beta mean_b mean_t KL_t`` with
   ``rho_t = exp(log pi_theta - log pi_old)`` and ``KL_t = mean |mu_theta - mu_ref|^2 / (2 s_{t+1}^2)``, the exact
   KL of two Gaussians of equal variance (:func:`clipped_objective`, :func:`gaussian_kl`). ``pi_old`` is the
   policy that drew the group; in the same turn the weights have not moved, so ``log pi_old = sg(log pi_theta)``:
   the ratio is 1 at the update (its gradient is ``A grad log pi``) and the clip never binds with one update per
   group. The reward covers all N frames; only the window's transitions are credited (as extended DMD's window).

With ``grpo.extended_dmd_weight = w > 0`` every generator update adds ``w`` x the extended DMD loss on its own
rollout, the critic trains as extended DMD's, and the generator updates every ``gen_update_every`` steps.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from vidforce import components
from vidforce.data.balls import BallWorldSpec
from vidforce.objectives.base import Objective, StepContext, text_kv_of
from vidforce.objectives.extended_dmd import ExtendedDMD
from vidforce.rewards import video_rewards
from vidforce.rollout import rollout
from vidforce.sampling import chunk_denoiser
from vidforce.video_io import to_uint8_frames

ADV_EPS = 1e-4   # added to the group std (a group of equal rewards gets advantages 0)


def group_advantages(rewards: Tensor, clip: float) -> Tensor:
    """``clip((r - mean_G r) / (std_G r + ADV_EPS), -clip, clip)`` per group: ``rewards [P, G]`` -> ``[P, G]``
    (population std over the group's G rollouts)."""
    r = rewards.double()
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, unbiased=False, keepdim=True) + ADV_EPS)
    return adv.clamp(-clip, clip).float()


def transition_logp(x_next: Tensor, mean: Tensor, std: float) -> Tensor:
    """``log N(x_next; mean, std^2 I)`` averaged over elements: ``[B, ...]`` -> ``[B]``."""
    logp = -(x_next.float() - mean.float()).square() / (2 * std ** 2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return logp.flatten(1).mean(dim=1)


def gaussian_kl(mean: Tensor, ref_mean: Tensor, std: float) -> Tensor:
    """``KL(N(mean, std^2 I) || N(ref_mean, std^2 I))`` averaged over elements: ``[B, ...]`` -> ``[B]``."""
    return (mean.float() - ref_mean.float()).square().flatten(1).mean(dim=1) / (2 * std ** 2)


def clipped_objective(logp: Tensor, logp_old: Tensor, adv: Tensor, clip: float) -> Tensor:
    """GRPO's clipped surrogate as a loss: ``-mean_{b,t} min(rho A_b, clip(rho, 1 - clip, 1 + clip) A_b)``,
    ``rho = exp(logp - logp_old)``; ``logp``, ``logp_old`` ``[B, T]`` (T transitions each), ``adv [B]``."""
    ratio = torch.exp(logp - logp_old)
    a = adv[:, None]
    return -torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a).mean()


def repeat_kv(kv, g: int):
    """Per-layer text K/V of ``B`` prompts repeated for ``g`` rollouts each (``B * g`` rows, prompt-major)."""
    return [(k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)) for k, v in kv]


def sample_group(ctx: StepContext, kv, g: int) -> tuple[Tensor, list[Tensor]]:
    """``g`` rollouts per prompt of ``plan.num_frames`` frames at every step (``no_grad``): the video
    ``[B g, N, C, H, W]`` and every input the generator was called on, in call order (per chunk: the ``n``
    steps' ``x_i``, then the refresh input ``x_c``)."""
    gen = ctx.nets.generator
    noise = ctx.noise(ctx.batch.cond.shape[0] * g, ctx.plan.num_frames, *ctx.latent_shape)
    calls: list[Tensor] = []
    handle = gen.register_forward_pre_hook(lambda _m, args: calls.append(args[0]))
    try:
        with torch.no_grad():
            video = rollout(gen, noise, kv, ctx.sampler, ctx.sampler.last, generator=ctx.rng,
                            cache_grad=ctx.cfg.rollout.cache_grad)
    finally:
        handle.remove()
    return video, calls


def transitions(sigmas: tuple[float, ...], context_sigma: float) -> list[tuple[int, int]]:
    """The stochastic transitions of one chunk as (from, to) indices into its recorded inputs
    ``x_0 .. x_{n-1}, x_c``: ``(i, i + 1)`` for ``i < n - 1``, and ``(n - 1, n)`` when the refresh re-noises."""
    n = len(sigmas)
    out = [(i, i + 1) for i in range(n - 1)]
    return out + [(n - 1, n)] if context_sigma > 0 else out


def score_window(ctx: StepContext, calls: list[Tensor], kv) -> tuple[Tensor, Tensor]:
    """Log-densities (with grad) and KLs to the reference of the window's transitions, each ``[B g, T]``; the
    chunks before the window only commit their recorded context, and scoring stops at the window's end."""
    sampler, p = ctx.sampler, ctx.plan
    gen, ref = ctx.nets.generator, ctx.nets.reference
    f, n = gen.frames_per_chunk, len(sampler.sigmas)
    levels = (*sampler.sigmas, sampler.context_sigma)
    steps = transitions(sampler.sigmas, sampler.context_sigma)
    stop = p.window_start + ctx.cfg.rollout.num_frames
    x = calls[0]
    shape = (x.shape[0], x.shape[3], x.shape[4], stop, x.device)
    pending = stop - p.window_start if gen.gradient_checkpointing and torch.is_grad_enabled() else 0   # as rollout
    cache = gen.new_cache(*shape, next(gen.parameters()).dtype, extra_capacity=pending)
    ref_cache = ref.new_cache(*shape, next(ref.parameters()).dtype)
    ref_kv = [(k.detach(), v.detach()) for k, v in kv]
    end = 0.0 if gen.arch.time_to else None          # a flow-map generator's x0 is its jump to 0, as it samples
    logps, kls = [], []
    for c, start in enumerate(range(0, stop, f)):
        states = calls[c * (n + 1):(c + 1) * (n + 1)]
        if start >= p.window_start:
            for i, j in steps:
                x0 = chunk_denoiser(gen, cache, start, kv, write=False).x0(states[i], levels[i], end)
                with torch.no_grad():
                    ref_x0 = chunk_denoiser(ref, ref_cache, start, ref_kv, write=False).x0(states[i], levels[i], end)
                mean = (1 - levels[j]) * x0
                logps.append(transition_logp(states[j], mean, levels[j]))
                kls.append(gaussian_kl(mean, (1 - levels[j]) * ref_x0, levels[j]))
        with torch.no_grad():        # commit the chunk as the sampler did: its recorded refresh input
            chunk_denoiser(gen, cache, start, ref_kv, write=True).flow(states[n], sampler.context_sigma)
            chunk_denoiser(ref, ref_cache, start, ref_kv, write=True).flow(states[n], sampler.context_sigma)
    return torch.stack(logps, dim=1), torch.stack(kls, dim=1)


class GRPO(Objective):
    name = "grpo"
    data = "prompts"

    def __init__(self, cfg):
        super().__init__(cfg)
        if len(cfg.schedule.denoising_steps) < 2 and not cfg.schedule.context_noise:
            raise ValueError("objective.name=grpo needs a stochastic sampler: schedule.denoising_steps with >= 2 "
                             "steps (or schedule.context_noise > 0)")
        self.dmd = ExtendedDMD(cfg) if cfg.objective.grpo.extended_dmd_weight else None
        self.networks = ("generator", "reference") + (("critic", "teacher") if self.dmd else ())
        self._codec = None

    def generator_turn(self, step: int) -> bool:
        return self.dmd.generator_turn(step) if self.dmd else True

    def critic_turn(self, step: int) -> bool:
        return self.dmd is not None

    def critic_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        return self.dmd.critic_loss(ctx) if self.dmd else super().critic_loss(ctx)

    def rewards(self, video: Tensor) -> Tensor:
        """Rewards ``[B g]`` of rollouts ``[B g, N, C, H, W]`` (decoded by the config's codec)."""
        if self._codec is None:
            self._codec = components.codec(self.cfg, video.device)
        o = self.cfg.objective.grpo
        with torch.no_grad():
            frames = [to_uint8_frames(self._codec.decode(v[None].float())[0]) for v in video]
        window = self._codec.num_frames(self.cfg.rollout.num_frames)
        r = video_rewards(frames, o.reward, o.jerk_weight, window, BallWorldSpec().radius_range[0])
        return torch.as_tensor(r, dtype=torch.float32, device=video.device)

    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        o = self.cfg.objective.grpo
        kv = repeat_kv(text_kv_of(ctx, "generator", "cond"), o.group_size)
        video, calls = sample_group(ctx, [(k.detach(), v.detach()) for k, v in kv], o.group_size)
        reward = self.rewards(video)
        adv = group_advantages(reward.view(-1, o.group_size), o.adv_clip).flatten()
        logp, kl = score_window(ctx, calls, kv)
        policy = clipped_objective(logp, logp.detach(), adv, o.clip)
        loss = policy + o.kl_weight * kl.mean()
        logs = {"grpo_reward": reward.mean().item(), "grpo_policy_loss": policy.item(), "grpo_kl": kl.mean().item()}
        if self.dmd is not None:
            dmd, dmd_logs = self.dmd.generator_loss(ctx)
            loss = loss + o.extended_dmd_weight * dmd
            logs.update(dmd_logs)
        return loss, logs
