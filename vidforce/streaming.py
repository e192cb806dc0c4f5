"""Streaming long-video generation: chunk by chunk, rolling cache, prompt switches, flat memory.

Each chunk runs the same chunk step as the training rollout (``sampling.chunk_step``: few-step sampling,
then the clean-context cache refresh), is decoded by the codec's causal stream decoder and handed out
as uint8 frames. The KV cache is a ring of ``causal.window`` frames, so memory is bounded by the cache,
not by the video length. A prompt switch re-encodes the cached frames under the new prompt
(LongLive's KV re-cache): the clean latents of the frames still in the window are kept for that, and
each kept chunk is committed again by the same refresh pass as in training (``sampling.refresh_cache``,
re-noised to ``schedule.context_noise``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from vidforce.models.causal import CausalWan
from vidforce.sampling import Sampler, chunk_step, refresh_cache
from vidforce.video_io import to_uint8_frames


@dataclass
class StreamStats:
    """Measured while streaming (seconds; bytes)."""
    frames: int = 0
    chunks: int = 0
    first_frame_s: float = float("nan")
    wall_s: float = 0.0
    chunk_dit_s: list[float] = field(default_factory=list)
    chunk_decode_s: list[float] = field(default_factory=list)
    peak_memory_bytes: int = 0
    recaches: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def switch_frames(schedule: list[tuple[float, str]], fps: float, codec, chunk: int) -> list[tuple[int, str]]:
    """Prompt schedule in seconds -> (first latent frame, prompt), snapped up to chunk starts."""
    out = []
    for sec, prompt in schedule:
        pixel = int(round(sec * fps))
        latent = 0 if pixel == 0 else 1 + -(-(pixel - 1) // codec.temporal_factor)
        out.append((-(-latent // chunk) * chunk, prompt))
    return out


class Streamer:
    """Generates a video of ``num_frames`` latent frames chunk by chunk (batch 1)."""

    def __init__(self, model: CausalWan, codec, text_encoder, sampler: Sampler, latent_hw: tuple[int, int],
                 seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.model, self.codec, self.text, self.sampler = model, codec, text_encoder, sampler
        self.h, self.w = latent_hw
        self.device, self.dtype = torch.device(device), dtype
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        self.stats = StreamStats()
        self.cache = None
        self.kept: dict[int, torch.Tensor] = {}      # frame -> clean latent [1, 1, C, h, w] of cached frames

    def _text_kv(self, prompt: str):
        ctx = self.text.encode([prompt]).to(self.device, self.dtype)
        return self.model.text_kv(ctx)

    def _recache(self, text_kv) -> None:
        """Re-encode the kept frames under a new prompt: fresh cache, the refresh pass chunk by chunk."""
        self.cache.reset()
        frames = sorted(self.kept)
        chunk = self.model.frames_per_chunk
        for start in sorted({f // chunk * chunk for f in frames}):
            group = [f for f in frames if start <= f < start + chunk]
            x = torch.cat([self.kept[f] for f in group], dim=1)
            refresh_cache(self.model, x, self.cache, group[0], text_kv, self.sampler, self.rng)
        self.stats.recaches += 1

    def _keep(self, start: int, x0: torch.Tensor) -> None:
        for i in range(x0.shape[1]):
            self.kept[start + i] = x0[:, i:i + 1]
        stop = start + x0.shape[1]
        for f in [f for f in self.kept if not self.cache.in_window(f, stop + self.model.frames_per_chunk)]:
            del self.kept[f]

    @torch.no_grad()
    def frames(self, num_frames: int, schedule: list[tuple[int, str]]) -> Iterator[np.ndarray]:
        """Yield uint8 frames ``[n, H, W, 3]`` per chunk. ``schedule``: (first latent frame, prompt),
        the first at frame 0."""
        chunk = self.model.frames_per_chunk
        if not schedule or schedule[0][0] != 0:
            raise ValueError("the prompt schedule must start at time 0")
        if not self.model.relative and num_frames > self.model.arch.rope_max_len:
            raise ValueError(f"{num_frames} latent frames exceed the RoPE table ({self.model.arch.rope_max_len}); "
                             "use causal.rope_mode=relative for longer videos")
        self.cache = self.model.new_cache(1, self.h, self.w, num_frames, self.device, self.dtype)
        decoder = self.codec.stream_decoder()
        switches, text_kv = dict(schedule), None
        t0 = time.perf_counter()
        for start in range(0, num_frames, chunk):
            if start in switches:
                text_kv = self._text_kv(switches[start])
                if start > 0:
                    self._recache(text_kv)
            tc = time.perf_counter()
            shape = (1, min(chunk, num_frames - start), self.model.arch.in_dim, self.h, self.w)
            noise = torch.randn(shape, generator=self.rng, device=self.device, dtype=self.dtype)
            x0 = chunk_step(self.model, noise, self.cache, start, text_kv, self.sampler, self.sampler.last, False,
                            self.rng)
            self._keep(start, x0)
            _sync(self.device)
            td = time.perf_counter()
            frames = to_uint8_frames(decoder.decode(x0)[0])
            yield self._account(frames, tc, td, t0)

    def _account(self, frames: np.ndarray, tc: float, td: float, t0: float) -> np.ndarray:
        """Record one chunk's timings (DiT from ``tc`` to ``td``, decode from ``td`` to now)."""
        te = time.perf_counter()
        s = self.stats
        if s.frames == 0:
            s.first_frame_s = te - t0
        s.chunk_dit_s.append(td - tc)
        s.chunk_decode_s.append(te - td)
        s.frames += len(frames)
        s.chunks += 1
        s.wall_s = te - t0
        if self.device.type == "cuda":
            s.peak_memory_bytes = torch.cuda.max_memory_allocated(self.device)
        return frames
