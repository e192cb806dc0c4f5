"""The one mp4 writer (H.264, yuv420p, an ffmpeg process fed raw RGB) and the pixel -> uint8 conversion.

``Mp4Writer(path, fps, crf, stream)`` serves every caller:
- ``stream=True`` (``vidforce generate``, the training drift hook's previews): a *fragmented* mp4
  (``frag_keyframe+empty_moov``) with a keyframe every second and ``zerolatency`` tuning. It grows on disk
  while frames arrive and stays playable up to the last fragment even if the process dies (without the frames
  still queued for the writer thread then: ``close()`` writes those).
- ``stream=False`` (the mini-world dataset, read back by decord): a plain mp4, finalised by ``close()``.
``crf`` is x264's constant rate factor: 18 (default) is visually lossless, the mini world writes its training
data at 4 (near lossless: its tests check pixel fidelity after decoding).

ffmpeg (imageio-ffmpeg's binary, else an ``ffmpeg`` on PATH: :func:`ffmpeg_exe`) runs in its own session, so a Ctrl-C meant for us leaves it to finalise the
file. Any failure of ffmpeg -- it stops reading frames or exits non-zero -- raises ``OSError`` with its last
message: a video that was not written is never reported as written. Missing parent directories are created.

Writing costs the caller no encoding time while ffmpeg keeps up: ``append`` copies the frames into a queue of at
most :data:`QUEUE_DEPTH` appends and returns, and a thread pipes them to ffmpeg (which reads only as fast as it
encodes). So a streaming loop goes back to its GPU work while ffmpeg encodes the chunks before; ``append`` blocks
only when ffmpeg falls :data:`QUEUE_DEPTH` appends behind, so memory stays bounded however fast frames come.
ffmpeg gets the bytes a synchronous pipe would give it, in the same order: the file is the same.
"""
from __future__ import annotations

import contextlib
import math
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

DEFAULT_CRF = 18
QUEUE_DEPTH = 2                 # appends (chunks) waiting for the writer thread, beside the one it writes


def ffmpeg_exe() -> str:
    """The ffmpeg binary: imageio-ffmpeg's, else ``ffmpeg`` on PATH; ``OSError`` (one line) when there is none."""
    try:
        from imageio_ffmpeg import get_ffmpeg_exe  # noqa: PLC0415 (only when writing)
    except ImportError:
        found = shutil.which("ffmpeg")
        if found is None:
            raise OSError("writing mp4 needs ffmpeg: pip install imageio-ffmpeg, or put an ffmpeg on PATH") from None
        return found
    return get_ffmpeg_exe()


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[T, 3, H, W]`` float in [-1, 1] -> ``[T, H, W, 3]`` uint8."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()     # made contiguous on the device, not by the host


def check_writable(path: str | Path) -> Path:
    """Raise a clear error before any heavy work if ``path`` (an ``.mp4``) cannot be written; a missing parent
    directory is fine (``Mp4Writer`` creates it)."""
    p = Path(path)
    if p.suffix.lower() != ".mp4":
        raise ValueError(f"--out must end in .mp4, got {p}")
    if p.is_dir():
        raise ValueError(f"--out {p} is a directory")
    existing = next(d for d in p.absolute().parents if d.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {p}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise PermissionError(f"cannot write {p}")
    return p


class Mp4Writer:
    """Append uint8 RGB frames ``[n, H, W, 3]`` (H and W even: yuv420p); ``close()`` (also on exceptions via
    ``with``) writes every appended frame, finalises the file and raises ``OSError`` if ffmpeg failed. A failure
    while the thread writes (a broken pipe: ffmpeg stopped reading) raises on the next ``append`` or on ``close``,
    once; the writer is closed after it. ``stream`` and ``crf``: see the module doc."""

    def __init__(self, path: str | Path, fps: float, crf: int = DEFAULT_CRF, stream: bool = True):
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"{path}: the frame rate must be > 0 and finite, got {fps}")
        self.path, self.fps, self.frames, self.size = Path(path), fps, 0, None
        self._params = ["-crf", str(crf)]
        if stream:
            self._params += ["-tune", "zerolatency", "-g", str(max(1, int(round(fps)))),
                             "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-flush_packets", "1"]
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None           # set by the thread, raised by the next append or close

    def _command(self, height: int, width: int) -> list[str]:
        """The ffmpeg command line that encodes ``height x width`` frames read from stdin into ``self.path``."""
        return [ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
                "-r", str(Fraction(self.fps).limit_denominator()), "-i", "-", "-an", "-c:v", "libx264",
                "-pix_fmt", "yuv420p", *self._params, str(self.path.absolute())]

    def _start(self, height: int, width: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (height, width)
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(self._command(height, width), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self._log, start_new_session=True)
        # a daemon: it never keeps a process alive; one that exits without close() leaves ffmpeg to finalise
        # what reached it (the pipe ends)
        self._thread = threading.Thread(target=self._pipe, args=(self._proc,), name=f"mp4 {self.path.name}",
                                        daemon=True)
        self._thread.start()

    def append(self, frames: np.ndarray) -> None:
        """Queue a copy of ``frames`` (the caller may reuse its array); blocks while :data:`QUEUE_DEPTH` appends
        wait for ffmpeg."""
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"{self.path}: frames must be uint8 [n, H, W, 3], got {frames.dtype} {frames.shape}")
        if frames.shape[1] % 2 or frames.shape[2] % 2:
            raise ValueError(f"{self.path}: yuv420p needs even height and width, got {frames.shape[1:3]}")
        if self._proc is None:
            self._start(*frames.shape[1:3])
        elif frames.shape[1:3] != self.size:
            raise ValueError(f"{self.path}: frames of {frames.shape[1:3]} after frames of {self.size}")
        if self._error is not None:
            self.close()                                # raises the thread's error; the writer is closed
        self._queue.put(np.array(frames, order="C"))
        self.frames += len(frames)

    def _pipe(self, proc: subprocess.Popen) -> None:
        """The writer thread: pipe queued frames to ``proc`` until ``None`` (from :meth:`close`). After a failure it
        keeps the error for the caller and takes (drops) what is queued, so that no ``append`` blocks forever."""
        while (frames := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                proc.stdin.write(frames)
                proc.stdin.flush()
            except BrokenPipeError:
                self._error = self._failure(proc)
            except Exception as err:  # noqa: BLE001 (raised in the caller, not lost with the thread)
                self._error = err

    def _failure(self, proc: subprocess.Popen) -> OSError:
        """The error of a failed ffmpeg (waits for it to exit): its exit status and last message line."""
        with contextlib.suppress(BrokenPipeError):      # ffmpeg already exited: its status tells
            proc.stdin.close()
        code = proc.wait()
        self._log.seek(0)
        lines = [line for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else "no message"
        return OSError(f"ffmpeg failed to write {self.path} (exit status {code}): {detail}")

    def close(self) -> None:
        """Write every appended frame (the thread takes all that is queued), finalise the file; raise the thread's
        error or ffmpeg's, once: the writer is closed either way."""
        if self._proc is None:
            return
        self._queue.put(None)
        self._thread.join()
        proc, error = self._proc, self._error
        self._proc, self._thread, self._error = None, None, None
        with contextlib.suppress(BrokenPipeError):      # ffmpeg already exited: its status tells
            proc.stdin.close()
        if proc.wait() != 0 and error is None:
            error = self._failure(proc)
        self._log.close()
        if error is not None:
            raise error

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
