"""The mini-world teacher under different sampling settings: count accuracy and D at 1x K per CFG scale, Euler
step count, shift and start.

    python tools/teacher_sampling.py RUN [--smoke] [--device cpu|cuda] [--guidance 1 2 3] [--steps 40]
        [--shift 3] [--start 1 0.9 0.6] [--scenes 32] [--out FILE.md]

RUN is a ``vidforce mini`` output directory with a finished teacher (``--smoke``: a smoke run). Every setting
(the product of ``--guidance``, ``--steps`` and ``--shift``) samples the same held-out units (scene x noise
seed) with the same noise as the evaluation (recipe ``evaluate.seed``, ``evaluate.noise_seeds``), so rows differ
only by the setting. At 1x every drift term but the count compares the first window with itself (0 by
construction), so the columns are the ones the teacher gate reads (``count_accuracy``, ``D``) and the count
error. ``--start s0 < 1`` starts the ODE from each unit's true clip noised to ``s0``,
``(1 - s0) x + s0 eps`` with the unit's noise, on the steps of the grid below ``s0`` (SDEdit): the noise level at
which the teacher's count goes wrong is where its start-1 failures are made. ``--erased`` adds, per start s0 < 1,
which of the true balls the teacher erased, by radius, background level and count (:func:`erased_table`). Every row
also gives the mean detected count per prompt (``count N``: a video's median per-frame count, averaged over the
units of prompt N): classifier-free guidance ``x_u + g (x_c - x_u)`` extrapolates whatever the prompt moves, so a
count pushed away from the unconditional mean (e.g. "1 ball" -> 0, "3 balls" -> 4 at g = 2) shows there. Prints a
markdown table (mean ± standard error over scenes) and writes it to ``--out`` with the command that made it.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.bench_common import write_markdown  # noqa: E402
from vidforce import components  # noqa: E402
from vidforce.data.balls import (BallScene, BallWorldSpec, disc_mask, sample_batch, scene_for_seed,  # noqa: E402
                                 simulate)
from vidforce.recipes import evaluate as ev  # noqa: E402
from vidforce.recipes.report import value_cell  # noqa: E402
from vidforce.recipes.mini import eval_setup, load_mini, stage_config  # noqa: E402
from vidforce.models.build import build_teacher  # noqa: E402
from vidforce.sampling import Guidance, euler_grid  # noqa: E402
from vidforce.train.dist import pick_device  # noqa: E402

METRICS = ("count_accuracy", "D", "count_error")
COLUMNS = ("guidance", "steps", "shift", "start", *METRICS)


def start_grid(grid: tuple[float, ...], start: float) -> tuple[float, ...]:
    """The Euler grid from ``start``: ``start``, then the steps of ``grid`` below it (``grid`` itself at 1)."""
    if not 0 < start <= 1:
        raise ValueError(f"--start must be in (0, 1], got {start}")
    return (start, *(s for s in grid if s < start))


def ball_presence(video: np.ndarray, scene: BallScene, positions: np.ndarray, spec: BallWorldSpec) -> np.ndarray:
    """Per true ball of ``scene`` [N]: the fraction of the frames of ``video [T, H, W, 3]`` uint8 in which it is
    drawn, i.e. the mean colour inside its true disc at ``positions [T, N, 2]`` (shrunk by 1 px, at least 1.5 px)
    is nearer the ball's colour than the background's."""
    bg = scene.background.astype(np.float64)
    out = np.zeros(scene.count)
    for n in range(scene.count):
        r = max(scene.radii[n] - 1.0, 1.5)
        for t, frame in enumerate(video):
            mean = frame[disc_mask(positions[t, n], r, spec.height, spec.width)].astype(np.float64).mean(0)
            out[n] += np.linalg.norm(mean - scene.colours[n]) < np.linalg.norm(mean - bg)
    return out / len(video)


def counts_by_prompt(videos: list[np.ndarray], counts: list[int],
                     spec: BallWorldSpec) -> dict[int, tuple[float, float]]:
    """``{prompt count N: (mean, standard error)}`` of the median per-frame detected count (the gate's detector, the
    world's smallest disc) of the videos [T, H, W, 3] uint8 whose prompt states N balls (``counts``, one per video)."""
    medians = np.array([np.median(ev.detected_counts(v, spec)) for v in videos])
    out = {}
    for n in sorted(set(counts)):
        x = medians[np.array(counts) == n]
        out[n] = (float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan"))
    return out


def erased_balls(videos: list[np.ndarray], seeds: tuple[int, ...], per_scene: int, spec: BallWorldSpec) -> list[dict]:
    """One row per true ball of every unit (scene-major, ``per_scene`` units per scene): ``{count, radius,
    background, erased}``, erased = drawn in fewer than half the frames."""
    rows, frames = [], len(videos[0])
    scenes = [scene_for_seed(seed, spec) for seed in seeds]
    positions = [simulate(scene, spec, frames)[0] for scene in scenes]      # once per scene, not per unit
    for i, video in enumerate(videos):
        scene = scenes[i // per_scene]
        for n, present in enumerate(ball_presence(video, scene, positions[i // per_scene], spec)):
            rows.append({"count": scene.count, "radius": float(scene.radii[n]),
                         "background": float(scene.background[0]), "erased": bool(present < 0.5)})
    return rows


def erased_table(balls: list[dict], spec: BallWorldSpec, start: float) -> str:
    """Markdown: the fraction of balls erased, overall and by radius (thirds of ``spec.radius_range``), by
    background grey level (thirds of ``spec.background_range``) and by the scene's count."""
    def band(key: str, lo: float, hi: float, name: str) -> list[tuple[str, list[dict]]]:
        edges = np.linspace(lo, hi, 4)
        return [(f"{name} [{a:.2f}, {b:.2f}{']' if j == 2 else ')'}",
                 [r for r in balls if a <= r[key] < b or (j == 2 and r[key] == b)])
                for j, (a, b) in enumerate(zip(edges[:-1], edges[1:]))]
    groups = [("all", balls), *band("radius", *spec.radius_range, "radius"),
              *band("background", *spec.background_range, "background"),
              *[(f"count {c}", [r for r in balls if r["count"] == c]) for c in range(spec.min_balls, spec.max_balls + 1)]]
    lines = [f"Balls erased from true clips noised to sigma {start:g}:", "", "| balls | n | erased |", "|---|---|---|"]
    for name, rows in groups:
        frac = f"{np.mean([r['erased'] for r in rows]):.3f}" if rows else "-"
        lines.append(f"| {name} | {len(rows)} | {frac} |")
    return "\n".join(lines) + "\n"


def sweep(run_dir: str, smoke: bool, device: str, guidance: list[float], steps: list[int], shifts: list[float],
          scenes: int, starts: list[float] = (1.0,), erased: bool = False) -> list[dict]:
    """One row per setting: ``{guidance, steps, shift, start, <metric>: (mean, se), seconds}`` at 1x K; with
    ``erased``, rows from a start s0 < 1 also carry ``erased``, the table of :func:`erased_table`."""
    mini = load_mini(smoke, device, run_dir)
    if not (mini.artifact("teacher").exists() and mini.artifact("world").is_file()):
        raise FileNotFoundError(f"{run_dir}: needs a finished teacher and world stage "
                                f"({mini.artifact('teacher')}, {mini.artifact('world')})")
    dev = pick_device(device)
    cfg = stage_config(mini, "self_forcing")           # its teacher.checkpoint is the teacher export
    setup = eval_setup(mini, cfg, scenes)
    teacher = build_teacher(cfg, dev, torch.float32)
    text, codec = components.text_encoder(cfg, dev), components.codec(cfg, dev)
    prompts = ev.unit_prompts(setup)
    noise = ev.scene_noise(setup.seeds, setup.noise_seeds, setup.horizon, setup.latent_shape, dev)
    truth = None
    if any(s0 < 1 for s0 in starts):
        clips = sample_batch(setup.spec, setup.horizon, seeds=setup.seeds, device=dev)[0]  # the truth renders
        truth = codec.encode(clips).float().repeat_interleave(len(setup.noise_seeds), dim=0)
    counts = [scene_for_seed(int(seed), setup.spec).count for seed in setup.seeds for _ in setup.noise_seeds]
    rows = []
    for g, n, shift, s0 in itertools.product(guidance, steps, shifts, starts):
        t0 = time.perf_counter()
        guide = Guidance(g, cfg.objective.guidance.convention)
        grid = start_grid(euler_grid(n, shift), s0)
        start = noise if s0 == 1 else (1 - s0) * truth + s0 * noise
        sample = ev.teacher_sampler(teacher, text, cfg.data.negative_prompt, grid, guide)
        videos = ev.generate_videos(sample, codec, prompts, start)
        summary = ev.summarize_model(videos, setup, len(setup.noise_seeds))
        mean, se = summary["horizons"]["1x"], summary["se"]["1x"]
        rows.append({"guidance": g, "steps": n, "shift": shift, "start": s0, **{k: (mean[k], se[k]) for k in METRICS},
                     "counts": counts_by_prompt(videos, counts, setup.spec), "seconds": time.perf_counter() - t0})
        if erased and s0 < 1:
            balls = erased_balls(videos, setup.seeds, len(setup.noise_seeds), setup.spec)
            rows[-1]["erased"] = erased_table(balls, setup.spec, s0)
        print(f"[teacher_sampling] guidance {g} steps {n} shift {shift} start {s0}: count_accuracy "
              f"{mean['count_accuracy']:.3f}, D {mean['D']:.3f} ({rows[-1]['seconds']:.0f} s)", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table of :func:`sweep`'s rows."""
    prompts = sorted({n for r in rows for n in r["counts"]})
    header = [*COLUMNS, *(f"count {n}" for n in prompts)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"{r['guidance']:g}", str(r["steps"]), f"{r['shift']:g}", f"{r['start']:g}"]
        cells += [value_cell(*r[k]) for k in METRICS]
        cells += [value_cell(*r["counts"][n]) if n in r["counts"] else "-" for n in prompts]
        lines.append("| " + " | ".join(cells) + " |")
    extra = [f"\nguidance {r['guidance']:g}, steps {r['steps']}, shift {r['shift']:g}. {r['erased']}" for r in rows
             if "erased" in r]
    return "\n".join(lines) + "\n" + "".join(extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a vidforce mini output directory with a finished teacher")
    p.add_argument("--smoke", action="store_true", help="RUN is a --smoke run (its configs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0])
    p.add_argument("--steps", type=int, nargs="+", default=[40])
    p.add_argument("--shift", type=float, nargs="+", default=[3.0])
    p.add_argument("--start", type=float, nargs="+", default=[1.0],
                   help="start sigmas: 1 samples from noise; s0 < 1 starts from the true clip noised to s0")
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--erased", action="store_true", help="per start < 1: which true balls were erased (radius, ...)")
    p.add_argument("--out", default=None, help="write the table (and this command) to this markdown file")
    args = p.parse_args(argv)
    if args.scenes < 2:
        p.error(f"--scenes must be >= 2 (standard errors), got {args.scenes}")
    if not all(0 < s0 <= 1 for s0 in args.start):
        p.error(f"--start sigmas must be in (0, 1], got {args.start}")
    try:
        rows = sweep(args.run, args.smoke, args.device, args.guidance, args.steps, args.shift, args.scenes, args.start,
                     args.erased)
    except (FileNotFoundError, ValueError) as err:
        print(f"teacher_sampling: error: {err}", file=sys.stderr)
        return 2
    text = table(rows)
    print(text)
    if args.out:
        write_markdown(args.out, "tools/teacher_sampling.py", argv if argv is not None else sys.argv[1:], text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
