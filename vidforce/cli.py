"""``vidforce train|generate|serve|drift|export|convert|plot|mini``: arguments are parsed and results printed here; the
work is done by the library modules, which hold no argparse and no print.

Rules every command keeps: an error is one line on stderr (``vidforce COMMAND: error: ...``, exit status 2),
never a traceback; a missing parent directory of an output is created; Ctrl-C or SIGTERM ends ``train`` and
``generate`` with what they have saved, and ``serve`` (exit status 130).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys

from vidforce import __version__

DESCRIPTION = ("Post-train causal (autoregressive) video diffusion transformers with Self Forcing and "
               "Self-Forcing++, stream long videos from them and measure their drift.")
EPILOG = "Run 'vidforce COMMAND --help' for the arguments of a command."
OVERRIDES_HELP = "key=value config overrides, before or after the flags (e.g. {})"


class _Parser(argparse.ArgumentParser):
    """A usage error is one line pointing at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> float:
    """A finite number > 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _at_least(minimum: int):
    """An integer >= ``minimum`` (argparse type)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text!r}")
        return value
    return parse


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="post-train a causal student (DeepSpeed; a single process is a world of 1)",
                       description="Post-train a causal student. Rerunning the same command resumes from the run's "
                       "latest checkpoint (train.resume=auto); a run directory whose config.yaml trains something "
                       "else is refused. Ctrl-C or SIGTERM stops after the current step, saves a checkpoint and "
                       "prints the command that resumes.")
    t.add_argument("config", help="YAML config (e.g. configs/wan1.3b/self_forcing_dmd.yaml)")
    t.add_argument("overrides", nargs="*", help=OVERRIDES_HELP.format("train.run_dir=runs/sf"))
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)


def _model_flags(p, config_needs: str, verb: str, checkpoint: str) -> None:
    """The model flags that ``generate`` and ``serve`` share: ``--config`` (its help says what the config must
    hold), ``--checkpoint`` (help ``checkpoint``) and ``--random-weights`` (``verb``: what the command does)."""
    p.add_argument("--config", required=True, help=f"YAML config of the model ({config_needs})")
    p.add_argument("--checkpoint", default="", help=checkpoint)
    p.add_argument("--random-weights", action="store_true",
                   help=f"{verb} from untrained weights (benchmarks); without it, no weights is an error")


def _generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="stream a long video to an mp4",
                       description="Stream a long video to a fragmented mp4 that plays while it grows. Ctrl-C or "
                       "SIGTERM stops and keeps a playable mp4 of what was generated.")
    _model_flags(g, "architecture, causal window, schedule", "generate",
                 checkpoint="generator weights: a .safetensors file, index, directory or .pt (default: the config's "
                 "model.checkpoint); a training run needs 'vidforce export' first")
    g.add_argument("--prompt", default="", help="one prompt for the whole video")
    g.add_argument("--prompts-file", default="", help="txt / jsonl of prompts, spread evenly over the video")
    g.add_argument("--schedule", default="", help="prompt switches: '0:a cat;5:a dog' (seconds) or a JSON file")
    g.add_argument("--prompts-live", default="", metavar="FILE",
                   help="follow FILE ('-': stdin) while streaming: each line appended switches the prompt at the "
                   "next chunk boundary (with one of --prompt, --prompts-file, --schedule for the start)")
    g.add_argument("--image", default="", metavar="PATH", help=IMAGE_HELP)
    g.add_argument("--seconds", type=_positive, default=10.0, help="video length in seconds (default 10)")
    g.add_argument("--fps", type=_positive, default=None, help="output frame rate (default: the config's data.fps)")
    g.add_argument("--seed", type=_at_least(0), default=0, help="noise seed (default 0)")
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (CUDA; ~20%% faster on H100)")
    g.add_argument("--out", required=True, help="output .mp4 (a missing parent directory is created)")
    g.add_argument("overrides", nargs="*", help=OVERRIDES_HELP.format("causal.window=12"))


IMAGE_HELP = ("start from this image (image-to-video): encoded by the codec and written into the cache as the "
              "first frame; another size is scaled to cover the frame and centre-cropped")


