"""The cases of test_sequence_parallel.py, run by one process: ``python -m tests.train.sequence_ranks OUT``.

Without launcher variables it is a world of one, no sequence parallelism (the reference). As one of two gloo
ranks it runs every DiT over ``Ulysses`` with ``train.sequence_parallel = 2``; gloo has no all-to-all, so these
tests exchange through :func:`gather_all_to_all` (an all-gather-based equivalent, tests only), and the
``deepspeed`` case runs DeepSpeed's own ``_SeqAllToAll`` with ``deepspeed.comm.all_to_all_single`` emulated by
an all-gather (:func:`emulated_all_to_all_single`). Parameter gradients are summed over the group, as
DeepSpeed's Ulysses reduction does. Writes ``OUT/rank<r>.pt``: per case the output, the input's gradient and
the parameters' gradients.
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as tdist
from torch import Tensor

from vidforce.config import ScheduleConfig
from vidforce.rollout import rollout
from vidforce.sampling import Sampler
from vidforce.train import dist, sequence_parallel
from tests.models.helpers import inputs, tiny_causal, tiny_wan

SP = 2


def _gathered(x: Tensor, group) -> list:
    parts = [torch.empty_like(x) for _ in range(tdist.get_world_size(group))]
    tdist.all_gather(parts, x.contiguous(), group=group)
    return parts


class _GatherAllToAll(torch.autograd.Function):
    """All-to-all from an all-gather (gloo has none): split along ``scatter``, concatenate along ``gather``."""

    @staticmethod
    def forward(ctx, group, x, scatter: int, gather: int):
        ctx.group, ctx.scatter, ctx.gather = group, scatter, gather
        size, rank = tdist.get_world_size(group), tdist.get_rank(group)
        return torch.cat([p.chunk(size, scatter)[rank] for p in _gathered(x, group)], gather)

    @staticmethod
    def backward(ctx, grad):
        return None, _GatherAllToAll.apply(ctx.group, grad.contiguous(), ctx.gather, ctx.scatter), None, None


def gather_all_to_all(group, x, scatter: int, gather: int):
    """``sequence_parallel.AllToAll`` over gloo (tests only)."""
    return _GatherAllToAll.apply(group, x, scatter, gather)


def emulated_all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, group=None,
                               async_op=False):
    """``deepspeed.comm.all_to_all_single`` (equal splits along dim 0) from an all-gather (tests only)."""
    size, rank = tdist.get_world_size(group), tdist.get_rank(group)
    output.copy_(torch.cat([p.chunk(size, 0)[rank] for p in _gathered(input, group)], 0))


def grads(model, x):
    out = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    if tdist.is_initialized():
        for g in out.values():
            tdist.all_reduce(g)
    return out, None if x.grad is None else x.grad.clone()     # None: no gradient reaches the noise


def loss_of(out):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    return (out * w).sum()


def full_sequence(make, forward, sp):
    model = make()
    model.train()
    model.sequence = sp
    x, t, ctx = inputs(model, frames=6)
    x.requires_grad_(True)
    out = forward(model, x, t, ctx)
    loss_of(out).backward()
    return (out.detach(), *grads(model, x))


def chunked_rollout(sp, cache_grad: str, checkpointing: bool):
    """4 chunks of 3 frames with the KV cache, exit step 2 of 4, a 9-frame window with a 3-frame sink."""
    model = tiny_causal(window=9, sink=3)
    model.train()
    model.sequence, model.gradient_checkpointing = sp, checkpointing
    noise, _, ctx = inputs(model, frames=12)
    noise.requires_grad_(True)
    sampler = Sampler.from_config(ScheduleConfig())
    out = rollout(model, noise, model.text_kv(ctx), sampler, 2, generator=torch.Generator().manual_seed(3),
                  cache_grad=cache_grad)
    loss_of(out).backward()
    return (out.detach(), *grads(model, noise))


CASES = {
    "bidirectional": lambda sp: full_sequence(tiny_wan, lambda m, x, t, c: m(x, t, c), sp),
    "block_causal": lambda sp: full_sequence(lambda: tiny_causal(window=6),
                                             lambda m, x, t, c: m.forward_full(x, t, c), sp),
    "teacher_forcing": lambda sp: full_sequence(
        tiny_causal, lambda m, x, t, c: m.forward_full(x, t, c, clean=x.detach() * 0.5, clean_t=t * 0), sp),
    "rollout": lambda sp: chunked_rollout(sp, "detach", False),
    "rollout_cache_grad": lambda sp: chunked_rollout(sp, "exit_step", False),
    "rollout_checkpointing": lambda sp: chunked_rollout(sp, "detach", True),
}


def main(out_dir: str) -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    dist.init(torch.device("cpu"), 120)
    results = {}
    if dist.world_size() == 1:
        results = {name: case(None) for name, case in CASES.items()}
    else:
        group = sequence_parallel.setup(SP).group
        sp = sequence_parallel.Ulysses(group, gather_all_to_all)
        results = {name: case(sp) for name, case in CASES.items()}
        import deepspeed.comm  # noqa: PLC0415
        deepspeed.comm.all_to_all_single = emulated_all_to_all_single
        results["deepspeed"] = CASES["bidirectional"](sequence_parallel.Ulysses(group))
    torch.save(results, f"{out_dir}/rank{dist.rank()}.pt")
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
