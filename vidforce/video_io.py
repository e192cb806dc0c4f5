"""The one mp4 writer (H.264, yuv420p, through imageio-ffmpeg) and the pixel -> uint8 conversion.

``Mp4Writer(path, fps, crf, stream)`` serves every caller:
- ``stream=True`` (``vidforce generate``, the training drift hook's previews): a *fragmented* mp4
  (``frag_keyframe+empty_moov``) with a keyframe every second and ``zerolatency`` tuning. It grows on disk
  while frames arrive and stays playable up to the last fragment even if the process dies.
- ``stream=False`` (the mini-world dataset, read back by decord): a plain mp4, finalised by ``close()``.
``crf`` is x264's constant rate factor: 18 (default) is visually lossless, the mini world writes its training
data at 4 (near lossless: its tests check pixel fidelity after decoding).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_CRF = 18


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[T, 3, H, W]`` float in [-1, 1] -> ``[T, H, W, 3]`` uint8."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def check_writable(path: str | Path) -> Path:
    """Raise a clear error before any heavy work if ``path`` cannot be written."""
    p = Path(path)
    if p.suffix.lower() != ".mp4":
        raise ValueError(f"--out must end in .mp4, got {p}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise PermissionError(f"cannot write {p}")
    return p


class Mp4Writer:
    """Append uint8 RGB frames ``[n, H, W, 3]`` (H and W even: yuv420p); ``close()`` (also on exceptions via
    ``with``) finalises. ``stream`` and ``crf``: see the module doc."""

    def __init__(self, path: str | Path, fps: float, crf: int = DEFAULT_CRF, stream: bool = True):
        import imageio.v2 as imageio  # noqa: PLC0415 (heavy import only when writing)
        self.path, self.frames = Path(path), 0
        params = ["-crf", str(crf)]
        if stream:
            params += ["-tune", "zerolatency", "-g", str(max(1, int(round(fps)))),
                       "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-flush_packets", "1"]
        self._writer = imageio.get_writer(str(self.path), fps=fps, codec="libx264", quality=None,
                                          pixelformat="yuv420p", macro_block_size=2, ffmpeg_log_level="error",
                                          ffmpeg_params=params)

    def append(self, frames: np.ndarray) -> None:
        if frames.shape[1] % 2 or frames.shape[2] % 2:
            raise ValueError(f"{self.path}: yuv420p needs even height and width, got {frames.shape[1:3]}")
        for f in frames:
            self._writer.append_data(f)
        self.frames += len(frames)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
