"""FP8 linear layers: off by default, the right layers replaced, the error against the unquantized model bounded."""
import pytest
import torch
from torch import nn

from vidforce import config
from vidforce.models.fp8 import BLOCK_LINEARS, Fp8Linear, quantize, quantize_linears, supported
from tests.models.helpers import inputs, tiny_causal

CPU_REASON = {mode: supported("cpu", mode) for mode in ("tensor", "row")}


def test_off_by_default_and_off_changes_nothing():
    assert config.load(None, []).stream.fp8 == "off"
    model = tiny_causal()
    assert quantize_linears(model, "off") == 0
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())
    with pytest.raises(ValueError, match="stream.fp8"):
        quantize_linears(model, "int8")


@pytest.mark.parametrize("mode", ["tensor", "row"])
def test_quantize_round_trip_is_within_e4m3_precision(mode):
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 2, 64)[:, None]
    x_q, scale = quantize(x, mode)
    assert x_q.dtype == torch.float8_e4m3fn and scale.shape == (() if mode == "tensor" else (64, 1))
    error = (x_q.float() * scale - x).abs()
    amax = x.abs().amax(dim=1, keepdim=True) if mode == "row" else x.abs().amax()
    normal = x.abs() >= amax / 1000                          # far above e4m3's smallest normal (448 * 2^-15)
    assert (error[normal] / x.abs()[normal]).max() <= 2 ** -4 * (1 + 1e-6)   # 3 mantissa bits, round to nearest


@pytest.mark.parametrize("mode", ["tensor", "row"])
def test_fp8_model_error_is_bounded(mode):
    if CPU_REASON[mode]:
        pytest.skip(CPU_REASON[mode])
    model = tiny_causal()
    x, t, ctx = inputs(model, frames=6)
    with torch.no_grad():
        reference = model.forward_full(x, t, ctx)
        assert quantize_linears(model, mode) == len(BLOCK_LINEARS) * model.arch.num_layers
        quantized = model.forward_full(x, t, ctx)
    assert not any(type(m) is nn.Linear for b in model.blocks for n, m in b.named_modules()
                   if n in BLOCK_LINEARS)
    relative = ((quantized - reference).norm() / reference.norm()).item()
    assert 1e-4 < relative < (0.05 if mode == "row" else 0.08), relative   # e4m3: 3 mantissa bits


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["tensor", "row"])
def test_fp8_model_error_is_bounded_in_bf16_on_the_gpu(mode):
    reason = supported("cuda", mode)
    if reason:
        pytest.skip(reason)
    model = tiny_causal().cuda().to(torch.bfloat16)
    x, t, ctx = (a.cuda() for a in inputs(model, frames=6))
    with torch.no_grad():
        reference = model.forward_full(x.bfloat16(), t, ctx.bfloat16())
        quantize_linears(model, mode)
        quantized = model.forward_full(x.bfloat16(), t, ctx.bfloat16())
    relative = ((quantized - reference).float().norm() / reference.float().norm()).item()
    assert relative < 0.08, relative
