"""Streaming long-video generation: chunk by chunk, rolling cache, prompt switches, flat memory.

Each chunk runs the same chunk step as the training rollout (``sampling.chunk_step``: few-step sampling,
then the clean-context cache refresh), is decoded by the codec's causal stream decoder and handed out
as uint8 frames. The KV cache is a ring of ``causal.window`` frames, so memory is bounded by the cache,
not by the video length. A prompt switch re-encodes the cached frames under the new prompt
(LongLive's KV re-cache): the clean latents of the frames still in the window are kept for that, and
each kept chunk is committed again by the same refresh pass as in training (``sampling.refresh_cache``,
re-noised to ``schedule.context_noise``).

Speed (``stream.*`` in the config, the same frames): the refresh of a chunk may run inside the next chunk's
first forward (``fused_refresh``), and the chunk forwards may replay CUDA graphs (a ``models.graphs`` runner).

Interactive use: :meth:`Streamer.request` (between chunks) switches the prompt at the next chunk boundary, the
same re-cache as a scheduled switch; a start image (image-to-video) is a clean latent frame committed at frame 0
before the first chunk, after which the chunks start at frame 1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import numpy as np
import torch

from vidforce.models.causal import CausalWan
from vidforce.sampling import PendingRefresh, Sampler, chunk_step, refresh_cache, stream_step
from vidforce.video_io import to_uint8_frames


class Switch(NamedTuple):
    """A prompt switch: at latent ``frame`` (a chunk start), the ``recached`` kept frames re-encoded under
    ``prompt`` in ``seconds``."""
    frame: int
    prompt: str
    recached: int
    seconds: float


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
    switches: list[Switch] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def switch_frames(schedule: list[tuple[float, str]], fps: float, codec, chunk: int,
                  offset: int = 0) -> list[tuple[int, str]]:
    """Prompt schedule in seconds -> (first latent frame, prompt), snapped up to chunk starts (``offset``,
    ``offset + chunk``, ...; ``offset`` 1 after a start image; time 0 stays frame 0)."""
    out = []
    for sec, prompt in schedule:
        pixel = int(round(sec * fps))
        latent = 0 if pixel == 0 else 1 + -(-(pixel - 1) // codec.temporal_factor)
        out.append((0 if latent == 0 else offset + -(-max(latent - offset, 0) // chunk) * chunk, prompt))
    return out


class Streamer:
    """Generates a video of ``num_frames`` latent frames chunk by chunk (batch 1)."""

    def __init__(self, model: CausalWan, codec, text_encoder, sampler: Sampler, latent_hw: tuple[int, int],
                 seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 runner=None, fused_refresh: bool = False):
        """``runner``: what runs the chunk forwards and owns the cache (``models.graphs.GraphedChunks``; default the
        model); ``fused_refresh``: each chunk's refresh runs inside the next chunk's first forward
        (``sampling.stream_step``, the same frames)."""
        self.model, self.codec, self.text, self.sampler = model, codec, text_encoder, sampler
        self.net = model if runner is None else runner
        self.fused_refresh = fused_refresh
        self.pending: PendingRefresh | None = None
        self.h, self.w = latent_hw
        self.device, self.dtype = torch.device(device), dtype
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        self.stats = StreamStats()
        self.cache = None
        self.kept: dict[int, torch.Tensor] = {}      # frame -> clean latent [1, 1, C, h, w] of cached frames
        self.offset = 0                              # first frame of the chunk grid (1 after a start image)
        self._requested: str | None = None

    def request(self, prompt: str) -> None:
        """Switch to ``prompt`` at the next chunk boundary: the next chunk that :meth:`frames` starts (call it
        between chunks, from the consumer of :meth:`frames`). A later request before that boundary replaces this
        one; a request wins over a scheduled switch at the same boundary."""
        self._requested = prompt

    def _prompt_at(self, start: int, switches: dict[int, str]) -> str | None:
        """The prompt that starts at chunk ``start``: the pending request, else the schedule's, else None."""
        requested, self._requested = self._requested, None
        return switches.get(start) if requested is None else requested

    def _chunk_start(self, frame: int) -> int:
        """First frame of the chunk that wrote ``frame`` (the start image's frames are one chunk at 0)."""
        if frame < self.offset:
            return 0
        return self.offset + (frame - self.offset) // self.model.frames_per_chunk * self.model.frames_per_chunk

    def _text_kv(self, prompt: str):
        ctx = self.text.encode([prompt]).to(self.device, self.dtype)
        return self.model.text_kv(ctx)

    def _recache(self, text_kv) -> None:
        """Re-encode the kept frames under a new prompt: fresh cache, the refresh pass chunk by chunk."""
        self.cache.reset()
        self.pending = None                          # its chunk is kept (re-committed below) or out of the window
        frames = sorted(self.kept)
        for start in sorted({self._chunk_start(f) for f in frames}):
            group = [f for f in frames if self._chunk_start(f) == start]
            x = torch.cat([self.kept[f] for f in group], dim=1)
            refresh_cache(self.net, x, self.cache, group[0], text_kv, self.sampler, self.rng)
        self.stats.recaches += 1

    def _keep(self, start: int, x0: torch.Tensor) -> None:
        for i in range(x0.shape[1]):
            self.kept[start + i] = x0[:, i:i + 1]
        stop = start + x0.shape[1]
        for f in [f for f in self.kept if not self.cache.in_window(f, stop + self.model.frames_per_chunk)]:
            del self.kept[f]

    @torch.no_grad()
    def frames(self, num_frames: int, schedule: list[tuple[int, str]],
               first: torch.Tensor | None = None) -> Iterator[np.ndarray]:
        """Yield uint8 frames ``[n, H, W, 3]`` per chunk. ``schedule``: (first latent frame, prompt),
        the first at frame 0. ``first``: clean latents ``[1, n, C, h, w]`` to start from (an encoded image:
        n = 1), committed to the cache at frame 0 under the first prompt by the refresh pass and yielded
        decoded before the first chunk; the chunks then start at frame n (n, n + F, ...)."""
        chunk = self.model.frames_per_chunk
        if not schedule or schedule[0][0] != 0:
            raise ValueError("the prompt schedule must start at time 0")
        if not self.model.relative and num_frames > self.model.arch.rope_max_len:
            raise ValueError(f"{num_frames} latent frames exceed the RoPE table ({self.model.arch.rope_max_len}); "
                             "use causal.rope_mode=relative for longer videos")
        if first is not None and tuple(first.shape[-2:]) != (self.h, self.w):
            raise ValueError(f"the start latents are {tuple(first.shape[-2:])}, the stream's latents "
                             f"{(self.h, self.w)}")
        self.cache = self.net.new_cache(1, self.h, self.w, num_frames, self.device, self.dtype)
        self.pending = None
        decoder = self.codec.stream_decoder()
        switches, text_kv = dict(schedule), None
        self.offset = 0 if first is None else first.shape[1]
        t0 = time.perf_counter()
        if first is not None:
            text_kv = self._text_kv(self._prompt_at(0, switches))
            yield self._start_from(first.to(self.device, self.dtype), text_kv, decoder, t0)
        for start in range(self.offset, num_frames, chunk):
            prompt = self._prompt_at(start, switches)
            if prompt is not None:
                text_kv = self._text_kv(prompt)
                if start > 0:
                    tr = time.perf_counter()
                    self._recache(text_kv)
                    _sync(self.device)
                    self.stats.switches.append(Switch(start, prompt, len(self.kept), time.perf_counter() - tr))
            tc = time.perf_counter()
            shape = (1, min(chunk, num_frames - start), self.model.arch.in_dim, self.h, self.w)
            noise = torch.randn(shape, generator=self.rng, device=self.device, dtype=self.dtype)
            x0 = self._step(noise, start, text_kv)
            self._keep(start, x0)
            _sync(self.device)
            td = time.perf_counter()
            frames = to_uint8_frames(decoder.decode(x0)[0])
            yield self._account(frames, tc, td, t0)

    def _step(self, noise: torch.Tensor, start: int, text_kv) -> torch.Tensor:
        """The chunk's x0 from ``noise``, committed to the cache (with ``fused_refresh``: left pending)."""
        if self.fused_refresh:
            x0, self.pending = stream_step(self.net, noise, self.cache, start, text_kv, self.sampler, self.rng,
                                           self.pending)
            return x0
        return chunk_step(self.net, noise, self.cache, start, text_kv, self.sampler, self.sampler.last, False, self.rng)

    def _start_from(self, x0: torch.Tensor, text_kv, decoder, t0: float) -> np.ndarray:
        """Commit the start latents ``x0 [1, n, C, h, w]`` at frame 0 (the refresh pass) and decode them."""
        tc = time.perf_counter()
        refresh_cache(self.net, x0, self.cache, 0, text_kv, self.sampler, self.rng)
        self._keep(0, x0)
        _sync(self.device)
        td = time.perf_counter()
        return self._account(to_uint8_frames(decoder.decode(x0)[0]), tc, td, t0)

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
