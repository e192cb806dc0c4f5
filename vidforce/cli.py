"""``vidforce train|generate|drift|export|convert|mini|bench`` (arguments parsed here; work elsewhere)."""
from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidforce", description=__doc__)
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)   # deepspeed launcher
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="post-train a causal student (DeepSpeed; a single process is a world of 1)")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="key=value config overrides")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    g = sub.add_parser("generate", help="stream a long video to an mp4")
    g.add_argument("--config", required=True)
    g.add_argument("--checkpoint", default="")
    g.add_argument("--prompt", default="")
    g.add_argument("--prompts-file", default="")
    g.add_argument("--schedule", default="", help="prompt switches: '0:a cat;5:a dog' or a JSON file")
    g.add_argument("--seconds", type=float, default=10.0)
    g.add_argument("--fps", type=float, default=0.0, help="output frame rate (default data.fps)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (CUDA; ~20%% faster on H100)")
    g.add_argument("--out", required=True)
    g.add_argument("overrides", nargs="*", help="key=value config overrides")
    d = sub.add_parser("drift", help="drift curves of a video (JSON + PNG)")
    d.add_argument("video")
    d.add_argument("--out", required=True)
    d.add_argument("--window", type=float, default=2.0, help="window length in seconds")
    e = sub.add_parser("export", help="consolidate a run's generator into one safetensors file")
    e.add_argument("run_dir")
    e.add_argument("--out", required=True)
    e.add_argument("--no-ema", action="store_true")
    c = sub.add_parser("convert", help="convert a checkpoint between formats")
    c.add_argument("args", nargs=argparse.REMAINDER)
    m = sub.add_parser("mini", help="the mini-world recipe: teacher -> baselines -> Self Forcing -> Self-Forcing++")
    m.add_argument("--smoke", action="store_true", help="a CPU-sized run of every stage (minutes)")
    m.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    m.add_argument("--out", default="runs/mini")
    m.add_argument("--stages", default="all", help="comma-separated stages to run (default all)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError, PermissionError, KeyError) as err:
        print(f"vidforce {args.command}: error: {err}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    if args.command == "train":
        from vidforce.train.trainer import main_train  # noqa: PLC0415
        return main_train(args.config, args.overrides, args.dry_run)
    elif args.command == "generate":
        from vidforce.generate import run  # noqa: PLC0415
        return run(args)
    elif args.command == "drift":
        from vidforce.diagnostics import main_drift  # noqa: PLC0415
        return main_drift(args.video, args.out, args.window)
    elif args.command == "export":
        from vidforce.train.trainer import main_export  # noqa: PLC0415
        return main_export(args.run_dir, args.out, not args.no_ema)
    elif args.command == "convert":
        from vidforce.models.loading import main_convert  # noqa: PLC0415
        return main_convert(args.args)
    elif args.command == "mini":
        from vidforce.recipes.mini import main_mini  # noqa: PLC0415
        return main_mini(args.smoke, args.device, args.out, args.stages)
    else:
        raise ValueError(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
