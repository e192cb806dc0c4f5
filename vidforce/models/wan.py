"""Wan2.1 text-to-video DiT, state-dict compatible with the official checkpoints.

Layout inside: latents ``[B, T, C, H, W]``; tokens ``[B, L, dim]`` with ``L = T' * h * w`` (frame-major).
Per-frame timesteps ``t [B, T]`` give per-frame adaLN modulation, so one forward can hold a clean context
and a noisy chunk. Self-attention is delegated to an *attention plan* (``plan(layer, q, k, v)``) that owns
RoPE positions and masking: bidirectional here, block-causal or KV-cached in ``causal.py``.

Second time (``WanArch.time_to``, config ``model.time_to``): a flow map ``F(x, t, t_to)`` (CTM, MeanFlow, Shortcut,
the flow-map conditions; ``t_to <= t`` is the end time) adds ``time_to_embedding(emb(t - t_to))`` to the time
embedding ``e``, before the block and head modulations. Its last linear layer starts at zero, so the model starts
as the one-time DiT (a pretrained checkpoint loads without those keys: :attr:`WanModel.OPTIONAL_KEYS`); without
``t_to`` the gap is 0 (``t_to = t``: the instantaneous flow). With ``time_to`` off the module, its parameter names
and its outputs are those of the official DiT.

Guidance scale (``WanArch.guidance_input``, config ``model.guidance_input``): a ``w``-conditioned student of guided
distillation (``objectives/progressive.py``) takes the guidance scale ``guidance = w [B]`` (the convention of
``objective.guidance``) and adds ``guidance_embedding(emb(w))`` to ``e`` the same way, zero-initialised last layer,
created after the second time's (:attr:`WanModel.OPTIONAL_KEYS` holds both); such a model needs ``guidance``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn
import torch.utils.checkpoint as ckpt
from torch import Tensor

from vidforce.models.attention import attend
from vidforce.models.rope import Rope, apply_rope


@dataclass(frozen=True)
class WanArch:
    """Architecture of one Wan2.1 DiT (values come from ``config.ModelConfig``)."""
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    text_dim: int
    freq_dim: int
    in_dim: int
    out_dim: int
    patch_size: tuple[int, int, int]
    text_len: int
    cross_attn_norm: bool
    eps: float
    rope_max_len: int
    time_to: bool = False           # second time input t_to (flow maps)
    guidance_input: bool = False    # guidance scale input w (w-conditioned guided distillation)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


class AttentionPlan(Protocol):
    """Self-attention of one layer: q/k/v ``[B, H, L, D]`` (q/k normed, not rotated) -> ``[B, H, L, D]``."""

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


class SequenceShards(Protocol):
    """Sequence parallelism over ``size`` ranks (``train.sequence_parallel``; ``train/sequence_parallel.py`` holds
    the collectives, so this file imports no ``torch.distributed``). Each rank keeps ``1/size`` of every frame's
    tokens; self-attention sees all tokens on ``heads/size`` heads (Ulysses), so the KV cache holds that many."""
    size: int

    def enter(self, x: Tensor) -> Tensor:
        """The replicated input latents ``[B, T, C, H, W]`` (identity; the gradient is summed over the ranks)."""

    def shard(self, tokens: Tensor, frames: int) -> Tensor:
        """All tokens ``[B, T' * hw, dim]`` -> this rank's ``[B, T' * hw / size, dim]``."""

    def attention(self, plan: AttentionPlan, frames: int) -> AttentionPlan:
        """``plan`` (full sequence, ``heads/size`` heads) as a plan on this rank's tokens and all heads."""

    def gather(self, tokens: Tensor, frames: int) -> Tensor:
        """This rank's ``[B, T' * hw / size, C]`` -> all tokens ``[B, T' * hw, C]`` (frame-major), replicated."""


class BidirectionalPlan:
    """Full attention with RoPE at absolute frame positions ``frame_offset + [0, T')``."""

    def __init__(self, rope: Rope, grid: tuple[int, int, int], device, backend: str = "auto", frame_offset: int = 0):
        f, h, w = grid
        self.cos, self.sin = rope.angles(torch.arange(frame_offset, frame_offset + f, device=device), h, w)
        self.backend = backend

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attend(apply_rope(q, self.cos, self.sin), apply_rope(k, self.cos, self.sin), v, self.backend)


def sinusoidal_embedding(dim: int, position: Tensor) -> Tensor:
    """Wan's timestep embedding: ``[cos(p w_i), sin(p w_i)]`` with ``w_i = 10000^(-i / (dim/2))``; ``[N, dim]``."""
    half = dim // 2
    p = position.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=p.device) / half)
    angles = torch.outer(p, freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, L, dim]`` -> q, k (RMS-normed), v ``[B, H, L, D]``."""
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # noqa: E731
        return heads(self.norm_q(self.q(x))), heads(self.norm_k(self.k(x))), heads(self.v(x))

    def out(self, y: Tensor) -> Tensor:
        """Attention output ``[B, H, L, D]`` -> ``[B, L, dim]``."""
        return self.o(y.transpose(1, 2).flatten(2))


class CrossAttention(SelfAttention):
    """Text cross-attention; ``kv`` may be precomputed once per prompt (``kv_of``)."""

    def kv_of(self, context: Tensor) -> tuple[Tensor, Tensor]:
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # noqa: E731
        return heads(self.norm_k(self.k(context))), heads(self.v(context))

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], backend: str) -> Tensor:
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        return self.o(attend(q, kv[0], kv[1], backend).transpose(1, 2).flatten(2))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor, frames: int) -> Tensor:
    """``x * (1 + scale) + shift`` with per-frame ``shift/scale [B, T, dim]`` over tokens ``x [B, L, dim]``."""
    xf = x.float().unflatten(1, (frames, -1))
    return (xf * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2).to(x.dtype)


def _gate(x: Tensor, gate: Tensor, frames: int) -> Tensor:
    return (x.float().unflatten(1, (frames, -1)) * gate[:, :, None]).flatten(1, 2).to(x.dtype)


class Block(nn.Module):
    def __init__(self, arch: WanArch):
        super().__init__()
        d = arch.dim
        self.norm1 = nn.LayerNorm(d, eps=arch.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(d, arch.num_heads, arch.eps)
        self.norm3 = nn.LayerNorm(d, eps=arch.eps, elementwise_affine=True) if arch.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(d, arch.num_heads, arch.eps)
        self.norm2 = nn.LayerNorm(d, eps=arch.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, arch.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(arch.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d ** 0.5)

    def forward(self, x: Tensor, e: Tensor, kv: tuple[Tensor, Tensor], plan: AttentionPlan, layer: int,
                backend: str) -> Tensor:
        """x ``[B, L, dim]``; e ``[B, T, 6, dim]`` (fp32); kv: this layer's text keys/values.

        The self-attention plan (RoPE, cache, mask) runs between two pure-tensor halves, which
        ``WanModel.compile_blocks`` can compile without the plan's Python state.
        """
        m = (self.modulation.float()[:, None] + e).unbind(2)    # 6 x [B, T, dim]
        q, k, v = self.attention_inputs(x, m[0], m[1])
        return self.after_attention(x, plan(layer, q, k, v), m[2:], kv, backend)

    def attention_inputs(self, x: Tensor, shift: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.self_attn.qkv(_modulate(self.norm1(x), shift, scale, shift.shape[1]))

    def after_attention(self, x: Tensor, y: Tensor, m: tuple[Tensor, ...], kv: tuple[Tensor, Tensor],
                        backend: str) -> Tensor:
        frames = m[0].shape[1]
        x = x + _gate(self.self_attn.out(y), m[0], frames)
        x = x + self.cross_attn(self.norm3(x), kv, backend)
        y = self.ffn(_modulate(self.norm2(x), m[1], m[2], frames))
        return x + _gate(y, m[3], frames)


class Head(nn.Module):
    def __init__(self, arch: WanArch):
        super().__init__()
        self.norm = nn.LayerNorm(arch.dim, eps=arch.eps, elementwise_affine=False)
        self.head = nn.Linear(arch.dim, arch.out_dim * math.prod(arch.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, arch.dim) / arch.dim ** 0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x ``[B, L, dim]``, e ``[B, T, dim]`` -> ``[B, L, out_dim * prod(patch)]``."""
        shift, scale = (self.modulation.float()[:, None] + e[:, :, None]).unbind(2)
        return self.head(_modulate(self.norm(x), shift, scale, e.shape[1]))


