"""DMD2 / ADD / LADD: hinge and R1 losses at known logits, ADD's distillation loss, the multi-layer discriminator,
and backward simulation (step k is fed the student's own step k-1 output, checked by hooks)."""
import pytest
import torch

from vidforce import config
from vidforce.diffusion import add_noise
from vidforce.models.causal import CausalWan
from vidforce.models.wan import WanModel
from vidforce.objectives import Batch, Nets, StepContext, build
from vidforce.objectives.add import distillation_loss
from vidforce.objectives.discriminator import FeatureDiscriminator, dit_discriminator, pool
from vidforce.objectives.dmd2 import backward_simulation
from vidforce.objectives.gan import finite_difference_penalty, hinge_discriminator_loss, hinge_generator_loss
from vidforce.objectives.ladd import logit_normal_sigma
from vidforce.rollout import RolloutPlan
from vidforce.sampling import Guidance, Sampler, euler_grid
from vidforce.toy.nets import MLPDenoiser
from tests.models.helpers import tiny_arch


def test_hinge_losses_at_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0], dtype=torch.float64)
    fake = torch.tensor([-3.0, 0.0, 1.5], dtype=torch.float64)
    # relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 2.5]
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(2.5 / 3 + 3.5 / 3, rel=1e-12)
    assert hinge_generator_loss(fake).item() == pytest.approx(-(-3.0 + 0.0 + 1.5) / 3, rel=1e-12)
    # confident and right: no discriminator loss; the generator's side stays linear (no saturation)
    assert hinge_discriminator_loss(torch.full((4,), 5.0), torch.full((4,), -5.0)).item() == 0.0
    assert hinge_generator_loss(torch.full((2,), -7.0)).item() == 7.0


def test_hinge_losses_average_over_heads():
    """Per-head logits ``[B, H]``: the mean over samples and heads (the paper's sum over heads / H)."""
    real = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    fake = torch.tensor([[0.0, -2.0], [1.0, 0.0]], dtype=torch.float64)
    # relu(1 - real) = [[0, 1], [1, 1]] -> 3/4; relu(1 + fake) = [[1, 0], [2, 1]] -> 4/4
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.75 + 1.0, rel=1e-12)


def test_r1_penalty_at_known_logits():
    """The finite-difference R1 of fixed logits: ``mean((D(x + s n) - D(x))^2) / s^2``."""
    logits = torch.tensor([[0.5, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    perturbed = logits + torch.tensor([[0.01, -0.02], [0.0, 0.03]], dtype=torch.float64)
    expected = (0.01 ** 2 + 0.02 ** 2 + 0.0 + 0.03 ** 2) / 4 / 0.01 ** 2
    assert finite_difference_penalty(logits, perturbed, 0.01).item() == pytest.approx(expected, rel=1e-9)


def test_add_distillation_loss_closed_form_and_gradient():
    x = torch.tensor([[[1.0, 2.0]], [[0.0, -1.0]]], requires_grad=True)        # [B=2, T=1, 2]
    target = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]]])
    sigma = torch.tensor([[0.25], [0.5]])
    # weights 1 - s = [0.75, 0.5]: (0.75 (1 + 4) + 0.5 (1 + 4)) / 4 elements
    loss = distillation_loss(x, target, sigma)
    assert loss.item() == pytest.approx((0.75 * 5 + 0.5 * 5) / 4)
    loss.backward()
    w = torch.tensor([0.75, 0.5])[:, None, None]
    torch.testing.assert_close(x.grad, 2 * w * (x.detach() - target) / 4)


def test_logit_normal_sigma_is_the_sigmoid_of_a_normal():
    s = logit_normal_sigma(200_000, 1.0, 1.0, torch.Generator().manual_seed(0))
    assert 0 < s.min() and s.max() < 1
    logit = torch.log(s / (1 - s))
    assert logit.mean().item() == pytest.approx(1.0, abs=0.01) and logit.std().item() == pytest.approx(1.0, abs=0.01)


def test_dit_discriminator_heads_read_the_named_blocks():
    """A head after block n sees the tokens ``features_at=n`` returns; the frozen backbone gets no gradient, the
    heads and the input do."""
    torch.manual_seed(0)
    model = WanModel(tiny_arch(), "math")
    disc = dit_discriminator(model, [2, 1], frozen=True, field_name="objective.add.feature_layers")
    x = torch.randn(2, 3, model.arch.in_dim, 4, 4, requires_grad=True)
    t, kv = torch.full((2, 3), 300.0), model.text_kv(torch.randn(2, 4, model.arch.text_dim))
    logits = disc.logits(x, t, kv)
    assert logits.shape == (2, 2)
    for h, n in enumerate([1, 2]):
        with torch.no_grad():
            feats = model(x, t, text_kv=kv, features_at=n)
        torch.testing.assert_close(logits[:, h].detach(), disc.heads[h](pool(feats)).squeeze(-1))
    logits.sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in disc.heads.parameters()) and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="objective.add.feature_layers"):
        dit_discriminator(model, [3], True, "objective.add.feature_layers")


