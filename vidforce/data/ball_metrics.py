"""Ball-world metrics: how far each window of a video has drifted from the video's own first window.

The prompt of a ball scene states only the count, so every other property (colours, sizes, background,
exposure, speed) is judged against what the first window showed, never against a true trajectory: the
ground-truth render scores about 0 and a video that forgets its context scores high.

Detection, per frame ``[H, W, 3]`` uint8 (0-255 scale throughout):
1. background = per-channel median of the 1-pixel frame border;
2. foreground = RGB distance to the background > ``FOREGROUND_THRESHOLD``; its morphological opening
   with a 3x3 cross is the *core* (thin lines and specks have little or none);
3. colour labels: foreground pixels with chroma >= ``CHROMA_MIN`` (``balls.rgb_to_hue``) take the nearest
   of the frame's hue peaks (greedy peaks of a circular hue histogram, ``hue_peaks``); the others share
   one achromatic label. Touching balls of different hues thus stay apart, whatever hues they drifted to;
4. connected components per label (OpenCV, 8-connectivity); components with fewer than ``min_area`` =
   ``MIN_AREA_FRACTION * pi * r_min^2`` core pixels (a fraction of the smallest disc of the world) are
   ignored. The area counts all of a component's pixels, so a clean disc measures its exact raster area.
An object is a component: its area, centroid (x, y) in the pixel-centre convention of ``balls`` and
per-channel median colour (robust to blurred, background-mixed edges).

Reference and tracking: the reference objects are those of the first frame of the first window that
shows the window's most common count. In every frame, objects are assigned one-to-one to reference
objects by least total RGB distance (brute force over at most ``MAX_MATCH`` objects a side, the
largest). Limits: a hue drift beyond half the smallest hue gap may be matched to another object;
objects that drift to the same hue merge when they touch.

Per window of ``window`` frames (full windows only; trailing frames are ignored), with ``1`` the first:
- count_error = mean_t |count_t - prompt count|;
- colour_drift = mean over reference objects of |c_w - c_1| (RGB distance of the window-mean colours);
- size_drift = mean over reference objects of |A_w / A_1 - 1| (window-mean areas);
- background_drift = |b_w - b_1| (RGB distance of the window-mean background);
- luminance_drift = |L_w - L_1|, L = mean over the frame of the intensity (R+G+B)/3 (intensity, not
  Rec.601 luma, so a hue rotation about the grey axis leaves it unchanged);
- clipped_fraction = fraction of pixels with a channel <= ``CLIP_LOW`` or >= ``CLIP_HIGH``;
  clipped_drift = |clip_w - clip_1|;
- motion_ratio = sqrt(mean |c_n(t) - c_n(t-1)|^2 over t in window w) / (the same in window 1), over the
  reference objects tracked in both windows: RMS speed, which equal-mass elastic collisions conserve
  (0 = frozen, 1 = as fast as the first window).
Primary score: ``D = min(max_k term_k / VISIBLE[k], D_CLIP)`` (motion term ``|1 - ratio|``), NaN terms
(nothing to measure) skipped. A max, not a mean, so a visible failure of any one term gives D >= 1.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from vidforce.data.balls import BallWorldSpec, rgb_to_hue

FOREGROUND_THRESHOLD = 40.0   # RGB distance to the background; balls are >= colour_chroma (115) away
CHROMA_MIN = 20.0             # ball/background mixes above the foreground threshold have chroma >= ~29
HUE_BIN = 5.0                 # degrees per hue-histogram bin
HUE_PEAK_HALF_WIDTH = 15.0    # a peak's mass = pixels within this many degrees (a ball spans a few)
HUE_SUPPRESS = 30.0           # peaks at least this far apart (half the world's 60-degree hue gap)
MIN_AREA_FRACTION = 0.4       # of the smallest disc (radius 3: 11.3 core px); a 3x3 speck (core 5) is ignored
CLIP_LOW, CLIP_HIGH = 2, 253  # clipped pixel levels
MAX_MATCH = 6                 # objects a side in the brute-force assignment (6P6 = 720 maps)
D_CLIP = 4.0                  # ceiling of every normalised term and of D
VISIBLE = {                   # visibility threshold of each term: at this value the failure is plain to see
    "count": 0.25,            # one ball missing (or extra) in a quarter of the window's frames
    "colour": 30.0,           # RGB distance: a ~15 degree hue rotation at chroma 115
    "size": 0.3,              # relative area: ~14 % in radius (a radius-3 raster disc alone varies ~8 %)
    "background": 15.0,       # RGB distance: ~9 grey levels, or a tint of 15 in one channel
    "luminance": 10.0,        # intensity levels of the whole frame
    "clipped": 0.02,          # 2 % of the pixels newly clipped
    "motion": 0.4,            # |1 - speed ratio|: 40 % slower (or faster); a freeze scores 2.5
}
_OPENING = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclass(frozen=True)
class Detections:
    """Objects of each of T frames, at most K a frame (NaN padding): count [T] int, area [T, K] px,
    centroid [T, K, 2] (x, y), colour [T, K, 3] median RGB (0-255); background [T, 3]."""

    count: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    colour: np.ndarray
    background: np.ndarray


def _nanmean(x: np.ndarray, axis=None) -> np.ndarray:
    """Mean ignoring NaN; NaN (without a warning) where everything is NaN."""
    valid = ~np.isnan(x)
    total = np.where(valid, x, 0.0).sum(axis=axis)
    count = valid.sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _circular_distance(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """Distance on the hue circle, degrees in [0, 180]."""
    return np.abs(np.mod(a - b + 180.0, 360.0) - 180.0)


def background_colour(video: np.ndarray) -> np.ndarray:
    """Per-channel median of each frame's 1-pixel border. video [T, H, W, 3] -> [T, 3] float."""
    border = np.concatenate([video[:, 0], video[:, -1], video[:, 1:-1, 0], video[:, 1:-1, -1]], axis=1)
    return np.median(border.astype(np.float64), axis=1)


