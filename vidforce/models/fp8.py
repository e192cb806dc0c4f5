"""FP8 linear layers for inference (``stream.fp8``; never the default): ``torch._scaled_mm`` on float8_e4m3fn.

``y = (x_q @ W_q^T) * s_x * s_w + b`` with ``x ~ x_q s_x`` and ``W ~ W_q s_w``, products accumulated in fp32 by
the kernel and written in the activation's dtype. Scales map the absolute maximum to e4m3's largest value (448):
``tensor`` scaling keeps one scale per weight matrix and one per activation tensor; ``row`` one per output
channel of the weight and one per token of the activation (tighter, so smaller error). Weights are quantized
once (:func:`quantize_linears`), activations at every call. On CUDA the kernel needs an sm89+ GPU and in / out
features divisible by 16. The error against the unquantized model is reported beside the speed
(tools/bench_stream.py), and bounded on a tiny model in tests/models/test_fp8.py.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

MODES = ("off", "tensor", "row")
E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o",
                 "ffn.0", "ffn.2")     # per DiT block; the text keys/values run once per prompt and stay as they are


def quantize(x: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """``x [N, K]`` -> ``(x_q [N, K] float8_e4m3fn, scale)`` with ``x ~ x_q * scale``; scale fp32 ``[]`` (``tensor``)
    or ``[N, 1]`` (``row``)."""
    amax = x.abs().amax() if mode == "tensor" else x.abs().amax(dim=1, keepdim=True)
    scale = (amax.float() / E4M3_MAX).clamp(min=1e-12)
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


class Fp8Linear(nn.Module):
    """An ``nn.Linear`` with its weight quantized to e4m3 (``mode``: ``tensor`` | ``row``); bias kept."""

    def __init__(self, linear: nn.Linear, mode: str):
        super().__init__()
        if mode not in MODES[1:]:
            raise ValueError(f"stream.fp8 scaling must be tensor or row, got {mode!r}")
        self.mode, self.in_features, self.out_features = mode, linear.in_features, linear.out_features
        weight, scale = quantize(linear.weight.detach(), mode)
        self.register_buffer("weight", weight)                                   # [out, in] e4m3
        self.register_buffer("weight_scale", scale if mode == "tensor" else scale.reshape(1, -1))   # [] or [1, out]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., in]`` -> ``[..., out]`` in ``x``'s dtype."""
        x_q, x_scale = quantize(x.reshape(-1, self.in_features).contiguous(), self.mode)   # row-major, as the kernel needs
        bias = None if self.bias is None else self.bias.to(x.dtype)
        y = torch._scaled_mm(x_q, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale, bias=bias,
                             out_dtype=x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_linears(model: nn.Module, mode: str) -> int:
    """Replace the :data:`BLOCK_LINEARS` of every DiT block of ``model`` (``model.blocks``) by :class:`Fp8Linear`
    in place; returns how many. ``mode`` ``off`` changes nothing."""
    if mode not in MODES:
        raise ValueError(f"stream.fp8 must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return 0
    count = 0
    for block in model.blocks:
        for name in BLOCK_LINEARS:
            parent_name, _, child = name.rpartition(".")
            parent = block.get_submodule(parent_name)
            linear = parent.get_submodule(child)
            if isinstance(linear, nn.Linear):
                setattr(parent, child, Fp8Linear(linear, mode))
                count += 1
    return count


@functools.lru_cache(maxsize=None)
def supported(device_type: str, mode: str) -> str | None:
    """``None`` when ``torch._scaled_mm`` runs ``mode`` scaling on this device type, else why not (one line)."""
    device = torch.device(device_type)
    try:
        a = torch.ones(16, 16, device=device)
        Fp8Linear(nn.Linear(16, 16, device=device), mode)(a.to(torch.bfloat16 if device.type == "cuda" else a.dtype))
    except (RuntimeError, NotImplementedError) as err:
        return f"torch._scaled_mm ({mode} scaling) does not run on {device_type}: {str(err).splitlines()[0][:160]}"
    return None