def test_feature_discriminator_needs_a_tap():
    with pytest.raises(ValueError, match="tapped layer"):
        FeatureDiscriminator(MLPDenoiser(), [], 128, frozen=True)


def _record_calls(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(input x, timesteps t, output flow) of every forward of ``model``."""
    calls = []
    model.register_forward_hook(lambda _m, args, out: calls.append((args[0].detach(), args[1].detach(),
                                                                    out.detach())))
    return calls


def test_backward_simulation_feeds_each_step_the_previous_steps_output():
    torch.manual_seed(0)
    net = MLPDenoiser()
    calls = _record_calls(net)
    sigmas = (1.0, 0.75, 0.5, 0.25)
    noise = torch.randn(16, 2)
    x0_of = lambda x, s: x - s * net(x, torch.full((x.shape[0],), 1000 * s))  # noqa: E731
    x3 = backward_simulation(x0_of, noise, sigmas, 3, torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    assert len(calls) == 3 and torch.equal(calls[0][0], noise)
    for i in range(1, 4):
        prev_x, _, prev_v = calls[i - 1]
        x0 = prev_x - sigmas[i - 1] * prev_v
        expected = add_noise(x0, torch.randn(x0.shape, generator=replay), torch.tensor(sigmas[i]))
        torch.testing.assert_close(calls[i][0] if i < 3 else x3, expected)
    assert backward_simulation(x0_of, noise, sigmas, 0) is noise


def _video_ctx(name: str, exit_index: int, *extra: str):
    cfg = config.load(None, [f"objective.name={name}", "rollout.num_frames=6", *extra])
    arch = config.arch_of(cfg.model)
    torch.manual_seed(0)
    gen = CausalWan(arch, 3, attention="math")
    teacher = WanModel(arch, "math").requires_grad_(False)
    objective = build(cfg)
    critic = objective.critic_module(WanModel(arch, "math"))
    text = torch.randn(2, arch.text_len, arch.text_dim)
    clips = torch.randn(2, 6, arch.in_dim, 4, 4)
    ctx = StepContext(Nets(gen, critic, teacher), Batch(text, text, latents=clips), RolloutPlan(exit_index, 6, 0),
                      Sampler.from_config(cfg.schedule), cfg, torch.Generator().manual_seed(3), (arch.in_dim, 4, 4))
    return objective, ctx


@pytest.mark.parametrize("exit_index", [1, 3])
def test_dmd2_backward_simulation_feeds_step_k_the_students_step_k_minus_1(exit_index):
    """The causal student (the Self Forcing rollout): per chunk, step i's input is step i-1's x0 re-noised to
    s_i with the rollout's own noise stream (replayed), and the exit step's x0 is the window's output."""
    objective, ctx = _video_ctx("dmd2", exit_index)
    calls = _record_calls(ctx.nets.generator)
    replay = torch.Generator().manual_seed(3)
    window = objective.student(ctx, grad=True)
    noise = torch.randn(2, 6, *ctx.latent_shape, generator=replay)
    sig = ctx.sampler.sigmas
    per_chunk = exit_index + 2                                   # steps 0..k, then the refresh
    assert len(calls) == 2 * per_chunk
    for c in range(2):
        steps = calls[c * per_chunk:(c + 1) * per_chunk - 1]
        torch.testing.assert_close(steps[0][0], noise[:, 3 * c:3 * c + 3])
        for i in range(1, exit_index + 1):
            prev_x, _, prev_v = steps[i - 1]
            x0 = prev_x - sig[i - 1] * prev_v
            expected = add_noise(x0, torch.randn(x0.shape, generator=replay), torch.tensor(sig[i]))
            torch.testing.assert_close(steps[i][0], expected)
        last_x, _, last_v = steps[exit_index]
        torch.testing.assert_close(window[:, 3 * c:3 * c + 3].detach(), last_x - sig[exit_index] * last_v)
    assert window.requires_grad


def test_without_backward_simulation_the_exit_step_denoises_noised_clips():
    objective, ctx = _video_ctx("dmd2", 2, "objective.dmd2.backward_simulation=false")
    calls = _record_calls(ctx.nets.generator)
    replay = torch.Generator().manual_seed(3)
    objective.student(ctx, grad=True)
    s = ctx.sampler.sigmas[2]
    expected = add_noise(ctx.batch.latents, torch.randn(ctx.batch.latents.shape, generator=replay), torch.tensor(s))
    assert len(calls) == 4                                        # per chunk: the exit step, the refresh
    for c in range(2):
        x, t, _ = calls[2 * c]
        torch.testing.assert_close(x, expected[:, 3 * c:3 * c + 3])
        assert torch.allclose(t, torch.full_like(t, 1000 * s))


@pytest.mark.parametrize("name", ["dmd2", "add", "ladd"])
def test_losses_are_finite_and_train_their_networks(name):
    """Generator losses reach the generator only; critic losses reach the discriminator heads (ADD, LADD: not the
    frozen backbone)."""
    objective, ctx = _video_ctx(name, 1)
    loss, _ = objective.generator_loss(ctx)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in ctx.nets.generator.parameters())
    assert all(p.grad is None for p in ctx.nets.critic.parameters())
    objective, ctx = _video_ctx(name, 1)                          # a fresh turn (the trainer's)
    loss, _ = objective.critic_loss(ctx)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in ctx.nets.generator.parameters())
    critic = ctx.nets.critic
    trained = critic.heads if name != "dmd2" else critic
    assert all(p.grad is not None for p in trained.parameters())
    if name != "dmd2":
        assert all(p.grad is None for p in critic.backbone.parameters())


