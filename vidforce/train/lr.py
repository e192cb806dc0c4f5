"""Learning-rate schedule: the multiplier of an engine's base LR at each of its optimizer updates.

A pure function of the update index, so a resumed run (any world size, any resume mode) continues the
same curve without scheduler state in the checkpoint. ``optim.warmup_steps`` and ``optim.lr_schedule``
count *updates of that engine* (a DMD generator with ``gen_update_every = 5`` updates every fifth step).
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_factor(update: int, total: int, warmup: int = 0, schedule: str = "constant", min_ratio: float = 0.0) -> float:
    """Multiplier of the base LR for 0-based ``update`` of ``total``.

    Linear warm-up ``(update + 1) / warmup`` for the first ``warmup`` updates, then ``constant`` (1) or
    ``cosine``: ``min_ratio + (1 - min_ratio) (1 + cos(pi p)) / 2`` with ``p = (update - warmup) /
    (total - warmup)`` clipped to [0, 1], so the last update runs just above ``min_ratio``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if update < warmup:
        return (update + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (update - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
