"""Exponential moving average of the generator, correct under every ZeRO stage.

The average lives on rank 0 only, in fp32 on the parameters' device: ``ema <- decay * ema + (1 - decay) * p``
after each generator update from step ``optim.ema_start`` on (with ``optim.ema_warmup`` the decay of the n-th
average is ``min(decay, (1 + n) / (10 + n))``); before that it is a plain copy. Parameters are
visited in groups of at most ``bucket`` elements inside ``deepspeed.zero.GatheredParameters`` (a no-op for
unpartitioned parameters), so a ZeRO-3 generator is gathered a group at a time on every rank.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

BUCKET = 50_000_000   # elements gathered at once under ZeRO-3


def _numel(p: nn.Parameter) -> int:
    return p.ds_numel if hasattr(p, "ds_numel") else p.numel()


def param_groups(module: nn.Module, bucket: int = BUCKET) -> Iterator[list[tuple[str, nn.Parameter]]]:
    """Named parameters in consecutive groups of at most ``bucket`` elements (a larger one alone)."""
    group, size = [], 0
    for name, p in module.named_parameters():
        if group and size + _numel(p) > bucket:
            yield group
            group, size = [], 0
        group.append((name, p))
        size += _numel(p)
    if group:
        yield group


def gathered(module: nn.Module, bucket: int = BUCKET) -> Iterator[list[tuple[str, Tensor]]]:
    """Full parameter values group by group (collective under ZeRO-3: every rank must iterate)."""
    from deepspeed.runtime.zero.partition_parameters import GatheredParameters  # noqa: PLC0415
    for group in param_groups(module, bucket):
        with GatheredParameters([p for _, p in group]):
            yield [(name, p.data) for name, p in group]


def full_state_dict(module: nn.Module, keep: bool, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The module's full parameters as fp32 copies on ``device``, kept where ``keep`` (e.g. rank 0) and
    ``{}`` elsewhere. Collective under ZeRO-3."""
    out = {}
    for group in gathered(module):
        if keep:
            out.update({name: t.detach().to(device=device, dtype=torch.float32, copy=True) for name, t in group})
    return out


def ema_decay(decay: float, updates: int, warmup: bool) -> float:
    """The decay of the ``updates``-th average update after the start (0-based). With ``warmup``
    ``min(decay, (1 + n) / (10 + n))``: early averages forget the starting copy fast, so a short run's export
    is dominated by trained weights (its weight on the copy after n updates is ``prod_k d_k``, not ``d^n``)."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


class EMA:
    """Generator EMA held by the rank with ``keep=True``; ``update`` is called on every rank."""

    def __init__(self, decay: float, start: int, keep: bool, warmup: bool = False):
        self.decay, self.start, self.keep, self.warmup = decay, start, keep, warmup
        self.updates = 0                 # averaging updates folded in since the start copy
        self.shadow: dict[str, Tensor] = {}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """Fold the current weights in after the generator update of ``step`` (copy before ``start``)."""
        copy = step < self.start or not self.shadow
        decay = ema_decay(self.decay, self.updates, self.warmup)
        for group in gathered(module):
            if not self.keep:
                continue
            for name, p in group:
                if copy:
                    self.shadow[name] = p.detach().float().clone()
                else:
                    self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)
        self.updates = 0 if copy else self.updates + 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "start": self.start, "updates": self.updates,
                "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict, device: torch.device | str) -> None:
        self.updates = state.get("updates", 0)     # checkpoints older than ema_warmup: no count
        if self.keep:
            self.shadow = {k: v.to(device) for k, v in state["shadow"].items()}
