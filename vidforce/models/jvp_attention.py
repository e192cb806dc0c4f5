"""Attention with its forward-mode tangent in one fused pass (Triton, flash-style online softmax, O(L) memory).

For ``O = softmax(S) V`` with ``S = scale * Q K^T`` and tangents ``(dQ, dK, dV)``:

    dS = scale * (dQ K^T + Q dK^T)
    dP = P * (dS - mu),            mu = rowsum(P * dS)
    dO = dP V + P dV = (P dS) V + P dV - mu * O

With unnormalised ``P~ = exp(S - m)`` and ``l = rowsum(P~)`` the kernel keeps, per query row,
``acc_o = P~ V``, ``acc_t = P~ dV + (P~ * dS) V`` and ``acc_mu = rowsum(P~ * dS)``, all rescaled by
``exp(m_old - m_new)`` when the running max moves, and finishes with ``O = acc_o / l``,
``dO = acc_t / l - (acc_mu / l) * O`` (``mu = acc_mu / l``: the rescaling cancels in every ratio).

Masks are key limits: query ``i`` sees keys ``j < limit(i)``. With ``chunk = C > 0`` and ``off = Lk - Lq``
(queries are the last ``Lq`` positions of the key sequence, the KV-cache convention; with ``C > 1`` the
query block must start on a chunk boundary, as a full sequence and a cached chunk do),
``limit(i) = min(Lk, (i // C + 1) * C + off)``: ``C = 1`` is causal (bottom-right aligned),
``C = frames_per_chunk * tokens_per_frame`` is vidforce's block-causal chunk mask (``causal.frame_mask``
without window/sink), ``C = 0`` is no mask.

Layout ``[B, H, L, D]`` with any strides (as ``attention.attend``), ``D <= 256``. Entry points:
- :func:`attention_with_tangent`: ``(O, dO)`` in one pass (Triton on CUDA, or on CPU when
  ``TRITON_INTERPRET=1`` was set before Triton was imported; otherwise the same formulas densely in torch).
- :func:`jvp_attention`: a differentiable ``O`` whose ``jvp`` is the fused kernel, so ``torch.func.jvp`` and
  ``torch.autograd.forward_ad`` use it. Its forward is torch SDPA; its backward recomputes with SDPA
  (reverse mode is not fused).
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

INTERPRET_BLOCK = 16                                      # block size under TRITON_INTERPRET (tiny test shapes)


def triton_runs(x: Tensor) -> bool:
    """Whether the Triton kernel runs for tensors like ``x`` (else the dense torch formulas do)."""
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def key_limits(lq: int, lk: int, chunk: int, device=None) -> Tensor:
    """Per query row, the number of leading keys it attends: ``[Lq]`` int64 (see the module docstring)."""
    rows = torch.arange(lq, device=device)
    if chunk == 0:
        return torch.full_like(rows, lk)
    return torch.clamp((rows // chunk + 1) * chunk + (lk - lq), max=lk)


def _check(q: Tensor, k: Tensor, v: Tensor, chunk: int) -> None:
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q [B, H, Lq, D] and k, v [B, H, Lk, D] expected, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[3] > 256:
        raise ValueError(f"head dim must be <= 256, got {q.shape[3]}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if chunk < 0:
        raise ValueError(f"chunk must be >= 0, got {chunk}")
    if chunk and k.shape[2] < q.shape[2]:
        raise ValueError(f"a masked attention needs Lk >= Lq (queries are the last Lq keys), got "
                         f"Lq={q.shape[2]}, Lk={k.shape[2]}")


def masked_sdpa(q: Tensor, k: Tensor, v: Tensor, chunk: int = 0, scale: float | None = None) -> Tensor:
    """``softmax(scale q k^T) v`` under the key-limit mask, with torch SDPA (no dense mask for ``chunk > 1``)."""
    lq, lk = q.shape[2], k.shape[2]
    if chunk == 0:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if chunk == 1:
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    outs = []
    for start in range(0, lq, chunk):                     # one dense SDPA per query chunk over its key prefix
        stop = min(lk, start + chunk + lk - lq)
        outs.append(F.scaled_dot_product_attention(q[:, :, start:start + chunk], k[:, :, :stop], v[:, :, :stop],
                                                   scale=scale))
    return torch.cat(outs, dim=2)


def dense_tangent(q: Tensor, k: Tensor, v: Tensor, tq: Tensor | None, tk: Tensor | None, tv: Tensor | None,
                  chunk: int = 0, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """``(O, dO)`` from the closed-form formulas with the full ``[Lq, Lk]`` scores (CPU path, O(L^2))."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    visible = torch.arange(k.shape[2], device=q.device) < key_limits(q.shape[2], k.shape[2], chunk, q.device)[:, None]
    p = torch.softmax((scale * q @ k.transpose(-1, -2)).masked_fill(~visible, float("-inf")), dim=-1)
    out = p @ v
    tangent = torch.zeros_like(out)
    if tq is not None or tk is not None:
        ds = sum(a @ b.transpose(-1, -2) for a, b in ((tq, k), (q, tk)) if a is not None and b is not None)
        pds = p * ds * scale
        tangent = pds @ v - pds.sum(-1, keepdim=True) * out
    if tv is not None:
        tangent = tangent + p @ tv
    return out, tangent


