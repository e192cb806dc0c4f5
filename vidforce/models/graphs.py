"""CUDA graphs around the per-chunk DiT forward of streaming (``stream.cuda_graphs``).

Streaming launches thousands of small kernels per chunk forward; the host's launch time exceeded the GPU's
time in the profile. A graph replays a whole forward with one launch. Capture needs static shapes and
addresses, and a streamed chunk forward has them once its cache plan is fixed:
- the ring cache (capacity = window) is read as a prefix slice of its slots: a view at a fixed address;
- what changes from chunk to chunk is data: the input latents and timesteps (and a ``w``-conditioned model's
  guidance scale, a static ``[B]`` input like ``t_to``), the ring slots the chunk writes,
  the RoPE angles of its queries (relative RoPE: and of the keys, by rank in the window) and the text K/V
  (on a prompt switch). These live in device tensors owned by the graph and are copied in before a replay.
So one graph per *shape* serves every chunk of that shape: the key is (frames, frames read) of each chunk in
the forward (two for a fused refresh). While the window fills, each fill level has its own graph; after that
one graph (two with the fused refresh) runs the rest of the video.

:class:`GraphedChunks` stands in for the two methods the streamer takes from ``CausalWan``: ``new_cache`` (one
cache kept across streams, since graphs write into its buffers) and ``forward_chunk`` (the model's own host
bookkeeping, ``CausalWan.chunk_call``, then a replay). Forwards that cannot be captured (grad, read-only, a
gathered read when capacity > window, another cache) run eagerly. Without ``capture`` (CPU) the same static
buffers run eagerly: the slot and angle logic, testable anywhere. One stream at a time per runner.

Training (``rollout.cuda_graphs``) passes the runner to ``rollout.rollout`` in place of the generator: each rollout
is a new stream on the reset cache; its ``no_grad`` forwards (the prefix before the scored window, the refreshes,
a critic turn's whole rollout) replay, those with grad run eagerly. One runner per generator for the whole run:
the optimizer updates the weights in place, so the captured graphs read the new weights.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor

from vidforce.models.causal import CachePlan, CausalWan, ChunkCall, ChunkSequencePlan
from vidforce.models.kv_cache import KVCache

Plan = CachePlan | ChunkSequencePlan


def sub_plans(plan: Plan) -> list[CachePlan]:
    """The per-chunk plans of a forward (two for a fused refresh)."""
    return plan.plans if isinstance(plan, ChunkSequencePlan) else [plan]


def capturable(plan: Plan) -> bool:
    """Whether every chunk of the forward writes the cache and reads a prefix slice of its ring (static)."""
    return not torch.is_grad_enabled() and all(p.write and isinstance(p.layout.read, slice) for p in sub_plans(plan))


def shape_key(call: ChunkCall) -> tuple:
    """What fixes a forward's shapes: (frames, frames read) per chunk, the input's shape and dtype, the shape of the
    second time ``t_to`` (flow-map generators) and of the guidance scale (``w``-conditioned ones) if given."""
    return (tuple((p.layout.stop - p.layout.start, p.layout.read.stop) for p in sub_plans(call.plan)),
            tuple(call.x.shape), call.x.dtype, None if call.t_to is None else tuple(call.t_to.shape),
            None if call.guidance is None else tuple(call.guidance.shape))


def static_copy(plan: Plan, device) -> Plan:
    """A plan of the same shape that owns its per-chunk tensors (write slots, RoPE angles) on ``device``."""
    if isinstance(plan, ChunkSequencePlan):
        out = copy.copy(plan)
        out.plans = [static_copy(p, device) for p in plan.plans]
        return out
    out = copy.copy(plan)
    out.layout = dataclasses.replace(plan.layout, write_slots=plan.layout.write_slots.to(device, copy=True))
    out.q_angles = tuple(a.clone() for a in plan.q_angles)
    out.k_angles = None if plan.k_angles is None else tuple(a.clone() for a in plan.k_angles)
    return out


def without_writes(plan: Plan, forward) -> Tensor:
    """``forward()`` with the cache as it was before: the ring slots ``plan`` writes, every layer's K and V, are
    saved before and put back after. A capture's warm-up runs the forward once for real; a fused refresh's later
    chunk evicts frames its earlier chunk reads (:class:`ChunkSequencePlan`), so without this the replay that
    follows would read the warm-up's writes in their place."""
    plans = sub_plans(plan)
    cache, slots = plans[0].cache, torch.cat([p.layout.write_slots for p in plans]).unique()
    buffers = cache.k + cache.v
    saved = [b.index_select(2, slots) for b in buffers]
    out = forward()
    for b, s in zip(buffers, saved):
        b.index_copy_(2, slots, s)
    return out


def load(static: Plan, plan: Plan) -> None:
    """Copy ``plan``'s per-chunk tensors into ``static`` (same shape key), in place."""
    for dst, src in zip(sub_plans(static), sub_plans(plan)):
        dst.layout.write_slots.copy_(src.layout.write_slots)
        for d, s in zip(dst.q_angles + (dst.k_angles or ()), src.q_angles + (src.k_angles or ())):
            d.copy_(s)


