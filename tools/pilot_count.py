"""Pilot (CPU, small model): does a luminance contrast between balls and background fix the teacher's undercount?

    python tools/pilot_count.py --measure                       # step time per clip length -> --frames, --steps
    python tools/pilot_count.py --frames 1 --steps 3486 [--out runs/pilot_count/table.md]

Background. The mini teacher (configs/mini/teacher.yaml, preset mini_v2) undercounts: for "1 ball" most of
its samples are an empty background. In the ball world every ball has intensity (R+G+B)/3 = 128, inside the
background's grey range (60-150), so a ball differs from the background mostly in chroma, and random hues
average to grey: the posterior mean at high noise carries almost no trace of a ball. Hypothesis: with balls
clearly brighter than the background the model generates the right count far more often.

Design (fixed before any run; this is a small pilot, not the recipe's teacher and not a gate):

- Two arms, identical except the world. A: ``configs/mini/recipe.yaml``'s ``world`` as it was when the pilot
  ran (``ARM_A``). B: the same with ``background_range [20, 80]``, ``colour_intensity 150``, ``colour_chroma 100``
  (balls 70-130 intensity levels above the background). The world's random draws come in the same order in both, so a
  training step (and an evaluation seed) has the same counts, radii, hues, positions and velocities in both arms; only
  the grey level and the colours' intensity and chroma differ.
- Clips of ``--frames`` T frames: T = 3 (one chunk) if one training step at batch 32 takes <= 0.35 s on this
  CPU, else T = 1 (``--measure`` times both and applies the rule; ``--steps`` fills ``--minutes`` per arm). One
  torch thread by default (``--threads``): on a 2-core machine shared with another CPU job, 2 threads per
  process oversubscribe the cores and run ~3x slower than 1.
- Model: the repo's DiT (``models.build.build_generator``, run bidirectionally as the teacher stage trains
  it) at a small size (default dim 128, 4 layers, 4 heads, ffn 384; patch, text and codec settings of mini_v2 /
  configs/mini/base.yaml), fp32. Training: ``configs/mini/teacher.yaml``'s objective through the repo's own
  ``objectives.FlowMatching`` (sigma ~ U[0, 1], CFG dropout 0.1, plain MSE on the flow), AdamW (``train.engines
  .adamw``: lr 5e-4, betas (0.9, 0.99), its weight decay 0.01), grad clip 1, warm-up 100 then cosine to
  ``min_lr_ratio`` 0.05 (``train.lr.lr_factor``), batch 32, the same ``--steps`` and seed in both arms: the same
  initial weights, the same sigma / noise / CFG-dropout draws per step (the trainer's ``derive_seed``), fresh
  scenes every step from the trainer's ``WorldStream`` (``default_rng([seed, 0, step])``).
- Evaluation, as ``recipes/evaluate.py`` evaluates the teacher: the same 64 held-out scenes (seeds
  1000000..1000063, ``scene_for_seed``, prompt ``prompt_for``) x noise seeds 0, 1 (``scene_noise``), sampled
  with ``evaluate.teacher_sampler`` (guided Euler ODE, guidance 2 'uncond', 40 steps on ``euler_grid`` at shift
  3 of configs/mini/base.yaml), decoded by the PixelCodec; ``evaluate.count_accuracy`` per unit, a scene's value
  is the mean over its noise seeds, mean ± standard error over scenes (overall and per prompt), plus the
  fraction of "1 ball" units whose median detected count (``ball_metrics.detect``) is 0, and the paired
  difference B - A over scenes. The truth render of each scene (``data``) is scored too, as a check that the
  detector reads both worlds. The final training loss (mean of the last 100 steps) is reported but is not
  comparable across worlds (the data differ).

Deviations from the recipe's trainer, and why: the loop is written here instead of calling ``train.trainer.train``
because that runs DeepSpeed engines, checkpoints and an EMA, which a 12-minute CPU pilot does not need; every
piece of maths (model, objective, noise draws, optimizer, LR curve, data stream, sampler, metric) is the repo's.
Gradient clipping is ``torch.nn.utils.clip_grad_norm_`` (DeepSpeed's ``gradient_clipping``, the same global-norm
clip). The weights evaluated are the trained ones, not an EMA (the recipe exports an EMA; the cosine decay to
0.05 x lr already averages the last updates). No ``torch.compile``.

Outputs next to ``--out`` (default runs/pilot_count/table.md): the table under the exact command,
``loss_A.json`` / ``loss_B.json`` (loss and lr per step), ``results.json`` (per-scene values) and
``videos_A.npz`` / ``videos_B.npz`` (the evaluation samples, uint8 [units, T, H, W, 3]).
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vidforce import components, config, objectives  # noqa: E402
from vidforce.data.balls import (BallWorldSpec, prompt_for, render_numpy, save_spec, scene_for_seed,  # noqa: E402
                                 simulate)
from vidforce.models.build import build_generator  # noqa: E402
from vidforce.objectives import Batch, Nets, StepContext  # noqa: E402
from vidforce.recipes import evaluate as ev  # noqa: E402
from vidforce.recipes.comparisons import standard_error  # noqa: E402
from vidforce.recipes.report import value_cell  # noqa: E402
from vidforce.sampling import Guidance, euler_grid  # noqa: E402
from vidforce.train.data import WorldStream  # noqa: E402
from vidforce.train.engines import adamw  # noqa: E402
from vidforce.train.lr import lr_factor  # noqa: E402
from vidforce.train.trainer import ROLE_IDS, derive_seed  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    def tqdm(iterable=None, **_):
        return iterable

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "mini"
TOOL = "tools/pilot_count.py"
ARM_A = {"background_range": (60, 150), "colour_intensity": 128.0, "colour_chroma": 115.0}   # the world it ran on
ARM_B = {"background_range": (20, 80), "colour_intensity": 150.0, "colour_chroma": 100.0}
STEP_LIMIT_T3 = 0.35            # s per training step at batch 32: T = 3 at or below it, else T = 1
FINAL_LOSS_STEPS = 100          # the final loss: mean of the last this many steps


# ---------------------------------------------------------------- settings

def recipe_world() -> BallWorldSpec:
    """Arm A: ``configs/mini/recipe.yaml``'s ``world`` (tuples where the spec has tuples)."""
    import yaml  # noqa: PLC0415
    w = dict(yaml.safe_load((CONFIGS / "recipe.yaml").read_text())["world"])
    for key in ("radius_range", "speed_range", "background_range"):
        if key in w:
            w[key] = tuple(w[key])
    return BallWorldSpec(**w)


