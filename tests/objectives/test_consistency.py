"""Consistency losses vanish at the oracle flow map and not at a perturbed one; schedules and conversions."""
from __future__ import annotations

import math

import pytest
import torch

from vidforce.objectives import consistency as C
from vidforce.sampling import Guidance
from vidforce.toy.gmm import GMM
from vidforce.toy.nets import OracleFlowMap
from vidforce.toy.train import flow2_of, flow_of

B = 64


def setup(std: float = 0.2, modes: int = 8, bump: float = 0.0):
    gmm = GMM.ring(modes=modes, std=std)
    g = torch.Generator().manual_seed(0)
    x0, eps = gmm.sample(B, g), torch.randn(B, 2, generator=g, dtype=torch.float64)
    return gmm, OracleFlowMap(gmm, steps=48, bump=bump), x0, eps


def exact(gmm):
    return lambda x, s: gmm.velocity(x, s)


def test_boundary_and_curriculum():
    c_skip, c_out = C.c_skip_out(torch.tensor([0.0, 0.5]))
    assert c_skip.tolist() == [1.0, 1.0] and c_out.tolist() == [0.0, -0.5]
    assert C.karras_grid(4, 2.0).tolist() == [0.0, 1 / 16, 0.25, 9 / 16, 1.0]
    # iCT: K = 1000, s0 = 10, s1 = 1280 -> K' = floor(1000 / 8) = 125
    assert [C.curriculum_n(k, 1000, 10, 1280) for k in (0, 124, 125, 250, 874, 875, 999)] == \
        [10, 10, 20, 40, 640, 1280, 1280]


@pytest.mark.parametrize("bump", [0.0, 0.5])
def test_cd_and_lcm_vanish_only_at_the_oracle(bump):
    gmm, net, x0, eps = setup(bump=bump)
    s, s_prev = torch.full((B,), 0.5, dtype=torch.float64), torch.full((B,), 0.45, dtype=torch.float64)
    f = flow_of(net)
    cd = C.cd_loss(f, f, exact(gmm), x0, eps, s, s_prev, "heun").item()
    lcm = C.lcm_loss(f, f, exact(gmm), None, Guidance(), x0, eps, s, s_prev).item()
    guided = C.lcm_loss(f, f, exact(gmm), exact(gmm), Guidance(3.0), x0, eps, s, s_prev).item()
    if bump == 0.0:
        assert cd < 1e-4 and lcm < 1e-4 and guided < 1e-4, (cd, lcm, guided)   # equal branches: guidance is a no-op
    else:
        assert cd > 1e-2 and lcm > 1e-3, (cd, lcm)


@pytest.mark.parametrize("bump", [0.0, 0.5])
def test_ct_vanishes_at_the_oracle_of_a_point_mass(bump):
    """With one data point the one-sample estimator eps - x0 is the exact velocity: CT is then exact (up to the
    oracle's last RK4 stage at s = 0, where a point mass's field is singular: ~4e-5)."""
    gmm, net, x0, eps = setup(std=0.0, modes=1, bump=bump)
    s, s_prev = torch.full((B,), 0.6, dtype=torch.float64), torch.full((B,), 0.4, dtype=torch.float64)
    loss = C.ct_loss(flow_of(net), flow_of(net), x0, eps, s, s_prev).item()
    assert (loss < 1e-4) if bump == 0.0 else (loss > 1e-2), loss


@pytest.mark.parametrize("bump", [0.0, 0.5])
def test_scm_tangent_vanishes_at_the_oracle(bump):
    gmm, net, x0, eps = setup(bump=bump)
    t = torch.linspace(0.2, 1.3, B, dtype=torch.float64)
    x = torch.cos(t)[:, None] * x0 + torch.sin(t)[:, None] * eps
    dxdt = C.trig_flow_of_fm(exact(gmm))(x, t)
    trig = C.trig_flow_of_fm(flow_of(net))
    f_minus, g = C.scm_tangent(trig, dxdt, x, t, r=1.0)
    loss = C.scm_loss(trig, f_minus, g, x, t).item()
    if bump == 0.0:
        assert g.abs().max() < 1e-3 and loss < 1e-5, (g.abs().max(), loss)
    else:
        assert loss > 1e-2, loss


@pytest.mark.parametrize("bump", [0.0, 0.5])
def test_ctm_matching_vanishes_at_the_oracle(bump):
    gmm, net, x0, eps = setup(bump=bump)
    g = torch.Generator().manual_seed(1)
    t = 0.2 + 0.8 * torch.rand(B, generator=g, dtype=torch.float64)
    s = t * torch.rand(B, generator=g, dtype=torch.float64)
    u = s + (t - s) * torch.rand(B, generator=g, dtype=torch.float64)
    f2 = flow2_of(net)
    match, _ = C.ctm_loss(f2, f2, f2, exact(gmm), x0, eps, t, u, s, teacher_steps=8, dsm_weight=0.0)
    assert (match.item() < 1e-5) if bump == 0.0 else (match.item() > 1e-3), match.item()


