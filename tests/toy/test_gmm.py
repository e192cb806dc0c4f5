"""The harness's ground truth: closed-form velocity, oracle flow map, the MLP contract, the metrics."""
from __future__ import annotations

import math

import pytest
import torch

from vidforce.sampling import Denoiser
from vidforce.toy import metrics
from vidforce.toy.gmm import GMM
from vidforce.toy.nets import MLPDenoiser, OracleFlowMap


def log_density(gmm: GMM, x, s):
    """``log p_s(x)`` of the mixture's marginal ``sum_k pi_k N((1 - s) m_k, v_k I)``."""
    v = (1 - s) ** 2 * gmm.stds.square() + s ** 2
    d = x[:, None, :] - (1 - s) * gmm.means[None]
    logp = gmm.weights.log() - 0.5 * d.square().sum(-1) / v - 0.5 * gmm.dim * (v * 2 * math.pi).log()
    return torch.logsumexp(logp, -1)


@pytest.mark.parametrize("s", [0.2, 0.5, 0.9])
def test_velocity_matches_a_monte_carlo_posterior_mean(s):
    """Self-normalised importance sampling of E[eps - x0 | x_s = x] over data draws x0 ~ p (200k)."""
    gmm, g = GMM.ring(), torch.Generator().manual_seed(0)
    x = gmm.sample(4, g) * (1 - s) + s * torch.randn(4, 2, generator=g, dtype=torch.float64)
    x0 = gmm.sample(200_000, g)
    for xi, ui in zip(x, gmm.velocity(x, torch.full((4,), s))):
        logw = -0.5 * (xi - (1 - s) * x0).square().sum(-1) / s ** 2
        w = torch.softmax(logw, 0)[:, None]
        mc = (w * ((xi - (1 - s) * x0) / s - x0)).sum(0)
        assert torch.allclose(ui, mc, atol=0.03), (s, ui, mc)


@pytest.mark.parametrize("dim", [2, 5])
def test_eps_prediction_is_the_scaled_score(dim):
    """Tweedie: E[eps | x_s] = -s grad log p_s(x) (autograd of the mixture density)."""
    gmm, g = GMM.ring(dim=dim), torch.Generator().manual_seed(1)
    x = torch.randn(16, dim, generator=g, dtype=torch.float64).requires_grad_(True)
    for s in (0.1, 0.5, 0.95):
        score, = torch.autograd.grad(log_density(gmm, x, s).sum(), x)
        _, eps = gmm.x0_eps(x.detach(), torch.full((16,), s))
        assert torch.allclose(eps, -s * score, atol=1e-10)


def test_oracle_map_is_the_identity_at_equal_times_and_reaches_the_data():
    gmm, g = GMM.ring(), torch.Generator().manual_seed(2)
    x = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    assert torch.equal(gmm.flow_map(x, 0.4, 0.4), x)
    samples = gmm.flow_map(x, 1.0, 0.0, steps=128)
    d, floor = metrics.sliced_w2(samples, gmm.sample(2000, g)), metrics.data_floor(gmm, 2000)
    assert d < 1.5 * floor and d < 0.08, (d, floor)
    assert torch.allclose(gmm.flow_map(x[:64], 1.0, 0.0, 512), gmm.flow_map(x[:64], 1.0, 0.0, 256), atol=1e-6)


def test_mlp_has_the_denoiser_contract():
    net, x, s = MLPDenoiser(3), torch.randn(5, 3), torch.rand(5)
    assert Denoiser(net, None).flow(x, s).shape == (5, 3)
    with pytest.raises(ValueError, match="two_times"):
        Denoiser(net, None).flow(x, s, sigma_to=s / 2)
    two = MLPDenoiser(3, two_times=True)
    assert torch.equal(Denoiser(two, None).flow(x, s), Denoiser(two, None).flow(x, s, sigma_to=s))


def test_metrics_vanish_on_the_oracle():
    gmm = GMM.ring()
    a = gmm.sample(500, torch.Generator().manual_seed(3))
    assert metrics.sliced_w2(a, a) == 0.0 and metrics.sliced_w2(a, a + 1.0) > 0.5
    oracle = OracleFlowMap(gmm, steps=64)
    phi = lambda x, t, s: x - (t - s)[:, None] * oracle(x, 1000 * t, t_to=1000 * s)   # noqa: E731
    assert metrics.flow_map_error(phi, gmm, n=64) < 1e-3
