"""Where a training step's time goes: phases (synchronised wall time) and the top ops (``torch.profiler``).

Builds the run of ``CONFIG [key=value ...]`` through ``trainer.setup`` (a world of one), runs ``--warmup``
steps, then times each phase of ``--steps`` more steps with a device sync around it: drawing the batches,
each engine's turn, the EMA update, the metric reduction and logging. One further step runs under the
profiler; its op table (sorted by self device time) and the device-busy fraction are printed and written
under ``--out``. A busy fraction far below 1 means the host is the limit (launches, Python, syncs).

    python tools/profile_train.py configs/mini/teacher.yaml data.videos=... train.device=cuda --out prof
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
from tools.bench_common import markdown_table, profile_ops, synchronize  # noqa: E402
from vidforce import config  # noqa: E402
from vidforce.train import dist  # noqa: E402
from vidforce.train.trainer import run_turn, setup, train_step, turns_due  # noqa: E402


def timed(fn, device, into: list[float]):
    synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    synchronize(device)
    into.append((time.perf_counter() - t0) * 1e3)
    return result


def phase_step(run, step: int, times: dict[str, list[float]]) -> None:
    """``trainer.train_step``'s phases, each timed on its own (same calls, same order)."""
    cfg, dev = run.cfg, run.device
    batches = timed(lambda: [run.source.next() for _ in range(cfg.train.grad_accum)], dev, times["data"])
    turns = turns_due(run.objective, step)
    for role in turns:
        timed(lambda: run_turn(run, role, step, batches), dev, times.setdefault(f"{role} turn", []))
    if "generator" in turns:
        timed(lambda: run.ema.update(run.engines.generator.module, step), dev, times["ema"])
    timed(lambda: run.logger.log(step + 1, dist.reduce_mean({"x": 0.0})), dev, times["log"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="profile_out")
    args = p.parse_args()
    run_dir = Path(tempfile.mkdtemp()) / "run"
    cfg = config.load(args.config, [*args.overrides, f"train.run_dir={run_dir}", "train.resume=none",
                                    "logging.progress=false", "logging.wandb=false"])
    run = setup(cfg)
    for step in range(args.warmup):
        train_step(run, step)
    times: dict[str, list[float]] = {"data": [], "ema": [], "log": []}
    whole: list[float] = []
    for step in range(args.warmup, args.warmup + args.steps):
        timed(lambda: train_step(run, step), run.device, whole)
        phase_step(run, step, times)
    rows = [{"phase": k, "ms": statistics.median(v), "share": statistics.median(v) / statistics.median(whole)}
            for k, v in times.items() if v]
    rows.append({"phase": "train_step (whole)", "ms": statistics.median(whole), "share": 1.0})
    step = args.warmup + args.steps
    ops = profile_ops(lambda: train_step(run, step), run.device, args.out, "train_step")
    out = Path(args.out)
    (out / "profile_train.json").write_text(json.dumps({"config": args.config, "overrides": args.overrides,
                                                        "phases": rows, "profile": ops}, indent=2))
    print(markdown_table(rows, ["phase", "ms", "share"]))


if __name__ == "__main__":
    main()
