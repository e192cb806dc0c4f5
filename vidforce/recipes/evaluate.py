"""Long-rollout evaluation of ball-world models: first-window drift at 1x / 4x / 10x / 20x the teacher horizon.

Units. Every model generates every *unit* (held-out scene seed x noise seed, scene-major order) from the same
noise: seed -> ``balls.scene_for_seed`` -> ``prompt_for`` (the count only; colours, sizes, background and
speed are the model's own choice, then live only in its context), and each unit's noise from its own
generator (:func:`scene_noise`), so it depends neither on the batch nor on the model. Samplers:

- few-step students (ode_init, self_forcing, ...): the streaming chunk step (:func:`vidforce.rollout.rollout`,
  exit at the last step, inference rolling cache, no grad);
- data-trained causal baselines (teacher_forcing, diffusion_forcing): not distilled, so each chunk is sampled
  with a many-step Euler ODE (``sampling.Sampler(solver="euler")``) against the same rolling cache and
  committed with the same refresh (both :func:`causal_sampler`);
- the bidirectional teacher: K frames only, the many-step Euler ODE with CFG (the sampler of its ODE pairs).

Horizons. A causal model's first ``h K`` frames do not depend on later ones, so one rollout to
``max(multiples) K`` gives every horizon: *horizon h* (``"hx"``) is window ``h - 1`` of
``ball_metrics.scene_metrics(video, count, window=K)``, the block ``[(h - 1) K, h K)`` against the video's
own first block. The teacher (multiple 1) has ``1x`` only. ``count_accuracy`` (fraction of a block's frames
whose detected count is the prompt's) is measured on the reported blocks only. A scene's value of a metric is
the mean over its noise seeds; means and standard errors are over scenes. The data reference ``data`` is
the truth render of each scene (``balls.render_numpy``, no codec), one video per scene.

Generation dominates the cost, so each model's videos are cached in ``OUT/videos/<name>.npz`` with the
:class:`CacheKey` they were made for (a fingerprint of the weights and sampler settings, the scene and noise
seeds, the frame count): a rerun loads every model whose key still matches and regenerates only the others.
The report (:mod:`vidforce.recipes.report`), the registered decisions (:mod:`vidforce.recipes.comparisons`)
and the error-injection probe (:mod:`vidforce.recipes.probing`) are written under ``OUT``.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from vidforce.data.ball_metrics import MIN_AREA_FRACTION, detect, scene_metrics
from vidforce.data.balls import BallWorldSpec, prompt_for, render_numpy, scene_for_seed, simulate
from vidforce.recipes.comparisons import check_registered, decide, standard_error
from vidforce.recipes.probing import PROBE_SCENES, run_probes
from vidforce.recipes.report import write_report
from vidforce.rollout import rollout
from vidforce.sampling import Denoiser, Guidance, Sampler, euler
from vidforce.video_io import to_uint8_frames

TERM_KEYS = ("d_count", "d_colour", "d_size", "d_background", "d_luminance", "d_clipped", "d_motion")
RAW_KEYS = ("count_error", "colour_drift", "size_drift", "background_drift", "luminance_drift", "clipped_drift",
            "motion_ratio")
METRIC_KEYS = ("D", *TERM_KEYS, *RAW_KEYS, "count_accuracy")      # per horizon: means, se, per_scene
CURVE_KEYS = ("D", *TERM_KEYS)                                     # per window vs time
SampleFn = Callable[[list[str], Tensor], Tensor]   # (prompts, noise [B, N, C, h, w]) -> latents [B, N, C, h, w]
ProbeFn = Callable[[list[str]], Callable]          # prompts -> run(noise, edit), as injection.rollout_run returns


@dataclass(frozen=True)
class EvalSetup:
    """What every model is evaluated on. A unit is (scene seed, noise seed); ``horizon``: teacher horizon K in
    latent (= pixel) frames; ``multiples``: the horizons reported, in K."""
    spec: BallWorldSpec
    seeds: tuple[int, ...]
    noise_seeds: tuple[int, ...]
    horizon: int
    chunk: int
    fps: float
    multiples: tuple[int, ...]
    latent_shape: tuple[int, int, int]     # (C, h, w)
    strip_scenes: int
    strip_frames: int

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"EvalSetup.seeds: need distinct scene seeds, got {self.seeds}")
        if not self.noise_seeds or len(set(self.noise_seeds)) != len(self.noise_seeds):
            raise ValueError(f"EvalSetup.noise_seeds: need distinct noise seeds, got {self.noise_seeds}")
        if self.horizon < 2:
            raise ValueError(f"EvalSetup.horizon: a K-frame window needs K >= 2, got {self.horizon}")
        if not self.multiples or min(self.multiples) < 1 or list(self.multiples) != sorted(set(self.multiples)):
            raise ValueError(f"EvalSetup.multiples: need increasing positive integers, got {self.multiples}")


def horizon_label(multiple: int) -> str:
    """``4 -> "4x"``: the name of a horizon in every output."""
    return f"{multiple}x"


# ---------------------------------------------------------------- samplers

def teacher_sampler(teacher, text, negative: str, sigmas: tuple[float, ...], guidance: Guidance) -> SampleFn:
    """The bidirectional teacher: all frames at once, the guided Euler ODE on ``sigmas``."""
    @torch.no_grad()
    def sample(prompts: list[str], noise: Tensor) -> Tensor:
        kv_c = teacher.text_kv(text.encode(prompts).to(noise.device))
        kv_u = teacher.text_kv(text.encode([negative] * len(prompts)).to(noise.device))
        return euler(Denoiser(teacher, kv_c, kv_u, guidance).flow, noise, sigmas)[0]
    return sample


def causal_sampler(model, text, sampler: Sampler, negative: str = "") -> SampleFn:
    """A causal model through the streaming chunk step (rolling cache, refresh): a distilled student with its
    few-step sampler, a data-trained baseline with ``Sampler(euler grid, solver="euler")`` (guided by
    ``sampler.guidance`` against the ``negative`` prompt, one cache per branch). The few-step re-noising draws
    from one generator seeded 0 per batch."""
    @torch.no_grad()
    def sample(prompts: list[str], noise: Tensor) -> Tensor:
        kv = model.text_kv(text.encode(prompts).to(noise.device))
        if not sampler.guidance.unguided:
            kv = (kv, model.text_kv(text.encode([negative] * len(prompts)).to(noise.device)))
        rng = torch.Generator(noise.device).manual_seed(0)
        return rollout(model, noise, kv, sampler, sampler.last, generator=rng)
    return sample


def scene_prompts(setup: EvalSetup) -> list[str]:
    """The prompt of each evaluation scene (``setup.seeds`` order)."""
    return [prompt_for(scene_for_seed(s, setup.spec)) for s in setup.seeds]


def unit_prompts(setup: EvalSetup) -> list[str]:
    """The prompt of each unit: scene-major, ``len(setup.noise_seeds)`` units per scene."""
    return [p for p in scene_prompts(setup) for _ in setup.noise_seeds]


def scene_noise(seeds: tuple[int, ...], noise_seeds: tuple[int, ...], frames: int,
                latent_shape: tuple[int, int, int], device) -> Tensor:
    """Noise ``[S * N, frames, C, h, w]``, scene-major: unit (scene s, noise seed n) from its own generator,
    seeded by ``SeedSequence([s, n])`` (the same for every model and batch)."""
    rows = []
    for s in seeds:
        for n in noise_seeds:
            seed = int(np.random.SeedSequence([s, n]).generate_state(1, np.uint64)[0] >> np.uint64(1))
            rows.append(torch.randn((frames, *latent_shape), generator=torch.Generator().manual_seed(seed)))
    return torch.stack(rows).to(device)


def generate_videos(sample: SampleFn, codec, prompts: list[str], noise: Tensor) -> list[np.ndarray]:
    """Sample latents, decode them: one uint8 ``[T, H, W, 3]`` video per prompt."""
    latents = sample(prompts, noise).float()
    return [to_uint8_frames(v) for v in codec.decode(latents)]


def data_videos(setup: EvalSetup, frames: int) -> list[np.ndarray]:
    """The truth of each scene: ``render_numpy`` of its simulated trajectory, uint8 ``[frames, H, W, 3]``."""
    scenes = [scene_for_seed(s, setup.spec) for s in setup.seeds]
    return [render_numpy(sc, setup.spec, simulate(sc, setup.spec, frames)[0]) for sc in scenes]


# ---------------------------------------------------------------- video cache

@dataclass(frozen=True)
class CacheKey:
    """What cached videos were made for: ``fingerprint`` identifies the model (weights and sampler settings;
    for the data reference, the world), ``seeds`` the scenes, ``frames`` the length of each video,
    ``noise_seeds`` the noise seeds per scene (empty: videos that do not depend on noise, the data)."""
    fingerprint: str
    seeds: tuple[int, ...]
    frames: int
    noise_seeds: tuple[int, ...] = ()


def differing(stored: CacheKey, wanted: CacheKey) -> list[str]:
    """Names of the fields in which ``stored`` and ``wanted`` differ (empty: the cache is usable)."""
    a, b = asdict(stored), asdict(wanted)
    return [name for name in a if a[name] != b[name]]


def save_videos(path: Path, videos: list[np.ndarray], key: CacheKey) -> None:
    """Write ``videos`` (uint8 ``[frames, H, W, 3]`` each, stored stacked) and ``key`` to the npz ``path``
    atomically (a temp file, then ``os.replace``: an interrupted write leaves no cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, videos=np.stack(videos), fingerprint=np.array(key.fingerprint),
                            seeds=np.array(key.seeds, dtype=np.int64), frames=np.array(key.frames),
                            noise_seeds=np.array(key.noise_seeds, dtype=np.int64))
    os.replace(tmp, path)


