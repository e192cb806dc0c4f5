"""GAN losses (pure functions) at known logits; the finite-difference penalty of a linear discriminator."""
import math

import pytest
import torch

from vidforce.objectives.gan import discriminator_loss, finite_difference_penalty, generator_gan_loss

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_generator_loss_is_non_saturating_softplus_at_known_logits():
    # softplus(-0) = ln 2, softplus(-ln 3) = ln(1 + 1/3)
    loss = generator_gan_loss(torch.tensor([0.0, LN3], dtype=torch.float64))
    assert loss.item() == pytest.approx((LN2 + math.log(4 / 3)) / 2, rel=1e-12)
    assert generator_gan_loss(torch.tensor([100.0])).item() == pytest.approx(0.0, abs=1e-40)    # fooled: no loss
    assert generator_gan_loss(torch.tensor([-100.0])).item() == pytest.approx(100.0)            # linear, not flat


def test_relativistic_generator_loss_pairs_fake_with_real():
    fake = torch.tensor([1.0, 2.0], dtype=torch.float64)
    real = torch.tensor([1.0, 2.0 + LN3], dtype=torch.float64)
    # fake - real = [0, -ln 3]: softplus(0) = ln 2, softplus(ln 3) = ln 4
    assert generator_gan_loss(fake, real).item() == pytest.approx(1.5 * LN2, rel=1e-12)
    assert generator_gan_loss(fake + 7.0, real + 7.0).item() == pytest.approx(1.5 * LN2, rel=1e-12)   # shift-free


def test_discriminator_loss_at_known_logits():
    real, fake = torch.tensor([LN3], dtype=torch.float64), torch.tensor([-LN3], dtype=torch.float64)
    # softplus(-ln 3) + softplus(-ln 3) = 2 ln(4/3)
    assert discriminator_loss(real, fake, relativistic=False).item() == pytest.approx(2 * math.log(4 / 3), rel=1e-12)
    zeros = torch.zeros(3, dtype=torch.float64)
    assert discriminator_loss(zeros, zeros, relativistic=False).item() == pytest.approx(2 * LN2, rel=1e-12)


def test_relativistic_discriminator_loss_at_known_logits():
    real = torch.tensor([LN3, 0.0], dtype=torch.float64)
    fake = torch.tensor([0.0, 0.0], dtype=torch.float64)
    # real - fake = [ln 3, 0]: softplus(-ln 3) = ln(4/3), softplus(0) = ln 2
    expected = (math.log(4 / 3) + LN2) / 2
    assert discriminator_loss(real, fake, relativistic=True).item() == pytest.approx(expected, rel=1e-12)
    # the generator's relativistic loss is the discriminator's with the roles swapped
    assert generator_gan_loss(fake, real).item() == pytest.approx(
        discriminator_loss(fake, real, relativistic=True).item(), rel=1e-12)


def test_losses_point_the_right_way():
    """A discriminator that separates real (+) from fake (-) has a lower loss than a confused one."""
    good = discriminator_loss(torch.full((4,), 3.0), torch.full((4,), -3.0), relativistic=False)
    bad = discriminator_loss(torch.full((4,), -3.0), torch.full((4,), 3.0), relativistic=False)
    assert good < LN2 < bad


@pytest.mark.parametrize("sigma", [1e-3, 0.1, 2.0])
def test_finite_difference_penalty_of_a_linear_discriminator_is_the_gradient_along_n(sigma):
    """D(x) = w.x + b: D(x + s n) - D(x) = s w.n exactly, so the penalty is mean_b (w.n_b)^2 for any s."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(12, generator=g, dtype=torch.float64), 0.7
    x = torch.randn(5, 12, generator=g, dtype=torch.float64)
    n = torch.randn(5, 12, generator=g, dtype=torch.float64)
    disc = lambda v: v @ w + b  # noqa: E731
    penalty = finite_difference_penalty(disc(x), disc(x + sigma * n), sigma)
    assert penalty.item() == pytest.approx((n @ w).square().mean().item(), rel=1e-9)


def test_finite_difference_penalty_estimates_the_squared_gradient_norm():
    """Over Gaussian directions n, E (w.n)^2 = ||w||^2: the R1 / R2 gradient penalty without double backward."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, generator=g, dtype=torch.float64)
    x = torch.randn(200_000, 8, generator=g, dtype=torch.float64)
    n = torch.randn(200_000, 8, generator=g, dtype=torch.float64)
    penalty = finite_difference_penalty(x @ w, (x + 0.01 * n) @ w, 0.01)
    assert penalty.item() == pytest.approx(w.square().sum().item(), rel=0.02)
