"""Flow-map losses vanish at the oracle (the exact Gaussian-mixture field) and not when perturbed; MeanFlow's JVP
target against finite differences; the semigroup loss on an exactly composing linear flow; X(x, t, t) = x; the
Lagrangian and Eulerian video plugins compute their pure losses on the generator and the teacher."""
from __future__ import annotations

import pytest
import torch

from vidforce import config
from vidforce.diffusion import NUM_TRAIN_TIMESTEPS, add_noise
from vidforce.models.causal import CausalWan
from vidforce.models.wan import WanModel
from vidforce.objectives import REGISTRY, Batch, Nets, StepContext, build
from vidforce.objectives import flowmap as FM
from vidforce.rollout import RolloutPlan
from vidforce.sampling import Denoiser, Sampler
from vidforce.toy.gmm import GMM
from vidforce.toy.nets import MLPDenoiser, OracleFlowMap
from vidforce.toy.train import flow2_of

B = 32


def setup(bump: float = 0.0):
    gmm = GMM.ring()
    g = torch.Generator().manual_seed(0)
    x0, eps = gmm.sample(B, g), torch.randn(B, 2, generator=g, dtype=torch.float64)
    t = 0.1 + 0.9 * torch.rand(B, generator=g, dtype=torch.float64)
    s = t * (0.9 * torch.rand(B, generator=g, dtype=torch.float64))      # t - s >= 0.1 t
    u = s + (t - s) * torch.rand(B, generator=g, dtype=torch.float64)
    return gmm, flow2_of(OracleFlowMap(gmm, steps=48, bump=bump)), x0, eps, t, u, s


def exact(gmm):
    return lambda x, s: gmm.velocity(x, s)


