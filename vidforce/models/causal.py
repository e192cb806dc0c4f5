"""Chunk-causal Wan DiT: one set of weights, two ways to run it.

- **Full sequence** (teacher forcing, diffusion forcing, ODE init): every frame of ``x [B, T, C, H, W]`` in
  one forward with a block-causal frame mask -- a chunk attends to itself and to earlier frames inside
  the same window + sink the KV cache keeps, so training can see exactly what inference sees. With
  ``clean`` frames (teacher forcing) the sequence is ``[clean; noisy]``: noisy chunk ``c`` attends to clean
  frames of earlier chunks and to itself.
- **Per chunk** with a :class:`KVCache` (rollouts, streaming); streaming may run a chunk's clean-context
  refresh inside the next chunk's first forward (``pending``: :class:`ChunkSequencePlan`), the same numbers.
Both give the same result on the same input (tests/models/test_causal.py).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch
from torch import Tensor

from vidforce.models.attention import attend
from vidforce.models.kv_cache import KVCache
from vidforce.models.rope import Rope, apply_rope
from vidforce.models.wan import WanArch, WanModel


def in_window(key: Tensor, stop: Tensor, window: int, sink: int) -> Tensor:
    """Whether key frames are attended by a chunk ending at ``stop`` (broadcasting int tensors)."""
    keep = key < stop
    if window:
        keep = keep & ((key < sink) | (key >= stop - (window - sink)))
    return keep


def frame_mask(frames: int, chunk: int, window: int = 0, sink: int = 0, clean: bool = False) -> Tensor:
    """Boolean frame-level mask ``[S, S]`` (True = attend), ``S = frames`` or ``2 * frames`` with a clean stream.

    Sequence frame ``j`` has position ``j % frames`` and stream ``j // frames`` (0 = clean, 1 = noisy).
    """
    seq = torch.arange(frames * (2 if clean else 1))
    pos, stream = seq % frames, seq // frames
    q_chunk = (pos // chunk)[:, None]
    stop = torch.clamp((q_chunk + 1) * chunk, max=frames)
    allowed = in_window(pos[None, :], stop, window, sink)
    if not clean:
        return allowed
    q_noisy, k_noisy = stream[:, None] == 1, stream[None, :] == 1
    same_chunk = (pos // chunk)[None, :] == q_chunk
    earlier = pos[None, :] < q_chunk * chunk
    from_clean = ~q_noisy & ~k_noisy & allowed
    from_noisy = q_noisy & ((~k_noisy & earlier & allowed) | (k_noisy & same_chunk))
    return from_clean | from_noisy


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention  # noqa: PLC0415
    return torch.compile(flex_attention, dynamic=False)


class BlockCausalPlan:
    """Full-sequence chunk-causal self-attention over ``frames`` frames of ``h x w`` tokens.

    ``impl``: ``loop`` (one dense attention per query chunk over its key frames; supports relative RoPE),
    ``dense`` (one masked SDPA) or ``flex`` (FlexAttention with a block mask built once per plan).
    """

    def __init__(self, rope: Rope, frames: int, h: int, w: int, chunk: int, window: int, sink: int,
                 relative: bool, device, backend: str, impl: str, clean: bool = False):
        if relative and impl != "loop":
            raise ValueError("causal.full_sequence must be 'loop' with causal.rope_mode=relative")
        if impl == "flex" and torch.device(device).type == "cpu" and torch.is_grad_enabled():
            raise ValueError("causal.full_sequence=flex has no backward on CPU; use loop or dense")
        self.tpf, self.backend, self.impl, self.relative = h * w, backend, impl, relative
        mask = frame_mask(frames, chunk, window, sink, clean)
        seq = torch.arange(mask.shape[0])
        self.cos, self.sin = rope.angles((seq % frames).to(device), h, w)
        self.groups = []                                   # (query frames, key frames, angles or None)
        for q_frames in torch.split(seq, [min(chunk, frames - s) for s in range(0, frames, chunk)] * (1 + clean)):
            keys = mask[q_frames[0]].nonzero().flatten()
            angles = None
            if relative:
                rank = torch.cumsum(mask[q_frames[0]].long(), 0) - 1
                angles = (rope.angles(rank[keys].to(device), h, w), rope.angles(rank[q_frames].to(device), h, w))
            self.groups.append((q_frames, keys, angles))
        if impl == "dense":
            self.token_mask = mask.repeat_interleave(self.tpf, 0).repeat_interleave(self.tpf, 1).to(device)
        elif impl == "flex":
            from torch.nn.attention.flex_attention import create_block_mask  # noqa: PLC0415
            fm, tpf, n = mask.to(device), self.tpf, mask.shape[0] * self.tpf
            self.block_mask = create_block_mask(lambda b, hh, q, kv: fm[q // tpf, kv // tpf], None, None, n, n,
                                                device=device)
        elif impl != "loop":
            raise ValueError(f"causal.full_sequence must be loop, flex or dense, got {impl!r}")

    def _frames(self, x: Tensor, frames: Tensor) -> Tensor:
        """Tokens of the given sequence frames of ``x [B, H, S * tpf, D]`` (a view when contiguous)."""
        lo, n = int(frames[0]), frames.numel()
        if int(frames[-1]) - lo + 1 == n:
            return x[:, :, lo * self.tpf:(lo + n) * self.tpf]
        return x.unflatten(2, (-1, self.tpf)).index_select(2, frames.to(x.device)).flatten(2, 3)

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if not self.relative:
            q, k = apply_rope(q, self.cos, self.sin), apply_rope(k, self.cos, self.sin)
        if self.impl == "dense":
            return attend(q, k, v, self.backend, mask=self.token_mask)
        if self.impl == "flex":
            return _compiled_flex()(q, k, v, block_mask=self.block_mask)
        outs = []
        for q_frames, keys, angles in self.groups:
            qg, kg, vg = self._frames(q, q_frames), self._frames(k, keys), self._frames(v, keys)
            if angles is not None:
                (kc, ks), (qc, qs) = angles
                qg, kg = apply_rope(qg, qc, qs), apply_rope(kg, kc, ks)
            outs.append(attend(qg, kg, vg, self.backend))
        return torch.cat(outs, dim=2)


def to_device(index: Tensor, device) -> Tensor:
    """A small CPU tensor on ``device``; on CUDA through pinned memory, so the copy does not wait for the stream
    (a plain ``.to`` synchronises: the host could not queue a forward ahead of the GPU)."""
    device = torch.device(device)
    return index.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else index.to(device)


class CachePlan:
    """Self-attention of one chunk ``[start, stop)`` against a :class:`KVCache`.

    ``write=True`` (under ``no_grad``: sampling steps, the cache refresh, streaming; or the step with grad
    when ``cache.keep_grad``): the chunk's K/V are stored in the ring and attention reads the window in
    place. ``write=False`` (the step that keeps grad): cached K/V are read, the chunk's own K/V appended,
    nothing is stored.
    """

    def __init__(self, cache: KVCache, rope: Rope, h: int, w: int, start: int, stop: int, write: bool,
                 device, backend: str):
        if write and torch.is_grad_enabled() and not cache.keep_grad:
            raise RuntimeError("cache writes run under torch.no_grad(); use write=False for the step with grad")
        self.cache, self.write, self.backend = cache, write, backend
        layout = cache.layout(start, stop, write)
        self.layout = dataclasses.replace(      # index tensors on the device once, not per layer
            layout, write_slots=None if layout.write_slots is None else to_device(layout.write_slots, device),
            read=layout.read if isinstance(layout.read, slice) else to_device(layout.read, device))
        self.q_angles = rope.angles(to_device(layout.query_pos, device), h, w)
        self.k_angles = rope.angles(to_device(layout.key_pos, device), h, w) if cache.relative else None

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        qc, qs = self.q_angles
        q = apply_rope(q, qc, qs)
        k_own = k if self.cache.relative else apply_rope(k, qc, qs)
        if self.write:
            self.cache.write(layer, self.layout, k_own, v)
        kc, vc = self.cache.read(layer, self.layout)
        if self.cache.relative:
            kc = apply_rope(kc, *self.k_angles)
        if not self.write:
            kc = torch.cat([kc, apply_rope(k, qc, qs) if self.cache.relative else k_own], dim=2)
            vc = torch.cat([vc, v], dim=2)
        return attend(q, kc.to(q.dtype), vc.to(q.dtype), self.backend)


class ChunkSequencePlan:
    """Self-attention of consecutive chunks in one forward, each chunk against the cache exactly as its own
    forward would see it (one :class:`CachePlan` per chunk, built in order). Per layer the plans run in order on
    their chunk's tokens, so a later chunk's write (which may evict the oldest frames of the ring) comes after
    the earlier chunk has read them: the fused clean-context refresh (``sampling.PendingRefresh``)."""

    def __init__(self, plans: list[CachePlan], tokens_per_frame: int):
        self.plans = plans
        self.sizes = [(p.layout.stop - p.layout.start) * tokens_per_frame for p in plans]

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        parts = zip(self.plans, q.split(self.sizes, 2), k.split(self.sizes, 2), v.split(self.sizes, 2))
        return torch.cat([plan(layer, qi, ki, vi) for plan, qi, ki, vi in parts], dim=2)


class ChunkCall(NamedTuple):
    """One per-chunk forward as :meth:`CausalWan.forward_chunk` runs it: input ``x [B, P + F, C, H, W]`` and
    times ``t`` / ``t_to`` of the ``P`` pending frames then the chunk's, its attention ``plan``; the output's
    first ``skip = P`` frames are dropped; ``guidance [B]``: the guidance scale (per sample, pending frames alike)."""
    x: Tensor
    t: Tensor
    t_to: Tensor | None
    plan: CachePlan | ChunkSequencePlan
    skip: int
    guidance: Tensor | None = None


class CausalWan(WanModel):
    """A Wan DiT run chunk-causally. Same parameters (and state-dict keys) as :class:`WanModel`."""

    def __init__(self, arch: WanArch, frames_per_chunk: int = 3, window: int = 0, sink: int = 0,
                 rope_mode: str = "absolute", attention: str = "auto", full_sequence: str = "loop"):
        super().__init__(arch, attention)
        if rope_mode not in ("absolute", "relative"):
            raise ValueError(f"causal.rope_mode must be absolute or relative, got {rope_mode!r}")
        if arch.patch_size[0] != 1:
            raise ValueError("the causal model needs temporal patch size 1")
        self.frames_per_chunk, self.window, self.sink = frames_per_chunk, window, sink
        self.relative, self.full_sequence = rope_mode == "relative", full_sequence

    def new_cache(self, batch: int, height: int, width: int, num_frames: int, device, dtype,
                  extra_capacity: int = 0) -> KVCache:
        """An empty cache for latents of ``height x width``; ``window=0`` means all ``num_frames``. With sequence
        parallelism it holds this rank's ``heads / size`` heads of every token."""
        _, h, w = self.grid(1, height, width)
        window = self.window or num_frames
        heads = self.arch.num_heads // (self.sequence.size if self.sequence is not None else 1)
        return KVCache(self.arch.num_layers, batch, heads, self.arch.head_dim, h * w, window,
                       self.sink, device, dtype, self.relative, capacity=window + extra_capacity)

    def forward_chunk(self, x: Tensor, t: Tensor, cache: KVCache, start: int, write: bool,
                      context: Tensor | None = None, text_kv=None, t_to: Tensor | None = None,
                      pending: tuple[Tensor, Tensor] | None = None, guidance: Tensor | None = None) -> Tensor:
        """Flow for one chunk ``x [B, F, C, H, W]`` at frames ``[start, start + F)``, ``t [B, F]`` (``t_to``: the
        second time of a flow map, ``guidance [B]``: the guidance scale, ``WanModel.forward``). ``pending =
        (x_p [B, P, C, H, W], t_p [B, P])``: the chunk just before, written to the cache in the same forward (its
        clean-context pass, fused, at the same ``guidance``); the output covers ``x`` only."""
        call = self.chunk_call(x, t, cache, start, write, t_to, pending, guidance)
        return self(call.x, call.t, context, plan=call.plan, text_kv=text_kv, t_to=call.t_to,
                    guidance=call.guidance)[:, call.skip:]

    def chunk_call(self, x: Tensor, t: Tensor, cache: KVCache, start: int, write: bool, t_to: Tensor | None = None,
                   pending: tuple[Tensor, Tensor] | None = None, guidance: Tensor | None = None) -> ChunkCall:
        """What :meth:`forward_chunk` runs (the CUDA-graph runner runs the same); commits the cache bookkeeping of
        the pending chunk (a write at ``start - P``), then of the chunk."""
        _, h, w = self.grid(1, x.shape[3], x.shape[4])
        plan = functools.partial(CachePlan, cache, self.rope, h, w, device=x.device, backend=self.attention)
        if pending is None:
            return ChunkCall(x, t, t_to, plan(start=start, stop=start + x.shape[1], write=write), 0, guidance)
        xp, tp = pending
        plans = [plan(start=start - xp.shape[1], stop=start, write=True),
                 plan(start=start, stop=start + x.shape[1], write=write)]
        if t_to is not None:
            t_to = torch.cat([tp, t_to if t_to.dim() == 2 else t_to[:, None].expand_as(t)], dim=1)
        return ChunkCall(torch.cat([xp, x], 1), torch.cat([tp, t], 1), t_to, ChunkSequencePlan(plans, h * w),
                         xp.shape[1], guidance)

    def forward_full(self, x: Tensor, t: Tensor, context: Tensor | None = None, text_kv=None,
                     clean: Tensor | None = None, clean_t: Tensor | None = None,
                     t_to: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        """Block-causal flow for all frames of ``x [B, T, C, H, W]``, ``t [B, T]`` (``t_to``: the second time of a
        flow map, ``guidance [B]``: the guidance scale, ``WanModel.forward``; clean frames alike).

        With ``clean [B, T, C, H, W]`` (at ``clean_t``), noisy chunks see clean earlier frames (teacher
        forcing; the clean frames' ``t_to`` is ``clean_t``); the output covers the noisy frames only.
        """
        frames = x.shape[1]
        _, h, w = self.grid(1, x.shape[3], x.shape[4])
        if clean is not None:
            if t_to is not None:
                t_to = torch.cat([clean_t, t_to if t_to.dim() == 2 else t_to[:, None].expand_as(t)], dim=1)
            x, t = torch.cat([clean, x], dim=1), torch.cat([clean_t, t], dim=1)
        plan = BlockCausalPlan(self.rope, frames, h, w, self.frames_per_chunk, self.window, self.sink,
                               self.relative, x.device, self.attention, self.full_sequence, clean is not None)
        out = self(x, t, context, plan=plan, text_kv=text_kv, t_to=t_to, guidance=guidance)
        return out[:, frames:] if clean is not None else out
