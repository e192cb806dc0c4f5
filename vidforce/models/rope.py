"""3D rotary position embedding of Wan2.1 (frame, height, width axes).

Head dim ``D`` splits into complex pairs ``D/2 = c``: frame axis ``c - 2 (c // 3)`` pairs, height and
width ``c // 3`` each (for D = 128: 22 / 21 / 21). Pairs are adjacent channels ``(2i, 2i + 1)``.
Frame positions are given explicitly, so the caller chooses absolute frame indices or positions
relative to the attention window.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _axis_angles(max_len: int, pairs: int, axis_dim: int, theta: float) -> Tensor:
    """Angles ``[max_len, pairs]``: ``pos * theta^(-2i / axis_dim)``."""
    inv = theta ** (-torch.arange(0, axis_dim, 2, dtype=torch.float64)[:pairs] / axis_dim)
    return torch.outer(torch.arange(max_len, dtype=torch.float64), inv)


class Rope:
    """Angle tables of one head dim; ``angles(frames, h, w)`` -> ``(cos, sin)`` per token."""

    def __init__(self, head_dim: int, max_len: int = 1024, theta: float = 10000.0):
        if head_dim % 2:
            raise ValueError(f"head dim must be even for RoPE, got {head_dim}")
        c = head_dim // 2
        self.split = (c - 2 * (c // 3), c // 3, c // 3)
        self.max_len = max_len
        self.tables = [_axis_angles(max_len, n, 2 * n, theta) for n in self.split]
        self._dev: dict = {}

    def _table(self, axis: int, device) -> Tensor:
        key = (axis, str(device))
        if key not in self._dev:
            self._dev[key] = self.tables[axis].to(device=device, dtype=torch.float32)
        return self._dev[key]

    def angles(self, frame_pos: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Token angles for frames at ``frame_pos [F]`` on an ``h x w`` grid.

        Returns ``cos, sin`` of shape ``[F * h * w, D/2]`` (token order frame-major, then h, then w).
        """
        if frame_pos.numel() and int(frame_pos.max()) >= self.max_len:
            raise ValueError(
                f"frame position {int(frame_pos.max())} is past the RoPE table ({self.max_len} frames); "
                "use causal.rope_mode=relative for longer videos or raise model.rope_max_len")
        if max(h, w) > self.max_len:
            raise ValueError(f"latent grid {h}x{w} is larger than the RoPE table ({self.max_len})")
        dev = frame_pos.device
        f = self._table(0, dev)[frame_pos]                     # [F, c0]
        hh = self._table(1, dev)[:h]                           # [h, c1]
        ww = self._table(2, dev)[:w]                           # [w, c2]
        nf = f.shape[0]
        ang = torch.cat([
            f[:, None, None, :].expand(nf, h, w, -1),
            hh[None, :, None, :].expand(nf, h, w, -1),
            ww[None, None, :, :].expand(nf, h, w, -1),
        ], dim=-1).reshape(nf * h * w, sum(self.split))
        return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs of ``x [B, H, L, D]`` by angles ``[L, D/2]`` (fp32 math).

    One complex multiply: about three passes over ``x`` instead of ten for the real-valued form.
    """
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * torch.complex(cos, sin)).flatten(-2).to(x.dtype)
