"""Drift metrics for long videos: per-window curves and their slope / first-vs-last delta.

Frames are ``uint8`` numpy ``[H, W, 3]`` RGB. A video is cut into windows of ``window_frames``
frames (default ``round(2 s * fps)``; pass ``window_frames`` for per-chunk windows). Per window
every metric is the mean over its frames (or over its consecutive-frame pairs for flicker, motion
and frozen_fraction); ``docs/drift.md`` defines each metric, its unit and the JSON schema of
``result()``.

Motion and flicker share one optical flow per pair (Farneback, frame t to frame t-1, on frames
shrunk to a 256-px longest side): motion is its magnitude, flicker the residual after warping
frame t-1 onto frame t with it, so a smoothly moving scene has low flicker and per-frame noise
high flicker whether or not the scene moves.

Windowing rules:
- the pair (last frame of window k-1, first frame of window k) belongs to window k, so a jump at a
  chunk boundary shows up in flicker / motion; the first window has ``window_frames - 1`` pairs;
- a trailing partial window with fewer than ``window_frames / 2`` frames is merged into the window
  before it (never dropped); a video shorter than one window gives one (short) window.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import cv2
import numpy as np

from vidforce.diagnostics.reader import open_video

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec.601 luma Y'
UNDER_LUMA_8BIT = 2.5  # luma, rounded to 8 bits, <= 2 counts as under-exposed
OVER_LUMA_8BIT = 252.5  # luma, rounded to 8 bits, >= 253 counts as over-exposed
FLOW_SIDE = 256  # flow and flicker run on frames shrunk to this longest side; motion unit grid
MOTION_THRESHOLD = 0.1  # px/frame on the FLOW_SIDE grid: window >= it `moving`, pair < it frozen
THUMB_SIDE = 16  # hold/repetition descriptor: mean THUMB_SIDE x THUMB_SIDE RGB thumbnail
FLAT_NORM = 1e-6  # a centred descriptor with a smaller norm is a flat grey picture

FRAME_METRICS = ("luminance", "over_exposed", "under_exposed", "saturation", "contrast",
                 "sharpness")
PAIR_METRICS = ("flicker", "motion", "frozen_fraction")
SUMMARY_METRICS = ("luminance", "clipped_fraction", "over_exposed", "under_exposed",
                   "saturation", "color_shift", "contrast", "sharpness", "flicker", "motion",
                   "frozen_fraction", "hold_similarity", "repetition")


def window_length(fps: float, window_seconds: float = 2.0,
                  window_frames: int | None = None) -> int:
    """Frames per window: ``window_frames`` if given (per chunk), else round(window_seconds * fps).

    Raises ValueError naming the field when fps or the window is invalid or under 2 frames.
    """
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if window_frames is None:
        if not np.isfinite(window_seconds) or window_seconds <= 0:
            raise ValueError(f"window_seconds must be a positive number, got {window_seconds!r}")
        window_frames = int(round(window_seconds * fps))
    if window_frames < 2:
        raise ValueError(f"window_frames must be >= 2 (flicker and motion need frame pairs), "
                         f"got {window_frames} (fps={fps}, window_seconds={window_seconds})")
    return int(window_frames)


def frame_metrics(frame: np.ndarray) -> dict[str, float]:
    """Single-frame metrics of a uint8 ``[H, W, 3]`` RGB frame.

    luminance: mean Rec.601 luma in [0, 1]; over/under_exposed: fraction of pixels whose 8-bit
    luma is >= 253 / <= 2; saturation: mean HSV S in [0, 1]; contrast: luma std in [0, 0.5];
    sharpness: variance of the 3x3 Laplacian of luma in [0, 1] (resolution dependent).
    """
    luma255 = frame.astype(np.float32) @ LUMA_WEIGHTS
    luma = luma255 / 255.0
    hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)
    return {
        "luminance": float(luma.mean()),
        "over_exposed": float((luma255 >= OVER_LUMA_8BIT).mean()),
        "under_exposed": float((luma255 <= UNDER_LUMA_8BIT).mean()),
        "saturation": float(hsv[..., 1].mean() / 255.0),
        "contrast": float(luma.std()),
        "sharpness": float(cv2.Laplacian(luma, cv2.CV_32F).var()),
    }


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """Area-averaged ``[THUMB_SIDE, THUMB_SIDE, 3]`` float64 RGB thumbnail in [0, 1]."""
    small = cv2.resize(frame, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    return small.astype(np.float64) / 255.0


def shrink(frame: np.ndarray) -> np.ndarray:
    """uint8 RGB frame area-downscaled so its longest side is at most ``FLOW_SIDE`` px.

    Smaller frames are not upscaled: Farneback loses smooth texture in upscaled 8-bit frames.
    """
    height, width = frame.shape[:2]
    scale = FLOW_SIDE / max(height, width)
    if scale >= 1:
        return frame
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def flow_grey(frame: np.ndarray) -> np.ndarray:
    """uint8 grey ``[h, w]`` of the ``shrink``-ed frame: what the optical flow runs on."""
    return cv2.cvtColor(shrink(frame), cv2.COLOR_RGB2GRAY)


def backward_flow(prev_grey: np.ndarray, cur_grey: np.ndarray) -> np.ndarray:
    """Farneback flow ``[h, w, 2]`` (x, y) from frame t to t-1: ``cur[p] ~ prev[p + flow[p]]``.

    Inputs are ``flow_grey`` frames; the flow is in their pixels.
    """
    return cv2.calcOpticalFlowFarneback(cur_grey, prev_grey, None, pyr_scale=0.5, levels=3,
                                        winsize=15, iterations=3, poly_n=5, poly_sigma=1.2,
                                        flags=0)


def flow_motion(flow: np.ndarray) -> float:
    """Mean magnitude of a ``[h, w, 2]`` flow in px/frame on the ``FLOW_SIDE`` grid."""
    return float(np.linalg.norm(flow, axis=-1).mean() * FLOW_SIDE / max(flow.shape[:2]))


def compensated_residual(prev: np.ndarray, cur: np.ndarray, flow: np.ndarray) -> float:
    """Mean motion-compensated residual of two uint8 ``[h, w, 3]`` frames, in [0, 1].

    Frame t-1 is warped onto frame t with the ``backward_flow`` (bilinear); per pixel the residual
    is ``min(|cur - warp(prev)|, |cur - prev|)`` averaged over RGB, i.e. the error of the better
    of two predictions (the scene moved with the flow / the pixel stood still; the second keeps a
    still background next to a moving object, where the smooth flow bleeds, at 0). Pixels whose
    source lies outside frame t-1 (content entering the view) are left out of the mean.
    """
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]
    prev32, cur32 = prev.astype(np.float32), cur.astype(np.float32)
    warped = cv2.remap(prev32, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    residual = np.minimum(np.abs(cur32 - warped), np.abs(cur32 - prev32)).mean(axis=-1)
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return float((residual[inside] if inside.any() else residual).mean() / 255.0)


def pair_metrics(prev: np.ndarray, prev_grey: np.ndarray, cur: np.ndarray,
                 cur_grey: np.ndarray) -> tuple[float, float]:
    """(flicker, motion) of two ``shrink``-ed uint8 RGB frames and their grey versions.

    One ``backward_flow`` serves both: motion is its magnitude, flicker what it leaves unexplained.
    """
    flow = backward_flow(prev_grey, cur_grey)
    return compensated_residual(prev, cur, flow), flow_motion(flow)


def flicker(prev: np.ndarray, cur: np.ndarray) -> float:
    """Motion-compensated residual (``compensated_residual``) of two uint8 ``[H, W, 3]`` frames.

    Measured on the ``shrink``-ed frames (the flow grid), in [0, 1]: ~0 for a still or smoothly
    moving scene, the per-frame change that no motion explains otherwise (noise, popping, cuts).
    """
    prev, cur = shrink(prev), shrink(cur)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (prev, cur)]
    return pair_metrics(prev, grey[0], cur, grey[1])[0]


def motion_magnitude(prev_grey: np.ndarray, cur_grey: np.ndarray) -> float:
    """Mean Farneback flow magnitude between two ``flow_grey`` frames ``[h, w]``.

    Unit: px/frame on a grid whose longest side is ``FLOW_SIDE`` (flow measured on smaller frames
    is scaled up to it), so the value does not depend on the video's resolution.
    """
    return flow_motion(backward_flow(prev_grey, cur_grey))


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65; L in [0, 100]) of one sRGB colour given as a ``[3]`` array in [0, 1]."""
    pixel = np.asarray(rgb, dtype=np.float32).reshape(1, 1, 3)
    return cv2.cvtColor(pixel, cv2.COLOR_RGB2Lab).reshape(3).astype(np.float64)