def arm_worlds() -> dict[str, BallWorldSpec]:
    """``{"A": the recipe's world with the looks it had when the pilot ran (``ARM_A``; recipe.yaml took arm B's
    after it), "B": the same with the luminance contrast}`` (BallWorldSpec validates both)."""
    world = recipe_world()
    return {"A": replace(world, **ARM_A), "B": replace(world, **ARM_B)}


def pilot_config(args: argparse.Namespace, frames: int, steps: int):
    """The teacher stage's config at the pilot's size: small DiT, fp32, eager, T frames, warm-up 100."""
    return config.load(CONFIGS / "teacher.yaml", [
        f"model.dim={args.dim}", f"model.num_layers={args.layers}", f"model.num_heads={args.heads}",
        f"model.ffn_dim={args.ffn}", f"rollout.num_frames={frames}", f"causal.frames_per_chunk={frames}",
        "train.precision=fp32", "train.compile=false",
        f"optim.warmup_steps={args.warmup}", f"train.batch_size={args.batch}", f"train.steps={steps}",
        f"train.seed={args.seed}", "train.device=cpu"])


def sampling_settings() -> tuple[float, Guidance, int]:
    """The evaluation's teacher sampler settings: shift and guidance of configs/mini/base.yaml, Euler steps of
    recipe.yaml's ``evaluate.teacher_euler_steps``."""
    import yaml  # noqa: PLC0415
    base = config.load(CONFIGS / "base.yaml")
    steps = yaml.safe_load((CONFIGS / "recipe.yaml").read_text())["evaluate"]["teacher_euler_steps"]
    return base.schedule.shift, Guidance.from_config(base.objective.guidance), int(steps)


