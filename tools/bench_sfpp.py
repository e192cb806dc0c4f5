"""One Self-Forcing++ generator iteration at the Wan-1.3B shape: time and peak memory vs rollout length N.

Random weights (speed and memory do not depend on them): a Wan-1.3B-shaped causal generator, a 1.3B
teacher and critic, bf16, batch 1, chunks of 3 latent frames at 60x104, a K = 21-frame window scored by
extended DMD, rolling cache window 21 with sink 3, 4-step schedule. Each N runs the generator loss
(long ``no_grad`` prefix, stochastic-truncation window) and its backward, activation checkpointing on.
Expected: time linear in N (the prefix is N - K frames of 5 forwards per chunk without grad), peak
memory flat in N (the prefix holds no activations; the cache is a ring).

    python tools/bench_sfpp.py --out $OUT/sfpp [--multiples 1,4,10] [--exit last]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.bench_common import dump_json, env_info, markdown_table  # noqa: E402
from vidforce import config  # noqa: E402
from vidforce.models.causal import CausalWan  # noqa: E402
from vidforce.models.wan import WanModel  # noqa: E402
from vidforce.objectives import Batch, Nets, StepContext, build  # noqa: E402
from vidforce.rollout import RolloutPlan  # noqa: E402
from vidforce.sampling import Sampler  # noqa: E402


def nets(cfg, device, dtype):
    arch = config.arch_of(cfg.model)
    torch.manual_seed(0)
    with torch.device(device):
        gen = CausalWan(arch, 3, cfg.causal.window, cfg.causal.sink, cfg.causal.rope_mode).to(dtype)
        teacher = WanModel(arch).to(dtype).eval().requires_grad_(False)
        critic = WanModel(arch).to(dtype).eval().requires_grad_(False)
    gen.gradient_checkpointing = True
    return Nets(gen, critic, teacher)


def one_iteration(cfg, n: Nets, num_frames: int, exit_index: int, device, dtype, latent) -> dict:
    k = cfg.rollout.num_frames
    plan = RolloutPlan(exit_index, num_frames, num_frames - k)         # the window at the end: worst case
    text = torch.randn(1, cfg.model.text_len, cfg.model.text_dim, device=device, dtype=dtype)
    ctx = StepContext(n, Batch(text, text), plan, Sampler.from_config(cfg.schedule), cfg,
                      torch.Generator(device=device).manual_seed(0), (cfg.model.in_dim, *latent))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    loss, _ = build(cfg).generator_loss(ctx)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    n.generator.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    return {"seconds": time.perf_counter() - t, "peak_gib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench_out")
    p.add_argument("--multiples", default="1,4,10")
    p.add_argument("--exit", default="last", choices=["first", "last"])
    p.add_argument("--preset", default="wan2.1-t2v-1.3b")
    p.add_argument("--latent", default="60x104")
    args = p.parse_args()
    latent = tuple(int(v) for v in args.latent.split("x"))
    mults = [int(m) for m in args.multiples.split(",")]
    cfg = config.load(None, [f"model.preset={args.preset}", "objective.name=extended_dmd", "causal.window=21",
                             "causal.sink=3", "rollout.num_frames=21", f"rollout.long_frames={21 * max(mults)}",
                             "causal.rope_mode=relative"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = nets(cfg, device, dtype)
    exit_index = 3 if args.exit == "last" else 0
    one_iteration(cfg, n, 21, exit_index, device, dtype, latent)          # warm-up
    rows = []
    for m in mults:
        r = one_iteration(cfg, n, 21 * m, exit_index, device, dtype, latent)
        rows.append({"N_over_K": m, "latent_frames": 21 * m, **r, "seconds_per_K": r["seconds"] / m})
    dump_json(args.out, "sfpp", {"env": env_info(device), "exit_step": args.exit, "rows": rows})
    print(markdown_table(rows, ["N_over_K", "latent_frames", "seconds", "seconds_per_K", "peak_gib"]))


if __name__ == "__main__":
    main()