def hue_peaks(hues: np.ndarray, min_mass: float) -> np.ndarray:
    """Dominant hues of pixels hues [P] (degrees) -> peaks [K] (degrees).

    Greedy: the histogram bin (``HUE_BIN`` wide) with the most pixels within ``HUE_PEAK_HALF_WIDTH``
    becomes a peak at the circular mean of those pixels, bins within ``HUE_SUPPRESS`` of it are removed;
    repeat while the best remaining mass is >= ``min_mass`` pixels.
    """
    bins = int(round(360.0 / HUE_BIN))
    hist = np.bincount(np.floor(hues / HUE_BIN).astype(np.int64) % bins, minlength=bins).astype(np.float64)
    half = int(round(HUE_PEAK_HALF_WIDTH / HUE_BIN))
    mass = sum(np.roll(hist, k) for k in range(-half, half + 1))
    suppress = int(round(HUE_SUPPRESS / HUE_BIN))
    peaks = []
    while mass.max() >= min_mass:
        b = int(mass.argmax())
        near = np.deg2rad(hues[_circular_distance(hues, (b + 0.5) * HUE_BIN) <= (half + 0.5) * HUE_BIN])
        peaks.append(np.mod(np.degrees(np.arctan2(np.sin(near).mean(), np.cos(near).mean())), 360.0))
        mass[(b + np.arange(-suppress, suppress + 1)) % bins] = -np.inf
    return np.array(peaks, dtype=np.float64)