def quiet_bars() -> dict:
    """tqdm options: refresh rarely when stderr is a log file."""
    return {} if sys.stderr.isatty() else {"mininterval": 30.0}


# ---------------------------------------------------------------- training

class Trainer:
    """One arm's model, optimizer, data stream and noise draws, stepped as ``train.trainer`` steps the generator."""

    def __init__(self, cfg, spec: BallWorldSpec, world_path: Path):
        self.cfg, self.spec = cfg, spec
        torch.manual_seed(cfg.train.seed)                          # as engines.build_modules: same init per arm
        self.model = build_generator(cfg, "cpu", torch.float32).train()
        self.text, self.codec = components.text_encoder(cfg, "cpu"), components.codec(cfg, "cpu")
        self.objective = objectives.build(cfg)
        if self.objective.name != "flow_matching":
            raise ValueError(f"pilot: expected the flow_matching objective, got {self.objective.name}")
        self.optimizer = adamw(self.model, cfg.optim.generator_lr, cfg.optim)
        world_path.parent.mkdir(parents=True, exist_ok=True)
        save_spec(spec, world_path)
        self.stream = WorldStream(str(world_path), cfg.train.seed, 0)
        self.uncond = self.text.encode([cfg.data.negative_prompt])
        self.shape = (cfg.model.in_dim, cfg.data.latent_height, cfg.data.latent_width)

    def step(self, step: int) -> tuple[float, float]:
        """Training step ``step`` (0-based): returns (loss, lr)."""
        cfg, o = self.cfg, self.cfg.optim
        lr = o.generator_lr * lr_factor(step, cfg.train.steps, o.warmup_steps, o.lr_schedule, o.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        b = cfg.train.batch_size
        video, prompts = self.stream.draw(b, cfg.rollout.num_frames, "cpu")
        with torch.no_grad():
            latents = self.codec.encode(video).float()
        batch = Batch(cond=self.text.encode(prompts), uncond=self.uncond.expand(b, -1, -1), latents=latents)
        rng = torch.Generator().manual_seed(derive_seed(cfg.train.seed, step, ROLE_IDS["generator"], 0))
        ctx = StepContext(Nets(generator=self.model), batch, None, None, cfg, rng, self.shape)
        loss, _ = self.objective.generator_loss(ctx)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        self.optimizer.step()
        return float(loss.item()), lr


def train_arm(name: str, cfg, spec: BallWorldSpec, out_dir: Path) -> tuple[torch.nn.Module, dict]:
    """Train one arm for ``cfg.train.steps``; writes ``loss_<name>.json``; returns the model and the curve."""
    trainer = Trainer(cfg, spec, out_dir / f"world_{name}.json")
    losses, lrs = [], []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.train.steps), desc=f"train {name}", **quiet_bars())
    for step in bar:
        loss, lr = trainer.step(step)
        losses.append(loss)
        lrs.append(lr)
        if hasattr(bar, "set_postfix") and step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    seconds = time.perf_counter() - t0
    curve = {"arm": name, "world": asdict(spec), "steps": cfg.train.steps, "batch": cfg.train.batch_size,
             "frames": cfg.rollout.num_frames, "train_seconds": round(seconds, 1),
             "step_time_s": round(seconds / max(1, cfg.train.steps), 4),
             "final_loss": float(np.mean(losses[-FINAL_LOSS_STEPS:])),
             "loss": [round(v, 5) for v in losses], "lr": [float(f"{v:.4g}") for v in lrs]}
    (out_dir / f"loss_{name}.json").write_text(json.dumps(curve) + "\n")
    return trainer.model.eval(), curve


