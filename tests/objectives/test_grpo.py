"""GRPO: group-normalised advantages, the clipped objective and the Gaussian transition densities at known values,
and the rescoring of a recorded group reproduces the sampler's own transitions."""
import math

import pytest
import torch

from vidforce import config
from vidforce.models.causal import CausalWan
from vidforce.objectives import Batch, Nets, StepContext, build
from vidforce.objectives.grpo import (clipped_objective, gaussian_kl, group_advantages, repeat_kv, sample_group,
                                      score_window, transition_logp, transitions)
from vidforce.rollout import RolloutPlan
from vidforce.sampling import Sampler


def test_advantages_are_normalised_within_each_group():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [10.0, 10.0, 10.0, 10.0], [-5.0, 5.0, 0.0, 0.0]])
    adv = group_advantages(rewards, clip=5.0).double()
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv[[0, 2]].std(dim=1, unbiased=False), torch.ones(2, dtype=torch.float64),
                               atol=1e-4, rtol=0)
    assert adv[1].abs().max() == 0                                      # a group of equal rewards: no signal
    # group 0: mean 3, population std sqrt(14 / 4)
    std = math.sqrt(3.5)
    torch.testing.assert_close(adv[0], torch.tensor([-2, -1, 0, 3], dtype=torch.float64) / (std + 1e-4),
                               atol=1e-6, rtol=0)
    # the same rewards shifted and scaled give the same advantages; other groups do not leak in
    torch.testing.assert_close(group_advantages(3 * rewards[:1] + 7, 5.0), adv[:1].float(), atol=1e-4, rtol=0)


def test_advantages_are_clipped():
    rewards = torch.tensor([[0.0] * 99 + [1.0]])                        # one outlier: z = sqrt(99) ~ 9.95
    adv = group_advantages(rewards, clip=5.0)
    # mean 0.01, population std sqrt(0.01 * 0.99): the others' -0.01 / (std + 1e-4) is left as it is
    assert adv.max().item() == 5.0
    assert adv.min().item() == pytest.approx(-0.01 / (math.sqrt(0.0099) + 1e-4), rel=1e-5)


def test_clipped_objective_equals_the_closed_form():
    """rho = exp(logp - logp_old); per term min(rho A, clip(rho, 1 -+ e) A); the loss is minus their mean."""
    logp_old = torch.zeros(2, 3, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.5, 0.5, 1.1]], dtype=torch.float64))
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    # A = +2: min(1.5 * 2, 1.2 * 2) = 2.4; min(0.5 * 2, 0.8 * 2) = 1.0; min(2, 2) = 2
    # A = -1: min(-1.5, -1.2) = -1.5; min(-0.5, -0.8) = -0.8; min(-1.1, -1.1) = -1.1
    expected = -(2.4 + 1.0 + 2.0 - 1.5 - 0.8 - 1.1) / 6
    assert clipped_objective(logp, logp_old, adv, 0.2).item() == pytest.approx(expected, rel=1e-12)


def test_on_policy_gradient_is_the_advantage_weighted_score():
    """With logp_old = sg(logp) the ratio is 1 and d loss / d logp = -A / numel: the clip does not bind."""
    logp = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.5, -0.5], dtype=torch.float64)
    loss = clipped_objective(logp, logp.detach(), adv, 1e-4)
    loss.backward()
    assert loss.item() == pytest.approx(-(1.5 * 2 - 0.5 * 2) / 4, rel=1e-12)
    torch.testing.assert_close(logp.grad, -adv[:, None].expand(2, 2) / 4)


def test_gaussian_transition_density_and_kl():
    g = torch.Generator().manual_seed(0)
    x, mean, ref = (torch.randn(3, 2, 5, generator=g, dtype=torch.float64) for _ in range(3))
    normal = torch.distributions.Normal(mean, 0.7)
    torch.testing.assert_close(transition_logp(x, mean, 0.7).double(), normal.log_prob(x).flatten(1).mean(1))
    kl = torch.distributions.kl_divergence(normal, torch.distributions.Normal(ref, 0.7)).flatten(1).mean(1)
    torch.testing.assert_close(gaussian_kl(mean, ref, 0.7).double(), kl)


def test_transitions_of_a_chunk():
    assert transitions((1.0, 0.9, 0.8, 0.6), 0.0) == [(0, 1), (1, 2), (2, 3)]
    assert transitions((1.0, 0.9, 0.8, 0.6), 0.1) == [(0, 1), (1, 2), (2, 3), (3, 4)]   # the refresh re-noises
    assert transitions((1.0,), 0.0) == []


