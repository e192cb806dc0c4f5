"""Seconds per iteration of the mini-world (v2) training stages at their real sizes: the recipe's GPU plan.

    python tools/time_mini_stages.py --device cuda --iters 12 --out timings.md
    python tools/time_mini_stages.py --device cpu --smoke --iters 4      # proves the script runs
    python tools/time_mini_stages.py --stages self_forcing_pp rollout.cuda_graphs=true   # a lever, as overrides

Each stage trains ``--iters`` iterations from random weights (timing does not depend on them) with its own
config (batch, sizes, rollout lengths, ``train.compile``), fresh ball-world scenes rendered on the device. The
first ``--warmup`` iterations (compilation, allocator warm-up) are reported apart; the steady cost is the median
``step_time_s`` of the rest, and the stage estimate is that times the config's ``train.steps`` plus the warm-up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.bench_common import markdown_table, write_markdown  # noqa: E402
from vidforce.recipes import mini  # noqa: E402
from vidforce.train.trainer import train  # noqa: E402

STAGES = ("teacher", "teacher_forcing", "diffusion_forcing", "self_forcing", "self_forcing_pp")
COLUMNS = ("stage", "batch", "iters timed", "warm-up s", "s / iteration", "config iterations", "stage estimate min")


def time_stage(run: mini.Mini, stage: str, iters: int, warmup: int, root: Path, extra: tuple[str, ...] = ()) -> dict:
    """Train ``iters`` iterations of ``stage`` from random weights (``extra``: more overrides); its timing row."""
    cfg = mini.stage_config(run, stage, (f"train.run_dir={root / stage}", f"train.steps={iters}",
                                         "train.checkpoint_every=100000", "train.log_every=1",
                                         "model.checkpoint=''", "teacher.checkpoint=''", "logging.progress=false",
                                         *extra))
    planned = mini.stage_config(run, stage).train.steps
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (root / stage / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in rows if "step_time_s" in r]
    steady = statistics.median(times[warmup:]) if len(times) > warmup else float("nan")
    warm = wall - steady * (len(times) - warmup)
    return {"stage": stage, "batch": cfg.train.batch_size, "iters timed": len(times) - warmup,
            "warm-up s": round(warm, 1), "s / iteration": round(steady, 4), "config iterations": planned,
            "stage estimate min": round((warm + steady * planned) / 60, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--smoke", action="store_true", help="the smoke recipe's toy sizes (CPU)")
    p.add_argument("--iters", type=int, default=12, help="iterations per stage (the first --warmup are set apart)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--out", default="", help="also write the table (markdown, under its command) here")
    p.add_argument("overrides", nargs="*", help="key=value overrides of every timed stage (e.g. train.compile=false)")
    args = p.parse_args(argv)
    if args.iters <= args.warmup:
        p.error("--iters must exceed --warmup")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in mini.TRAINED]
    if unknown:
        p.error(f"--stages: unknown {unknown}; choose from {', '.join(mini.TRAINED)}")
    with tempfile.TemporaryDirectory() as tmp:
        run = mini.load_mini(args.smoke, args.device, Path(tmp) / "mini")
        mini.run_stage(run, "world")
        rows = []
        for stage in stages:
            rows.append(time_stage(run, stage, args.iters, args.warmup, Path(tmp) / "time", tuple(args.overrides)))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        write_markdown(args.out, "tools/time_mini_stages.py", list(sys.argv[1:] if argv is None else argv),
                       markdown_table(rows, list(COLUMNS)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