def read_key(path: Path) -> CacheKey:
    """The :class:`CacheKey` stored in the npz ``path`` (the videos are not decompressed; a cache written
    before noise seeds existed reads with none)."""
    with np.load(path, allow_pickle=False) as z:
        missing = {"videos", "fingerprint", "seeds", "frames"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: not a video cache (missing {sorted(missing)}); delete it")
        noise = tuple(z["noise_seeds"].tolist()) if "noise_seeds" in z.files else ()
        return CacheKey(str(z["fingerprint"]), tuple(z["seeds"].tolist()), int(z["frames"]), noise)


def load_videos(path: Path) -> list[np.ndarray]:
    """The cached videos of ``path``: uint8 ``[frames, H, W, 3]`` each."""
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


def detected_counts(video: np.ndarray, spec: BallWorldSpec) -> np.ndarray:
    """Objects per frame [T] of ``video`` [T, H, W, 3] uint8 (``ball_metrics.detect``, the world's smallest disc)."""
    return detect(video, MIN_AREA_FRACTION * np.pi * spec.radius_range[0] ** 2).count


def count_accuracy(video: np.ndarray, count: int, spec: BallWorldSpec) -> float:
    """Fraction of the frames of ``video`` [T, H, W, 3] uint8 whose detected count (:func:`detected_counts`)
    equals the prompt's ``count``."""
    return float((detected_counts(video, spec) == count).mean())


def video_metrics(video: np.ndarray, count: int, setup: EvalSetup) -> dict[str, np.ndarray]:
    """``{metric: [W]}`` per K-frame window of one video (W = T // K): ``scene_metrics`` against its first
    window, and ``count_accuracy`` in the windows of the reported horizons (NaN elsewhere)."""
    k = setup.horizon
    m = scene_metrics(video, count, k, min_radius=setup.spec.radius_range[0])
    out = {key: np.asarray(m[key], dtype=np.float64) for key in METRIC_KEYS if key != "count_accuracy"}
    acc = np.full(len(m["D"]), np.nan)
    for h in (h for h in setup.multiples if h <= len(acc)):
        acc[h - 1] = count_accuracy(video[(h - 1) * k:h * k], count, setup.spec)
    out["count_accuracy"] = acc
    return out


def summarize_model(videos: list[np.ndarray], setup: EvalSetup, per_scene: int) -> dict:
    """Summary of a model's videos (scene-major, ``per_scene`` units per scene, all of one length T).

    Returns ``frames`` (T); per horizon label (``"1x"``, ...) reached: ``horizons[h][metric]`` the mean over
    scenes, ``se[h][metric]`` its standard error, ``per_scene[h][metric]`` the S scene values (``setup.seeds``
    order); ``curves``: ``t`` [W] (end of each K-frame window, seconds) and the scene mean of each of
    ``CURVE_KEYS`` per window.
    """
    counts = [scene_for_seed(s, setup.spec).count for s in setup.seeds for _ in range(per_scene)]
    units = [video_metrics(v, c, setup) for v, c in zip(videos, counts)]
    windows = len(units[0]["D"])
    scenes = {key: nanmean(np.stack([u[key] for u in units]).reshape(len(setup.seeds), per_scene, windows), axis=1)
              for key in METRIC_KEYS}                                           # {metric: [S, W]}
    horizons, se, values = {}, {}, {}
    for h in (h for h in setup.multiples if h <= windows):
        label = horizon_label(h)
        values[label] = {key: v[:, h - 1].tolist() for key, v in scenes.items()}
        horizons[label] = {key: float(nanmean(v[:, h - 1])) for key, v in scenes.items()}
        se[label] = {key: standard_error(v[:, h - 1]) for key, v in scenes.items()}
    curves = {key: nanmean(scenes[key], axis=0).tolist() for key in CURVE_KEYS}
    curves["t"] = (np.arange(1, windows + 1) * setup.horizon / setup.fps).tolist()
    return {"frames": int(videos[0].shape[0]), "horizons": horizons, "se": se, "per_scene": values,
            "curves": curves}


# ---------------------------------------------------------------- entry point

def _check_inputs(samplers, codec, setup: EvalSetup, registered, fingerprints, probes, probe_chunk: int,
                  probe_chunks: int) -> None:
    """Every ValueError that can be raised before minutes of sampling."""
    if codec.temporal_factor != 1:
        raise ValueError("mini-world evaluation needs a codec with temporal factor 1 (codec.kind=pixel)")
    if "data" in samplers:
        raise ValueError("evaluate.samplers: the name 'data' is the truth reference")
    longest = max(setup.multiples)
    for name, (_, multiple) in samplers.items():
        if not 1 <= multiple <= longest:
            raise ValueError(f"evaluate.samplers[{name!r}]: multiple {multiple} outside 1..{longest}")
    reach = {name: tuple(horizon_label(m) for m in setup.multiples if m <= multiple)
             for name, multiple in (("data", longest), *((n, m) for n, (_, m) in samplers.items()))}
    check_registered(registered, reach)
    unknown = sorted(set(fingerprints) - set(reach))
    if unknown:
        raise ValueError(f"evaluate fingerprints: unknown model(s) {unknown}; models: {sorted(reach)}")
    unknown = sorted(set(probes) - set(samplers))
    if unknown:
        raise ValueError(f"evaluate probes: unknown model(s) {unknown}; models: {sorted(samplers)}")
    if probes and not 0 <= probe_chunk < probe_chunks:
        raise ValueError(f"evaluate.probe_chunk: {probe_chunk} outside the {probe_chunks} chunks of the probe")


def probe_key(fingerprint: str, setup: EvalSetup, inject_chunk: int, chunks: int) -> dict:
    """What a model's probe result was made for: its fingerprint and the probe's scenes, noise and chunks."""
    return {"fingerprint": fingerprint, "scenes": list(setup.seeds[:PROBE_SCENES]),
            "noise_seed": setup.noise_seeds[0], "inject_chunk": inject_chunk, "chunks": chunks}


def cached_probe(make: Callable[[], dict], path: Path, key: dict | None) -> dict:
    """``make()``'s probe result through the JSON cache ``path`` (``{"key", "result"}``), as
    :func:`cached_videos` does for videos (``key=None``: always made, never cached)."""
    if key is None:
        return make()
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            print(f"[evaluate] {path.stem}: probe loaded from {path}")
            return stored["result"]
        print(f"[evaluate] {path.stem}: {path} was made for another model or probe; rerunning")
    result = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}) + "\n")
    os.replace(tmp, path)
    return result


