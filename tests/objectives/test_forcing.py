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