def unit_descriptors(descriptors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Flattened, mean-centred, unit-norm descriptors ``[W, D]`` and a ``[W]`` flat-grey mask.

    A descriptor whose centred norm is below ``FLAT_NORM`` (a flat grey picture) is flagged flat.
    """
    rows = np.stack([np.ravel(d).astype(np.float64) for d in descriptors])
    centred = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    flat = norms < FLAT_NORM
    return centred / np.where(flat, 1.0, norms)[:, None], flat


def similarity_row(unit: np.ndarray, flat: np.ndarray, k: int, upto: int) -> np.ndarray:
    """Pearson correlation ``[upto]`` in [-1, 1] of window ``k`` with windows ``0 .. upto-1``.

    Centring makes a global brightness change alone leave it unchanged (luminance reports that).
    Two flat grey pictures score 1.0, a flat grey against a structured picture 0.0.
    """
    if flat[k]:
        return np.where(flat[:upto], 1.0, 0.0)
    sims = np.clip(unit[:upto] @ unit[k], -1.0, 1.0)
    sims[flat[:upto]] = 0.0
    return sims


def consistency(descriptors: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-window (hold_similarity, repetition) from per-window descriptors ``d``.

    hold_similarity[k] = sim(d[k], d[0]); repetition[k] = max over j <= k - 2 of sim(d[k], d[j])
    (the adjacent window is excluded: neighbours of a continuous video are alike), and 0.0 for
    k < 2 where no such window exists. Time O(W^2 D), memory O(W D).
    """
    unit, flat = unit_descriptors(descriptors)
    hold, repetition = [], []
    for k in range(len(descriptors)):
        sims = similarity_row(unit, flat, k, k + 1)
        hold.append(float(sims[0]))
        repetition.append(float(sims[:k - 1].max()) if k >= 2 else 0.0)
    return hold, repetition


def linear_slope(times: list[float], values: list[float]) -> float:
    """Least-squares slope of ``values`` vs ``times`` [s], in value units per second (0 if one)."""
    t = np.asarray(times, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    spread = float(((t - t.mean()) ** 2).sum())
    if len(t) < 2 or spread == 0.0:
        return 0.0
    return float(((t - t.mean()) * (y - y.mean())).sum() / spread)


def summarize(windows: list[dict]) -> dict[str, dict[str, float]]:
    """Per metric: slope (per second, vs window centre), first, last, delta = last - first."""
    centres = [(w["t_start"] + w["t_end"]) / 2 for w in windows]
    summary = {}
    for name in SUMMARY_METRICS:
        values = [w[name] for w in windows]
        summary[name] = {"slope": linear_slope(centres, values), "first": float(values[0]),
                         "last": float(values[-1]), "delta": float(values[-1] - values[0])}
    return summary


class WindowSums:
    """Running sums of one window: frame metrics, pair metrics, mean colour and thumbnail."""

    def __init__(self, start: int):
        self.start = start
        self.frames = 0
        self.pairs = 0
        self.sums = dict.fromkeys(FRAME_METRICS + PAIR_METRICS, 0.0)
        self.rgb = np.zeros(3)
        self.thumb = np.zeros((THUMB_SIDE, THUMB_SIDE, 3))

    def add_frame(self, frame: np.ndarray) -> None:
        """Accumulate the single-frame metrics, mean colour and thumbnail of ``frame``."""
        for name, value in frame_metrics(frame).items():
            self.sums[name] += value
        self.rgb += frame.reshape(-1, 3).mean(axis=0) / 255.0
        self.thumb += thumbnail(frame)
        self.frames += 1

    def add_pair(self, flicker_value: float, motion_value: float) -> None:
        """Accumulate one consecutive-frame pair ending in this window."""
        self.sums["flicker"] += flicker_value
        self.sums["motion"] += motion_value
        self.sums["frozen_fraction"] += float(motion_value < MOTION_THRESHOLD)
        self.pairs += 1

    def merged(self, tail: "WindowSums") -> "WindowSums":
        """A new window holding this window's frames followed by ``tail``'s."""
        out = WindowSums(self.start)
        out.frames, out.pairs = self.frames + tail.frames, self.pairs + tail.pairs
        out.sums = {k: self.sums[k] + tail.sums[k] for k in self.sums}
        out.rgb, out.thumb = self.rgb + tail.rgb, self.thumb + tail.thumb
        return out

    def means(self, fps: float) -> dict:
        """Window record without the cross-window metrics (color_shift, hold, repetition)."""
        record = {"t_start": self.start / fps, "t_end": (self.start + self.frames) / fps}
        record.update({k: self.sums[k] / self.frames for k in FRAME_METRICS})
        record.update({k: self.sums[k] / self.pairs for k in PAIR_METRICS})
        record["clipped_fraction"] = record["over_exposed"] + record["under_exposed"]
        record["moving"] = bool(record["motion"] >= MOTION_THRESHOLD)
        return record


class DriftMeter:
    """Streaming drift accumulator: ``update(frame)`` per frame, ``result()`` for the JSON dict.

    Memory holds the previous (shrunk) frame and a few floats plus one ``[16, 16, 3]`` descriptor
    per window, never the video. ``result()`` may be called at any time and does not end the stream.
    """

    def __init__(self, fps: float, window_seconds: float = 2.0, window_frames: int | None = None,
                 video: str | None = None):
        self.window_frames = window_length(fps, window_seconds, window_frames)
        self.fps = float(fps)
        self.video = video
        self.num_frames = 0
        self._done: list[WindowSums] = []
        self._current = WindowSums(0)
        self._shape: tuple[int, ...] | None = None
        self._prev: tuple[np.ndarray, np.ndarray] | None = None  # shrunk RGB and grey frame

    def update(self, frame: np.ndarray) -> None:
        """Consume one uint8 ``[H, W, 3]`` RGB frame (all frames must share one shape)."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {self.num_frames}: expected uint8 [H, W, 3] RGB, "
                             f"got {frame.dtype} {frame.shape}")
        if self._shape is not None and frame.shape != self._shape:
            raise ValueError(f"frame {self.num_frames}: shape {frame.shape} differs from "
                             f"the first frame's {self._shape}")
        small = shrink(frame).copy()
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        if self._prev is not None:
            self._current.add_pair(*pair_metrics(*self._prev, small, grey))
        self._current.add_frame(frame)
        self._shape, self._prev = frame.shape, (small, grey)
        self.num_frames += 1
        if self._current.frames == self.window_frames:
            self._done.append(self._current)
            self._current = WindowSums(self.num_frames)

    def _windows(self) -> list[WindowSums]:
        """Finished windows plus the trailing partial one (own window if >= half, else merged)."""
        windows = list(self._done)
        tail = self._current
        if tail.frames and (not windows or 2 * tail.frames >= self.window_frames):
            windows.append(tail)
        elif tail.frames:
            windows[-1] = windows[-1].merged(tail)
        return windows

    def result(self) -> dict:
        """The drift report dict (schema in ``docs/drift.md``); needs at least 2 frames."""
        if self.num_frames < 2:
            raise ValueError(f"drift needs at least 2 frames, got {self.num_frames}"
                             + (f" in {self.video}" if self.video else ""))
        sums = self._windows()
        windows = [s.means(self.fps) for s in sums]
        labs = [rgb_to_lab(s.rgb / s.frames) for s in sums]
        hold, repetition = consistency([s.thumb / s.frames for s in sums])
        for record, lab, hold_k, rep_k in zip(windows, labs, hold, repetition):
            record["color_shift"] = float(np.linalg.norm(lab - labs[0]))
            record["hold_similarity"] = hold_k
            record["repetition"] = rep_k
        return {"video": self.video, "fps": self.fps,
                "window_seconds": self.window_frames / self.fps, "num_frames": self.num_frames,
                "windows": windows, "summary": summarize(windows)}


def analyze_frames(frames: Iterable[np.ndarray], fps: float, window_seconds: float = 2.0,
                   window_frames: int | None = None, video: str | None = None) -> dict:
    """Run a ``DriftMeter`` over an iterable of uint8 ``[H, W, 3]`` frames and return its result."""
    meter = DriftMeter(fps, window_seconds, window_frames, video)
    for frame in frames:
        meter.update(frame)
    return meter.result()


def analyze_video(path: str | os.PathLike, window_seconds: float = 2.0,
                  window_frames: int | None = None) -> dict:
    """Drift report of a video file, streamed frame by frame through ``open_video``.

    A truncated file is measured on the frames ffmpeg decodes before the damage (``num_frames``
    says how many). Raises FileNotFoundError for a missing file and ValueError naming the file for
    an empty, unreadable or corrupt one (no frame decodes).
    """
    with open_video(path) as (fps, frames):
        meter = DriftMeter(fps, window_seconds, window_frames, video=os.fspath(path))
        for frame in frames:
            meter.update(frame)
    if meter.num_frames == 0:
        raise ValueError(f"video {os.fspath(path)} has no decodable frames")
    return meter.result()
