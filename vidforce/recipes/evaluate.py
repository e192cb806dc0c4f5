"""Long-rollout evaluation of mini-world models: world metrics and drift at 1x / 4x / 10x the teacher horizon.

Every model generates from the same fixed scenes (seed -> ``Scene`` -> ``prompt_for``) and the same noise
(one generator per scene seed, so a scene's noise does not depend on the batch). Samplers:

- few-step students (ode_init, self_forcing, self_forcing_more, self_forcing_pp): the streaming chunk step
  (:func:`vidforce.rollout.rollout`, exit at the last step, inference rolling cache, no grad);
- data-trained causal baselines (teacher_forcing, diffusion_forcing): they are not distilled, so each chunk
  is sampled with a many-step Euler ODE (``sampling.Sampler(solver="euler")``) against the same rolling
  cache and committed with the same refresh (both :func:`causal_sampler`);
- the bidirectional teacher: K frames only, the many-step Euler ODE with CFG (the sampler of its ODE pairs).

A causal model's first ``h K`` frames do not depend on what follows, so one ``10 K`` rollout gives every
horizon: *horizon h* reports the metrics of the last teacher-horizon block ``[(h - 1) K, h K)``. World
metrics (``data.world_metrics``) are per frame against the scene truth; drift metrics
(``diagnostics.analyze_frames``) per K-frame window. The data reference is the truth rendered for the same
scenes and sent through the training data path (mp4 at the recipe's quality, decoded by decord).

Generation dominates the cost, so each model's videos are cached in ``OUT/videos/<name>.npz`` with the
:class:`CacheKey` they were made for (a fingerprint of the weights and sampler settings, the scene seeds, the
frame count): a rerun loads every model whose key still matches and regenerates only the others.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import imageio.v2 as imageio
import numpy as np
import torch
from torch import Tensor

from vidforce.recipes.comparisons import check_names, comparison_markdown, standard_error
from vidforce.data.mini_world import WorldSpec, prompt_for, render, scene_for_seed, write_mp4
from vidforce.data.video import read_frames
from vidforce.data.world_metrics import world_metrics
from vidforce.diagnostics import analyze_frames
from vidforce.rollout import rollout
from vidforce.sampling import Denoiser, Guidance, Sampler, euler
from vidforce.video_io import to_uint8_frames

WORLD_KEYS = ("count_accuracy", "count_error", "size_error", "colour_error", "speed_ratio", "background_error")
DRIFT_KEYS = ("color_shift", "motion", "flicker", "hold_similarity")
SampleFn = Callable[[list[str], Tensor], Tensor]   # (prompts, noise [B, N, C, h, w]) -> latents [B, N, C, h, w]


@dataclass(frozen=True)
class EvalSetup:
    """What every model is evaluated on. ``horizon``: teacher horizon K in latent (= pixel) frames."""
    spec: WorldSpec
    seeds: tuple[int, ...]
    horizon: int
    chunk: int
    fps: float
    multiples: tuple[int, ...]
    latent_shape: tuple[int, int, int]     # (C, h, w)
    strip_scenes: int
    strip_frames: int


# ---------------------------------------------------------------- samplers

def teacher_sampler(teacher, text, negative: str, sigmas: tuple[float, ...], guidance: Guidance) -> SampleFn:
    """The bidirectional teacher: all frames at once, the guided Euler ODE on ``sigmas``."""
    @torch.no_grad()
    def sample(prompts: list[str], noise: Tensor) -> Tensor:
        kv_c = teacher.text_kv(text.encode(prompts).to(noise.device))
        kv_u = teacher.text_kv(text.encode([negative] * len(prompts)).to(noise.device))
        return euler(Denoiser(teacher, kv_c, kv_u, guidance).flow, noise, sigmas)[0]
    return sample


def causal_sampler(model, text, sampler: Sampler) -> SampleFn:
    """A causal model through the streaming chunk step (rolling cache, refresh): a distilled student with its
    few-step sampler, a data-trained baseline with ``Sampler(euler grid, solver="euler")``. The few-step
    re-noising draws from one generator seeded 0 per batch."""
    @torch.no_grad()
    def sample(prompts: list[str], noise: Tensor) -> Tensor:
        kv = model.text_kv(text.encode(prompts).to(noise.device))
        rng = torch.Generator(noise.device).manual_seed(0)
        return rollout(model, noise, kv, sampler, sampler.last, generator=rng)
    return sample


def scene_prompts(setup: EvalSetup) -> list[str]:
    """The prompt of each evaluation scene (``setup.seeds`` order)."""
    return [prompt_for(scene_for_seed(s, setup.spec)) for s in setup.seeds]


def scene_noise(seeds: tuple[int, ...], frames: int, latent_shape: tuple[int, int, int], device) -> Tensor:
    """Noise ``[S, frames, C, h, w]``: scene i's from its own seed (same for every model and batch)."""
    rows = [torch.randn((frames, *latent_shape), generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(rows).to(device)


def generate_videos(sample: SampleFn, codec, prompts: list[str], noise: Tensor) -> list[np.ndarray]:
    """Sample latents, decode them: one uint8 ``[T, H, W, 3]`` video per prompt."""
    latents = sample(prompts, noise).float()
    return [to_uint8_frames(v) for v in codec.decode(latents)]


def data_videos(setup: EvalSetup, frames: int) -> list[np.ndarray]:
    """The scenes' truth through the training data path: mp4 written as in the recipe, decoded by decord."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in setup.seeds:
            video, _ = render(scene_for_seed(seed, setup.spec), setup.spec, frames)
            path = Path(tmp) / f"{seed}.mp4"
            write_mp4(path, video, setup.fps)
            out.append(read_frames(path, np.arange(frames)))
    return out


# ---------------------------------------------------------------- video cache

@dataclass(frozen=True)
class CacheKey:
    """What cached videos were made for: ``fingerprint`` identifies the model (weights and sampler settings;
    for the data reference, the world), ``seeds`` the scenes, ``frames`` the length of each video."""
    fingerprint: str
    seeds: tuple[int, ...]
    frames: int


def differing(stored: CacheKey, wanted: CacheKey) -> list[str]:
    """Names of the fields in which ``stored`` and ``wanted`` differ (empty: the cache is usable)."""
    a, b = asdict(stored), asdict(wanted)
    return [name for name in a if a[name] != b[name]]


def save_videos(path: Path, videos: list[np.ndarray], key: CacheKey) -> None:
    """Write ``videos`` (S uint8 ``[frames, H, W, 3]``, stored stacked as ``[S, frames, H, W, 3]``) and ``key``
    to the npz ``path`` atomically (a temp file, then ``os.replace``: an interrupted write leaves no cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, videos=np.stack(videos), fingerprint=np.array(key.fingerprint),
                            seeds=np.array(key.seeds, dtype=np.int64), frames=np.array(key.frames))
    os.replace(tmp, path)


def read_key(path: Path) -> CacheKey:
    """The :class:`CacheKey` stored in the npz ``path`` (the videos are not decompressed)."""
    with np.load(path, allow_pickle=False) as z:
        missing = {"videos", "fingerprint", "seeds", "frames"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: not a video cache (missing {sorted(missing)}); delete it")
        return CacheKey(str(z["fingerprint"]), tuple(z["seeds"].tolist()), int(z["frames"]))


def load_videos(path: Path) -> list[np.ndarray]:
    """The cached videos of ``path``: S uint8 ``[frames, H, W, 3]``."""
    with np.load(path, allow_pickle=False) as z:
        return list(z["videos"])


def cached_videos(make: Callable[[], list[np.ndarray]], path: Path, key: CacheKey | None) -> list[np.ndarray]:
    """``make()``'s videos through the cache ``path``: loaded where it holds ``key``, else made and written
    (over a stale cache). ``key=None`` (no fingerprint): always made, never cached."""
    if key is None:
        return make()
    if path.is_file():
        stale = differing(read_key(path), key)
        if not stale:
            print(f"[evaluate] {path.stem}: videos loaded from {path}")
            return load_videos(path)
        print(f"[evaluate] {path.stem}: {path} was made for another {' / '.join(stale)}; regenerating")
    videos = make()
    save_videos(path, videos, key)
    return videos


# ---------------------------------------------------------------- metrics

def nanmean(x: np.ndarray, axis=None):
    """Mean ignoring NaN; NaN where nothing is left (no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(x, axis=axis)


def per_frame(videos: list[np.ndarray], setup: EvalSetup) -> dict[str, np.ndarray]:
    """World metrics of every video against its scene: ``{metric: [S, T]}`` (plus ``count_accuracy``)."""
    rows = []
    for video, seed in zip(videos, setup.seeds):
        m = world_metrics(video, scene_for_seed(seed, setup.spec))
        m["count_accuracy"] = (m["count_error"] == 0).astype(np.float64)
        rows.append(m)
    return {k: np.stack([r[k] for r in rows]) for k in WORLD_KEYS}


def drift_windows(videos: list[np.ndarray], setup: EvalSetup) -> dict[str, np.ndarray]:
    """Drift metrics per K-frame window, averaged over scenes: ``{metric: [W]}``."""
    results = [analyze_frames(v, setup.fps, window_frames=setup.horizon) for v in videos]
    return {k: nanmean(np.array([[w[k] for w in r["windows"]] for r in results], dtype=np.float64), axis=0)
            for k in DRIFT_KEYS}


def block_means(values: np.ndarray, size: int) -> np.ndarray:
    """Means of consecutive blocks of ``size`` along the last axis: ``[..., T] -> [..., ceil(T / size)]``."""
    return np.stack([nanmean(values[..., s:s + size], axis=-1) for s in range(0, values.shape[-1], size)], -1)


def summarize_model(videos: list[np.ndarray], setup: EvalSetup) -> dict:
    """Per horizon multiple: world metrics over its last K-frame block (the mean over scenes of each
    scene's block mean; ``per_scene`` keeps those, ``se`` their standard errors) and that block's drift
    window; and the curves (per chunk, averaged over scenes) against time."""
    frames, drift, k = per_frame(videos, setup), drift_windows(videos, setup), setup.horizon
    length = videos[0].shape[0]
    horizons, per_scene, se = {}, {}, {}
    for h in (m for m in setup.multiples if m * k <= length):
        scenes = {name: nanmean(v[:, (h - 1) * k:h * k], axis=1) for name, v in frames.items()}
        row = {name: float(nanmean(v)) for name, v in scenes.items()}
        row.update({name: float(v[h - 1]) for name, v in drift.items()})
        horizons[str(h)] = row
        per_scene[str(h)] = {name: v.tolist() for name, v in scenes.items()}
        se[str(h)] = {name: standard_error(v) for name, v in scenes.items()}
    curves = {name: block_means(nanmean(v, axis=0), setup.chunk).tolist() for name, v in frames.items()}
    curves["t"] = (np.arange(0, length, setup.chunk) / setup.fps).tolist()
    drift_curves = {name: v.tolist() for name, v in drift.items()}
    drift_curves["t"] = (np.arange(len(drift["motion"])) * k / setup.fps).tolist()
    return {"frames": length, "horizons": horizons, "per_scene": per_scene, "se": se, "curves": curves,
            "drift_curves": drift_curves}


# ---------------------------------------------------------------- report

def _clean(x):
    """JSON-safe copy: NaN / inf -> None."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def value_cell(value, se=None) -> str:
    """A table cell: ``value`` to 3 decimals, ``± se`` where finite; ``-`` for a missing or non-finite value."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3f}" if se is None or not math.isfinite(se) else f"{value:.3f} ± {se:.3f}"


def table_markdown(models: dict[str, dict]) -> str:
    """Markdown table: one row per (model, horizon), one column per metric; world metrics as mean ± standard
    error over scenes where the summary has them."""
    keys = WORLD_KEYS + DRIFT_KEYS
    lines = ["| model | horizon | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, res in models.items():
        for h, row in res["horizons"].items():
            se = res.get("se", {}).get(h, {})
            cells = [value_cell(row[k], se.get(k)) for k in keys]
            lines.append(f"| {name} | {h}x | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(models: dict[str, dict], setup: EvalSetup, path: Path) -> None:
    """One panel per metric, one line per model (the data reference dashed black), time in seconds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    keys = WORLD_KEYS + DRIFT_KEYS
    fig = Figure(figsize=(4 * 5, 3.2 * 2))
    FigureCanvasAgg(fig)
    for ax, key in zip(fig.subplots(2, 5).ravel(), keys):
        curves = "drift_curves" if key in DRIFT_KEYS else "curves"
        for name, res in models.items():
            style = dict(color="black", linestyle="--") if name == "data" else {}
            ax.plot(res[curves]["t"], res[curves][key], label=name, linewidth=1.2, marker="o", markersize=2, **style)
        for h in setup.multiples:
            ax.axvline(h * setup.horizon / setup.fps, color="0.8", linewidth=0.8, zorder=0)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("time [s]", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def write_strip(videos: list[np.ndarray], setup: EvalSetup, path: Path, scale: int = 3) -> None:
    """PNG grid: rows = the first ``strip_scenes`` scenes, columns = ``strip_frames`` frames evenly spread
    over the whole video (nearest-neighbour upscaled, 2-px white gaps)."""
    length = videos[0].shape[0]
    picks = np.unique(np.linspace(0, length - 1, setup.strip_frames).round().astype(int))
    rows = []
    for video in videos[:setup.strip_scenes]:
        tiles = [np.pad(video[i].repeat(scale, 0).repeat(scale, 1), ((2, 2), (2, 2), (0, 0)), constant_values=255)
                 for i in picks]
        rows.append(np.concatenate(tiles, axis=1))
    imageio.imwrite(path, np.concatenate(rows, axis=0))


def write_report(models: dict[str, dict], videos: dict[str, list[np.ndarray]], setup: EvalSetup,
                 out: Path, comparisons: tuple[tuple[str, str], ...] = ()) -> Path:
    """``results.json``, ``table.md``, ``curves.png``, ``strip_<model>.png`` and, for ``comparisons`` (pairs
    of model names), ``comparisons.md`` (paired per-scene advantages, :mod:`vidforce.recipes.comparisons`) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = asdict(setup)
    meta["spec"] = asdict(setup.spec)
    meta["prompts"] = scene_prompts(setup)
    (out / "results.json").write_text(json.dumps(_clean({"setup": meta, "models": models}), indent=1) + "\n")
    (out / "table.md").write_text(table_markdown(models))
    if comparisons:
        (out / "comparisons.md").write_text(comparison_markdown(models, list(comparisons), WORLD_KEYS))
    plot_curves(models, setup, out / "curves.png")
    for name, vids in videos.items():
        write_strip(vids, setup, out / f"strip_{name}.png")
    return out / "results.json"


def evaluate(samplers: dict[str, tuple[SampleFn, int]], codec, setup: EvalSetup, out: str | Path,
             device="cpu", comparisons: tuple[tuple[str, str], ...] = (),
             fingerprints: dict[str, str] | None = None) -> dict[str, dict]:
    """Evaluate ``{name: (sample_fn, horizon multiple it rolls out to)}`` plus the data reference ``data``;
    write the report under ``out``; return ``{name: summary}``.

    ``fingerprints``: ``{name: string identifying the model's weights and sampler settings}`` (for ``data``:
    the world). A fingerprinted model's videos (S uint8 ``[multiple K, H, W, 3]``) are cached in
    ``out/videos/<name>.npz`` and reused while fingerprint, ``setup.seeds`` and frame count all match
    (:func:`cached_videos`); a model without one is generated on every call and not cached."""
    if codec.temporal_factor != 1:
        raise ValueError("mini-world evaluation needs a codec with temporal factor 1 (codec.kind=pixel)")
    check_names(comparisons, {"data", *samplers})       # before minutes of sampling
    fingerprints = fingerprints or {}
    unknown = sorted(set(fingerprints) - {"data", *samplers})
    if unknown:
        raise ValueError(f"evaluate fingerprints: unknown model(s) {unknown}; models: {['data', *samplers]}")
    out = Path(out)
    prompts = scene_prompts(setup)
    longest = max(setup.multiples) * setup.horizon
    noise = scene_noise(setup.seeds, longest, setup.latent_shape, device)

    def cached(name: str, make: Callable[[], list[np.ndarray]], frames: int) -> list[np.ndarray]:
        key = CacheKey(fingerprints[name], tuple(setup.seeds), frames) if name in fingerprints else None
        return cached_videos(make, out / "videos" / f"{name}.npz", key)

    videos = {"data": cached("data", partial(data_videos, setup, longest), longest)}
    for name, (sample, multiple) in samplers.items():
        frames = multiple * setup.horizon
        videos[name] = cached(name, partial(generate_videos, sample, codec, prompts, noise[:, :frames]), frames)
    models = {name: summarize_model(v, setup) for name, v in videos.items()}
    write_report(models, videos, setup, out, comparisons)
    return models
