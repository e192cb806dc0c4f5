"""LoRA shared-base Self Forcing DMD iterations through the real trainer, beside full fine-tuning.

Random weights (speed and memory do not depend on them), 21 latent frames of 60x104 (32760 tokens), chunks of 3,
batch 1, bf16, activation checkpointing, exit at the last step: ``--lora 1`` holds one frozen base shared by the
teacher, the generator and the critic (``lora.enabled``, adapters of rank ``--rank`` on every block linear);
``--lora 0`` is the full fine-tune (a trained generator and critic beside the teacher). Reports the critic and
generator turn times, tokens/s, MFU (the full forward and backward through the frozen base count as useful, as
``tools/bench_train.py`` counts them) and peak memory. The Wan-14B row on one H200 and the 1.3B full row:

    python3 tools/bench_lora.py --preset wan2.1-t2v-14b --lora 1 --reps 2 --out $OUT/lora
    python3 tools/bench_lora.py --preset wan2.1-t2v-1.3b --lora 0 --reps 3 --out $OUT/lora
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.bench_stream import matmul_tflops  # noqa: E402
from tools.bench_train import bench_setup, report, time_turns  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_out")
    p.add_argument("--preset", default="wan2.1-t2v-14b")
    p.add_argument("--lora", type=int, default=1, help="1: LoRA over one shared base | 0: full fine-tuning")
    p.add_argument("--rank", type=int, default=64, help="lora.rank (lora.alpha = rank)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--zero", type=int, default=2)
    p.add_argument("--ac", type=int, default=1, help="activation checkpointing (per block)")
    p.add_argument("--compile", type=int, default=0, help="train.compile (torch.compile the DiT blocks)")
    p.add_argument("--latent", default="60x104")
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of this script (--preset tiny)")
    p.add_argument("--local_rank", type=int, default=-1)
    args = p.parse_args(argv)
    lora = (f"lora.enabled={bool(args.lora)}", f"lora.rank={args.rank}", f"lora.alpha={float(args.rank)}")
    run = bench_setup(args, lora)
    peak = matmul_tflops(run.device)
    times = time_turns(run, args.reps)
    nets = run.engines.nets()
    trained = {role: sum(p.numel() for p in m.parameters() if p.requires_grad)
               for role, m in (("generator", nets.generator), ("critic", nets.critic))}
    extra = {"preset": args.preset, "lora": bool(args.lora), "rank": args.rank if args.lora else 0,
             "base_params": sum(p.numel() for p in nets.teacher.parameters()),
             "generator_trained_params": trained["generator"], "critic_trained_params": trained["critic"]}
    name = f"lora_{args.preset}_lora{args.lora}_r{extra['rank']}_ac{args.ac}.json"
    return report(args, run.cfg, run, times, peak, {}, name=name, extra=extra)


if __name__ == "__main__":
    main()