def _ctx(*extra: str, window_start: int = 0, frames: int = 6, k: int = 3):
    cfg = config.load(None, ["objective.name=grpo", f"rollout.num_frames={k}", "objective.grpo.group_size=2", *extra])
    arch = config.arch_of(cfg.model)
    torch.manual_seed(0)
    gen = CausalWan(arch, 3, attention="math")
    ref = CausalWan(arch, 3, attention="math").requires_grad_(False)
    ref.load_state_dict(gen.state_dict())
    text = torch.randn(2, arch.text_len, arch.text_dim)
    return StepContext(Nets(gen, reference=ref), Batch(text, text), RolloutPlan(3, frames, window_start),
                       Sampler.from_config(cfg.schedule), cfg, torch.Generator().manual_seed(4), (arch.in_dim, 4, 4))


@pytest.mark.parametrize("context_noise", [0.0, 100.0])
def test_rescoring_reproduces_the_samplers_transitions(context_noise):
    """Every recorded x_{i+1} is the rescored mean plus s_{i+1} times the noise the sampler drew (replayed from
    its generator), so each log-density is that of the sampled step; the reference starts equal: KL 0."""
    ctx = _ctx(f"schedule.context_noise={context_noise}", window_start=0, frames=6, k=6)
    kv = repeat_kv(ctx.nets.generator.text_kv(ctx.batch.cond), 2)
    video, calls = sample_group(ctx, kv, 2)
    logp, kl = score_window(ctx, calls, kv)
    sig, s_c = ctx.sampler.sigmas, ctx.sampler.context_sigma
    steps = transitions(sig, s_c)
    assert video.shape == (4, 6, *ctx.latent_shape) and len(calls) == 2 * (len(sig) + 1)
    assert logp.shape == kl.shape == (4, 2 * len(steps)) and logp.requires_grad
    assert kl.abs().max() == 0
    replay = torch.Generator().manual_seed(4)
    torch.randn(4, 6, *ctx.latent_shape, generator=replay)              # the initial noise
    levels = (*sig, s_c)
    for c in range(2):
        states = calls[c * (len(sig) + 1):(c + 1) * (len(sig) + 1)]
        eps = [torch.randn(states[0].shape, generator=replay) for _ in steps]
        for k, (_, j) in enumerate(steps):
            expected = -0.5 * eps[k].square().flatten(1).mean(1) - math.log(levels[j]) - 0.5 * math.log(2 * math.pi)
            torch.testing.assert_close(logp[:, c * len(steps) + k].detach(), expected, atol=1e-4, rtol=0)


def test_only_the_window_is_credited_and_the_reference_anchors():
    ctx = _ctx("schedule.denoising_steps=[1000,750,500]", window_start=3, frames=6)
    with torch.no_grad():
        _, calls = sample_group(ctx, repeat_kv(ctx.nets.generator.text_kv(ctx.batch.cond), 2), 2)
        for p in ctx.nets.generator.parameters():
            p.add_(0.01 * torch.randn_like(p))
    logp, kl = score_window(ctx, calls, repeat_kv(ctx.nets.generator.text_kv(ctx.batch.cond), 2))
    assert logp.shape == (4, 2)                                         # the second chunk's 2 transitions only
    assert (kl > 0).all()                                               # the weights left the reference
    (logp.mean() + kl.mean()).backward()
    assert all(p.grad is None for p in ctx.nets.reference.parameters())
    assert sum(p.grad.abs().sum() for p in ctx.nets.generator.parameters() if p.grad is not None) > 0


def test_generator_loss_is_zero_on_policy_and_its_gradient_reaches_only_the_generator():
    """On policy (ratio 1) with the reference still equal to the generator, the loss is ``-mean(A) + 0 KL = 0``
    (advantages are normalised within each group), while its gradient, the advantage-weighted score, is not."""
    ctx = _ctx("schedule.denoising_steps=[1000,500]")
    objective = build(ctx.cfg)
    loss, logs = objective.generator_loss(ctx)
    loss.backward()
    assert math.isfinite(logs["grpo_reward"]) and logs["grpo_kl"] == 0
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and logs["grpo_policy_loss"] == pytest.approx(0.0, abs=1e-6)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.nets.generator.parameters())
    assert all(p.grad is None for p in ctx.nets.reference.parameters())
    assert objective.networks == ("generator", "reference") and not objective.critic_turn(0)


def test_interleaved_with_extended_dmd_adds_its_networks_and_schedule():
    cfg = config.load(None, ["objective.name=grpo", "objective.grpo.extended_dmd_weight=0.5", "rollout.num_frames=6",
                             "rollout.long_frames=12", "causal.window=6", "objective.gen_update_every=3"])
    objective = build(cfg)
    assert objective.networks == ("generator", "reference", "critic", "teacher")
    assert [objective.generator_turn(s) for s in range(4)] == [True, False, False, True]
    assert objective.critic_turn(1)


@pytest.mark.parametrize("overrides, match", [
    (["schedule.denoising_steps=[1000]"], "stochastic sampler"),
    (["objective.grpo.group_size=1"], "group_size"),
    (["objective.grpo.reward=clip"], "objective.grpo.reward"),
])
def test_settings_that_cannot_train_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        build(config.load(None, ["objective.name=grpo", *overrides]))