@pytest.mark.parametrize("bump", [0.0, 0.5])
def test_meanflow_vanishes_only_at_the_oracle_average_velocity(bump):
    gmm, net, x0, eps, t, _, r = setup(bump)
    r = torch.where(torch.arange(B) < B // 4, t, r)           # a quarter with r = t (flow matching)
    v = gmm.velocity(add_noise(x0, eps, t), t)             # the marginal velocity: the identity is exact
    loss = FM.meanflow_loss(net, net, x0, eps, t, r, v=v).item()
    assert (loss < 1e-5) if bump == 0 else (loss > 1e-2)


@pytest.mark.parametrize("bump", [0.0, 0.5])
def test_flowmap_conditions_vanish_only_at_the_oracle(bump):
    gmm, net, x0, eps, t, u, s = setup(bump)
    for loss in (FM.lagrangian_loss(net, net, exact(gmm), x0, eps, t, s),
                 FM.eulerian_loss(net, net, exact(gmm), x0, eps, t, s),
                 FM.semigroup_loss(net, net, exact(gmm), x0, eps, t, u, s)):
        assert (loss.item() < 1e-5) if bump == 0 else (loss.item() > 1e-3)


@pytest.mark.parametrize("bump", [0.0, 0.5])
def test_shortcut_vanishes_only_at_the_oracle(bump):
    gmm, net, x0, eps, _, _, _ = setup(bump)
    n_c = B // 2
    t, d = FM.shortcut_times(B, n_c, 4, torch.Generator().manual_seed(1))
    t, d = t.double(), d.double()
    assert (d[: B - n_c] == 0).all() and (t - 2 * d >= 0).all()
    # the empirical half regresses on eps - x0 (not zero even at the oracle): check the consistency half alone
    loss = FM.shortcut_loss(net, net, x0[B - n_c:], eps[B - n_c:], t[B - n_c:], d[B - n_c:], n_c).item()
    assert (loss < 1e-5) if bump == 0 else (loss > 1e-3)


def test_meanflow_jvp_target_matches_finite_differences():
    torch.manual_seed(0)
    net = flow2_of(MLPDenoiser(2, 32, 2, two_times=True).double())
    g = torch.Generator().manual_seed(3)
    z, v = torch.randn(16, 2, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)
    t = 0.3 + 0.6 * torch.rand(16, generator=g, dtype=torch.float64)
    r = t * torch.rand(16, generator=g, dtype=torch.float64)
    u, u_tgt = FM.meanflow_target(net, z, r, t, v)
    h = 1e-7                                                  # float64 central differences
    du = (net(z + h * v, t + h, r) - net(z - h * v, t - h, r)) / (2 * h)
    torch.testing.assert_close(u, net(z, t, r))
    torch.testing.assert_close(u_tgt, v - (t - r)[:, None] * du, rtol=1e-5, atol=1e-6)


class LinearFlowMap(torch.nn.Module):
    """The exact map of ``dx/ds = a x``: ``X(x, t, s) = exp(a (s - t)) x``, as the average flow ``w``."""

    def __init__(self, a: float, bump: float = 0.0):
        super().__init__()
        self.a, self.bump = a, bump

    def forward(self, x, t, text_kv=None, t_to=None):
        t, s = t / NUM_TRAIN_TIMESTEPS, t_to / NUM_TRAIN_TIMESTEPS
        gap = (s - t)[:, None]
        small = gap.abs() < 1e-9
        w = torch.where(small, self.a * x, (torch.exp(self.a * gap) - 1) / torch.where(small, 1.0, gap) * x)
        return w + self.bump * (t - s)[:, None] * x.square()


@pytest.mark.parametrize("bump", [0.0, 0.3])
def test_exactly_composing_linear_flow(bump):
    a = -0.7
    net, teacher = flow2_of(LinearFlowMap(a, bump)), (lambda x, s: a * x)
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(B, 3, generator=g, dtype=torch.float64), torch.randn(B, 3, generator=g, dtype=torch.float64)
    t, u, s = (z.double() for z in FM.map_times(B, g))
    for loss in (FM.semigroup_loss(net, net, teacher, x0, eps, t, u, s),
                 FM.lagrangian_loss(net, net, teacher, x0, eps, t, s),
                 FM.eulerian_loss(net, net, teacher, x0, eps, t, s)):
        assert (loss.item() < 1e-12) if bump == 0 else (loss.item() > 1e-4)


def test_identity_on_the_diagonal_and_sampler():
    torch.manual_seed(0)
    net = flow2_of(MLPDenoiser(2, 32, 2, two_times=True))
    x, t = torch.randn(8, 2), torch.rand(8)
    assert torch.equal(FM.apply_map(net, x, t, t), x)
    y = FM.map_sample(net, x, (1.0, 0.5, 0.0))
    step = FM.apply_map(net, x, torch.ones(8), torch.full((8,), 0.5))
    torch.testing.assert_close(y, FM.apply_map(net, step, torch.full((8,), 0.5), torch.zeros(8)))
    tt, r = FM.meanflow_times(1000, 0.75, torch.Generator().manual_seed(0))
    assert (r <= tt).all() and 0.7 < (r == tt).float().mean() < 0.8


def test_registry_names_the_differential_conditions():
    assert REGISTRY["flowmap_lagrangian"] is FM.Lagrangian and REGISTRY["flowmap_eulerian"] is FM.Eulerian


def _plugin_ctx(name: str):
    """Tiny generator (second-time embedding perturbed off zero, so the map depends on ``t_to``) and teacher, two
    clips of 8 frames (cut to ``rollout.num_frames = 6``), rng seed 3."""
    cfg = config.load(None, [f"objective.name={name}", "model.time_to=true", "rollout.num_frames=6"])
    torch.manual_seed(0)
    gen = CausalWan(config.arch_of(cfg.model), 3, attention="math")
    torch.nn.init.normal_(gen.time_to_embedding[2].weight, std=0.1)
    teacher = WanModel(config.arch_of(cfg.teacher), "math").requires_grad_(False)
    text = torch.randn(2, gen.arch.text_len, gen.arch.text_dim)
    clips = torch.randn(2, 8, gen.arch.in_dim, 4, 4)
    ctx = StepContext(Nets(gen, teacher=teacher), Batch(text, text, latents=clips), RolloutPlan(0, 6, 0),
                      Sampler.from_config(cfg.schedule), cfg, torch.Generator().manual_seed(3),
                      (gen.arch.in_dim, 4, 4))
    return build(cfg), ctx


@pytest.mark.parametrize("name, pure", [("flowmap_lagrangian", FM.lagrangian_loss),
                                        ("flowmap_eulerian", FM.eulerian_loss)])
def test_differential_condition_plugins_compute_their_pure_loss(name, pure):
    """The plugin's loss is the pure loss on the replayed draws (noise, then ``map_times`` on the step's rng) with
    the generator's block-causal flow as student and target and the teacher's conditional flow; the gradient
    reaches the generator's second time and nothing of the teacher."""
    objective, ctx = _plugin_ctx(name)
    loss, logs = objective.generator_loss(ctx)
    gen, teacher, text = ctx.nets.generator, ctx.nets.teacher, ctx.batch.cond
    rng = torch.Generator().manual_seed(3)
    x0 = ctx.batch.latents[:, :6]
    eps = torch.randn(x0.shape, generator=rng)
    t, _, s = FM.map_times(2, rng)
    student, v = Denoiser(gen.forward_full, gen.text_kv(text)).flow, Denoiser(teacher, teacher.text_kv(text)).flow
    torch.testing.assert_close(loss, pure(student, student, v, x0, eps, t, s))
    assert logs == {name.removeprefix("flowmap_") + "_loss": loss.item()}
    other = FM.eulerian_loss if pure is FM.lagrangian_loss else FM.lagrangian_loss
    assert abs(other(student, student, v, x0, eps, t, s).item() - loss.item()) > 1e-6   # the check tells them apart
    loss.backward()
    grad = gen.time_to_embedding[2].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0
    assert all(p.grad is None for p in teacher.parameters())