def segment(frame: np.ndarray, background: np.ndarray, min_area: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Objects of one frame [H, W, 3] uint8 over background [3] (module doc, steps 2-4).

    Returns area [K], centroid [K, 2] (x, y) and median colour [K, 3].
    """
    pixels = frame.astype(np.float64)
    fg = np.linalg.norm(pixels - background, axis=-1) > FOREGROUND_THRESHOLD
    core = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, _OPENING).astype(bool)
    _, chroma, hue = rgb_to_hue(pixels)
    chromatic = fg & (chroma >= CHROMA_MIN)
    peaks = hue_peaks(hue[chromatic], min_area)
    labels = np.where(fg, len(peaks), -1)
    if len(peaks):
        labels = np.where(chromatic, _circular_distance(hue[..., None], peaks).argmin(-1), labels)
    objects = []
    for k in range(len(peaks) + 1):
        num, comp, stats, centroids = cv2.connectedComponentsWithStats((labels == k).astype(np.uint8),
                                                                       connectivity=8)
        solid = np.bincount(comp[core], minlength=num)
        for c in range(1, num):
            if solid[c] >= min_area:
                colour = np.median(pixels[comp == c], axis=0)
                objects.append([stats[c, cv2.CC_STAT_AREA], *(centroids[c] + 0.5), *colour])
    out = np.array(objects, dtype=np.float64).reshape(-1, 6)
    return out[:, 0], out[:, 1:3], out[:, 3:6]


def detect(video: np.ndarray, min_area: float) -> Detections:
    """Objects of every frame of a video [T, H, W, 3] uint8 (``segment`` per frame)."""
    background = background_colour(video)
    frames = [segment(f, b, min_area) for f, b in zip(video, background)]
    count = np.array([len(area) for area, _, _ in frames], dtype=np.int64)
    t, k = len(frames), max(1, int(count.max()))
    area, centroid, colour = np.full((t, k), np.nan), np.full((t, k, 2), np.nan), np.full((t, k, 3), np.nan)
    for i, (a, c, col) in enumerate(frames):
        area[i, :len(a)], centroid[i, :len(a)], colour[i, :len(a)] = a, c, col
    return Detections(count, area, centroid, colour, background)


@functools.lru_cache(maxsize=None)
def _injections(n: int, k: int) -> np.ndarray:
    """All one-to-one maps of k items into n: [n! / (n - k)!, k]."""
    return np.array(list(itertools.permutations(range(n), k)), dtype=np.int64).reshape(-1, k)


def match(reference: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """One-to-one assignment of reference colours [R, 3] to object colours [D, 3] with the least total
    RGB distance (brute force; R, D <= ``MAX_MATCH``). Returns [R]: an object index, or -1 if unmatched."""
    r, d = len(reference), len(colours)
    out = np.full(r, -1, dtype=np.int64)
    if r == 0 or d == 0:
        return out
    cost = np.linalg.norm(reference[:, None] - colours[None], axis=-1)        # [R, D]
    if r <= d:
        maps = _injections(d, r)                                              # reference i -> maps[:, i]
        out[:] = maps[cost[np.arange(r), maps].sum(1).argmin()]
    else:
        maps = _injections(r, d)                                              # object j -> maps[:, j]
        out[maps[cost[maps, np.arange(d)].sum(1).argmin()]] = np.arange(d)
    return out


def _largest(det: Detections, t: int) -> np.ndarray:
    """Indices of frame t's objects, largest first, at most ``MAX_MATCH``."""
    return np.argsort(-det.area[t, :det.count[t]], kind="stable")[:MAX_MATCH]


def reference_colours(det: Detections, window: int) -> np.ndarray:
    """Colours [R, 3] of the reference objects: the first frame of the first window that shows the
    window's most common count (its largest ``MAX_MATCH`` objects)."""
    counts = det.count[:window]
    t = int(np.flatnonzero(counts == np.bincount(counts).argmax())[0])
    return det.colour[t, _largest(det, t)]


def tracks(det: Detections, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each reference object's area [T, R], centroid [T, R, 2] and colour [T, R, 3]; NaN where unmatched."""
    t_len, r = len(det.count), len(reference)
    area, centroid, colour = np.full((t_len, r), np.nan), np.full((t_len, r, 2), np.nan), np.full((t_len, r, 3), np.nan)
    for t in range(t_len):
        keep = _largest(det, t)
        assigned = match(reference, det.colour[t, keep])
        ok = assigned >= 0
        idx = keep[assigned[ok]]
        area[t, ok], centroid[t, ok], colour[t, ok] = det.area[t, idx], det.centroid[t, idx], det.colour[t, idx]
    return area, centroid, colour


def window_mean(x: np.ndarray, window: int) -> np.ndarray:
    """NaN-ignoring mean over consecutive full windows: x [T, ...] -> [T // window, ...]."""
    w = len(x) // window
    return _nanmean(x[:w * window].reshape(w, window, *x.shape[1:]), axis=1)


def motion_ratio(centroid: np.ndarray, window: int) -> np.ndarray:
    """RMS frame-to-frame speed of each window over the first window's, centroid [T, R, 2] -> [W].

    ratio_w = sqrt(mean_{t in w, n in S} |c_n(t) - c_n(t-1)|^2 / mean_{t in 1, n in S} (same)), with S the
    objects that have a displacement in both windows; NaN if S is empty or the first window is still.
    """
    step2 = np.full(centroid.shape[:2], np.nan)
    step2[1:] = ((centroid[1:] - centroid[:-1]) ** 2).sum(-1)
    w = len(centroid) // window
    blocks = step2[:w * window].reshape(w, window, centroid.shape[1])         # [W, window, R]
    seen = ~np.isnan(blocks).all(axis=1)                                      # [W, R]
    ratio = np.full(w, np.nan)
    for i in range(w):
        both = seen[i] & seen[0]
        first = _nanmean(blocks[0][:, both]) if both.any() else np.nan
        if first > 0:
            ratio[i] = np.sqrt(_nanmean(blocks[i][:, both]) / first)
    return ratio


def drift_terms(metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Normalised terms ``d_<name>`` = value / ``VISIBLE[name]`` (each capped at ``D_CLIP``) and
    ``D`` = their NaN-skipping max, from the per-window values of ``scene_metrics``."""
    values = {"count": metrics["count_error"], "colour": metrics["colour_drift"],
              "size": metrics["size_drift"], "background": metrics["background_drift"],
              "luminance": metrics["luminance_drift"], "clipped": metrics["clipped_drift"],
              "motion": np.abs(1.0 - metrics["motion_ratio"])}
    terms = {f"d_{k}": np.minimum(v / VISIBLE[k], D_CLIP) for k, v in values.items()}
    terms["D"] = np.fmax.reduce(np.stack(list(terms.values())), axis=0)
    return terms


def scene_metrics(video: np.ndarray, count: int, window: int,
                  min_radius: float = BallWorldSpec().radius_range[0]) -> dict[str, np.ndarray]:
    """Drift of each window of a video [T, H, W, 3] uint8 against its first window (module doc).

    count: the prompt's ball count; window: frames per window (>= 2, <= T); min_radius: the world's
    smallest disc radius (sets ``min_area``). Returns {name: [W]} for count, count_error, colour_drift,
    size_drift, background_drift, luminance_drift, clipped_fraction, clipped_drift, motion_ratio, the
    normalised terms d_count, d_colour, d_size, d_background, d_luminance, d_clipped, d_motion and D.
    """
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"scene_metrics.video: need uint8 [T, H, W, 3], got {video.dtype} {video.shape}")
    if count < 0:
        raise ValueError(f"scene_metrics.count: need >= 0, got {count}")
    if not 2 <= window <= len(video):
        raise ValueError(f"scene_metrics.window: need 2 <= window <= T={len(video)}, got {window}")
    det = detect(video, MIN_AREA_FRACTION * np.pi * min_radius ** 2)
    area, centroid, colour = tracks(det, reference_colours(det, window))
    win_area, win_colour = window_mean(area, window), window_mean(colour, window)
    background = window_mean(det.background, window)
    luminance = window_mean(video.mean(axis=(1, 2, 3), dtype=np.float64), window)
    clipped = window_mean(((video <= CLIP_LOW) | (video >= CLIP_HIGH)).any(-1).mean(axis=(1, 2)), window)
    out = {
        "count": window_mean(det.count.astype(np.float64), window),
        "count_error": window_mean(np.abs(det.count - count).astype(np.float64), window),
        "colour_drift": _nanmean(np.linalg.norm(win_colour - win_colour[0], axis=-1), axis=1),
        "size_drift": _nanmean(np.abs(win_area / win_area[0] - 1.0), axis=1),
        "background_drift": np.linalg.norm(background - background[0], axis=-1),
        "luminance_drift": np.abs(luminance - luminance[0]),
        "clipped_fraction": clipped,
        "clipped_drift": np.abs(clipped - clipped[0]),
        "motion_ratio": motion_ratio(centroid, window),
    }
    out.update(drift_terms(out))
    return out
