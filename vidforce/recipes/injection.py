"""Error-injection probe: corrupt one chunk of a causal rollout and measure how long the error lives.

A causal video model conditions every chunk on its own earlier output, so an error in one chunk can
persist, fade or grow. The probe runs the model twice from the same noise: once untouched, once with
one chunk's output corrupted in pixel space (decode, corrupt, encode) before it is committed to the KV
cache. The per-chunk distance between the two runs is the error curve; its *half-life* is how many
chunks after the injection it takes to fall to half its value at the injection (inf: it never does —
the model keeps, or amplifies, the error).

Corruptions act on decoded video ``[B, F, 3, H, W]`` in [-1, 1] (pixel value ``v / 127.5 - 1``), in the
colour model of ``vidforce.data.balls``: ``hue_shift`` rotates colours about the grey axis,
``background_shift`` moves the background pixels, ``spurious_object`` paints an extra disc.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from vidforce.data.ball_metrics import FOREGROUND_THRESHOLD
from vidforce.models.codecs.base import Codec
from vidforce.rollout import rollout

Edit = Callable[[int, Tensor], Tensor]            # edit(start frame, chunk x0 [B, F, C, h, w]) -> x0'
Run = Callable[[Tensor, Edit | None], Tensor]     # run(noise [B, N, C, h, w], edit) -> latents [B, N, C, h, w]
BACKGROUND_THRESHOLD = FOREGROUND_THRESHOLD / 127.5  # ball_metrics' foreground threshold in [-1, 1] units


def _check_video(x: Tensor, name: str) -> None:
    if x.ndim != 5 or x.shape[2] != 3:
        raise ValueError(f"{name}.x: need video [B, F, 3, H, W], got shape {tuple(x.shape)}")


def hue_shift(x: Tensor, degrees: float) -> Tensor:
    """Rotate every pixel's colour by ``degrees`` about the grey axis k = (1, 1, 1) / sqrt(3).

    ``x' = m + (x - m) cos a + (k x (x - m)) sin a`` with m the channel mean: intensity and chroma are
    kept, a ball of hue h gets hue h + degrees (``balls.hue_to_rgb``), greys (the background) are fixed.
    x [B, F, 3, H, W] in [-1, 1] -> same shape, clamped to [-1, 1].
    """
    _check_video(x, "hue_shift")
    a = math.radians(degrees)
    m = x.mean(dim=2, keepdim=True)
    r, g, b = (x - m).unbind(dim=2)
    cross = torch.stack([b - g, r - b, g - r], dim=2) / math.sqrt(3.0)
    return (m + (x - m) * math.cos(a) + cross * math.sin(a)).clamp(-1.0, 1.0)


def background_shift(x: Tensor, delta: float | Sequence[float], threshold: float = BACKGROUND_THRESHOLD
                     ) -> Tensor:
    """Add ``delta`` ([-1, 1] units: +40 grey levels is 80 / 255; a scalar or one value per channel) to
    the pixels classified as background: RGB distance <= ``threshold`` to the frame's background
    estimate (per-channel median of its 1-pixel border, as in ``ball_metrics``). x [B, F, 3, H, W]
    -> same shape, clamped to [-1, 1]."""
    _check_video(x, "background_shift")
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]              # [B, F, 3, 1, 1]
    is_background = (x - background).norm(dim=2, keepdim=True) <= threshold
    shift = torch.as_tensor(delta, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    return torch.where(is_background, x + shift, x).clamp(-1.0, 1.0)


def spurious_object(x: Tensor, centre: tuple[float, float], radius: float, colour: Sequence[float]) -> Tensor:
    """Paint a static hard-edged disc (pixel centres strictly inside, as ``balls.render_torch``) at
    ``centre`` (x, y) in pixels with ``colour`` (3 values in [-1, 1]) on every frame of x [B, F, 3, H, W]."""
    _check_video(x, "spurious_object")
    if radius <= 0:
        raise ValueError(f"spurious_object.radius: need > 0, got {radius}")
    xs = torch.arange(x.shape[-1], dtype=torch.float64, device=x.device) + 0.5 - centre[0]
    ys = torch.arange(x.shape[-2], dtype=torch.float64, device=x.device) + 0.5 - centre[1]
    inside = (xs * xs)[None, :] + (ys * ys)[:, None] < radius * radius       # [H, W]
    paint = torch.as_tensor(colour, dtype=x.dtype, device=x.device).reshape(3, 1, 1)
    return torch.where(inside, paint, x)


def mean_abs_error(a: Tensor, b: Tensor) -> float:
    """Mean absolute pixel difference of two videos in [-1, 1], in 0-255 levels."""
    return float((a - b).abs().mean()) * 127.5


def half_life(errors: np.ndarray, inject_index: int = 0, baseline: np.ndarray | None = None) -> float:
    """Chunks after ``inject_index`` until the error curve [chunks] falls to half its value there.

    ``e = errors - baseline`` (when given, e.g. the un-injected run's own metric curve); with
    ``h = e[i] / 2`` at the injection i and k the first chunk after it with ``e[k] <= h``, the half-life
    is ``(k - 1 - i) + (e[k-1] - h) / (e[k-1] - e[k])`` (linear interpolation); inf if no such k.
    An exponential decay ``e[i + m] = e[i] 2^(-m / T)`` with integer T gives exactly T.
    """
    e = np.asarray(errors, dtype=np.float64)
    if baseline is not None:
        baseline = np.asarray(baseline, dtype=np.float64)
        if baseline.shape != e.shape:
            raise ValueError(f"half_life.baseline: shape {baseline.shape} differs from errors {e.shape}")
        e = e - baseline
    if e.ndim != 1 or not 0 <= inject_index < len(e):
        raise ValueError(f"half_life.inject_index: {inject_index} outside errors of shape {e.shape}")
    if not e[inject_index] > 0:
        raise ValueError(f"half_life.errors: the error at the injection must be > 0, got {e[inject_index]}")
    half = e[inject_index] / 2
    below = np.flatnonzero(e[inject_index + 1:] <= half)
    if not below.size:
        return math.inf
    k = inject_index + 1 + int(below[0])
    return float(k - 1 - inject_index + (e[k - 1] - half) / (e[k - 1] - e[k]))


@dataclass(frozen=True)
class ProbeResult:
    """errors [chunks]: ``error(injected, baseline)`` per chunk (0 before the injection); half_life in
    chunks; baseline / injected: the decoded runs [B, T, 3, H, W] in [-1, 1]."""

    errors: np.ndarray
    half_life: float
    inject_chunk: int
    baseline: Tensor
    injected: Tensor


def _chunk_frames(codec: Codec, chunks: int, frames_per_chunk: int) -> list[tuple[int, int]]:
    """Decoded frame range [a, b) of each latent chunk (a causal codec's first latent is one frame)."""
    ends = [codec.num_frames((k + 1) * frames_per_chunk) for k in range(chunks)]
    return list(zip([0] + ends[:-1], ends))


def probe(run: Run, noise: Tensor, codec: Codec, corrupt: Callable[[Tensor], Tensor], inject_chunk: int,
          frames_per_chunk: int, error: Callable[[Tensor, Tensor], float] = mean_abs_error) -> ProbeResult:
    """Inject ``corrupt`` into chunk ``inject_chunk`` of ``run(noise, edit)`` and measure its decay.

    ``run`` must be deterministic in ``noise`` (``rollout_run`` re-seeds its generator). The edit of
    the injected chunk is ``x0 + encode(corrupt(decode(x0))) - encode(decode(x0))``: only the
    corruption's change is added (no codec round-trip or clamp elsewhere). noise [B, N, C, h, w] with
    N a multiple of ``frames_per_chunk``.
    """
    if frames_per_chunk < 1 or noise.shape[1] % frames_per_chunk:
        raise ValueError(f"probe.frames_per_chunk: {frames_per_chunk} must divide the {noise.shape[1]} frames")
    chunks = noise.shape[1] // frames_per_chunk
    if not 0 <= inject_chunk < chunks:
        raise ValueError(f"probe.inject_chunk: {inject_chunk} outside the {chunks} chunks")

    def edit(start: int, x0: Tensor) -> Tensor:
        if start != inject_chunk * frames_per_chunk:
            return x0
        video = codec.decode(x0)
        return x0 + (codec.encode(corrupt(video)) - codec.encode(video)).to(x0.dtype)

    with torch.no_grad():
        baseline = codec.decode(run(noise, None))
        injected = codec.decode(run(noise, edit))
    errors = np.array([error(injected[:, a:b], baseline[:, a:b])
                       for a, b in _chunk_frames(codec, chunks, frames_per_chunk)])
    return ProbeResult(errors, half_life(errors, inject_chunk), inject_chunk, baseline, injected)


def rollout_run(model, text_kv, sampler, exit_index: int, seed: int = 0) -> Run:
    """``run(noise, edit)`` of a causal model: ``vidforce.rollout.rollout`` under ``no_grad`` with the
    edit, its re-noising generator re-seeded with ``seed`` on every call, so two runs from the same
    noise differ only by the edit."""
    def run(noise: Tensor, edit: Edit | None) -> Tensor:
        generator = torch.Generator(device=noise.device).manual_seed(seed)
        with torch.no_grad():
            return rollout(model, noise, text_kv, sampler, exit_index, generator=generator, edit=edit)
    return run
