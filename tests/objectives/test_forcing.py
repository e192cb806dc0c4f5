"""CFG dropout of the data-trained objectives: whole prompts replaced by the negative one with probability p."""
import pytest
import torch

from vidforce.objectives.forcing import dropout_context


def prompts(batch, length=4, dim=3):
    cond = torch.arange(1, batch + 1, dtype=torch.float32)[:, None, None].expand(batch, length, dim).clone()
    return cond, torch.full((1, length, dim), -1.0)          # negative prompt [1, L, D], broadcast per sample


def dropped(out):
    """Per sample: True where the whole embedding is the negative prompt."""
    return (out == -1.0).all(dim=(1, 2))


def test_p_zero_keeps_every_prompt():
    cond, uncond = prompts(64)
    assert torch.equal(dropout_context(cond, uncond, 0.0, torch.Generator().manual_seed(0)), cond)


def test_p_one_drops_every_prompt():
    cond, uncond = prompts(64)
    assert torch.equal(dropout_context(cond, uncond, 1.0, torch.Generator().manual_seed(0)), uncond.expand_as(cond))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rate_is_p_and_drops_whole_samples(p):
    cond, uncond = prompts(20_000)
    out = dropout_context(cond, uncond, p, torch.Generator().manual_seed(1))
    drop = dropped(out)
    assert torch.equal(out[~drop], cond[~drop])              # kept samples untouched, dropped ones whole
    assert drop.float().mean().item() == pytest.approx(p, abs=0.015)   # ~4.5 standard errors at p = 0.5
    again = dropout_context(cond, uncond, p, torch.Generator().manual_seed(1))
    assert torch.equal(again, out)                           # the generator decides: reproducible


def test_wan_weighting_is_a_bell_with_mean_one_over_the_schedule():
    from vidforce.diffusion import shift_sigma, wan_loss_weight
    grid = shift_sigma(torch.linspace(1.0, 0.0, 1000, dtype=torch.float64), 3.0)
    w = wan_loss_weight(grid, 3.0)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-9)
    assert w.min().item() == pytest.approx(0.0, abs=1e-9)                     # zero at the table's extreme
    mid, low, high = wan_loss_weight(torch.tensor([0.5, 0.05, 0.95], dtype=torch.float64), 3.0).tolist()
    assert mid > low > 0 and mid > high > 0                                   # peak at sigma 1/2


def test_weighted_flow_matching_loss_weights_each_frame():
    from vidforce.objectives.base import flow_matching_loss
    pred, x0, eps = torch.zeros(1, 2, 1, 1, 1), torch.zeros(1, 2, 1, 1, 1), torch.tensor([1.0, 2.0]).view(1, 2, 1, 1, 1)
    assert flow_matching_loss(pred, x0, eps).item() == pytest.approx((1 + 4) / 2)
    assert flow_matching_loss(pred, x0, eps, torch.tensor([[2.0, 0.5]])).item() == pytest.approx((2 + 2) / 2)
