"""Attention backends behind one function.

All tensors are ``[B, H, L, D]``. Backends:
- ``math``: torch SDPA math kernel (CPU default; the only one that supports forward-mode AD).
- ``cudnn`` / ``flash`` / ``efficient``: torch SDPA restricted to that kernel.
- ``sdpa``: torch SDPA, torch picks the kernel.
- ``flash_attn``: the optional ``flash_attn`` package (FA2/FA3) when importable; never required.
- ``jvp``: for forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``) at video scale: SDPA forward,
  tangent from the fused Triton kernel of ``jvp_attention.py`` (O(L) memory; dense torch formulas where
  Triton does not run), reverse mode recomputed with SDPA. Takes no dense mask. Any device.
- ``auto``: fastest measured on the device (see docs/benchmarks.md, tools/bench_attention.py): on CUDA
  torch's own SDPA dispatch (on H100 with torch 2.11 it runs the cuDNN kernel: same times as ``cudnn``,
  1.7x faster than flash in the cache case), on CPU math. It sets no global backend flags, so it is
  safe while another thread (the streaming decoder) runs attention too; the explicit SDPA names use
  ``sdpa_kernel``, which switches process-wide flags.
Block-sparse full-sequence attention (FlexAttention) lives in ``causal.py``; it needs a block mask.
"""
from __future__ import annotations

import functools
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = ("auto", "math", "sdpa", "cudnn", "flash", "efficient", "flash_attn", "flex", "jvp")
_SDPA = {"math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION,
         "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}


@functools.lru_cache(maxsize=None)
def flash_attn_func():
    """The ``flash_attn`` package's function, or ``None`` when it is not importable."""
    try:
        from flash_attn import flash_attn_func as fn  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return None
    return fn


def check_backend(name: str, field: str = "causal.attention") -> str:
    if name not in BACKENDS:
        raise ValueError(f"{field} must be one of {BACKENDS}, got {name!r}")
    return name


def resolve(name: str, device: torch.device) -> str:
    """Concrete backend for ``name`` on ``device`` (``auto`` and ``flex`` resolve to a dense kernel).

    """
    check_backend(name)
    if name not in ("auto", "flex"):
        if device.type != "cuda" and name not in ("math", "sdpa", "jvp"):
            raise ValueError(f"causal.attention={name!r} needs a CUDA device; use 'auto' or 'math' on {device.type}")
        if name == "flash_attn" and flash_attn_func() is None:
            raise ValueError("causal.attention='flash_attn' but the flash_attn package is not importable")
        return name
    return "sdpa" if device.type == "cuda" else "math"


def available(device: torch.device) -> list[str]:
    """Dense backends that can run on ``device``."""
    if device.type != "cuda":
        return ["math", "sdpa"]
    names = ["math", "sdpa", "cudnn", "flash", "efficient"]
    return names + (["flash_attn"] if flash_attn_func() is not None else [])


def attend(q: Tensor, k: Tensor, v: Tensor, backend: str = "auto", mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention ``softmax(q k^T / sqrt(D)) v``.

    q ``[B, H, Lq, D]``, k/v ``[B, H, Lk, D]``, optional boolean ``mask`` broadcastable to
    ``[B, H, Lq, Lk]`` (True = attend). Returns ``[B, H, Lq, D]``.
    """
    name = resolve(backend, q.device)
    if name == "flash_attn":
        if mask is not None:
            raise ValueError("the flash_attn backend takes no dense mask")
        out = flash_attn_func()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if name == "jvp":
        if mask is not None:
            raise ValueError("the jvp backend takes no dense mask (jvp_attention.jvp_attention takes a chunk mask)")
        from vidforce.models.jvp_attention import jvp_attention  # noqa: PLC0415 (imports Triton when installed)
        return jvp_attention(q, k, v)
    ctx = sdpa_kernel([_SDPA[name]]) if name in _SDPA else nullcontext()
    with ctx:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
