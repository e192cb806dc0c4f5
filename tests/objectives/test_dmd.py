"""DMD: the update is zero when the critic equals the teacher and moves the sample toward the teacher's x0."""
import torch

from vidforce.objectives.dmd import dmd_direction, dmd_loss
from vidforce.objectives.sid import sid_loss


def test_zero_when_critic_equals_teacher():
    x = torch.randn(2, 6, 4, 4, 4, requires_grad=True)
    real = torch.randn(2, 6, 4, 4, 4)
    d = dmd_direction(x.detach(), real, real.clone())
    loss = dmd_loss(x, d)
    loss.backward()
    assert loss.item() == 0 and x.grad.abs().max() == 0


def test_gradient_descent_moves_toward_teacher_x0():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4, 4, 4)
    real = torch.randn(3, 6, 4, 4, 4)
    fake = x.clone()                                   # a critic that reproduces the generator's samples
    xg = x.clone().requires_grad_(True)
    dmd_loss(xg, dmd_direction(x, real, fake)).backward()
    before = (x - real).square().sum(dim=(1, 2, 3, 4))
    after = (x - 0.1 * xg.grad * x.numel() - real).square().sum(dim=(1, 2, 3, 4))
    assert (after < before).all()
    # the gradient is exactly direction / numel (per-sample normalised by mean |x - real|)
    norm = (x - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(xg.grad, (fake - real) / norm / x.numel())


def test_direction_is_zero_where_everything_agrees_and_exact_elsewhere():
    """Sample 0 sits on the teacher's x0 and the critic agrees (0 / 0): zero, not NaN. Sample 1 in the same
    batch keeps its exact value (the normalisation is per sample)."""
    x = torch.stack([torch.zeros(3, 2, 2, 2), torch.full((3, 2, 2, 2), 2.0)])
    real = torch.zeros_like(x)
    fake = torch.stack([torch.zeros(3, 2, 2, 2), torch.full((3, 2, 2, 2), 1.0)])
    d = dmd_direction(x, real, fake)
    assert d[0].abs().max() == 0
    torch.testing.assert_close(d[1], torch.full((3, 2, 2, 2), 0.5))      # (1 - 0) / mean|2 - 0|


def test_direction_is_zero_where_the_norm_is_zero():
    x = torch.zeros(1, 3, 2, 2, 2)
    d = dmd_direction(x, x.clone(), x + 1)                   # x on the teacher's x0, the critic elsewhere
    assert d.abs().max() == 0
    assert torch.isfinite(dmd_loss(x.requires_grad_(True), d))


def test_sid_zero_when_scores_agree_and_alpha_weighting():
    x = torch.randn(2, 3, 2, 4, 4, requires_grad=True)
    real = torch.randn(2, 3, 2, 4, 4)
    assert sid_loss(x, real, real, 1.2).item() == 0
    fake = real + 0.1
    # alpha = 1 leaves only the cross term (f_r - f_f)^T (f_f - x)
    w = 1 / (x - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    expected = (w * (real - fake) * (fake - x)).mean()
    torch.testing.assert_close(sid_loss(x, real, fake, 1.0), expected)