if triton is not None:
    @triton.jit
    def _jvp_attention_kernel(Q, K, V, TQ, TK, TV, O, TO,
                              sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd,
                              stqb, stqh, stql, stqd, stkb, stkh, stkl, stkd, stvb, stvh, stvl, stvd,
                              sob, soh, sol, sod, stob, stoh, stol, stod,
                              H, Lq, Lk, scale, chunk, offset,
                              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, HAS_TQ: tl.constexpr, HAS_TK: tl.constexpr,
                              HAS_TV: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
        """One program: ``BLOCK_M`` query rows of one (batch, head); loops over key blocks up to its limit."""
        bh = tl.program_id(1)
        b, h = bh // H, bh % H
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        q_ok = (rows < Lq)[:, None] & (dims < HEAD_DIM)[None, :]
        q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sql + dims[None, :] * sqd, mask=q_ok, other=0.0)
        if HAS_TQ:
            tq = tl.load(TQ + b * stqb + h * stqh + rows[:, None] * stql + dims[None, :] * stqd, mask=q_ok, other=0.0)
        if MASKED:
            limit = tl.minimum((rows // chunk + 1) * chunk + offset, Lk)
            hi = tl.minimum(((tl.minimum(tl.program_id(0) * BLOCK_M + BLOCK_M, Lq) - 1) // chunk + 1) * chunk
                            + offset, Lk)
        else:
            limit = tl.zeros([BLOCK_M], tl.int32) + Lk
            hi = Lk
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_sum = tl.zeros([BLOCK_M], tl.float32)
        mu = tl.zeros([BLOCK_M], tl.float32)
        acc_o = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        acc_t = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, hi, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            kv_ok = (cols < Lk)[:, None] & (dims < HEAD_DIM)[None, :]
            k = tl.load(K + b * skb + h * skh + cols[:, None] * skl + dims[None, :] * skd, mask=kv_ok, other=0.0)
            v = tl.load(V + b * svb + h * svh + cols[:, None] * svl + dims[None, :] * svd, mask=kv_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * (scale * 1.4426950408889634)   # log2 domain
            s = tl.where(cols[None, :] < limit[:, None], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_sum = l_sum * alpha + tl.sum(p, 1)
            acc_o = acc_o * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            acc_t = acc_t * alpha[:, None]
            if HAS_TQ or HAS_TK:
                ds = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
                if HAS_TQ:
                    ds += tl.dot(tq, tl.trans(k), input_precision=PRECISION)
                if HAS_TK:
                    tk = tl.load(TK + b * stkb + h * stkh + cols[:, None] * stkl + dims[None, :] * stkd, mask=kv_ok,
                                 other=0.0)
                    ds += tl.dot(q, tl.trans(tk), input_precision=PRECISION)
                pds = p * ds * scale
                mu = mu * alpha + tl.sum(pds, 1)
                acc_t += tl.dot(pds.to(v.dtype), v, input_precision=PRECISION)
            if HAS_TV:
                tv = tl.load(TV + b * stvb + h * stvh + cols[:, None] * stvl + dims[None, :] * stvd, mask=kv_ok,
                             other=0.0)
                acc_t += tl.dot(p.to(tv.dtype), tv, input_precision=PRECISION)
            m = m_new
        o = acc_o / l_sum[:, None]
        t = acc_t / l_sum[:, None] - (mu / l_sum)[:, None] * o
        tl.store(O + b * sob + h * soh + rows[:, None] * sol + dims[None, :] * sod, o.to(O.dtype.element_ty), mask=q_ok)
        tl.store(TO + b * stob + h * stoh + rows[:, None] * stol + dims[None, :] * stod, t.to(TO.dtype.element_ty),
                 mask=q_ok)

    _CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                for bm, bn, w, s in ((128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 2), (64, 32, 4, 3), (128, 64, 8, 3))]
    _tuned_kernel = triton.autotune(_CONFIGS, key=["HEAD_DIM", "HAS_TQ", "HAS_TK", "HAS_TV", "MASKED"])(
        _jvp_attention_kernel)


def _triton_tangent(q, k, v, tq, tk, tv, chunk: int, scale: float) -> tuple[Tensor, Tensor]:
    B, H, lq, D = q.shape
    out, tangent = torch.empty_like(q), torch.empty_like(q)
    tensors = [q, k, v] + [q if t is None else t.to(q.dtype) for t in (tq, tk, tv)] + [out, tangent]
    strides = [s for t in tensors for s in t.stride()]
    args = (*tensors, *strides, H, lq, k.shape[2], scale, max(chunk, 1), k.shape[2] - lq)
    meta = dict(HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)), HAS_TQ=tq is not None,
                HAS_TK=tk is not None, HAS_TV=tv is not None, MASKED=chunk > 0,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    if q.is_cuda:
        grid = lambda cfg: (triton.cdiv(lq, cfg["BLOCK_M"]), B * H)  # noqa: E731
        with torch.cuda.device(q.device):
            _tuned_kernel[grid](*args, **meta)
    else:
        grid = (triton.cdiv(lq, INTERPRET_BLOCK), B * H)
        _jvp_attention_kernel[grid](*args, BLOCK_M=INTERPRET_BLOCK, BLOCK_N=INTERPRET_BLOCK, **meta)
    return out, tangent


@torch.library.custom_op("vidforce::attention_with_tangent", mutates_args=())
def _attention_with_tangent(q: Tensor, k: Tensor, v: Tensor, tq: Tensor | None, tk: Tensor | None,
                            tv: Tensor | None, chunk: int, scale: float) -> tuple[Tensor, Tensor]:
    """An opaque op, so that ``torch.func`` hands the kernel plain tensors (its ``jvp`` sees functorch wrappers)."""
    if triton_runs(q):
        return _triton_tangent(q, k, v, tq, tk, tv, chunk, scale)
    return dense_tangent(q, k, v, tq, tk, tv, chunk, scale)


@_attention_with_tangent.register_fake
def _(q, k, v, tq, tk, tv, chunk, scale):
    return torch.empty_like(q), torch.empty_like(q)


def attention_with_tangent(q: Tensor, k: Tensor, v: Tensor, tq: Tensor | None = None, tk: Tensor | None = None,
                           tv: Tensor | None = None, chunk: int = 0,
                           scale: float | None = None) -> tuple[Tensor, Tensor]:
    """``(O, dO)`` of ``O = softmax(scale q k^T) v`` for tangents ``tq [B, H, Lq, D]``, ``tk``/``tv [B, H, Lk, D]``.

    A missing tangent is zero. ``chunk``: key-limit mask (0 none, 1 causal, ``F * tokens_per_frame`` block-causal).
    One fused Triton pass where :func:`triton_runs`, else the dense torch formulas. Not differentiable (a
    tangent through it is a constant, as sCM / MeanFlow targets are).
    """
    _check(q, k, v, chunk)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _attention_with_tangent(q, k, v, tq, tk, tv, chunk, scale)


class JvpAttention(torch.autograd.Function):
    """Attention whose forward-mode derivative is the fused kernel; reverse mode recomputes with SDPA."""

    @staticmethod
    def forward(q: Tensor, k: Tensor, v: Tensor, chunk: int, scale: float | None) -> Tensor:
        return masked_sdpa(q, k, v, chunk, scale)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        q, k, v, ctx.chunk, ctx.scale = inputs
        ctx.save_for_backward(q, k, v)
        ctx.save_for_forward(q, k, v)

    @staticmethod
    def jvp(ctx, tq: Tensor | None, tk: Tensor | None, tv: Tensor | None, *_) -> Tensor:
        q, k, v = ctx.saved_tensors
        return attention_with_tangent(q, k, v, tq, tk, tv, ctx.chunk, ctx.scale)[1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v = (t.detach().requires_grad_() for t in ctx.saved_tensors)
        with torch.enable_grad():
            out = masked_sdpa(q, k, v, ctx.chunk, ctx.scale)
        return *torch.autograd.grad(out, (q, k, v), grad), None, None


def jvp_attention(q: Tensor, k: Tensor, v: Tensor, chunk: int = 0, scale: float | None = None) -> Tensor:
    """``softmax(scale q k^T) v`` ``[B, H, Lq, D]`` (``chunk`` as in :func:`attention_with_tangent`) whose JVP
    under ``torch.func.jvp`` / ``torch.autograd.forward_ad`` is one fused O(L)-memory pass."""
    _check(q, k, v, chunk)
    return JvpAttention.apply(q, k, v, chunk, scale)
