"""Progressive distillation's target is the teacher's two Euler steps (closed form on a known curved field) and its x0
form Salimans & Ho's; the loss vanishes only for the student that jumps there; the guided target is ``v_u + w (v_c -
v_u)``; the video plugins compute their pure losses on the generator and the (bidirectional or causal) teacher."""
from __future__ import annotations

import copy

import pytest
import torch

from vidforce import config
from vidforce.diffusion import x0_from_flow
from vidforce.models.causal import CausalWan
from vidforce.models.wan import WanModel
from vidforce.objectives import REGISTRY, Batch, Nets, StepContext, build
from vidforce.objectives import clips as CL
from vidforce.objectives import progressive as P
from vidforce.objectives.base import train_sigma
from vidforce.rollout import RolloutPlan
from vidforce.sampling import Denoiser, Sampler, euler_grid

B = 64


def teacher(x, s):
    """A curved field ``v(x, s) = -(1 + s) x + s^2 + sin(x)``: Euler steps of it do not compose into one."""
    s = s[:, None]
    return -(1 + s) * x + s ** 2 + torch.sin(x)


def draws(n_steps: int = 4, shift: float = 3.0):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(B, 3, generator=g, dtype=torch.float64), torch.randn(B, 3, generator=g, dtype=torch.float64)
    t, t_mid, t_end = (z.double() for z in P.student_times(B, n_steps, shift, g))
    return x0, eps, t, t_mid, t_end


def test_student_times_are_consecutive_student_grid_points_around_a_teacher_midpoint():
    n, shift = 4, 3.0
    student, fine = euler_grid(n, shift), euler_grid(2 * n, shift)
    t, t_mid, t_end = P.student_times(4000, n, shift, torch.Generator().manual_seed(1))
    pairs = {(round(a, 5), round(b, 5), round(c, 5)) for a, b, c in zip(t.tolist(), t_mid.tolist(), t_end.tolist())}
    expected = {(round(student[i], 5), round(fine[2 * i + 1], 5), round(student[i + 1], 5)) for i in range(n)}
    assert pairs == expected                                  # every student step is drawn, and only those
    assert (t_end < t_mid).all() and (t_mid < t).all()


def test_progressive_target_lands_on_the_teachers_two_euler_steps():
    x0, eps, t, t_mid, t_end = draws()
    x = (1 - t[:, None]) * x0 + t[:, None] * eps
    x1 = x + (t_mid - t)[:, None] * teacher(x, t)             # the teacher's two steps, written out
    x2 = x1 + (t_end - t_mid)[:, None] * teacher(x1, t_mid)
    v = P.progressive_target(teacher, x, t, t_mid, t_end)
    torch.testing.assert_close(x + (t_end - t)[:, None] * v, x2)      # one student Euler step lands there
    x0_tilde = (t[:, None] * x2 - t_end[:, None] * x) / (t - t_end)[:, None]    # Salimans & Ho's x-target
    torch.testing.assert_close(x0_from_flow(x, v, t[:, None]), x0_tilde)
    r = (t_end / t)[:, None]                                  # its DDIM step from x_t ends at x''
    torch.testing.assert_close(r * x + (1 - r) * x0_tilde, x2)
    one_step = x + (t_end - t)[:, None] * teacher(x, t)       # the curved field: one teacher step misses
    assert (one_step - x2).abs().max() > 1e-2


@pytest.mark.parametrize("bump", [0.0, 0.1])
def test_progressive_loss_vanishes_only_for_the_two_step_student(bump):
    x0, eps, t, t_mid, t_end = draws(n_steps=4, shift=1.0)    # uniform grid: t' = t - 1/8, t'' = t - 1/4

    def student(x, s):
        return P.progressive_target(teacher, x, s, s - 0.125, s - 0.25) + bump * torch.sin(3 * x)
    loss = P.progressive_loss(student, teacher, x0, eps, t, t_mid, t_end).item()
    assert (loss < 1e-20) if bump == 0 else (loss > 1e-3)
    assert P.progressive_loss(teacher, teacher, x0, eps, t, t_mid, t_end).item() > 1e-4   # the teacher itself


def fields():
    def cond(x, s):
        return torch.sin(x) - s[:, None] * x

    def uncond(x, s):
        return 0.5 * x + s[:, None]
    return cond, uncond


def test_guided_target_is_the_cfg_combination():
    cond, uncond = fields()
    x0, eps, t, _, _ = draws()
    x = (1 - t[:, None]) * x0 + t[:, None] * eps
    vc, vu = cond(x, t), uncond(x, t)
    torch.testing.assert_close(P.guided_target(cond, uncond, x, t, 3.0), vu + 3.0 * (vc - vu))
    w = torch.linspace(1.0, 8.0, B, dtype=torch.float64)      # one w per sample
    torch.testing.assert_close(P.guided_target(cond, uncond, x, t, w), vu + w[:, None] * (vc - vu))
    torch.testing.assert_close(P.guided_target(cond, uncond, x, t, w - 1, "cond"), vu + w[:, None] * (vc - vu))
    torch.testing.assert_close(P.guided_target(cond, uncond, x, t, 1.0), vc)