def _zero_last_embedding(freq_dim: int, dim: int) -> nn.Sequential:
    """An extra input's embedding ``Linear(freq_dim, dim), SiLU, Linear(dim, dim)`` whose last layer starts at zero
    (the model starts as the one without the input)."""
    emb = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
    nn.init.zeros_(emb[2].weight)
    nn.init.zeros_(emb[2].bias)
    return emb


class WanModel(nn.Module):
    """The Wan2.1 DiT. ``forward(x [B,T,C,H,W], t [B] or [B,T], context [B,Lc,text_dim]) -> flow [B,T,C,H,W]``.

    Parameter names follow the official checkpoints (``patch_embedding``, ``text_embedding.0``,
    ``time_projection.1``, ``blocks.N.self_attn.q``, ``blocks.N.norm3``, ``head.modulation``, ...); with
    ``arch.time_to`` also ``time_to_embedding.0`` / ``time_to_embedding.2`` (the second time) and with
    ``arch.guidance_input`` ``guidance_embedding.0`` / ``guidance_embedding.2`` (the guidance scale), created last
    (in this order) so the other parameters draw the same initial values.
    """
    TIME_TO_KEYS = tuple(f"time_to_embedding.{i}.{wb}" for i in (0, 2) for wb in ("weight", "bias"))
    GUIDANCE_KEYS = tuple(f"guidance_embedding.{i}.{wb}" for i in (0, 2) for wb in ("weight", "bias"))
    OPTIONAL_KEYS = TIME_TO_KEYS + GUIDANCE_KEYS    # a checkpoint without these inputs lacks them: the model keeps
    # their initial values (last layer zero: the checkpoint's function)

    def __init__(self, arch: WanArch, attention: str = "auto"):
        super().__init__()
        self.arch, self.attention = arch, attention
        d = arch.dim
        self.patch_embedding = nn.Conv3d(arch.in_dim, d, kernel_size=arch.patch_size, stride=arch.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(arch.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(arch.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.num_layers))
        self.head = Head(arch)
        self.rope = Rope(arch.head_dim, arch.rope_max_len)
        self.gradient_checkpointing = False
        self.sequence: SequenceShards | None = None     # train.sequence_parallel.attach sets it
        self.recompute_context = ckpt.noop_context_fn   # checkpoint(context_fn=): state a block's recompute needs
        if arch.time_to:
            self.time_to_embedding = _zero_last_embedding(arch.freq_dim, d)
        if arch.guidance_input:
            self.guidance_embedding = _zero_last_embedding(arch.freq_dim, d)

    def compile_blocks(self, **options) -> None:
        """``torch.compile`` the pure-tensor halves of every block (the attention plan stays eager)."""
        for blk in self.blocks:
            blk.attention_inputs = torch.compile(blk.attention_inputs, **options)
            blk.after_attention = torch.compile(blk.after_attention, **options)

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid ``(T', h, w)`` of a latent ``[*, frames, C, height, width]``."""
        pt, ph, pw = self.arch.patch_size
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"latent size {frames}x{height}x{width} is not divisible by patch {self.arch.patch_size}")
        return frames // pt, height // ph, width // pw

    def text_kv(self, context: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-layer cross-attention keys/values of ``context [B, Lc, text_dim]`` (cache them per prompt).

        A context shorter than ``text_len`` is zero-padded to it first, as the official forward does (the
        padding tokens are attended: their keys are those of the embedded zeros); a longer one raises.
        """
        short = self.arch.text_len - context.shape[1]
        if short < 0:
            raise ValueError(f"text context of {context.shape[1]} tokens exceeds text_len={self.arch.text_len}")
        if short:
            context = nn.functional.pad(context, (0, 0, 0, short))
        ctx = self.text_embedding(context.to(self.text_embedding[0].weight.dtype))
        return [blk.cross_attn.kv_of(ctx) for blk in self.blocks]

    def time_embed(self, t: Tensor, batch: int, frames: int, t_to: Tensor | None = None,
                   guidance: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``t [B] or [B, T]`` (and ``t_to`` alike, with ``arch.time_to``; the scale ``guidance [B]`` with
        ``arch.guidance_input``) -> ``e [B, T', dim]`` and block modulation ``e0 [B, T', 6, dim]`` (fp32)."""
        def per_token_frame(time: Tensor) -> Tensor:
            if time.dim() == 1:
                time = time[:, None].expand(batch, frames * self.arch.patch_size[0])
            return time[:, :: self.arch.patch_size[0]].flatten()

        t = per_token_frame(t)
        w = self.time_embedding[0].weight
        e = self.time_embedding(sinusoidal_embedding(self.arch.freq_dim, t).to(w.dtype))
        if self.arch.time_to:
            gap = t - per_token_frame(t_to) if t_to is not None else torch.zeros_like(t)
            e = e + self.time_to_embedding(sinusoidal_embedding(self.arch.freq_dim, gap).to(w.dtype))
        elif t_to is not None:
            raise ValueError("this DiT has one time input: set model.time_to=true for a second time t_to")
        if self.arch.guidance_input:
            if guidance is None:
                raise ValueError("this DiT takes a guidance scale (model.guidance_input=true): pass guidance [B]")
            e = e + self.guidance_embedding(sinusoidal_embedding(self.arch.freq_dim, per_token_frame(guidance))
                                            .to(w.dtype))
        elif guidance is not None:
            raise ValueError("this DiT has no guidance scale input: set model.guidance_input=true to pass guidance")
        e0 = self.time_projection(e).unflatten(-1, (6, self.arch.dim))
        return e.float().unflatten(0, (batch, frames)), e0.float().unflatten(0, (batch, frames))

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None, plan: AttentionPlan | None = None,
                text_kv: list[tuple[Tensor, Tensor]] | None = None, features_at: int | None = None,
                t_to: Tensor | None = None, guidance: Tensor | None = None):
        """Predict the flow ``v = eps - x0`` for latents ``x [B, T, C, H, W]`` at timesteps ``t [B, T]``.

        Either ``context`` (text embeddings ``[B, Lc <= text_len, text_dim]``, see :meth:`text_kv`) or precomputed
        ``text_kv`` is given. ``plan`` chooses the self-attention pattern (default: bidirectional over ``x``). With
        ``features_at = n`` it stops after ``n`` blocks and returns the tokens ``[B, L, dim]`` (discriminator
        features) instead. ``t_to`` (``[B]`` or ``[B, T]``; needs ``arch.time_to``): the end time of a flow map,
        whose output is then the average flow over ``[t_to, t]``. ``guidance`` (``[B]``; needed with, refused
        without ``arch.guidance_input``): the guidance scale ``w`` of a ``w``-conditioned student.
        """
        b, f, _, hgt, wid = x.shape
        grid, sp = self.grid(f, hgt, wid), self.sequence
        x = sp.enter(x) if sp is not None else x
        tokens = self.patch_embedding(x.permute(0, 2, 1, 3, 4).to(self.patch_embedding.weight.dtype))
        tokens = tokens.flatten(2).transpose(1, 2)
        e, e0 = self.time_embed(t, b, grid[0], t_to, guidance)
        kv = text_kv if text_kv is not None else self.text_kv(context)
        plan = plan if plan is not None else BidirectionalPlan(self.rope, grid, x.device, self.attention)
        if sp is not None:
            tokens, plan = sp.shard(tokens, grid[0]), sp.attention(plan, grid[0])
        for i, blk in enumerate(self.blocks[:features_at]):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = ckpt.checkpoint(blk, tokens, e0, kv[i], plan, i, self.attention, use_reentrant=False,
                                         context_fn=self.recompute_context)
            else:
                tokens = blk(tokens, e0, kv[i], plan, i, self.attention)
        if features_at is not None:
            return tokens if sp is None else sp.gather(tokens, grid[0])
        out = self.head(tokens, e)
        return self.unpatchify(out if sp is None else sp.gather(out, grid[0]), grid)

    def unpatchify(self, out: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """``[B, L, pt*ph*pw*C]`` (official channel order: patch dims first) -> ``[B, T, C, H, W]``."""
        (f, h, w), (pt, ph, pw) = grid, self.arch.patch_size
        out = out.float().view(out.shape[0], f, h, w, pt, ph, pw, self.arch.out_dim)
        return out.permute(0, 1, 4, 7, 2, 5, 3, 6).reshape(out.shape[0], f * pt, self.arch.out_dim, h * ph, w * pw)
