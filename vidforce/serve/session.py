"""The live stream behind ``vidforce serve``: one ``Streamer`` at a time, driven by commands from any thread.

A worker thread owns the streamer and runs it chunk by chunk. Commands (``start``, ``pause``, ``reset``,
``prompt``) only change state under a lock; the worker acts on them at the next chunk boundary, so a prompt
switch is the streamer's own (``Streamer.request``: the KV re-cache before the next chunk it starts) and a pause
stops after the chunk in progress. States: ``idle`` (no stream), ``running``, ``paused``, ``ended`` (the stream's
length limit: absolute RoPE's table), ``failed`` (generation raised; the server goes on).

Pacing: the worker takes a chunk from the streamer only while it holds a credit; it gets one when a stream
starts and one each time the consumer begins to play a chunk (:meth:`LiveSession.taken`), so the chunks handed out
run at most one chunk ahead of playback. With ``stream.overlap_decode`` the streamer hands a chunk out after the
next chunk has started, so generation runs one chunk further ahead (the DiT of the chunk after the one waiting to
play) and a requested prompt lands one chunk later (``Streamer.lands_at``): the messages name that frame.

Each chunk goes to ``on_chunk`` (from the worker thread) with the prompt it was made under, taken from the
streamer's own record of its switches (``stats.switches``), and, when a prompt asked for by a client starts with
it, the time of that request (the prompt-switch latency is measured from it to the chunk's first frame on the
wire).

The recording (:class:`Recording`) holds what the stream made since it started or since the last save, as an
mp4 written while streaming through the one ``Mp4Writer``; saving closes it and starts the next one.
"""
from __future__ import annotations

import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vidforce.streaming import Streamer
from vidforce.video_io import Mp4Writer


@dataclass
class Chunk:
    """One chunk of a stream, as the worker hands it out."""
    stream: int                   # the stream's number (a reset or a new start makes stale chunks drop)
    index: int                    # 0 for the stream's first chunk (the start image when there is one)
    start: int                    # its first latent frame
    frames: np.ndarray            # uint8 [n, H, W, 3]
    prompt: str
    made_s: float                 # seconds the streamer took to hand it out: its DiT and decode, a re-cache
                                  # before it included (overlap_decode: its decode, with the next chunk's DiT)
    requested_at: float | None    # time.perf_counter() of the client request whose prompt starts here
    recache: dict | None          # the KV re-cache at its start: frame, recached, ms


class Recording:
    """The frames of stream ``stream`` made since it started or since the last :meth:`cut`, as an mp4 in
    ``directory``."""

    def __init__(self, directory: Path, fps: float):
        self.directory, self.fps = directory, fps
        self._lock = threading.Lock()
        self._count, self.stream = 0, 0
        self._writer: Mp4Writer | None = None
        self.error: str | None = None

    def append(self, stream: int, frames: np.ndarray) -> str | None:
        """Record ``frames`` if they belong to the recorded stream; returns the error that stopped the recording
        (once: the stream goes on without it, e.g. where no ffmpeg is installed)."""
        with self._lock:
            if self.error is not None or stream != self.stream:
                return None
            if self._writer is None:
                self._count += 1
                self._writer = Mp4Writer(self.directory / f"segment-{self._count}.mp4", self.fps, stream=False)
            try:
                self._writer.append(frames)
            except (OSError, ValueError, ImportError, RuntimeError) as err:
                self.error = f"recording stopped: {err}"
                return self.error
            return None

    def cut(self) -> tuple[bytes, int]:
        """The mp4 bytes and frame count of what was recorded; the next frames start a new recording."""
        with self._lock:
            writer, self._writer = self._writer, None
            if self.error is not None:
                raise LookupError(self.error)
        if writer is None:
            raise LookupError("nothing streamed since the stream started or was last saved")
        try:
            writer.close()
        except OSError as err:
            raise LookupError(f"the recording failed: {err}") from None
        data = writer.path.read_bytes()
        writer.path.unlink()
        return data, writer.frames

    def discard(self, stream: int) -> None:
        """Drop what was recorded; record ``stream`` from now on (a reset or a new stream)."""
        with self._lock:
            writer, self._writer, self.error, self.stream = self._writer, None, None, stream
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass                    # a broken segment is dropped either way
            writer.path.unlink(missing_ok=True)


