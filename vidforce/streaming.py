"""Streaming long-video generation: chunk by chunk, rolling cache, prompt switches, flat memory.

Each chunk runs the same chunk step as the training rollout (``sampling.chunk_step``: few-step sampling,
then the clean-context cache refresh), is decoded by the codec's causal stream decoder and handed out
as uint8 frames. The KV cache is a ring of ``causal.window`` frames, so memory is bounded by the cache,
not by the video length. A prompt switch re-encodes the cached frames under the new prompt
(LongLive's KV re-cache): the clean latents of the frames still in the window are kept for that, and
each kept chunk is committed again by the same refresh pass as in training (``sampling.refresh_cache``,
re-noised to ``schedule.context_noise``).

Speed (``stream.*`` in the config, the same frames): the refresh of a chunk may run inside the next chunk's
first forward (``fused_refresh``), the chunk forwards may replay CUDA graphs (a ``models.graphs`` runner), and the
decode of a chunk may run on a second CUDA stream while the next chunk's DiT runs (``overlap_decode``, one thread):

    serial      DiT c | decode c, frames c out | DiT c+1 | decode c+1, frames c+1 out | ...
    overlapped  main stream: DiT c | DiT c+1 | DiT c+2 ...    side stream: decode c (after DiT c) | decode c+1 ...
                host: issue DiT c+1, issue decode c, wait for the side stream only, frames c out, issue DiT c+2 ...

The stream's first output (the first chunk, or the start image) is decoded at once, as without overlap: the
latency to the first frame does not wait for a second chunk; the chunks after it are overlapped.

Interactive use: :meth:`Streamer.request` (between chunks) switches the prompt at the next chunk boundary not yet
started, the same re-cache as a scheduled switch (with ``overlap_decode`` one chunk later than without: see there);
a start image (image-to-video) is a clean latent frame committed at frame 0 before the first chunk, after which the
chunks start at frame 1.
"""
from __future__ import annotations

import statistics
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
    """Measured while streaming (seconds; bytes), per output (a chunk, or the start image).

    ``chunk_wall_s``: host time from the previous output (the stream's start for the first) to this one, the
    consumer's time in between included: they sum to ``wall_s``. ``chunk_dit_s`` / ``chunk_decode_s``: serial
    streaming only, the DiT and the decode of each output, the device synchronised between them; empty with
    ``overlap_decode``, where the two run at once on two streams and have no separate host times (the period of a
    chunk is its ``chunk_wall_s``). ``Switch.seconds``: the re-cache (overlapped: between CUDA events around it on
    the main stream, no synchronisation). ``first_frames``: the frames of the first output (``first_frame_s`` is
    when it was handed out)."""
    frames: int = 0
    chunks: int = 0
    first_frame_s: float = float("nan")
    first_frames: int = 0
    wall_s: float = 0.0
    chunk_wall_s: list[float] = field(default_factory=list)
    chunk_dit_s: list[float] = field(default_factory=list)
    chunk_decode_s: list[float] = field(default_factory=list)
    peak_memory_bytes: int = 0
    recaches: int = 0
    switches: list[Switch] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def fps_after_first(self) -> float:
        """The frames after the first output over the time after it was handed out: the rate without the first
        output's start-up (the first compiles and graph captures; the captures of the window's later fill levels
        stay in); nan with one output."""
        after = self.wall_s - self.first_frame_s
        return (self.frames - self.first_frames) / after if self.chunks > 1 and after > 0 else float("nan")

    def steady_period(self, skip: int) -> float:
        """The median period (``chunk_wall_s``) of the outputs after the first ``skip`` (all of them when none is
        left): once compilation, graph captures and the window's filling are past (``skip``:
        :func:`filling_outputs`)."""
        return statistics.median(self.chunk_wall_s[skip:] or self.chunk_wall_s)

    def fps_steady(self, skip: int) -> float:
        """The frames of one later output over :meth:`steady_period`; nan with one output."""
        if self.chunks < 2:
            return float("nan")
        return (self.frames - self.first_frames) / (self.chunks - 1) / self.steady_period(skip)