@pytest.mark.parametrize("bump", [0.0, 0.1])
def test_guided_loss_vanishes_only_at_the_guided_field(bump):
    cond, uncond = fields()
    x0, eps, t, _, _ = draws()
    w = 1 + 6 * torch.rand(B, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def student(x, s):                                        # a w-conditioned student closing over the same w
        return uncond(x, s) + w[:, None] * (cond(x, s) - uncond(x, s)) + bump * torch.cos(x)
    loss = P.guided_loss(student, cond, uncond, x0, eps, t, w).item()
    assert (loss < 1e-20) if bump == 0 else (loss > 1e-3)
    assert P.guided_loss(cond, cond, uncond, x0, eps, t, w).item() > 1e-2         # the unguided branch misses


def test_registry_and_config():
    assert REGISTRY["progressive"] is P.Progressive and REGISTRY["guided"] is P.Guided
    assert build(config.load(None, ["objective.name=progressive"])).networks == ("generator", "teacher")
    causal = config.load(None, ["objective.name=progressive", "objective.progressive.teacher=causal"])
    assert build(causal).networks == ("generator", "reference")
    with pytest.raises(ValueError, match="objective.progressive.teacher"):
        config.load(None, ["objective.progressive.teacher=ema"])
    with pytest.raises(ValueError, match="objective.progressive.student_steps"):
        config.load(None, ["objective.progressive.student_steps=0"])
    with pytest.raises(ValueError, match="objective.guidance.scale"):
        build(config.load(None, ["objective.name=guided", "objective.guidance.scale=1.0"]))


def _plugin_ctx(*overrides: str):
    """Tiny generator, its frozen copy (the reference) and a teacher; cond and uncond prompts differ; two clips of 8
    frames (cut to ``rollout.num_frames = 6``), rng seed 3."""
    cfg = config.load(None, ["rollout.num_frames=6", *overrides])
    torch.manual_seed(0)
    gen = CausalWan(config.arch_of(cfg.model), 3, attention="math")
    reference = copy.deepcopy(gen).requires_grad_(False)
    teacher = WanModel(config.arch_of(cfg.teacher), "math").requires_grad_(False)
    cond = torch.randn(2, gen.arch.text_len, gen.arch.text_dim)
    uncond = torch.randn(2, gen.arch.text_len, gen.arch.text_dim)
    clips = torch.randn(2, 8, gen.arch.in_dim, 4, 4)
    ctx = StepContext(Nets(gen, teacher=teacher, reference=reference), Batch(cond, uncond, latents=clips),
                      RolloutPlan(0, 6, 0), Sampler.from_config(cfg.schedule), cfg, torch.Generator().manual_seed(3),
                      (gen.arch.in_dim, 4, 4))
    return build(cfg), ctx


@pytest.mark.parametrize("which", ["bidirectional", "causal"])
def test_progressive_plugin_computes_its_pure_loss(which):
    """The plugin's loss is the pure loss on the replayed draws (noise, then ``student_times`` on the step's rng) with
    the generator's block-causal flow as student and the teacher (or the frozen starting generator, block-causal) as
    teacher; the gradient reaches the generator only."""
    objective, ctx = _plugin_ctx("objective.name=progressive", f"objective.progressive.teacher={which}",
                                 "objective.progressive.student_steps=2")
    loss, logs = objective.generator_loss(ctx)
    gen, text = ctx.nets.generator, ctx.batch.cond
    rng = torch.Generator().manual_seed(3)
    x0 = ctx.batch.latents[:, :6]
    eps = torch.randn(x0.shape, generator=rng)
    t, t_mid, t_end = P.student_times(2, 2, ctx.cfg.schedule.shift, rng)
    student = Denoiser(gen.forward_full, gen.text_kv(text)).flow
    frozen = ctx.nets.teacher if which == "bidirectional" else ctx.nets.reference.forward_full
    net = ctx.nets.teacher if which == "bidirectional" else ctx.nets.reference
    v_t = Denoiser(frozen, net.text_kv(text)).flow
    torch.testing.assert_close(loss, P.progressive_loss(student, v_t, x0, eps, t, t_mid, t_end))
    assert logs == {"progressive_loss": loss.item()} and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gen.parameters() if p.requires_grad)
    assert all(p.grad is None for p in (*ctx.nets.teacher.parameters(), *ctx.nets.reference.parameters()))


