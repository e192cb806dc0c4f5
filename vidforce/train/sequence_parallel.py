"""Ulysses sequence parallelism (``train.sequence_parallel = P``) of every Wan DiT of a run, through DeepSpeed.

The ``P`` ranks of a sequence-parallel group hold the same micro-batch (the data shards over the
``world / P`` groups: ``dist.data_rank``) and split each DiT forward by tokens: rank ``r`` keeps tokens
``[r n, (r + 1) n)`` of every frame (``n = h w / P``), so the per-frame adaLN modulation, the text
cross-attention and the FFN run on its shard unchanged. Self-attention is Ulysses: an all-to-all turns
q / k / v ``[B, H, L/P, D]`` into ``[B, H/P, L, D]`` (all tokens, this rank's heads), the model's own
attention plan runs on that (RoPE at every token's global frame position, the block-causal mask, the KV
cache -- which therefore holds this rank's ``H/P`` heads of every cached token), and the inverse
all-to-all brings the output back to ``[B, H, L/P, D]``. The head's output is all-gathered, so every rank
of the group returns the whole flow and computes the same loss.

Gradients (one loss, replicated over the group): the gather's backward takes this rank's slice; parameter
gradients are then partial sums over the rank's tokens, which DeepSpeed's Ulysses reduction adds over the
group (``parallel_state_sp`` as the engines' ``mpu``: gradients summed over the group, averaged over the
data-parallel groups); the input latents' gradient is summed over the group (:meth:`Ulysses.enter`), so it
is whole and replicated, as the caller's other gradients are.

The all-to-all is DeepSpeed's ``deepspeed.sequence.layer._SeqAllToAll`` (NCCL on GPUs). Gloo has no
all-to-all: the CPU tests pass an all-gather-based equivalent as ``all_to_all``.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from vidforce.models.wan import AttentionPlan, WanModel

# (group, x [B, S, H, D], scatter_dim, gather_dim) -> x split along scatter_dim over the group's ranks and
# concatenated along gather_dim in rank order: [B, S/P, H, D] -> [B, S, H/P, D] (2, 1) and back (1, 2).
AllToAll = Callable[[object, Tensor, int, int], Tensor]


def deepspeed_all_to_all(group, x: Tensor, scatter_dim: int, gather_dim: int) -> Tensor:
    """DeepSpeed's differentiable Ulysses all-to-all (batch first)."""
    from deepspeed.sequence.layer import _SeqAllToAll  # noqa: PLC0415 (heavy; only training needs it)
    return _SeqAllToAll.apply(group, x, scatter_dim, gather_dim, 0)


def frame_slice(tokens: Tensor, frames: int, rank: int, size: int) -> Tensor:
    """Tokens ``[B, T * hw, C]`` (frame-major) -> rank ``rank``'s ``hw / size`` tokens of every frame
    ``[B, T * hw / size, C]``."""
    per_frame = tokens.unflatten(1, (frames, -1))
    n = per_frame.shape[2] // size
    return per_frame[:, :, rank * n:(rank + 1) * n].flatten(1, 2)


def to_frame_major(x: Tensor, frames: int, size: int) -> Tensor:
    """``x [B, H, size * T * n, D]`` with the ranks' shards in rank order -> frame-major ``[B, H, T * size * n, D]``."""
    return x.unflatten(2, (size, frames, -1)).transpose(2, 3).flatten(2, 4)


def to_rank_major(x: Tensor, frames: int, size: int) -> Tensor:
    """Inverse of :func:`to_frame_major`."""
    return x.unflatten(2, (frames, size, -1)).transpose(2, 3).flatten(2, 4)