def filling_outputs(window: int | None, chunk: int) -> int:
    """How many outputs come before the first whose chunk attends a full window of ``window`` latent frames
    (``causal.window``; None or 0: the cache never rolls, so only the first output is set apart)."""
    return (window or 0) // chunk + 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Marks points of the device's work, for timing. Serial streaming (``events=False``): the host clock, the
    device synchronised at :meth:`stop`. Overlapped (``events=True``) on CUDA: an event on the current stream,
    never waited for (read once it has passed; a decode waits for it on the GPU); off CUDA the host clock (CPU work
    runs as it is issued)."""

    def __init__(self, device: torch.device, events: bool):
        self.device, self.events = device, events and device.type == "cuda"

    def start(self) -> float | torch.cuda.Event:
        return self._event() if self.events else time.perf_counter()

    def stop(self) -> float | torch.cuda.Event:
        if self.events:
            return self._event()
        _sync(self.device)
        return time.perf_counter()

    @staticmethod
    def seconds(begin: float | torch.cuda.Event, end: float | torch.cuda.Event) -> float:
        return end - begin if isinstance(begin, float) else begin.elapsed_time(end) / 1e3

    @staticmethod
    def _event() -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event


class SideDecode:
    """Decodes on a second CUDA stream (``overlap_decode``); off CUDA, where there are no streams, in issue order.

    A decode waits (on the GPU) for the event after its chunk's DiT, then runs the decoder, the uint8 conversion and
    the device-to-host copy on the side stream: the host waits for the side stream only, while the main stream goes
    on with the next chunk. Every decode of a stream runs here, so the decoder's state (the Wan VAE's feature cache)
    is made and freed on the side stream; the latents come from the main stream and are marked as used here."""

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def decode(self, decoder, x0: torch.Tensor, ready: float | torch.cuda.Event) -> np.ndarray:
        """uint8 frames ``[n, H, W, 3]`` of latents ``x0 [1, t, C, h, w]`` once ``ready`` (a :class:`Clock` mark on
        the main stream) has passed."""
        if self.stream is not None:
            self.stream.wait_event(ready)
            x0.record_stream(self.stream)            # its memory is not reused before this decode has read it
        with torch.cuda.stream(self.stream):         # None (CPU): a null context
            return to_uint8_frames(decoder.decode(x0)[0])


class _Issued(NamedTuple):
    """A chunk (or the start image) whose DiT is issued, not yet decoded."""
    start: int                      # its first latent frame
    x0: torch.Tensor                # [1, t, C, h, w]
    began: float                    # host time before its DiT (serial timings)
    done: float | torch.cuda.Event  # the Clock's mark after its DiT (overlapped: what its decode waits for)
    switch: tuple | None            # its prompt switch to record: (prompt, re-cached frames, Clock marks around)


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
                 runner=None, fused_refresh: bool = False, overlap_decode: bool = False):
        """``runner``: what runs the chunk forwards and owns the cache (``models.graphs.GraphedChunks``; default the
        model); ``fused_refresh``: each chunk's refresh runs inside the next chunk's first forward
        (``sampling.stream_step``, the same frames); ``overlap_decode``: each chunk after the first output is decoded
        (:class:`SideDecode`) after the next chunk's DiT is issued, while it runs (the same frames)."""
        self.model, self.codec, self.text, self.sampler = model, codec, text_encoder, sampler
        self.net = model if runner is None else runner
        self.fused_refresh = fused_refresh
        self.side = SideDecode(torch.device(device)) if overlap_decode else None
        self.clock = Clock(torch.device(device), events=overlap_decode)
        self.pending: PendingRefresh | None = None
        self.h, self.w = latent_hw
        self.device, self.dtype = torch.device(device), dtype
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        self.stats = StreamStats()
        self.cache = None
        self.kept: dict[int, torch.Tensor] = {}      # frame -> clean latent [1, 1, C, h, w] of cached frames
        self.offset = 0                              # first frame of the chunk grid (1 after a start image)
        self._next_out = 0                           # first frame of the next output frames() hands out
        self._requested: str | None = None

    def request(self, prompt: str) -> int:
        """Switch to ``prompt`` at the next chunk boundary: the next chunk that :meth:`frames` starts (call it
        between chunks, from the consumer of :meth:`frames`); returns that chunk's first latent frame
        (:meth:`lands_at`; 0 before the first output: the stream's first prompt). A later request before that
        boundary replaces this one; a request wins over a scheduled switch at the same boundary.

        Serial streaming: the chunk right after the one just received. With ``overlap_decode`` a chunk is handed
        out after the next chunk has started (its DiT runs during the decode), so a request made then lands one
        chunk later: after receiving the chunk at ``s``, at ``s + 2F`` rather than ``s + F``. Only after the
        stream's first output (decoded at once) is nothing started yet: the request lands at the next chunk.
        Scheduled switches land where they would without overlap (the schedule is known before the chunk starts)."""
        self._requested = prompt
        return self.lands_at(self._next_out, self.model.frames_per_chunk, self.offset, self.side is not None)

    @staticmethod
    def lands_at(next_out: int, chunk: int, offset: int = 0, overlap: bool = False) -> int:
        """The first latent frame of the chunk where a :meth:`request` lands (why: see there) when made before the
        consumer takes the output at ``next_out`` (the one after the last output received; 0 before the first: the
        stream's first prompt): ``next_out``; with ``overlap`` (``overlap_decode``) ``next_out + chunk`` past the
        stream's second output (at ``offset``, or ``chunk`` without a start image). ``chunk``: latent frames per
        chunk; ``offset``: the first chunk's start (n after n start frames)."""
        second = offset or chunk                     # where the stream's second output starts
        return next_out + chunk if overlap and next_out > second else next_out

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
        self.offset, self._next_out = (0 if first is None else first.shape[1]), 0
        t0 = time.perf_counter()
        issued = None                                # overlapped: the chunk whose decode waits for the next DiT
        if first is not None:
            text_kv = self._text_kv(self._prompt_at(0, switches))
            yield self._start_from(first.to(self.device, self.dtype), text_kv, decoder, t0)
        for start in range(self.offset, num_frames, chunk):
            text_kv, switch = self._switch(start, switches, text_kv)
            began = time.perf_counter()
            x0 = self._step(start, min(chunk, num_frames - start), text_kv)
            made = _Issued(start, x0, began, self.clock.stop(), switch)
            if issued is not None:
                yield self._hand_out(issued, decoder, t0)     # overlapped: the previous chunk, during this DiT
            if self.side is None or self.stats.frames == 0:
                issued = None
                yield self._hand_out(made, decoder, t0)       # serial, or the stream's first output: at once
            else:
                issued = made                                 # decoded once the next chunk's DiT is issued
        if issued is not None:
            yield self._hand_out(issued, decoder, t0)

    def _switch(self, start: int, switches: dict[int, str], text_kv):
        """The text K/V from chunk ``start`` on, and its prompt switch to record (None without one): a new prompt
        after frame 0 re-caches the kept frames under it."""
        prompt = self._prompt_at(start, switches)
        if prompt is None:
            return text_kv, None
        text_kv = self._text_kv(prompt)
        if start == 0:
            return text_kv, None
        begin = self.clock.start()
        self._recache(text_kv)
        return text_kv, (prompt, len(self.kept), begin, self.clock.stop())

    def _step(self, start: int, frames: int, text_kv) -> torch.Tensor:
        """Chunk ``start``'s x0 ``[1, frames, C, h, w]`` from fresh noise, committed to the cache (with
        ``fused_refresh``: its refresh left pending) and kept for re-caches."""
        shape = (1, frames, self.model.arch.in_dim, self.h, self.w)
        noise = torch.randn(shape, generator=self.rng, device=self.device, dtype=self.dtype)
        if self.fused_refresh:
            x0, self.pending = stream_step(self.net, noise, self.cache, start, text_kv, self.sampler, self.rng,
                                           self.pending)
        else:
            x0 = chunk_step(self.net, noise, self.cache, start, text_kv, self.sampler, self.sampler.last, False,
                            self.rng)
        self._keep(start, x0)
        return x0

    def _start_from(self, x0: torch.Tensor, text_kv, decoder, t0: float) -> np.ndarray:
        """Commit the start latents ``x0 [1, n, C, h, w]`` at frame 0 (the refresh pass) and decode them."""
        began = time.perf_counter()
        refresh_cache(self.net, x0, self.cache, 0, text_kv, self.sampler, self.rng)
        self._keep(0, x0)
        return self._hand_out(_Issued(0, x0, began, self.clock.stop(), None), decoder, t0)

    def _hand_out(self, c: _Issued, decoder, t0: float) -> np.ndarray:
        """Decode an issued chunk (serial: here, on the current stream; overlapped: on the side stream), record its
        prompt switch and timings, return its uint8 frames."""
        if self.side is None:
            frames = to_uint8_frames(decoder.decode(c.x0)[0])
        else:
            frames = self.side.decode(decoder, c.x0, c.done)
        self._next_out = c.start + c.x0.shape[1]
        if c.switch is not None:                     # after the decode: the re-cache's marks have passed
            prompt, recached, begin, end = c.switch
            self.stats.switches.append(Switch(c.start, prompt, recached, self.clock.seconds(begin, end)))
        return self._account(frames, t0, (c.began, c.done) if self.side is None else None)

    def _account(self, frames: np.ndarray, t0: float, dit: tuple[float, float] | None) -> np.ndarray:
        """Record one output's timings (``dit``, serial only: the host times around its DiT; the decode from the
        second to now)."""
        te = time.perf_counter()
        s = self.stats
        if s.frames == 0:
            s.first_frame_s, s.first_frames = te - t0, len(frames)
        if dit is not None:
            s.chunk_dit_s.append(dit[1] - dit[0])
            s.chunk_decode_s.append(te - dit[1])
        s.chunk_wall_s.append(te - t0 - s.wall_s)
        s.frames += len(frames)
        s.chunks += 1
        s.wall_s = te - t0
        if self.device.type == "cuda":
            s.peak_memory_bytes = torch.cuda.max_memory_allocated(self.device)
        return frames