class LiveSession:
    """One stream at a time from ``parts`` (``vidforce.generate.Parts``), for any number of viewers.

    ``num_frames``: the stream's length in latent frames (the RoPE table, or effectively unbounded with
    relative RoPE); ``first``: start latents ``[1, n, C, h, w]`` (``--image``) or None. ``on_chunk(Chunk)`` and
    ``on_status()`` are called from the worker thread; ``say(line)`` logs; ``prompt``: the page's first prompt.
    """

    def __init__(self, parts, seed: int, num_frames: int, first: torch.Tensor | None, fps: float,
                 on_chunk: Callable[[Chunk], None], on_status: Callable[[], None], say: Callable[[str], None],
                 prompt: str = ""):
        self.parts, self.seed, self.num_frames, self.first, self.fps = parts, seed, num_frames, first, fps
        self.on_chunk, self.on_status, self.say = on_chunk, on_status, say
        self.chunk, self.overlap = parts.model.frames_per_chunk, parts.overlap_decode
        self.offset = 0 if first is None else first.shape[1]
        self._temp = tempfile.TemporaryDirectory(prefix="vidforce-serve-")
        self.recording = Recording(Path(self._temp.name), fps)
        self._cond = threading.Condition()
        self.state, self.prompt, self.frames_made = "idle", prompt, 0
        self.note = ""                           # why the last stream ended or failed
        self._stream = 0                         # bumped by every start of a new stream and every reset
        self._credit = 0
        self._requested: tuple[str, float] | None = None
        self._making: int | None = None          # first latent frame of the chunk being made, if any
        self._next_start = 0                     # first latent frame of the next chunk to hand out
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="vidforce-serve-stream", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------- commands (any thread)

    def start(self, prompt: str | None) -> str:
        """Start a stream with ``prompt``, or resume a paused one (switching to ``prompt`` if it differs)."""
        with self._cond:
            if self.state == "running":
                return "already streaming"
            if self.state == "paused":
                self.state = "running"
                self._cond.notify_all()
                message = "resumed"
                if prompt is not None and prompt != self.prompt:
                    self._request(prompt)
                    frame = Streamer.lands_at(self._landing(), self.chunk, self.offset, self.overlap)
                    message += f"; the prompt switches at latent frame {frame}"
            else:
                if prompt is None:
                    raise ValueError("type a prompt first: no stream is running")
                self._begin(prompt)
                message = f"started with {prompt!r}"
        self._announce(message)
        return message

    def pause(self) -> str:
        with self._cond:
            if self.state != "running":
                raise ValueError(f"nothing to pause: the stream is {self.state}")
            self.state = "paused"
            message = f"paused at latent frame {self._landing()} (the next chunk boundary)"
        self._announce(message)
        return message

    def reset(self) -> str:
        with self._cond:
            self._stream += 1
            self.state, self.frames_made, self._requested, self.note = "idle", 0, None, ""
            self._cond.notify_all()
            stream = self._stream
        self.recording.discard(stream)
        self._announce("reset: the stream is stopped and its recording dropped")
        return "reset"

    def request(self, prompt: str) -> str:
        """Switch to ``prompt`` at the next chunk boundary (start a stream with it when none runs)."""
        with self._cond:
            if self.state not in ("running", "paused"):
                self._begin(prompt)
                message = f"started with {prompt!r}"
            else:
                self._request(prompt)
                frame = Streamer.lands_at(self._landing(), self.chunk, self.offset, self.overlap)
                message = f"prompt queued: switches at latent frame {frame} (the next chunk boundary)"
        self._announce(f"{message}: {prompt!r}" if message.startswith("prompt") else message)
        return message

    def _announce(self, line: str) -> None:
        """Log ``line`` and push the new status to the viewers (called outside the lock)."""
        self.say(line)
        self.on_status()

    def taken(self) -> None:
        """The consumer began to play a chunk: one more chunk may be made."""
        with self._cond:
            self._credit = 1
            self._cond.notify_all()

    def save(self) -> tuple[bytes, int]:
        """The recording so far as mp4 bytes, and its frame count (LookupError when there is none)."""
        data, frames = self.recording.cut()
        self.say(f"saved {frames} frames ({frames / self.fps:.1f} s) as mp4; the recording goes on from here")
        return data, frames

    def status(self) -> dict:
        with self._cond:
            return {"state": self.state, "prompt": self.prompt, "frames": self.frames_made, "fps": self.fps,
                    "stream": self._stream, "note": self.note}

    @property
    def busy(self) -> bool:
        """Whether a chunk is being made, recorded or handed to the viewers (a pause waits for it)."""
        with self._cond:
            return self._making is not None

    def current(self, stream: int) -> bool:
        """Whether chunks of ``stream`` are still wanted."""
        with self._cond:
            return stream == self._stream

    def close(self) -> None:
        """Stop the worker (after the chunk in progress) and drop the recording."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join()
        self.recording.discard(-1)
        self._temp.cleanup()

    # ---------------------------------------------------------------- state helpers (lock held)

    def _begin(self, prompt: str) -> None:
        self._stream += 1
        self.state, self.prompt, self.frames_made, self.note = "running", prompt, 0, ""
        self._credit, self._requested, self._next_start = 1, None, 0
        self._cond.notify_all()
        self.recording.discard(self._stream)

    def _request(self, prompt: str) -> None:
        self._requested = (prompt, time.perf_counter())

    def _after(self, start: int) -> int:
        """First latent frame of the chunk after the one at ``start``."""
        return self.offset if (self.offset and start == 0) else start + self.chunk

    def _landing(self) -> int:
        """First latent frame of the next chunk to hand out after the one in progress: where a pause stops; a request
        made now reaches the streamer before it is taken (where that lands: ``Streamer.lands_at``)."""
        return self._next_start if self._making is None else self._after(self._making)

    # ---------------------------------------------------------------- the worker

    def _work(self) -> None:
        stream, frames = None, None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or (self.state == "running" and self._credit > 0))
                if self._closing:
                    return
                if stream != self._stream:                           # a new stream
                    stream, streamer, prompt = self._stream, self.parts.streamer(self.seed), self.prompt
                    frames = streamer.frames(self.num_frames, [(0, prompt)], self.first)
                    index, passed = 0, deque()   # requests given to the streamer and not yet seen starting
                requested, self._requested = self._requested, None
                self._credit -= 1
                self._making = start = self._next_start
            if requested is not None:
                streamer.request(requested[0])
                passed.append(requested)
            chunk = self._make(streamer, frames, stream, index, start, prompt, passed)
            with self._cond:
                if chunk is None or stream != self._stream:
                    self._making = None
                    continue
                self._next_start = self._after(start)
                self.frames_made += len(chunk.frames)
                self.prompt = prompt = chunk.prompt
            index += 1
            failure = self.recording.append(stream, chunk.frames)
            if failure is not None:
                self.say(f"{failure} (the stream goes on; Save mp4 reports it)")
            self.on_chunk(chunk)
            with self._cond:                     # recorded and handed on: a pause has taken effect now
                self._making = None

    def _make(self, streamer, frames, stream: int, index: int, start: int, prompt: str,
              passed: deque) -> Chunk | None:
        """The next chunk of ``frames`` (None at the stream's end or on a failure, which end the stream), under
        ``prompt`` (the last chunk's) unless a request in ``passed`` (oldest first) starts with it: at the stream's
        first output the streamer takes a pending request as its first prompt, later it records the switch."""
        switches = len(streamer.stats.switches)
        t0 = time.perf_counter()
        try:
            out = next(frames)
        except StopIteration:
            self._stop(stream, "ended", f"the stream reached its length limit ({self.num_frames} latent frames, "
                       "the RoPE table of causal.rope_mode=absolute): reset to start a new one")
            return None
        except Exception as err:                     # noqa: BLE001 (the server outlives a failed stream)
            self._stop(stream, "failed", f"generation failed: {type(err).__name__}: {err}")
            return None
        made = time.perf_counter() - t0
        recache, requested_at = None, None
        if len(streamer.stats.switches) > switches:       # recorded as the chunk it starts is handed out
            s = streamer.stats.switches[-1]
            recache = {"frame": s.frame, "recached": s.recached, "ms": 1e3 * s.seconds}
            self.say(f"prompt switch at the chunk boundary, latent frame {s.frame}: re-cached {s.recached} frames "
                     f"in {1e3 * s.seconds:.1f} ms under {s.prompt!r}")
            prompt, requested_at = s.prompt, passed.popleft()[1]
        elif index == 0 and passed:
            prompt, requested_at = passed.popleft()
        return Chunk(stream, index, start, out, prompt, made, requested_at, recache)

    def _stop(self, stream: int, state: str, message: str) -> None:
        with self._cond:
            if stream != self._stream:
                return
            self.state, self.note = state, message
        self._announce(message)
