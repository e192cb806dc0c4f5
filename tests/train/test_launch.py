"""launch/: two "nodes" on loopback through launch/per_node.sh (DeepSpeed --no_ssh --node_rank), with the losses
of one node of the same size, and torchrun."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.helpers import PROMPTS, ROOT, child_env, free_port, metrics, overrides, spawn_ranks, wait_all

BIN = str(Path(sys.executable).parent)


def run_script(script: str, env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(["bash", str(ROOT / "launch" / script), *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def finish(procs: list[subprocess.Popen], logs: list[Path]) -> None:
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * len(procs), "\n".join(log.read_text()[-3000:] for log in logs)


def two_nodes(tmp_path: Path, args: list[str], slots: int = 1, **env: str) -> None:
    """``launch/per_node.sh`` as node 0 and node 1 of one job on 127.0.0.1 (hostfile: ``slots`` each;
    one rank each unless ``DS_EXTRA`` narrows it with ``--include``)."""
    hosts = tmp_path / "hostfile"
    hosts.write_text(f"node-a slots={slots}\nnode-b slots={slots}\n")
    port = str(free_port())
    logs = [tmp_path / f"node{n}.log" for n in range(2)]
    procs = [run_script("per_node.sh", child_env(HOSTFILE=str(hosts), NODE_RANK=str(n), MASTER_ADDR="127.0.0.1",
                                                 MASTER_PORT=port, PATH=BIN + os.pathsep + os.environ["PATH"],
                                                 **env), args, logs[n])
             for n in range(2)]
    finish(procs, logs)


def losses(run: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in m.items() if k.startswith("loss/")} for m in metrics(run)]


@pytest.mark.slow
def test_two_nodes_on_loopback_train_one_run(inputs, tmp_path):
    run, one = tmp_path / "run", tmp_path / "one_node"
    two_nodes(tmp_path, [str(ROOT / "configs/tiny/dmd.yaml"), *overrides(inputs, run, "train.steps=2")],
              DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    assert [m["step"] for m in metrics(run)] == [1, 2]
    assert (run / "checkpoints" / "step_000002" / "rank_00001.pt").is_file()    # the second node's rank
    logs = tmp_path / "one_node_logs"
    logs.mkdir()
    wait_all(spawn_ranks(2, [str(ROOT / "configs/tiny/dmd.yaml"), *overrides(inputs, one, "train.steps=2")], logs),
             logs)
    assert losses(run) == losses(one)                          # gloo: the same sums in the same order


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpu_nodes_on_loopback_match_one_node(tmp_path):
    """GPU 0 as node 0 and GPU 1 as node 1 (``--include``), against one node of both GPUs. NCCL sums over
    sockets between "nodes" and over NVLink within one, in another order: losses agree to 1e-3."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    run, one = tmp_path / "run", tmp_path / "one_node"

    def args(run_dir: Path) -> list[str]:
        return [str(ROOT / "configs/tiny/dmd.yaml"), f"data.prompts={prompts}", f"train.run_dir={run_dir}",
                "train.steps=3", "train.device=cuda"]

    two_nodes(tmp_path, args(run), slots=2, DS_EXTRA="--include node-a:0@node-b:1")   # GPU 0 and GPU 1
    log = tmp_path / "one_node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "--no_local_rank",
                                 "--module", "vidforce.cli", "train", *args(one)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env=child_env(PATH=BIN + os.pathsep + os.environ["PATH"]))
    finish([proc], [log])
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]
    for a, b in zip(losses(run), losses(one), strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5) for k in a)


@pytest.mark.slow
def test_torchrun_script_single_node(inputs, tmp_path):
    run = tmp_path / "run"
    env = child_env(GPUS_PER_NODE="1", MASTER_PORT=str(free_port()), PATH=BIN + os.pathsep + os.environ["PATH"])
    args = [str(ROOT / "configs/tiny/dmd.yaml"), *overrides(inputs, run, "train.steps=1")]
    log = tmp_path / "torchrun.log"
    finish([run_script("torchrun.sh", env, args, log)], [log])
    assert [m["step"] for m in metrics(run)] == [1]