@pytest.mark.parametrize("sd", [1.0, 0.5])
def test_scm_tangent_is_meanflow_at_r_zero(sd):
    """003: sCM is MeanFlow at r = 0. In flow-matching coordinates (``x_s = x_t / (cos t + sd sin t)``,
    ``s = sd sin t / (cos t + sd sin t)``, ``ds/dt = sd / (cos t + sd sin t)^2``) the sCM tangent with r = 1 is
    ``g = cos t df/dt = sd cos t / (cos t + sd sin t)^2 (u_tgt - u)``, ``u_tgt = v - s du/ds`` (MeanFlow's target
    at r = 0 along the teacher's flow ``v``): a check of every cos / sin factor and of the tangent's sign."""
    from vidforce.objectives.flowmap import meanflow_target
    from vidforce.toy.nets import MLPDenoiser
    torch.manual_seed(0)
    gmm, flow = GMM.ring(), flow_of(MLPDenoiser(2, 32, 2).double())
    g = torch.Generator().manual_seed(0)
    x0, eps = gmm.sample(B, g), torch.randn(B, 2, generator=g, dtype=torch.float64)
    t = torch.linspace(0.1, 1.45, B, dtype=torch.float64)
    x = torch.cos(t)[:, None] * x0 + sd * torch.sin(t)[:, None] * eps
    teacher = exact(gmm)
    dxdt = sd * C.trig_flow_of_fm(teacher, sd)(x, t)
    _, tangent = C.scm_tangent(C.trig_flow_of_fm(flow, sd), dxdt, x, t, 1.0, sd)
    c, s = C.trig_scale(t, sd), C.fm_sigma_of_trig(t, sd)
    x_s = x / c[:, None]
    u, u_tgt = meanflow_target(lambda z, a, b: flow(z, a), x_s, torch.zeros_like(s), s, teacher(x_s, s))
    torch.testing.assert_close(tangent, (sd * torch.cos(t) / c ** 2)[:, None] * (u_tgt - u), rtol=1e-9, atol=1e-10)
    assert tangent.abs().max() > 0.1                        # an untrained flow is far from consistent


@pytest.mark.parametrize("bump", [0.0, 0.5])
def test_ctm_dsm_is_the_data_space_denoising_loss(bump):
    """Data at one point m: paths are straight, the exact flow map's average flow is ``(x - m) / t`` for every end
    time, and ``eps - x0`` is the exact flow. So the DSM term vanishes at the oracle, and with the bump
    ``b t sin(3x)`` on the flow it is the data-space error ``E[(t * b t sin(3 x_t))^2]`` (Kim et al.'s
    ``|| x0 - g(x_t, t, t) ||^2``, not the velocity-space ``|| v - (eps - x0) ||^2``)."""
    m = torch.tensor([[0.7, -0.4]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0, eps = m.expand(B, 2), torch.randn(B, 2, generator=g, dtype=torch.float64)
    t = torch.linspace(0.2, 1.0, B, dtype=torch.float64)

    def f2(x, a, b):
        return (x - m) / a[:, None] + bump * a[:, None] * torch.sin(3 * x)
    _, dsm = C.ctm_loss(f2, f2, f2, lambda x, a: f2(x, a, a), x0, eps, t, t, t, teacher_steps=1, dsm_weight=1.0)
    x = (1 - t)[:, None] * x0 + t[:, None] * eps
    expected = ((t ** 2)[:, None] * bump * torch.sin(3 * x)).square().mean()
    assert dsm.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-12)   # the loss is summed in fp32


def test_trigflow_round_trips_to_flow_matching():
    t = torch.linspace(0.0, math.pi / 2, 11, dtype=torch.float64)
    for sd in (1.0, 0.5):
        s = C.fm_sigma_of_trig(t, sd)
        assert torch.allclose(C.trig_of_fm_sigma(s, sd), t, atol=1e-12)
        x0, z = torch.randn(11, 3, dtype=torch.float64), torch.randn(11, 3, dtype=torch.float64)
        x_trig = torch.cos(t)[:, None] * x0 + torch.sin(t)[:, None] * sd * z
        x_fm = (1 - s)[:, None] * x0 + s[:, None] * z
        assert torch.allclose(x_trig, C.trig_scale(t, sd)[:, None] * x_fm, atol=1e-12)
        # the exact path's FM flow z - x0 maps to TrigFlow's dx/dt / sd and its consistency function is x0
        trig = C.trig_flow_of_fm(lambda x, s_: z - x0, sd)(x_trig, t)
        assert torch.allclose(sd * trig, -torch.sin(t)[:, None] * x0 + torch.cos(t)[:, None] * sd * z, atol=1e-12)
        assert torch.allclose(torch.cos(t)[:, None] * x_trig - torch.sin(t)[:, None] * sd * trig, x0, atol=1e-12)


def test_tangent_stabilisers_and_warmup():
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = C.normalize_tangent(g, 0.1)
    assert torch.allclose(out[0].norm(), torch.tensor(5 / 5.1)) and out[1].abs().sum() == 0
    assert [C.tangent_warmup(k, 500) for k in (0, 250, 500, 1000)] == [0.0, 0.5, 1.0, 1.0]
    assert C.tangent_warmup(0, 0) == 1.0
    with pytest.raises(ValueError, match="objective.scm.tangent"):
        C.scm_loss(lambda x, t: x, g, g, g, torch.zeros(2), "bogus")


def test_gamma_sampling_reaches_its_noise_level():
    s_next = 0.4
    for gamma in (0.0, 0.5, 1.0):
        mid = C.gamma_sigma(torch.tensor(s_next), gamma)
        a = (1 - s_next) / (1 - mid)
        noise_var = (a * mid) ** 2 + (gamma * s_next) ** 2
        assert math.isclose(noise_var.item(), s_next ** 2, rel_tol=1e-6)
    assert C.gamma_sigma(torch.tensor(s_next), 0.0).item() == pytest.approx(s_next)