def test_ladd_synthetic_clips_come_from_the_teachers_euler_ode():
    """Two guided Euler steps of the teacher (the critic's backbone) from the step's noise (replayed): each step
    calls it with the conditional then the unconditional text at ``1000 s`` and moves by ``(s' - s)`` times the
    guided flow; the clips are drawn once per step context."""
    objective, ctx = _video_ctx("ladd", 0, "objective.ladd.teacher_steps=2")
    assert objective.data == "prompts"
    ctx.batch.uncond = torch.randn(ctx.batch.cond.shape, generator=torch.Generator().manual_seed(9))  # guidance shows
    calls = _record_calls(ctx.nets.critic)
    clips = objective.data_clips(ctx)
    assert clips.shape == (2, 6, *ctx.latent_shape) and objective.data_clips(ctx) is clips      # once per step
    grid = euler_grid(2, ctx.cfg.schedule.shift)
    guidance = Guidance.from_config(ctx.cfg.objective.guidance)
    assert not guidance.unguided and len(calls) == 4 and 0 < grid[1] < 1
    x = torch.randn(2, 6, *ctx.latent_shape, generator=torch.Generator().manual_seed(3))
    for k in range(2):
        (x_c, t_c, v_c), (x_u, t_u, v_u) = calls[2 * k:2 * k + 2]
        assert torch.equal(x_c, x) and torch.equal(x_u, x) and not torch.equal(v_c, v_u)
        assert torch.equal(t_c, t_u) and torch.allclose(t_c, torch.full_like(t_c, 1000 * grid[k]))
        x = x + (grid[k + 1] - grid[k]) * guidance.combine(v_c, v_u)
    torch.testing.assert_close(clips, x, rtol=0, atol=0)


@pytest.mark.parametrize("overrides, match", [
    (["objective.name=dmd2", "objective.dmd2.backward_simulation=false", "rollout.long_frames=42"],
     "rollout.long_frames=0"),
    (["objective.name=add", "rollout.long_frames=42"], "rollout.long_frames=0"),
    (["objective.name=ladd", "critic.preset=tiny"], "critic.preset=teacher"),
])
def test_settings_that_cannot_train_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        build(config.load(None, overrides))


def test_feature_layers_count_from_one():
    with pytest.raises(ValueError, match="objective.ladd.feature_layers"):
        config.load(None, ["objective.ladd.feature_layers=[0]"])



def test_dmd2_with_backward_simulation_is_dmd_gan():
    """The causal student's backward simulation is the Self Forcing rollout: dmd2's losses are dmd_gan's, bit for
    bit, on the same networks and noise."""
    losses = []
    for name in ("dmd2", "dmd_gan"):
        objective, ctx = _video_ctx(name, 2)
        g_loss, _ = objective.generator_loss(ctx)
        objective, ctx = _video_ctx(name, 2)
        c_loss, _ = objective.critic_loss(ctx)
        losses.append((g_loss.item(), c_loss.item()))
    assert losses[0] == losses[1]
