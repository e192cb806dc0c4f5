"""launch/: two "nodes" on loopback through launch/per_node.sh (DeepSpeed --no_ssh --node_rank), and torchrun."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.helpers import ROOT, child_env, free_port, metrics, overrides

BIN = str(Path(sys.executable).parent)


def run_script(script: str, env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(["bash", str(ROOT / "launch" / script), *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def finish(procs: list[subprocess.Popen], logs: list[Path]) -> None:
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * len(procs), "\n".join(log.read_text()[-3000:] for log in logs)


@pytest.mark.slow
def test_two_nodes_on_loopback_train_one_run(inputs, tmp_path):
    hosts = tmp_path / "hostfile"
    hosts.write_text("node-a slots=1\nnode-b slots=1\n")
    port, run = str(free_port()), tmp_path / "run"
    args = [str(ROOT / "configs/tiny/dmd.yaml"), *overrides(inputs, run, "train.steps=2")]
    logs = [tmp_path / f"node{n}.log" for n in range(2)]
    procs = [run_script("per_node.sh", child_env(HOSTFILE=str(hosts), NODE_RANK=str(n), MASTER_ADDR="127.0.0.1",
                                                 MASTER_PORT=port, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
                                                 PATH=BIN + os.pathsep + os.environ["PATH"]), args, logs[n])
             for n in range(2)]
    finish(procs, logs)
    assert [m["step"] for m in metrics(run)] == [1, 2]
    assert (run / "checkpoints" / "step_000002" / "rank_00001.pt").is_file()    # the second node's rank


@pytest.mark.slow
def test_torchrun_script_single_node(inputs, tmp_path):
    run = tmp_path / "run"
    env = child_env(GPUS_PER_NODE="1", MASTER_PORT=str(free_port()), PATH=BIN + os.pathsep + os.environ["PATH"])
    args = [str(ROOT / "configs/tiny/dmd.yaml"), *overrides(inputs, run, "train.steps=1")]
    log = tmp_path / "torchrun.log"
    finish([run_script("torchrun.sh", env, args, log)], [log])
    assert [m["step"] for m in metrics(run)] == [1]