def measure(args: argparse.Namespace) -> int:
    """Time ``--measure-steps`` training steps (after 2 warm-up steps) at T = 3 and T = 1 in world A; print the
    rule's clip length and the step count that fills ``--minutes`` per arm."""
    spec, times = arm_worlds()["A"], {}
    for frames in (3, 1):
        cfg = pilot_config(args, frames, 100_000)
        trainer = Trainer(cfg, spec, Path(args.out).parent / "measure_world.json")
        for step in range(2):
            trainer.step(step)
        t0 = time.perf_counter()
        for step in range(2, 2 + args.measure_steps):
            trainer.step(step)
        times[frames] = (time.perf_counter() - t0) / args.measure_steps
        print(f"[pilot] T={frames}: {times[frames]:.3f} s per training step (batch {args.batch}, "
              f"{args.measure_steps} steps, {torch.get_num_threads()} thread(s))", flush=True)
    frames = 3 if times[3] <= STEP_LIMIT_T3 else 1
    steps = int(args.minutes * 60 / times[frames])
    print(f"[pilot] rule: T=3 if <= {STEP_LIMIT_T3} s else T=1 -> --frames {frames}; {args.minutes:g} min per arm "
          f"-> --steps {steps}")
    return 0


# ---------------------------------------------------------------- evaluation

def evaluate_arm(model, cfg, spec: BallWorldSpec, seeds: tuple[int, ...], noise_seeds: tuple[int, ...],
                 eval_batch: int, name: str) -> dict:
    """Sample every unit with the evaluation's teacher sampler; per-unit count accuracy and median count."""
    shift, guidance, euler_steps = sampling_settings()
    sigmas = euler_grid(euler_steps, shift)
    text, codec = components.text_encoder(cfg, "cpu"), components.codec(cfg, "cpu")
    sample = ev.teacher_sampler(model, text, cfg.data.negative_prompt, sigmas, guidance)
    frames, shape = cfg.rollout.num_frames, (cfg.model.in_dim, cfg.data.latent_height, cfg.data.latent_width)
    noise = ev.scene_noise(seeds, noise_seeds, frames, shape, "cpu")
    scenes = [scene_for_seed(s, spec) for s in seeds]
    prompts = [prompt_for(sc) for sc in scenes for _ in noise_seeds]
    videos = []
    for i in tqdm(range(0, len(prompts), eval_batch), desc=f"sample {name}", **quiet_bars()):
        videos += ev.generate_videos(sample, codec, prompts[i:i + eval_batch], noise[i:i + eval_batch])
    counts = [sc.count for sc in scenes for _ in noise_seeds]
    acc = [ev.count_accuracy(v, c, spec) for v, c in zip(videos, counts)]
    median = [float(np.median(ev.detected_counts(v, spec))) for v in videos]
    truth = [render_numpy(sc, spec, simulate(sc, spec, frames)[0]) for sc in scenes]
    data_acc = [ev.count_accuracy(v, sc.count, spec) for v, sc in zip(truth, scenes)]
    n = len(noise_seeds)
    return {"counts": [sc.count for sc in scenes],
            "accuracy": np.reshape(acc, (len(seeds), n)).tolist(),
            "median_count": np.reshape(median, (len(seeds), n)).tolist(),
            "data_accuracy": data_acc, "videos": np.stack(videos),
            "sampler": {"euler_steps": euler_steps, "shift": shift, "guidance": guidance.scale,
                        "convention": guidance.convention}}