def _serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="stream to a web page with live prompt switching",
                       description="Serve a web page that streams one video live from the model: a prompt box "
                       "that switches the prompt at the next chunk boundary, start / pause / reset, FPS and latency, "
                       "save as mp4. Every browser that opens the page sees the same stream. Binds to localhost "
                       "unless --host says otherwise. Ctrl-C or SIGTERM stops the server.")
    _model_flags(s, "a rolling causal.window is needed", "stream",
                 checkpoint="generator weights, as for generate (default: the config's model.checkpoint)")
    s.add_argument("--prompt", default="", help="the prompt the page starts with (it can be edited there)")
    s.add_argument("--image", default="", metavar="PATH", help=IMAGE_HELP + "; every stream starts from it")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                   "0.0.0.0 lets every machine that reaches this one drive the model)")
    s.add_argument("--port", type=_at_least(0), default=8000, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--fps", type=_positive, default=None, help="playback frame rate (default: the config's data.fps)")
    s.add_argument("--pace", default="video", choices=["video", "max"],
                   help="video (default): generate at most one chunk ahead of playback at --fps; max: send frames "
                   "as fast as they are made (benchmarks)")
    s.add_argument("--seed", type=_at_least(0), default=0, help="noise seed of every stream (default 0)")
    s.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (CUDA)")
    s.add_argument("overrides", nargs="*", help=OVERRIDES_HELP.format("causal.window=12"))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vidforce", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"vidforce {__version__}")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)   # deepspeed launcher
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)
    _generate_parser(sub)
    _serve_parser(sub)
    d = sub.add_parser("drift", help="drift curves of a video (JSON + PNG)",
                       description="Per-window drift metrics of a video: DIR/drift.json, DIR/drift.png and a table.")
    d.add_argument("video", help="the video file (mp4 or anything decord / imageio reads)")
    d.add_argument("--out", required=True, help="output directory (created if missing)")
    d.add_argument("--window", type=_positive, default=2.0, help="window length in seconds (default 2)")
    e = sub.add_parser("export", help="consolidate a run's generator into one safetensors file",
                       description="Write the generator of a training run (its latest checkpoint) or of one "
                       "checkpoint directory as safetensors weights for generate / convert / model.checkpoint.")
    e.add_argument("run_dir", help="a run directory (its latest checkpoint) or a checkpoint directory step_XXXXXX")
    e.add_argument("--out", required=True, help="output .safetensors (a missing parent directory is created)")
    e.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    e.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights' dtype in the file")
    e.add_argument("--max-shard-size", default="0", help="split into shards of at most this size (e.g. 16MiB)")
    c = sub.add_parser("convert", help="convert a checkpoint between formats",
                       description=CONVERT_DESCRIPTION)
    add_convert_args(c)
    pl = sub.add_parser("plot", help="training curves of runs' metrics.jsonl (PNG, no wandb)",
                        description="One panel per key, one line per run, from each run's metrics.jsonl.")
    pl.add_argument("runs", nargs="+", help="run directories (each holds metrics.jsonl)")
    pl.add_argument("--keys", nargs="+", required=True, help="metric names, e.g. loss/generator lr/generator")
    pl.add_argument("--out", required=True, help="output PNG (a missing parent directory is created)")
    pl.add_argument("--smooth", type=_at_least(1), default=1, help="trailing mean over this many logged steps")
    pl.add_argument("--labels", nargs="*", help="one legend label per run (default: the directory names)")
    m = sub.add_parser("mini", help="the mini-world recipe: teacher -> baselines -> Self Forcing -> Self-Forcing++",
                       description="The mini-world recipe end to end (docs/results/mini_world.md); reruns resume.")
    m.add_argument("--smoke", action="store_true", help="a CPU-sized run of every stage (minutes)")
    m.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train and evaluate")
    m.add_argument("--out", default="runs/mini", help="output directory (default runs/mini; created if missing)")
    m.add_argument("--stages", default="all", help="comma-separated stages to run (default all)")
    m.add_argument("--models", help="with --stages evaluate: only these models' videos and probes into the "
                   "evaluation's caches, their summaries printed, no report (e.g. teacher,teacher_forcing)")
    m.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE", dest="sets",
                   help="a config override of one training stage, repeatable (an ablation arm, e.g. "
                   "teacher:schedule.shift=8; recorded in its done.json; use its own --out)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``key=value`` overrides of train / generate / serve may also follow the flags."""
    p = _parser()
    args, extra = p.parse_known_args(argv)
    if args.command in ("train", "generate", "serve") and not any(e.startswith("-") for e in extra):
        args.overrides, extra = [*args.overrides, *extra], []
    if extra:
        prog = f"vidforce {args.command}"
        p.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    where = f"vidforce {args.command}"
    try:
        code = _dispatch(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:          # the reader of stdout left (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError) as err:
        print(f"{where}: error: {_message(err)}", file=sys.stderr)
        return 2


def _message(err: Exception) -> str:
    """``OSError``s as ``reason: path``; others as their text."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.strerror}: {err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
    return str(err)


def _dispatch(args) -> int:
    if args.command == "train":
        return main_train(args.config, args.overrides, args.dry_run)
    elif args.command == "generate":
        from vidforce.generate import run  # noqa: PLC0415
        return run(args)
    elif args.command == "serve":
        from vidforce.serve.command import run as run_serve  # noqa: PLC0415
        return run_serve(args)
    elif args.command == "drift":
        return main_drift(args.video, args.out, args.window)
    elif args.command == "export":
        return main_export(args.run_dir, args.out, not args.no_ema, args.dtype, parse_size(args.max_shard_size))
    elif args.command == "convert":
        return run_convert(args)
    elif args.command == "plot":
        from vidforce.diagnostics.curves import plot  # noqa: PLC0415
        print(f"wrote {plot(args.runs, args.keys, args.out, args.smooth, args.labels)}")
        return 0
    elif args.command == "mini":
        from vidforce.recipes.mini import main_mini  # noqa: PLC0415
        return main_mini(args.smoke, args.device, args.out, args.stages, args.models, args.sets)
    else:
        raise ValueError(f"unknown command {args.command!r}")


def main_train(config_path: str, overrides: list[str], dry_run: bool) -> int:
    """``vidforce train CONFIG [key=value ...] [--dry-run]``; 130 when a signal stopped it (checkpoint saved)."""
    from vidforce.config import load, to_yaml  # noqa: PLC0415
    from vidforce.train import dist  # noqa: PLC0415
    from vidforce.train.trainer import train  # noqa: PLC0415
    from vidforce.train.watchdog import RankFailure  # noqa: PLC0415
    cfg = load(config_path, overrides)
    if dry_run:
        print(to_yaml(cfg))
        return 0
    try:
        summary = train(cfg, say=lambda message: print(message, file=sys.stderr, flush=True))
    except RankFailure as err:      # the other ranks cannot join a clean shutdown: report and leave now
        print(f"vidforce: {err}", file=sys.stderr, flush=True)
        os._exit(1)
    if dist.rank() == 0:
        print(json.dumps(summary, indent=2))
        if summary["interrupted"] is not None:
            print(f"interrupted at step {summary['interrupted']}; checkpoint {summary['checkpoint']}; resume with: "
                  f"{resume_command(config_path, overrides, cfg.train.resume)}", file=sys.stderr, flush=True)
    dist.shutdown()
    return 0 if summary["interrupted"] is None else 130


def resume_command(config_path: str, overrides: list[str], resume: str) -> str:
    """The ``vidforce train`` command line that continues this run from its latest checkpoint."""
    kept = [o for o in overrides if not o.startswith("train.resume=")]
    if resume == "auto":
        return f"{shlex.join(['vidforce', 'train', config_path, *kept])} (train.resume=auto)"
    return shlex.join(["vidforce", "train", config_path, *kept, "train.resume=auto"])


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

    Returns 0 on success and 2 (message on stderr) for a missing, empty or corrupt video, an invalid window or
    an output that is a file.
    """
    from vidforce.diagnostics import analyze_video, format_summary, write_report  # noqa: PLC0415
    from vidforce.diagnostics.report import check_report_dir  # noqa: PLC0415
    try:
        check_report_dir(out)
        result = analyze_video(video, window_seconds=window)
    except (OSError, ValueError) as err:
        print(f"vidforce drift: error: {_message(err)}", file=sys.stderr)
        return 2
    json_path, png_path = write_report(result, out)
    print(format_summary(result))
    print(f"wrote {json_path} and {png_path}")
    return 0


CONVERT_DESCRIPTION = ("Convert a Wan2.1 DiT checkpoint (official, diffusers, Self-Forcing .pt, vidforce export) "
                       "to safetensors, streamed tensor by tensor (vidforce/models/loading.py).")


def add_convert_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``vidforce convert`` / ``tools/convert_checkpoint.py``."""
    from vidforce.models.loading import DTYPES, FORMATS  # noqa: PLC0415
    p.add_argument("input", help="file, index json or directory")
    p.add_argument("output", help="output .safetensors path (shards get -0000i-of-0000N suffixes; a missing parent "
                   "directory is created)")
    p.add_argument("--to", choices=("wan", "diffusers"), default="wan", help="output names (wan = official = ours)")
    p.add_argument("--format", choices=FORMATS, default="auto", help="input names (auto-detected)")
    p.add_argument("--checkpoint-key", default="auto", help="training checkpoints: generator | generator_ema | critic")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="keep", help="cast floating tensors (default: keep)")
    p.add_argument("--max-shard-size", default="0", help="e.g. 5GB; 0 writes one file")
    return p


def convert_parser() -> argparse.ArgumentParser:
    """The parser of ``tools/convert_checkpoint.py`` (the same arguments as ``vidforce convert``)."""
    return add_convert_args(_Parser(prog="vidforce convert", description=CONVERT_DESCRIPTION))


def parse_size(text: str) -> int:
    """``"5GB"`` -> 5e9, ``"512MiB"`` -> 512 * 2**20, ``"1000"`` -> 1000 bytes; ``"0"`` means no sharding."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"--max-shard-size: cannot read size {text!r} (e.g. 5GB, 512MiB, 1000000)")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** "_KMGT".index(m.group(2).upper() or "_"))


def main_convert(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/convert_checkpoint.py``: :func:`run_convert` of the parsed ``argv``."""
    return run_convert(convert_parser().parse_args(argv))


def run_convert(args) -> int:
    """``vidforce convert``: stream the input, rename, cast, write (sharded) safetensors."""
    from vidforce.models.loading import DTYPES, Checkpoint, save_safetensors  # noqa: PLC0415
    ckpt = Checkpoint(args.input, args.checkpoint_key, args.format)
    written = save_safetensors(ckpt.tensors(DTYPES[args.dtype]), args.output, ckpt.metadata,
                               parse_size(args.max_shard_size), names=args.to)
    print(f"converted {ckpt.describe()}: {len(ckpt.shapes)} tensors -> {args.to} names in "
          f"{', '.join(str(w) for w in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