def _probe(probes: dict[str, ProbeFn], codec, setup: EvalSetup, device, inject_chunk: int, chunks: int,
           out: Path, fingerprints: dict[str, str]) -> dict:
    """The probe on the first ``PROBE_SCENES`` scenes (first noise seed): ``{scenes, noise_seed, inject_chunk,
    chunks, models: {name: probing.probe_model's dict}}``; a fingerprinted model's result is cached in
    ``out/probes/<name>.json`` (:func:`cached_probe`)."""
    seeds = setup.seeds[:PROBE_SCENES]
    noise = scene_noise(seeds, setup.noise_seeds[:1], chunks * setup.chunk, setup.latent_shape, device)
    prompts = scene_prompts(setup)[:len(seeds)]
    models = {name: cached_probe(partial(run_probes, {name: make}, codec, prompts, noise, setup.spec, inject_chunk,
                                         setup.chunk), out / "probes" / f"{name}.json",
                                 probe_key(fingerprints[name], setup, inject_chunk, chunks)
                                 if name in fingerprints else None)
              for name, make in probes.items()}
    return {"scenes": list(seeds), "noise_seed": setup.noise_seeds[0], "inject_chunk": inject_chunk,
            "chunks": chunks, "models": {name: result[name] for name, result in models.items()}}