def summarize(res: dict, max_balls: int) -> dict:
    """Scene values (mean over noise seeds) -> mean and standard error over scenes, overall and per prompt."""
    counts = np.array(res["counts"])
    acc = np.array(res["accuracy"]).mean(1)
    empty = (np.array(res["median_count"]) == 0).mean(1)
    med = np.array(res["median_count"]).mean(1)
    out = {"all": (float(acc.mean()), standard_error(acc), len(acc)),
           "data": (float(np.mean(res["data_accuracy"])), standard_error(res["data_accuracy"]), len(acc))}
    for c in range(1, max_balls + 1):
        sel = counts == c
        out[c] = (float(acc[sel].mean()) if sel.any() else math.nan, standard_error(acc[sel]), int(sel.sum()))
        out[f"count{c}"] = (float(med[sel].mean()) if sel.any() else math.nan, standard_error(med[sel]))
    one = counts == 1
    out["empty1"] = (float(empty[one].mean()) if one.any() else math.nan, standard_error(empty[one]))
    return out


def label(c: int) -> str:
    return f"{c} ball" if c == 1 else f"{c} balls"


def table(results: dict[str, dict], curves: dict[str, dict], worlds: dict[str, BallWorldSpec]) -> str:
    """The markdown report: one row per arm, the paired difference B - A, the detected counts."""
    max_balls = worlds["A"].max_balls
    s = {name: summarize(res, max_balls) for name, res in results.items()}
    first = s[next(iter(s))]
    per = [f"{label(c)} (n={first[c][2]})" for c in range(1, max_balls + 1)]
    lines = ["| arm | world | final train loss | count acc, all (n=%d) | %s | \"1 ball\" empty (median count 0) "
             "| data count acc |" % (first["all"][2], " | ".join(per)),
             "|---|---|---|---|" + "---|" * max_balls + "---|---|"]
    for name, row in s.items():
        w = worlds[name]
        desc = (f"bg {w.background_range[0]}-{w.background_range[1]}, ball I {w.colour_intensity:g} "
                f"C {w.colour_chroma:g}")
        cells = [value_cell(*row[c][:2]) for c in range(1, max_balls + 1)]
        lines.append(f"| {name} | {desc} | {curves[name]['final_loss']:.4f} | {value_cell(*row['all'][:2])} | "
                     + " | ".join(cells) + f" | {value_cell(*row['empty1'])} | {value_cell(*row['data'][:2])} |")
    if {"A", "B"} <= set(results):
        counts = np.array(results["A"]["counts"])
        if not np.array_equal(counts, results["B"]["counts"]):
            raise ValueError("pilot: the arms' evaluation scenes have different counts (paired design broken)")
        a, b = (np.array(results[k]["accuracy"]).mean(1) for k in ("A", "B"))
        ea, eb = ((np.array(results[k]["median_count"]) == 0).mean(1) for k in ("A", "B"))
        d, one = b - a, counts == 1
        cells = [value_cell(float(d[counts == c].mean()), standard_error(d[counts == c])) if (counts == c).any()
                 else "-" for c in range(1, max_balls + 1)]
        empty = value_cell(float((eb - ea)[one].mean()), standard_error((eb - ea)[one])) if one.any() else "-"
        lines.append(f"| B - A | paired over scenes | - | {value_cell(float(d.mean()), standard_error(d))} | "
                     + " | ".join(cells) + f" | {empty} | - |")
    lines += ["", "Mean detected count (median over a video's frames, mean over units) per prompt:", "",
              "| arm | " + " | ".join(label(c) for c in range(1, max_balls + 1)) + " |",
              "|---|" + "---|" * max_balls]
    for name, row in s.items():
        lines.append(f"| {name} | " + " | ".join(value_cell(*row[f"count{c}"]) for c in range(1, max_balls + 1)) + " |")
    return "\n".join(lines)


