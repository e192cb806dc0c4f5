"""KV cache of a chunk-causal video DiT: static buffers, attention sink + rolling window, ring indexing.

A chunk of frames ``[start, stop)`` attends to the first ``sink`` frames of the video (never evicted)
and to frames ``[stop - (window - sink), stop)`` -- itself included: ``window`` frames in all
(vidforce's ``causal.window``). Frames are stored in a ring of ``capacity`` slots (``capacity >= window``;
inference uses ``capacity == window``, flat memory), so eviction needs no copy. Training with activation
checkpointing passes a larger capacity so that no slot read by a chunk still awaiting backward is
overwritten before its recomputation.

Writes go to the ring slots of their frames, so writing a chunk whose start equals the last written
start overwrites it (the clean-context refresh pass), and writing the next chunk evicts exactly the
frames that leave the window. Keys are stored rotated at their absolute frame index (``absolute`` RoPE)
or unrotated (``relative``: the reader rotates them by their rank inside the window).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CacheLayout:
    """What one forward of a chunk ``[start, stop)`` reads and writes; shared by every layer.

    ``read``: slots of cached frames to attend (a slice when they are a prefix, else an index tensor);
    ``write_slots``: slots the chunk is written to (``None`` in read-only mode, where the chunk's own
    keys are appended after the cached ones); ``key_pos`` / ``query_pos``: frame positions for RoPE
    (window ranks in relative mode, absolute indices otherwise) of the read frames / the chunk.
    """
    start: int
    stop: int
    read: slice | Tensor
    write_slots: Tensor | None
    key_pos: Tensor
    query_pos: Tensor


class KVCache:
    """Per-layer static K/V buffers ``[B, heads, capacity, tokens_per_frame, head_dim]``."""

    def __init__(self, num_layers: int, batch: int, num_heads: int, head_dim: int, tokens_per_frame: int,
                 window: int, sink: int, device, dtype, relative: bool, capacity: int | None = None):
        capacity = window if capacity is None else capacity
        if window <= sink:
            raise ValueError(f"causal.window ({window}) must exceed causal.sink ({sink})")
        if capacity < window:
            raise ValueError(f"cache capacity ({capacity}) must be at least causal.window ({window})")
        self.window, self.capacity, self.sink, self.relative = window, capacity, sink, relative
        self.tokens_per_frame = tokens_per_frame
        shape = (batch, num_heads, capacity, tokens_per_frame, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.slot_frame = [-1] * capacity
        self.last_start = -1
        self.end = 0
        self.keep_grad = False       # writes under grad keep their autograd history (rollout.cache_grad)

    def reset(self) -> None:
        """Forget every frame (buffers are kept; stale values are never read)."""
        self.slot_frame = [-1] * self.capacity
        self.last_start, self.end = -1, 0

    def slot(self, frame: int) -> int:
        if frame < self.sink:
            return frame
        return self.sink + (frame - self.sink) % (self.capacity - self.sink)

    def in_window(self, frame: int, stop: int) -> bool:
        """Whether ``frame`` is attended by a chunk ending at ``stop``."""
        return frame < stop and (frame < self.sink or frame >= stop - (self.window - self.sink))

    def layout(self, start: int, stop: int, write: bool) -> CacheLayout:
        """Plan one forward of frames ``[start, stop)``; in write mode also commit the bookkeeping."""
        if stop - start > self.window - self.sink:
            raise ValueError(f"a chunk of {stop - start} frames does not fit causal.window={self.window} "
                             f"with causal.sink={self.sink}")
        if write and start != self.last_start and start < self.end:
            raise ValueError(f"cache write at frame {start}: must overwrite the last chunk "
                             f"(start {self.last_start}) or append at or after frame {self.end}")
        if write:
            slots = [self.slot(f) for f in range(start, stop)]
            for s, f in zip(slots, range(start, stop)):
                self.slot_frame[s] = f
            self.last_start, self.end = start, max(self.end, stop)
        pairs = sorted((f, s) for s, f in enumerate(self.slot_frame)
                       if f >= 0 and self.in_window(f, stop) and (write or f < start))
        read_slots = [s for _, s in pairs]
        frames = [f for f, _ in pairs]
        if write:
            prefix = sorted(read_slots) == list(range(len(read_slots)))
            read = slice(0, len(read_slots)) if prefix else torch.tensor(read_slots, dtype=torch.long)
            if isinstance(read, slice):   # prefix slots are in frame order already
                frames = [self.slot_frame[s] for s in range(len(read_slots))]
        else:
            read = torch.tensor(read_slots, dtype=torch.long)
        if self.relative:
            rank = {f: i for i, f in enumerate(sorted(frames + ([] if write else list(range(start, stop)))))}
            key_pos = torch.tensor([rank[f] for f in frames], dtype=torch.long)
            query_pos = torch.tensor([rank[f] for f in range(start, stop)], dtype=torch.long)
        else:
            key_pos = torch.tensor(frames, dtype=torch.long)
            query_pos = torch.arange(start, stop)
        write_slots = torch.tensor([self.slot(f) for f in range(start, stop)]) if write else None
        return CacheLayout(start, stop, read, write_slots, key_pos, query_pos)

    def write(self, layer: int, layout: CacheLayout, k: Tensor, v: Tensor) -> None:
        """Store a chunk's ``k, v [B, H, F * tokens_per_frame, D]`` at its ring slots.

        Detached, in place. With ``keep_grad`` (``rollout.cache_grad=exit_step``) a write under grad builds new
        buffers that carry the chunk's autograd history, and a later write without grad (the refresh) replaces
        the values but passes gradients through to that history (:class:`_KeepHistory`): readers' gradients
        reach the chunk's exit step, as in Self-Forcing's public code.
        """
        idx = layout.write_slots.to(k.device)
        k, v = k.unflatten(2, (-1, self.tokens_per_frame)), v.unflatten(2, (-1, self.tokens_per_frame))
        if self.keep_grad and (torch.is_grad_enabled() or self.k[layer].requires_grad):
            grad = torch.is_grad_enabled()
            with torch.enable_grad():
                for bufs, new in ((self.k, k), (self.v, v)):
                    if grad:
                        bufs[layer] = bufs[layer].index_copy(2, idx, new)
                    else:
                        values = bufs[layer].detach().index_copy(2, idx, new.detach())
                        bufs[layer] = _KeepHistory.apply(bufs[layer], values)
            return
        with torch.no_grad():
            self.k[layer].index_copy_(2, idx, k.detach())
            self.v[layer].index_copy_(2, idx, v.detach())

    def read(self, layer: int, layout: CacheLayout) -> tuple[Tensor, Tensor]:
        """Cached ``k, v [B, H, n * tokens_per_frame, D]`` of the frames the chunk attends (views when
        they form a prefix of the ring, else gathered copies)."""
        k, v = self.k[layer], self.v[layer]
        if isinstance(layout.read, slice):
            return k[:, :, layout.read].flatten(2, 3), v[:, :, layout.read].flatten(2, 3)
        idx = layout.read.to(k.device)
        return k.index_select(2, idx).flatten(2, 3), v.index_select(2, idx).flatten(2, 3)


class _KeepHistory(torch.autograd.Function):
    """``values`` forward, the gradient passed unchanged to ``history`` (a buffer whose values were replaced)."""

    @staticmethod
    def forward(ctx, history: Tensor, values: Tensor) -> Tensor:
        return values.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None