def model_videos(samplers: dict[str, tuple[SampleFn, int]], codec, setup: EvalSetup, out: Path, device,
                 fingerprints: dict[str, str]) -> dict[str, list[np.ndarray]]:
    """``{name: videos}`` of the data reference and every sampler, through the caches ``out/videos/<name>.npz``
    (:func:`cached_videos`; a model without a fingerprint is generated and not cached)."""
    longest = max(setup.multiples) * setup.horizon
    noise = scene_noise(setup.seeds, setup.noise_seeds, longest, setup.latent_shape, device)

    def cached(name: str, make: Callable[[], list[np.ndarray]], frames: int, noise_seeds=()) -> list[np.ndarray]:
        key = CacheKey(fingerprints[name], tuple(setup.seeds), frames, tuple(noise_seeds)) \
            if name in fingerprints else None
        return cached_videos(make, out / "videos" / f"{name}.npz", key)

    videos = {"data": cached("data", partial(data_videos, setup, longest), longest)}
    for name, (sample, multiple) in samplers.items():
        frames = multiple * setup.horizon
        make = partial(generate_videos, sample, codec, unit_prompts(setup), noise[:, :frames])
        videos[name] = cached(name, make, frames, setup.noise_seeds)
    return videos


def prepare(samplers: dict[str, tuple[SampleFn, int]], codec, setup: EvalSetup, out: str | Path, device="cpu",
            fingerprints: dict[str, str] | None = None, probes: dict[str, ProbeFn] | None = None,
            probe_chunk: int = 2, probe_chunks: int = 12) -> dict[str, dict]:
    """Part of an evaluation: the videos and probe results of some models only, into the caches that
    :func:`evaluate` reads (a device run evaluates the models whose weights it holds; the report is made
    later where every cache lies). Returns ``{name: summarize_model(...)}`` of the data and these models
    (their gates can be read at once)."""
    fingerprints, probes = fingerprints or {}, probes or {}
    _check_inputs(samplers, codec, setup, (), fingerprints, probes, probe_chunk, probe_chunks)
    out = Path(out)
    videos = model_videos(samplers, codec, setup, out, device, fingerprints)
    if probes:
        _probe(probes, codec, setup, device, probe_chunk, probe_chunks, out, fingerprints)
    per_scene = {name: 1 if name == "data" else len(setup.noise_seeds) for name in videos}
    return {name: summarize_model(v, setup, per_scene[name]) for name, v in videos.items()}


