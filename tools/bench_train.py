"""Self Forcing DMD training steps at the Wan-1.3B shape through the real trainer (DeepSpeed engines).

Random weights: a Wan-1.3B-shaped causal generator, a 1.3B teacher and its critic copy, 21 latent frames
of 60x104 (32760 tokens), chunks of 3, batch 1 per GPU, bf16, the 4-step schedule with the exit at the
last step (the most expensive draw, so every rank and repetition does the same work). Times the critic
turn and the generator turn separately (``trainer.run_turn``: forward, backward, optimizer step),
reports tokens/s per GPU, model-FLOPs utilisation (useful FLOPs of the rollout, the teacher/critic
scores and the backward, over time x the measured bf16 matmul rate) and peak memory.

    python3 -m deepspeed.launcher.runner --num_gpus N tools/bench_train.py --zero 2 --ac 1 --out $OUT/train
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.bench_common import profile_ops  # noqa: E402
from tools.bench_stream import matmul_tflops  # noqa: E402
from vidforce.config import load  # noqa: E402
from vidforce.train import dist  # noqa: E402
from vidforce.train.trainer import run_turn, setup  # noqa: E402


def forward_flops(arch, q_tokens: int, k_tokens: int) -> float:
    """Matmul FLOPs of one DiT forward of ``q_tokens`` queries attending ``k_tokens`` keys."""
    d, f, layers = arch.dim, arch.ffn_dim, arch.num_layers
    linear = 2 * q_tokens * (6 * d * d + 2 * d * f) * layers
    attn = 4 * q_tokens * (k_tokens + arch.text_len) * d * layers
    return linear + attn


def turn_flops(arch, frames: int, chunk: int, tpf: int, steps: int, role: str) -> float:
    """Useful FLOPs of one turn for one sample (exit at the last step; backward = 2x forward)."""
    rollout = 0.0
    for start in range(0, frames, chunk):
        q, k = chunk * tpf, (start + chunk) * tpf
        passes = steps + 1 + (2 if role == "generator" else 0)   # steps, refresh, backward of the exit step
        rollout += passes * forward_flops(arch, q, k)
    full = forward_flops(arch, frames * tpf, frames * tpf)
    return rollout + 3 * full      # generator: teacher cond + uncond + critic; critic: its forward + backward


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench_out")
    p.add_argument("--zero", type=int, default=2)
    p.add_argument("--ac", type=int, default=1, help="activation checkpointing (per block)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--preset", default="wan2.1-t2v-1.3b")
    p.add_argument("--latent", default="60x104")
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of this script (--preset tiny)")
    p.add_argument("--compile", type=int, default=0, help="train.compile (torch.compile the DiT blocks)")
    p.add_argument("--profile", action="store_true",
                   help="then profile one critic and one generator turn (top ops, device-busy share; 1 GPU)")
    p.add_argument("--local_rank", type=int, default=-1)
    args = p.parse_args()
    run = bench_setup(args)
    peak = matmul_tflops(run.device)
    times = time_turns(run, args.reps)
    ops = {}
    if args.profile:
        if dist.world_size() > 1:
            raise SystemExit("--profile runs in a world of one (one GPU)")
        batches = [run.source.next()]
        for role in ("critic", "generator"):
            ops[role] = profile_ops(lambda: run_turn(run, role, args.reps + 1, batches), run.device, args.out,
                                    f"train_{role}_z{args.zero}_ac{args.ac}")
    report(args, run.cfg, run, times, peak, ops)


def bench_setup(args, extra: tuple[str, ...] = ()):
    """The trainer's ``Run`` (models, engines) of the benchmark config of ``args`` plus ``extra`` overrides."""
    lh, lw = (int(v) for v in args.latent.split("x"))
    prompts = Path(tempfile.mkdtemp()) / "prompts.txt"
    prompts.write_text("\n".join(f"a red circle number {i}" for i in range(64)) + "\n")
    cfg = load(None, [f"model.preset={args.preset}", "objective.name=dmd", f"rollout.num_frames={args.frames}",
                      "rollout.exit_step=last", f"data.latent_height={lh}", f"data.latent_width={lw}",
                      f"data.prompts={prompts}", f"train.generator_zero_stage={args.zero}",
                      f"train.critic_zero_stage={args.zero}", f"train.activation_checkpointing={bool(args.ac)}",
                      "train.precision=bf16", f"train.compile={bool(args.compile)}", "train.resume=none", f"train.run_dir={prompts.parent / 'run'}",
                      "logging.wandb=false", "logging.progress=false", f"train.device={args.device}", *extra])
    t0 = time.perf_counter()
    run = setup(cfg)
    if dist.rank() == 0:
        print(f"set-up (models, engines): {time.perf_counter() - t0:.1f} s", flush=True)
    return run


def time_turns(run, reps: int) -> dict[str, list[float]]:
    """Seconds of each critic and generator turn (``trainer.run_turn``) over ``reps`` iterations after one warm-up."""
    times: dict[str, list[float]] = {"critic": [], "generator": []}
    for step in range(reps + 1):
        batches = [run.source.next()]
        for role in ("critic", "generator"):
            sync(run.device)
            t = time.perf_counter()
            run_turn(run, role, step, batches)
            sync(run.device)
            if step > 0:                                             # step 0 warms up
                times[role].append(time.perf_counter() - t)
            if dist.rank() == 0:
                print(f"iteration {step} {role} turn: {time.perf_counter() - t:.2f} s", flush=True)
    return times


def report(args, cfg, run, times: dict[str, list[float]], peak: float, ops: dict, name: str = "",
           extra: dict | None = None) -> dict:
    from vidforce.config import arch_of  # noqa: PLC0415
    arch, tpf = arch_of(cfg.model), cfg.data.latent_height * cfg.data.latent_width // 4
    tokens = cfg.rollout.num_frames * tpf
    row = {"gpus": dist.world_size(), "zero": args.zero, "activation_ckpt": bool(args.ac), "compile": bool(args.compile),
           "gpu": torch.cuda.get_device_name() if run.device.type == "cuda" else "cpu", "matmul_tflops": peak,
           "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if run.device.type == "cuda" else 0.0,
           **(extra or {})}
    for role, ts in times.items():
        t = statistics.median(ts)
        flops = turn_flops(arch, cfg.rollout.num_frames, cfg.causal.frames_per_chunk, tpf,
                           len(cfg.schedule.denoising_steps), role)
        row.update({f"{role}_s": t, f"{role}_tokens_per_s_per_gpu": tokens / t,
                    f"{role}_mfu": flops / t / (peak * 1e12)})
    row.update({f"{role}_busy_fraction": o["busy_fraction"] for role, o in ops.items()})
    peaks = dist.reduce_max({"peak_gib": row["peak_gib"]})
    row["peak_gib"] = peaks["peak_gib"]
    if dist.rank() == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = name or f"train_g{row['gpus']}_z{args.zero}_ac{args.ac}_c{args.compile}.json"
        (out / name).write_text(json.dumps(row, indent=2))
        print("RESULT " + json.dumps(row))
    return row


if __name__ == "__main__":
    main()