def notes(args: argparse.Namespace, curves: dict[str, dict], sampler: dict, params: int) -> str:
    c = next(iter(curves.values()))
    times = ", ".join(f"{k} {v['train_seconds']:.0f} s ({v['step_time_s']:.3f} s/step)" for k, v in curves.items())
    return "\n".join([
        f"PILOT (CPU, small model; not the recipe's teacher). DiT dim {args.dim}, {args.layers} layers, "
        f"{args.heads} heads, ffn {args.ffn} ({params / 1e6:.2f} M parameters), fp32, {args.threads} CPU "
        f"thread(s); T = {c['frames']} frame(s); "
        f"{c['steps']} steps of batch {c['batch']}, seed {args.seed}, the same in both arms. Training: {times}.",
        f"Evaluation: {args.scenes} scenes (seeds {args.scene_seed}..{args.scene_seed + args.scenes - 1}) x noise "
        f"seeds {list(args.noise_seeds)}; guided Euler, {sampler['euler_steps']} steps, shift {sampler['shift']:g}, "
        f"guidance {sampler['guidance']:g} ({sampler['convention']}). Mean ± standard error over scenes (a scene: "
        f"the mean over its noise seeds). Final train loss: mean of the last {FINAL_LOSS_STEPS} steps (not "
        "comparable across worlds). data: the truth render of each scene, scored by the same detector."])


# ---------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measure", action="store_true", help="time training steps at T=3 and T=1 and print the "
                   "--frames / --steps the design's rules give, then exit")
    p.add_argument("--measure-steps", type=int, default=10)
    p.add_argument("--minutes", type=float, default=12.0, help="--measure: training minutes per arm")
    p.add_argument("--frames", type=int, choices=(1, 3), default=None, help="clip length T")
    p.add_argument("--steps", type=int, default=None, help="training steps per arm")
    p.add_argument("--arms", default="A,B", help="comma-separated subset of A,B")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=384)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="training seed (weights, noise, scenes), both arms")
    p.add_argument("--scenes", type=int, default=64)
    p.add_argument("--scene-seed", type=int, default=1_000_000)
    p.add_argument("--noise-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the pilot shares 2 cores with "
                   "other CPU jobs, and 2 threads per process oversubscribe them)")
    p.add_argument("--out", default="runs/pilot_count/table.md", help="markdown table (other files beside it)")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(args.threads)
    if args.measure:
        return measure(args)
    if args.frames is None or args.steps is None or args.steps < 1:
        p.error("--frames and --steps (>= 1) are required (run --measure first)")
    if args.scenes < 2:
        p.error("--scenes must be >= 2 (standard errors)")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    worlds = arm_worlds()
    if not arms or set(arms) - set(worlds):
        p.error(f"--arms: choose from A,B, got {args.arms!r}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = pilot_config(args, args.frames, args.steps)
    seeds = tuple(args.scene_seed + i for i in range(args.scenes))
    results, curves, params, t0 = {}, {}, 0, time.perf_counter()
    for name in arms:
        model, curves[name] = train_arm(name, cfg, worlds[name], out.parent)
        params = sum(q.numel() for q in model.parameters())
        print(f"[pilot] arm {name}: {args.steps} steps in {curves[name]['train_seconds']} s, final loss "
              f"{curves[name]['final_loss']:.4f}", flush=True)
        res = evaluate_arm(model, cfg, worlds[name], seeds, tuple(args.noise_seeds), args.eval_batch, name)
        np.savez_compressed(out.parent / f"videos_{name}.npz", videos=res.pop("videos"))
        results[name] = res
    text = (table(results, curves, {k: worlds[k] for k in arms}) + "\n\n"
            + notes(args, curves, results[arms[0]]["sampler"], params))
    command = f"python {TOOL} {shlex.join(argv)}"
    wall = time.perf_counter() - t0
    text += f"\nWall time (training + evaluation, all arms): {wall:.0f} s.\n"
    print(text)
    out.write_text(f"`{command}`\n\n{text}")
    (out.parent / "results.json").write_text(json.dumps({
        "command": command, "seeds": list(seeds), "noise_seeds": list(args.noise_seeds), "wall_seconds": round(wall, 1),
        "arms": {k: {**v, "world": asdict(worlds[k]), "final_loss": curves[k]["final_loss"],
                     "train_seconds": curves[k]["train_seconds"]} for k, v in results.items()}}, default=list) + "\n")
    print(f"[pilot] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