class _Graph:
    """One captured forward: static input ``x [B, P + F, C, H, W]``, ``t`` (and ``t_to``) ``[B, P + F]`` (and the
    guidance scale ``[B]``), plan and output."""

    def __init__(self, model: CausalWan, call: ChunkCall, text_kv, pool, capture: bool):
        self.model, self.text_kv = model, text_kv
        self.x, self.t = call.x.clone(), call.t.clone()
        self.t_to = None if call.t_to is None else call.t_to.clone()
        self.guidance = None if call.guidance is None else call.guidance.clone()
        self.plan = static_copy(call.plan, call.x.device)
        self.graph = None
        if capture:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):              # warm-up (handles, compilation), its cache writes undone
                without_writes(self.plan, self._forward)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.out = self._forward()

    def _forward(self) -> Tensor:
        return self.model(self.x, self.t, plan=self.plan, text_kv=self.text_kv, t_to=self.t_to,
                          guidance=self.guidance)

    def run(self, call: ChunkCall) -> Tensor:
        """The flow of ``call`` (all its frames), computed on the static buffers."""
        self.x.copy_(call.x)
        self.t.copy_(call.t)
        if self.t_to is not None:
            self.t_to.copy_(call.t_to)
        if self.guidance is not None:
            self.guidance.copy_(call.guidance)
        load(self.plan, call.plan)
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.out.clone()


class GraphedChunks:
    """Per-chunk forwards of ``model`` through captured CUDA graphs (``capture``), else eager on static buffers."""

    def __init__(self, model: CausalWan, capture: bool):
        self.model, self.capture = model, capture
        self.cache: KVCache | None = None
        self.cache_spec: tuple | None = None
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.text_kv: list[tuple[Tensor, Tensor]] | None = None     # static copies the graphs read
        self.text_source = None                                    # the text K/V they were copied from

    @property
    def arch(self):
        """The model's architecture (samplers read ``arch.time_to``)."""
        return self.model.arch

    @property
    def frames_per_chunk(self) -> int:
        return self.model.frames_per_chunk

    @property
    def gradient_checkpointing(self) -> bool:
        return self.model.gradient_checkpointing

    def parameters(self):
        return self.model.parameters()

    def new_cache(self, batch: int, height: int, width: int, num_frames: int, device, dtype,
                  extra_capacity: int = 0) -> KVCache:
        """The runner's cache, reset, when it fits (its graphs stay valid); else a new one (graphs dropped). With
        ``extra_capacity`` (a checkpointed rollout with grad) a cache of the model's own: every forward runs eagerly."""
        if extra_capacity:
            return self.model.new_cache(batch, height, width, num_frames, device, dtype, extra_capacity)
        spec = (batch, height, width, self.model.window or num_frames, torch.device(device), dtype)
        if spec != self.cache_spec:
            self.graphs.clear()
            # a fresh memory pool: capturing into the dropped graphs' pool (released, blocks not yet freed) trips
            # the caching allocator's assert "use_count > 0" (seen on an H200, bench_stream window 21 -> 12)
            self.pool = torch.cuda.graph_pool_handle() if self.capture else None
            self.text_kv = self.text_source = None
            self.cache = self.model.new_cache(batch, height, width, num_frames, device, dtype)
            self.cache_spec = spec
        self.cache.reset()
        return self.cache

    def forward_chunk(self, x: Tensor, t: Tensor, cache: KVCache, start: int, write: bool,
                      context: Tensor | None = None, text_kv=None, t_to: Tensor | None = None,
                      pending: tuple[Tensor, Tensor] | None = None, guidance: Tensor | None = None) -> Tensor:
        """``CausalWan.forward_chunk``, replayed from a graph when the forward can be captured."""
        call = self.model.chunk_call(x, t, cache, start, write, t_to, pending, guidance)
        if cache is not self.cache or context is not None or not capturable(call.plan):
            return self.model(call.x, call.t, context, plan=call.plan, text_kv=text_kv, t_to=call.t_to,
                              guidance=call.guidance)[:, call.skip:]
        self._use_text(text_kv)
        key = shape_key(call)
        if key not in self.graphs:
            self.graphs[key] = _Graph(self.model, call, self.text_kv, self.pool, self.capture)
        return self.graphs[key].run(call)[:, call.skip:]

    def _use_text(self, text_kv: list[tuple[Tensor, Tensor]]) -> None:
        """Point the graphs' static text K/V at ``text_kv`` (a copy when the prompt changed)."""
        if text_kv is self.text_source:
            return
        if self.text_kv is None:
            self.text_kv = [(k.clone(), v.clone()) for k, v in text_kv]
        else:
            for (sk, sv), (k, v) in zip(self.text_kv, text_kv):
                sk.copy_(k)
                sv.copy_(v)
        self.text_source = text_kv
