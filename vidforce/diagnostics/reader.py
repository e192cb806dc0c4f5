"""Tolerant video file reader for the drift diagnostics: every frame ffmpeg can decode, in order.

decord (the training data path, ``vidforce/data/video.py``) fails on a fragmented mp4 cut short by
a dying writer: it counts frames that no longer decode, then errors on them. This reader streams
ffmpeg's raw RGB output instead and ends at the first frame ffmpeg cannot decode.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np


def _decoded_frames(stream: Iterator[bytes], width: int, height: int) -> Iterator[np.ndarray]:
    """uint8 ``[height, width, 3]`` frames from ffmpeg's raw RGB stream, up to the first failure.

    imageio-ffmpeg raises RuntimeError for a partial last frame or a read error: that ends it.
    """
    try:
        for raw in stream:
            yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    except RuntimeError:
        return


@contextlib.contextmanager
def open_video(path: str | os.PathLike) -> Iterator[tuple[float, Iterator[np.ndarray]]]:
    """``with open_video(path) as (fps, frames)``: the frame rate and a lazy iterator of uint8
    ``[H, W, 3]`` RGB frames of a video file; leaving the block stops ffmpeg.

    ffmpeg (imageio-ffmpeg) decodes every frame once in stream order (``-fps_mode passthrough``)
    and stops at the first frame it cannot decode (``-xerror``), so a truncated file, e.g. a
    fragmented mp4 whose writer died, yields the frames before the damage instead of failing.
    Raises FileNotFoundError for a missing file and ValueError naming the file when ffmpeg cannot
    open it or finds no frame rate.
    """
    import imageio_ffmpeg

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    stream = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24", input_params=["-xerror"],
                                        output_params=["-fps_mode", "passthrough"])
    with contextlib.closing(stream):
        try:
            meta = next(stream)
        except (OSError, RuntimeError) as err:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot read video {path}: empty, corrupt or unsupported "
                             f"({reason})") from err
        fps = float(meta["fps"])
        if not np.isfinite(fps) or fps <= 0:
            raise ValueError(f"cannot read video {path}: ffmpeg reports no frame rate")
        width, height = meta["size"]
        yield fps, _decoded_frames(stream, width, height)