def test_causal_teacher_is_the_block_causal_starting_generator():
    """At the start the reference equals the generator, so ``clips.reference_flow`` is the generator's own block-causal
    flow -- which differs from the same weights run bidirectionally (the causal mask matters)."""
    _, ctx = _plugin_ctx("objective.name=progressive", "objective.progressive.teacher=causal")
    x, s = torch.randn(2, 6, ctx.nets.generator.arch.in_dim, 4, 4), torch.full((2,), 0.7)
    ref = CL.reference_flow(ctx)(x, s)
    torch.testing.assert_close(ref, CL.generator_flow(ctx)(x, s).detach())
    bidirectional = Denoiser(ctx.nets.reference, ctx.nets.reference.text_kv(ctx.batch.cond)).flow(x, s)
    assert (ref - bidirectional)[:, 3:].abs().max() > 1e-4


def test_guided_plugin_computes_its_pure_loss():
    """Replayed draws (noise, then one training sigma per sample); the target is the teacher's CFG at
    ``objective.guidance`` from its cond and uncond branches; the generator alone gets the gradient."""
    objective, ctx = _plugin_ctx("objective.name=guided", "objective.guidance.scale=3.0")
    loss, logs = objective.generator_loss(ctx)
    gen, teacher = ctx.nets.generator, ctx.nets.teacher
    _, replay = _plugin_ctx("objective.name=guided", "objective.guidance.scale=3.0")
    x0, eps = CL.data_clips(replay)
    sigma = train_sigma(replay, x0)
    student = Denoiser(gen.forward_full, gen.text_kv(ctx.batch.cond)).flow
    vc = Denoiser(teacher, teacher.text_kv(ctx.batch.cond)).flow
    vu = Denoiser(teacher, teacher.text_kv(ctx.batch.uncond)).flow
    torch.testing.assert_close(loss, P.guided_loss(student, vc, vu, x0, eps, sigma, 3.0))
    assert abs(P.guided_loss(student, vc, vu, x0, eps, sigma, 1.0).item() - loss.item()) > 1e-6   # guidance used
    assert logs == {"guided_loss": loss.item()}
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in gen.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_guided_plugin_with_a_guidance_input_draws_w_per_sample_and_feeds_it_to_the_generator():
    """``model.guidance_input``: after the sigma, one ``w`` per sample uniform in ``objective.guided.w_range`` on the
    step's rng; the loss is the pure loss at those w with the w-conditioned generator as student (given the same w),
    and the guidance embedding gets gradient (its last layer starts at zero)."""
    over = ("objective.name=guided", "model.guidance_input=true", "objective.guided.w_range=[2.0,5.0]")
    objective, ctx = _plugin_ctx(*over)
    gen, teacher = ctx.nets.generator, ctx.nets.teacher
    with torch.no_grad():                                     # a trained w embedding: the student's w matters
        gen.guidance_embedding[2].weight.normal_(generator=torch.Generator().manual_seed(1))
    loss, logs = objective.generator_loss(ctx)
    _, replay = _plugin_ctx(*over)
    x0, eps = CL.data_clips(replay)
    sigma = train_sigma(replay, x0)
    w = 2.0 + 3.0 * torch.rand(2, generator=replay.rng)
    assert ((w >= 2.0) & (w <= 5.0)).all() and w[0] != w[1]
    kv = gen.text_kv(ctx.batch.cond)
    vc = Denoiser(teacher, teacher.text_kv(ctx.batch.cond)).flow
    vu = Denoiser(teacher, teacher.text_kv(ctx.batch.uncond)).flow
    student = Denoiser(gen.forward_full, kv, w=w).flow
    torch.testing.assert_close(loss, P.guided_loss(student, vc, vu, x0, eps, sigma, w))
    assert abs(P.guided_loss(student, vc, vu, x0, eps, sigma, 3.0).item() - loss.item()) > 1e-6    # per-sample w
    fixed = Denoiser(gen.forward_full, kv, w=torch.full((2,), 3.0)).flow                          # student's w
    assert abs(P.guided_loss(fixed, vc, vu, x0, eps, sigma, w).item() - loss.item()) > 1e-6
    assert logs == {"guided_loss": loss.item()}
    loss.backward()
    assert gen.guidance_embedding[2].weight.grad.abs().max() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_guided_w_range_is_checked_and_a_w_input_allows_an_unguided_sampling_scale():
    with pytest.raises(ValueError, match="objective.guided.w_range"):
        config.load(None, ["objective.guided.w_range=[4.0,1.0]"])
    with pytest.raises(ValueError, match="objective.guided.w_range"):
        config.load(None, ["objective.guided.w_range=[1.0]"])
    assert build(config.load(None, ["objective.name=guided", "model.guidance_input=true",
                                    "objective.guidance.scale=1.0"])).w_input
