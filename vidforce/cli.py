"""``vidforce train|generate|drift|export|convert|mini|bench`` (arguments parsed and results printed here; the
work is done by the library modules, which hold no argparse and no print)."""
from __future__ import annotations

import argparse
import json
import os
import re
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
    e.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights' dtype in the file")
    e.add_argument("--max-shard-size", default="0", help="split into shards of at most this size (e.g. 16MiB)")
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
        return main_train(args.config, args.overrides, args.dry_run)
    elif args.command == "generate":
        from vidforce.generate import run  # noqa: PLC0415
        return run(args)
    elif args.command == "drift":
        return main_drift(args.video, args.out, args.window)
    elif args.command == "export":
        return main_export(args.run_dir, args.out, not args.no_ema, args.dtype, parse_size(args.max_shard_size))
    elif args.command == "convert":
        return main_convert(args.args)
    elif args.command == "mini":
        from vidforce.recipes.mini import main_mini  # noqa: PLC0415
        return main_mini(args.smoke, args.device, args.out, args.stages)
    else:
        raise ValueError(f"unknown command {args.command!r}")


def main_train(config_path: str, overrides: list[str], dry_run: bool) -> int:
    """``vidforce train CONFIG [key=value ...] [--dry-run]``."""
    from vidforce.config import load, to_yaml  # noqa: PLC0415
    from vidforce.train import dist  # noqa: PLC0415
    from vidforce.train.trainer import train  # noqa: PLC0415
    from vidforce.train.watchdog import RankFailure  # noqa: PLC0415
    cfg = load(config_path, overrides)
    if dry_run:
        print(to_yaml(cfg))
        return 0
    try:
        summary = train(cfg)
    except RankFailure as err:      # the other ranks cannot join a clean shutdown: report and leave now
        print(f"vidforce: {err}", file=sys.stderr, flush=True)
        os._exit(1)
    if dist.rank() == 0:
        print(json.dumps(summary, indent=2))
    dist.shutdown()
    return 0


def main_export(run_dir: str, out: str, ema: bool, dtype: str = "fp32", max_shard_bytes: int = 0) -> int:
    """``vidforce export RUN_DIR --out FILE.safetensors [--no-ema] [--dtype bf16] [--max-shard-size 16MiB]``."""
    import torch  # noqa: PLC0415
    from vidforce.train import checkpoint  # noqa: PLC0415
    path = checkpoint.export_generator(run_dir, out, ema, {"fp32": None, "bf16": torch.bfloat16}[dtype],
                                       max_shard_bytes)
    print(f"exported the {'EMA' if ema else 'raw'} generator of {run_dir} to {path}")
    return 0


def main_drift(video: str, out: str, window: float) -> int:
    """``vidforce drift VIDEO --out DIR --window SECONDS``: analyse, write report, print table.

    Returns 0 on success and 2 (message on stderr) for a missing, empty or corrupt video or an
    invalid window.
    """
    from vidforce.diagnostics import analyze_video, format_summary, write_report  # noqa: PLC0415
    try:
        result = analyze_video(video, window_seconds=window)
    except (FileNotFoundError, ValueError) as err:
        print(f"vidforce drift: error: {err}", file=sys.stderr)
        return 2
    json_path, png_path = write_report(result, out)
    print(format_summary(result))
    print(f"wrote {json_path} and {png_path}")
    return 0


def convert_parser() -> argparse.ArgumentParser:
    """Arguments of ``vidforce convert`` / ``tools/convert_checkpoint.py``."""
    from vidforce.models.loading import DTYPES, FORMATS  # noqa: PLC0415
    p = argparse.ArgumentParser(prog="vidforce convert", description="Convert a Wan2.1 DiT checkpoint (official, "
                                "diffusers, Self-Forcing .pt, vidforce export) to safetensors; see models/loading.py")
    p.add_argument("input", help="file, index json or directory")
    p.add_argument("output", help="output .safetensors path (shards get -0000i-of-0000N suffixes)")
    p.add_argument("--to", choices=("wan", "diffusers"), default="wan", help="output names (wan = official = ours)")
    p.add_argument("--format", choices=FORMATS, default="auto", help="input names (auto-detected)")
    p.add_argument("--checkpoint-key", default="auto", help="training checkpoints: generator | generator_ema | critic")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="keep")
    p.add_argument("--max-shard-size", default="0", help="e.g. 5GB; 0 writes one file")
    return p


def parse_size(text: str) -> int:
    """``"5GB"`` -> 5e9, ``"512MiB"`` -> 512 * 2**20, ``"1000"`` -> 1000 bytes; ``"0"`` means no sharding."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"--max-shard-size: cannot read size {text!r} (e.g. 5GB, 512MiB, 1000000)")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** "_KMGT".index(m.group(2).upper() or "_"))


def main_convert(argv: list[str] | None = None) -> int:
    """Entry point of ``vidforce convert``: stream the input, rename, cast, write (sharded) safetensors."""
    from vidforce.models.loading import DTYPES, Checkpoint, save_safetensors  # noqa: PLC0415
    args = convert_parser().parse_args(argv)
    ckpt = Checkpoint(args.input, args.checkpoint_key, args.format)
    written = save_safetensors(ckpt.tensors(DTYPES[args.dtype]), args.output, ckpt.metadata,
                               parse_size(args.max_shard_size), names=args.to)
    print(f"converted {ckpt.describe()}: {len(ckpt.shapes)} tensors -> {args.to} names in "
          f"{', '.join(str(w) for w in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
