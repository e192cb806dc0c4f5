"""The evaluation's error-injection probe: how long each kind of corruption lives in a causal rollout.

For each probed model, each corruption of ``CORRUPTIONS`` is injected into chunk ``inject_chunk`` of a
rollout on the first ``PROBE_SCENES`` scenes (:func:`vidforce.recipes.injection.probe`). Every scene gets its
own error curve (mean absolute pixel difference per chunk, 0-255 levels) and half-life
(``injection.half_life``: chunks until the error halves; inf: it never does, the model keeps the error).
Per corruption: ``mean`` over the finite half-lives, ``persists`` the fraction that never halve, ``median``
over all (inf included). A scene where the corruption changed nothing (e.g. a hue shift of a grey video)
has a NaN half-life and counts in none of them.

Corruptions: ``hue_shift`` 45 degrees about the grey axis; ``background_shift`` +40 grey levels on the
background pixels; ``spurious_object``: a static disc of the world's mean radius in the corner of each video
whose disc area holds the fewest foreground pixels over the chunk, in the hue farthest from every chromatic
pixel of the chunk (intensity and chroma of the world's balls).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from vidforce.data.ball_metrics import CHROMA_MIN, FOREGROUND_THRESHOLD, background_colour
from vidforce.data.balls import BallWorldSpec, hue_to_rgb, rgb_to_hue
from vidforce.recipes.injection import Run, background_shift, half_life, hue_shift, probe, spurious_object
from vidforce.video_io import to_uint8_frames

PROBE_SCENES = 8                  # the first scenes of the evaluation, first noise seed
HUE_DEGREES = 45.0
BACKGROUND_LEVELS = 40.0          # grey levels (0-255) added to the background
CANDIDATE_HUES = np.arange(0.0, 360.0, 5.0)
CORRUPTIONS = ("hue_shift", "background_shift", "spurious_object")


def _circular(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.mod(a - b + 180.0, 360.0) - 180.0)


def _spurious_one(video: Tensor, spec: BallWorldSpec) -> Tensor:
    """``spurious_object`` on one video ``[1, F, 3, H, W]`` in [-1, 1] (module doc: corner and hue)."""
    levels = to_uint8_frames(video[0]).astype(np.float64)                      # [F, H, W, 3]
    fg = np.linalg.norm(levels - background_colour(levels)[:, None, None], axis=-1) > FOREGROUND_THRESHOLD
    _, chroma, hue = rgb_to_hue(levels)
    seen = hue[fg & (chroma >= CHROMA_MIN)]
    far = _circular(CANDIDATE_HUES[:, None], seen[None]).min(1) if seen.size else np.zeros(len(CANDIDATE_HUES))
    colour = hue_to_rgb(CANDIDATE_HUES[far.argmax()], spec.colour_intensity, spec.colour_chroma) / 127.5 - 1.0
    r = sum(spec.radius_range) / 2
    h, w = fg.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    corners = [(x, y) for x in (r + 0.5, w - r - 0.5) for y in (r + 0.5, h - r - 0.5)]
    busy = [fg[:, (xs - x) ** 2 + (ys - y) ** 2 < r * r].sum() for x, y in corners]
    return spurious_object(video, corners[int(np.argmin(busy))], r, colour.tolist())


def corruption(name: str, spec: BallWorldSpec) -> Callable[[Tensor], Tensor]:
    """The corruption ``name`` of ``CORRUPTIONS``: decoded video ``[B, F, 3, H, W]`` in [-1, 1] -> same."""
    if name == "hue_shift":
        return partial(hue_shift, degrees=HUE_DEGREES)
    if name == "background_shift":
        return partial(background_shift, delta=BACKGROUND_LEVELS / 127.5)
    if name == "spurious_object":
        return lambda x: torch.cat([_spurious_one(x[i:i + 1], spec) for i in range(len(x))])
    raise ValueError(f"corruption.name: unknown {name!r}; known: {CORRUPTIONS}")


def unit_errors(baseline: Tensor, injected: Tensor, chunk: int) -> np.ndarray:
    """Per-video error curves: mean |injected - baseline| per chunk of ``chunk`` frames, 0-255 levels.
    baseline, injected [B, T, 3, H, W] in [-1, 1] (T a multiple of ``chunk``) -> [B, T / chunk]."""
    diff = (injected - baseline).abs().float().mean(dim=(2, 3, 4)) * 127.5                   # [B, T]
    return diff.reshape(len(diff), -1, chunk).mean(-1).cpu().numpy().astype(np.float64)


def scene_half_life(errors: np.ndarray, inject_chunk: int) -> float:
    """``injection.half_life`` of one error curve; NaN where the injection changed nothing."""
    return half_life(errors, inject_chunk) if errors[inject_chunk] > 0 else math.nan


def half_life_summary(lives) -> dict:
    """``{mean, median, persists}`` of half-lives (inf: never halves; NaN: not injected, ignored)."""
    v = np.asarray(lives, dtype=np.float64)
    v = v[~np.isnan(v)]
    finite = v[np.isfinite(v)]
    return {"mean": float(finite.mean()) if finite.size else math.nan,
            "median": float(np.median(v)) if v.size else math.nan,
            "persists": float(np.isinf(v).mean()) if v.size else math.nan}


def probe_model(run: Run, codec, noise: Tensor, spec: BallWorldSpec, inject_chunk: int, chunk: int) -> dict:
    """Every corruption injected into ``run`` from ``noise`` [B, chunks * chunk, C, h, w]: per corruption,
    ``half_lives`` [B] (floats; ``"inf"`` never halves, None not injected), ``errors`` [chunks] (the
    scene-mean curve) and :func:`half_life_summary`."""
    out = {}
    for name in CORRUPTIONS:
        result = probe(run, noise, codec, corruption(name, spec), inject_chunk, chunk)
        curves = unit_errors(result.baseline, result.injected, chunk)
        lives = [scene_half_life(c, inject_chunk) for c in curves]
        out[name] = {"half_lives": ["inf" if math.isinf(x) else x for x in lives],
                     "errors": curves.mean(0).tolist(), **half_life_summary(lives)}
    return out


def run_probes(probes: dict[str, Callable[[list[str]], Run]], codec, prompts: list[str], noise: Tensor,
               spec: BallWorldSpec, inject_chunk: int, chunk: int) -> dict[str, dict]:
    """:func:`probe_model` of every ``{name: prompts -> run(noise, edit)}`` on ``prompts`` and ``noise``."""
    return {name: probe_model(make(prompts), codec, noise, spec, inject_chunk, chunk) for name, make in probes.items()}
