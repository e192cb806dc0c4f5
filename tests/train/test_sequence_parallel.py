"""Ulysses sequence parallelism: two gloo ranks give the one-rank forward and gradients; config checks.

Gloo has no all-to-all: the ranks exchange through an all-gather-based equivalent (``sequence_ranks.py``, tests
only); one case runs DeepSpeed's ``_SeqAllToAll`` over an emulated ``all_to_all_single``. Tolerance (fp32):
outputs and gradients within 2e-5 of the one-rank values, relative to each tensor's largest magnitude (the
two runs differ only in summation order).
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vidforce.config import load
from vidforce.train import sequence_parallel
from vidforce.train.trainer import train
from tests.models import helpers as models
from tests.train.helpers import ROOT, child_env, free_port, metrics, overrides, tiny, wait_all
from tests.train.test_trainer import COMPARED

CASES = ("bidirectional", "block_causal", "teacher_forcing", "rollout", "rollout_cache_grad",
         "rollout_checkpointing")


def _run(tmp_path, world: int):
    port, log = str(free_port()), open(tmp_path / f"world{world}.log", "w")
    env = lambda r: child_env(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", **(  # noqa: E731
        dict(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
             MASTER_ADDR="127.0.0.1", MASTER_PORT=port) if world > 1 else {}))
    out = tmp_path / f"world{world}"
    out.mkdir()
    return [subprocess.Popen([sys.executable, "-m", "tests.train.sequence_ranks", str(out)], cwd=ROOT, env=env(r),
                             stdout=log, stderr=subprocess.STDOUT) for r in range(world)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sp")
    procs = _run(tmp, 1) + _run(tmp, 2)
    codes = [p.wait(timeout=300) for p in procs]
    logs = "".join(f.read_text()[-3000:] for f in sorted(tmp.glob("*.log")))
    assert codes == [0, 0, 0], logs
    return [torch.load(tmp / d / f"rank{r}.pt") for d, r in (("world1", 0), ("world2", 0), ("world2", 1))]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= 2e-5 * max(1.0, b.abs().max().item())


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES + ("deepspeed",))
def test_two_sequence_parallel_ranks_match_one(results, case):
    one, *ranks = results
    ref = one["bidirectional" if case == "deepspeed" else case]
    for out, param_grads, input_grad in (r[case] for r in ranks):
        assert close(out, ref[0]), case
        assert (input_grad is None) == (ref[2] is None) and (ref[2] is None or close(input_grad, ref[2])), case
        assert param_grads.keys() == ref[1].keys()
        bad = [n for n, g in param_grads.items() if not close(g, ref[1][n])]
        assert not bad, f"{case}: gradients differ in {bad}"
    assert torch.equal(ranks[0][case][0], ranks[1][case][0])      # every rank holds the same output


def test_sequence_parallel_1_leaves_the_model_alone():
    model = models.tiny_wan()
    x, t, ctx = models.inputs(model)
    before = model(x, t, ctx)
    sequence_parallel.attach([model], sequence_parallel.setup(1))
    assert model.sequence is None and torch.equal(model(x, t, ctx), before)


@pytest.mark.parametrize("over,match", [
    (["train.sequence_parallel=0"], "train.sequence_parallel must be >= 1"),
    (["train.sequence_parallel=4"], r"train.sequence_parallel \(4\) must divide model.num_heads \(2\)"),
    (["train.sequence_parallel=2", "data.latent_height=6", "data.latent_width=2"],
     r"train.sequence_parallel \(2\) must divide .*tokens per frame \(3\)"),
])
def test_config_errors_name_the_key(over, match):
    with pytest.raises(ValueError, match=match):
        load(ROOT / "configs" / "tiny" / "dmd.yaml", over)


def test_world_size_must_divide():
    with pytest.raises(ValueError, match=r"train.sequence_parallel=2 must divide the world size 1"):
        sequence_parallel.setup(2)


TRAIN_RANK = """
import sys
import deepspeed.comm
from tests.train.sequence_ranks import emulated_all_to_all_single
deepspeed.comm.all_to_all_single = emulated_all_to_all_single
from vidforce.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("lora.enabled=true",)], ids=["full", "lora"])
def test_trainer_with_two_sequence_parallel_ranks_matches_one_process(inputs, tmp_path, extra):
    """The real trainer (DMD, ZeRO-2 engines on DeepSpeed's Ulysses groups, DeepSpeed's ``_SeqAllToAll`` over an
    emulated ``all_to_all_single``): two ranks of one sequence-parallel group (one data shard) give the losses
    and gradient norms of one process, within float32 summation order; also with LoRA over the shared base."""
    one = tmp_path / "one"
    train(tiny("dmd", inputs, one, "train.steps=3", *extra))
    two, port = tmp_path / "two", str(free_port())
    args = [str(ROOT / "configs/tiny/dmd.yaml"),
            *overrides(inputs, two, "train.steps=3", "train.sequence_parallel=2", *extra)]
    procs = [subprocess.Popen([sys.executable, "-c", TRAIN_RANK, *args], cwd=ROOT,
                              env=child_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1",
                                            DS_ACCELERATOR="cpu"),
                              stdout=open(tmp_path / f"rank{r}.log", "w"), stderr=subprocess.STDOUT)
             for r in range(2)]
    wait_all(procs, tmp_path)
    a, b = metrics(one), metrics(two)
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3]
    for x, y in zip(a, b):
        for key in COMPARED:
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), (x["step"], key)