def evaluate(samplers: dict[str, tuple[SampleFn, int]], codec, setup: EvalSetup, out: str | Path, device="cpu",
             registered: list[dict] = (), fingerprints: dict[str, str] | None = None,
             probes: dict[str, ProbeFn] | None = None, probe_chunk: int = 2, probe_chunks: int = 12) -> dict:
    """Evaluate ``{name: (sample_fn, horizon multiple it rolls out to)}`` plus the data reference ``data``,
    decide the ``registered`` entries (:func:`comparisons.decide`), run the error-injection probe of each
    ``probes`` model (:func:`probing.probe_model`, chunk ``probe_chunk`` of ``probe_chunks``), write the report
    under ``out`` and return ``{"setup", "models": {name: summary}, "decisions", "probe"}`` (``probe``: None
    without probes).

    ``fingerprints``: ``{name: string identifying the model's weights and sampler settings}`` (for ``data``:
    the world). A fingerprinted model's videos are cached in ``out/videos/<name>.npz`` and reused while
    fingerprint, scene and noise seeds and frame count all match (:func:`cached_videos`), its probe result in
    ``out/probes/<name>.json`` (:func:`cached_probe`); a model without one is generated on every call and not
    cached."""
    fingerprints, probes = fingerprints or {}, probes or {}
    _check_inputs(samplers, codec, setup, registered, fingerprints, probes, probe_chunk, probe_chunks)
    out = Path(out)
    videos = model_videos(samplers, codec, setup, out, device, fingerprints)
    per_scene = {name: 1 if name == "data" else len(setup.noise_seeds) for name in videos}   # videos a scene
    models = {name: summarize_model(v, setup, per_scene[name]) for name, v in videos.items()}
    probe = _probe(probes, codec, setup, device, probe_chunk, probe_chunks, out, fingerprints) if probes else None
    meta = {**asdict(setup), "prompts": scene_prompts(setup)}
    results = {"setup": meta, "models": models, "decisions": decide(models, registered), "probe": probe}
    write_report(results, {name: v[::per_scene[name]] for name, v in videos.items()}, setup, out)
    return results
