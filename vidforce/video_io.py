"""The one mp4 writer (H.264, yuv420p, an ffmpeg process fed raw RGB) and the pixel -> uint8 conversion.

``Mp4Writer(path, fps, crf, stream)`` serves every caller:
- ``stream=True`` (``vidforce generate``, the training drift hook's previews): a *fragmented* mp4
  (``frag_keyframe+empty_moov``) with a keyframe every second and ``zerolatency`` tuning. It grows on disk
  while frames arrive and stays playable up to the last fragment even if the process dies.
- ``stream=False`` (the mini-world dataset, read back by decord): a plain mp4, finalised by ``close()``.
``crf`` is x264's constant rate factor: 18 (default) is visually lossless, the mini world writes its training
data at 4 (near lossless: its tests check pixel fidelity after decoding).

ffmpeg (imageio-ffmpeg's binary, else an ``ffmpeg`` on PATH: :func:`ffmpeg_exe`) runs in its own session, so a Ctrl-C meant for us leaves it to finalise the
file. Any failure of ffmpeg -- it stops reading frames or exits non-zero -- raises ``OSError`` with its last
message: a video that was not written is never reported as written. Missing parent directories are created.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

DEFAULT_CRF = 18


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
    return x.permute(0, 2, 3, 1).cpu().numpy()


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
    ``with``) finalises and raises ``OSError`` if ffmpeg failed. ``stream`` and ``crf``: see the module doc."""

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

    def _start(self, height: int, width: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (height, width)
        cmd = [ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
               "-r", str(Fraction(self.fps).limit_denominator()), "-i", "-", "-an", "-c:v", "libx264",
               "-pix_fmt", "yuv420p", *self._params, str(self.path.absolute())]
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
                                      start_new_session=True)

    def append(self, frames: np.ndarray) -> None:
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"{self.path}: frames must be uint8 [n, H, W, 3], got {frames.dtype} {frames.shape}")
        if frames.shape[1] % 2 or frames.shape[2] % 2:
            raise ValueError(f"{self.path}: yuv420p needs even height and width, got {frames.shape[1:3]}")
        if self._proc is None:
            self._start(*frames.shape[1:3])
        elif frames.shape[1:3] != self.size:
            raise ValueError(f"{self.path}: frames of {frames.shape[1:3]} after frames of {self.size}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._failure() from None
        self.frames += len(frames)

    def _failure(self) -> OSError:
        """The error of a failed ffmpeg (waits for it to exit): its exit status and last message line."""
        proc, self._proc = self._proc, None
        with contextlib.suppress(BrokenPipeError):      # ffmpeg already exited: its status tells
            proc.stdin.close()
        code = proc.wait()
        self._log.seek(0)
        lines = [line for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
        self._log.close()
        detail = lines[-1].strip() if lines else "no message"
        return OSError(f"ffmpeg failed to write {self.path} (exit status {code}): {detail}")

    def close(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(BrokenPipeError):      # ffmpeg already exited: its status tells
            self._proc.stdin.close()
        if self._proc.wait() != 0:
            raise self._failure()
        self._proc = None
        self._log.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