class _SumGrad(torch.autograd.Function):
    """Identity forward; backward all-reduces (sums) the gradient over ``group``."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad, group=ctx.group)
        return grad, None


class _GatherFrames(torch.autograd.Function):
    """Forward: all-gather the ranks' per-frame shards ``[B, T * n, C]`` into frame-major ``[B, T * P * n, C]``;
    backward: this rank's slice (every rank's loss is the same function of the replicated output)."""

    @staticmethod
    def forward(ctx, x: Tensor, group, frames: int, rank: int, size: int) -> Tensor:
        ctx.frames, ctx.rank, ctx.size = frames, rank, size
        parts = [torch.empty_like(x) for _ in range(size)]
        tdist.all_gather(parts, x.contiguous(), group=group)
        return to_frame_major(torch.cat(parts, 1)[:, None], frames, size)[:, 0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return frame_slice(grad, ctx.frames, ctx.rank, ctx.size), None, None, None, None


class UlyssesPlan:
    """An attention plan over this rank's tokens: all-to-all to ``heads/P`` heads of every token, the inner
    plan, all-to-all back. q / k / v and the output are ``[B, H, L/P, D]``."""

    def __init__(self, inner: AttentionPlan, sp: "Ulysses", frames: int):
        self.inner, self.sp, self.frames = inner, sp, frames

    def _heads_to_tokens(self, x: Tensor) -> Tensor:
        y = self.sp.all_to_all(self.sp.group, x.transpose(1, 2), 2, 1)           # [B, L, H/P, D], rank-major
        return to_frame_major(y.transpose(1, 2), self.frames, self.sp.size)

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = self.inner(layer, *(self._heads_to_tokens(t) for t in (q, k, v)))   # [B, H/P, L, D]
        y = to_rank_major(out, self.frames, self.sp.size).transpose(1, 2)
        return self.sp.all_to_all(self.sp.group, y, 1, 2).transpose(1, 2)


class Ulysses:
    """The ``models.wan.SequenceShards`` of one sequence-parallel ``group`` (module docstring)."""

    def __init__(self, group, all_to_all: AllToAll = deepspeed_all_to_all):
        self.group, self.all_to_all = group, all_to_all
        self.size, self.rank = tdist.get_world_size(group), tdist.get_rank(group)

    def enter(self, x: Tensor) -> Tensor:
        return _SumGrad.apply(x, self.group)

    def shard(self, tokens: Tensor, frames: int) -> Tensor:
        per_frame = tokens.shape[1] // frames
        if per_frame % self.size:
            raise ValueError(f"train.sequence_parallel={self.size} must divide the {per_frame} tokens of a frame")
        return frame_slice(tokens, frames, self.rank, self.size)

    def attention(self, plan: AttentionPlan, frames: int) -> AttentionPlan:
        return UlyssesPlan(plan, self, frames)

    def gather(self, tokens: Tensor, frames: int) -> Tensor:
        return _GatherFrames.apply(tokens, self.group, frames, self.rank, self.size)


def attach(modules: Iterable[nn.Module], sp: Ulysses | None) -> None:
    """Run every Wan DiT inside ``modules`` sequence-parallel over ``sp`` (nothing when ``sp`` is None). Call it
    after every deep copy of the modules (a process group does not copy)."""
    if sp is None:
        return
    for module in modules:
        for m in module.modules():
            if isinstance(m, WanModel):
                if m.arch.num_heads % sp.size:
                    raise ValueError(f"train.sequence_parallel={sp.size} must divide the {m.arch.num_heads} heads")
                m.sequence = sp


def mpu(size: int):
    """DeepSpeed's Ulysses groups module (``deepspeed.initialize(mpu=...)``) when ``size > 1``, else None."""
    if size == 1:
        return None
    from deepspeed.runtime.sequence_parallel import parallel_state_sp  # noqa: PLC0415
    return parallel_state_sp


def setup(size: int) -> Ulysses | None:
    """Create the sequence-parallel groups of ``train.sequence_parallel = size`` (consecutive ranks; after
    ``dist.init``); ``None`` for ``size == 1``. Idempotent."""
    groups = mpu(size)
    if groups is None:
        return None
    world = tdist.get_world_size() if tdist.is_initialized() else 1
    if world % size:
        raise ValueError(f"train.sequence_parallel={size} must divide the world size {world}")
    if groups._SEQUENCE_PARALLEL_GROUP is None:
        groups.initialize_sequence_parallel(size)
    return Ulysses(groups.get_sequence_parallel_group())
