"""Self-Forcing++ extended DMD: DMD on a K-frame window of an N-frame rollout (N >> K).

The rollout uses the same rolling cache (window + sink, RoPE mode) as inference; chunks before the
window run under ``no_grad``; window chunks follow the stochastic-truncation rule, so each window chunk's
noisy input comes from the student's own earlier steps on it (backward noise initialisation). The
short-horizon teacher and the critic score only the window; the critic trains on detached windows.
All of this is :func:`objectives.base.generate` under a plan with ``num_frames = N``; the losses are DMD's.
"""
from __future__ import annotations

from vidforce.objectives.dmd import DMD


class ExtendedDMD(DMD):
    name = "extended_dmd"

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.rollout.long_frames <= cfg.rollout.num_frames:
            raise ValueError("objective.name=extended_dmd needs rollout.long_frames > rollout.num_frames "
                             f"(got {cfg.rollout.long_frames} <= {cfg.rollout.num_frames})")
        if cfg.causal.window == 0:
            raise ValueError("objective.name=extended_dmd needs a rolling cache: set causal.window > 0 "
                             "(the same window inference uses)")
