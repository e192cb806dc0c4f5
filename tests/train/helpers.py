"""Helpers of the training tests: tiny configs on shared inputs, metrics, multi-process ranks."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from vidforce.config import load

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red circle bounces on grey", "a blue square drifts on black", "a green triangle on white",
           "a yellow circle and a cyan square"]


def overrides(inputs: dict[str, str], run_dir: Path, *extra: str) -> list[str]:
    return [f"data.prompts={inputs['prompts']}", f"data.videos={inputs['videos']}",
            f"objective.ode_init.pairs={inputs['pairs']}", f"train.run_dir={run_dir}", *extra]


def tiny(name: str, inputs: dict[str, str], run_dir: Path, *extra: str):
    """The tiny config ``configs/tiny/<name>.yaml`` on the shared inputs."""
    return load(ROOT / "configs" / "tiny" / f"{name}.yaml", overrides(inputs, run_dir, *extra))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without the rendezvous variables an in-process run set, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(extra)
    return env


def spawn_ranks(world: int, args: list[str], log_dir: Path) -> list[subprocess.Popen]:
    """``python -m vidforce.cli train ARGS`` as ``world`` gloo ranks on this machine (one thread each)."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = child_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
        log = open(log_dir / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "vidforce.cli", "train", *args], cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs: list[subprocess.Popen], log_dir: Path, timeout: float = 240) -> None:
    """Wait for every rank; on failure show the logs."""
    codes = [p.wait(timeout=timeout) for p in procs]
    if any(codes):
        logs = "\n".join(f.read_text()[-3000:] for f in sorted(log_dir.glob("rank*.log")))
        raise AssertionError(f"ranks exited with {codes}:\n{logs}")
