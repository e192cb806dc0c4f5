"""Process-group helpers: a world of one without init, and rank 0's plan on every gloo rank."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vidforce.config import RolloutConfig
from vidforce.rollout import draw_plan
from vidforce.train import dist

from tests.train.helpers import ROOT, child_env, free_port

RANK_SCRIPT = """
import json, sys, torch
from vidforce.config import RolloutConfig
from vidforce.rollout import draw_plan
from vidforce.train import dist
dist.init(torch.device("cpu"), 60)
r = dist.rank()
cfg = RolloutConfig(num_frames=6, long_frames=30)
local = draw_plan(cfg, 4, 3, torch.Generator().manual_seed(100 + r))
shared = draw_plan(cfg, 4, 3, torch.Generator().manual_seed(100 + r), broadcast=dist.broadcast_ints)
out = {"rank": r, "local": list(vars(local).values()), "shared": list(vars(shared).values()),
       "mean": dist.reduce_mean({"x": float(r), "y": 10.0 * r}), "max": dist.reduce_max({"x": float(r)})}
open(sys.argv[1] + f"/rank{r}.json", "w").write(json.dumps(out))
dist.shutdown()
"""


def test_world_of_one_needs_no_process_group():
    assert dist.broadcast_ints([3, 1, 4]) == [3, 1, 4]
    assert dist.reduce_mean({"a": 2.0}) == {"a": 2.0}
    assert dist.reduce_max({"a": 2.0}) == {"a": 2.0}
    assert dist.rank() == 0 and dist.world_size() == 1
    dist.barrier()


def test_pick_device_names_the_field():
    assert dist.pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="train.device=cuda"):
            dist.pick_device("cuda")
    with pytest.raises(ValueError, match="train.device"):
        dist.pick_device("tpu")


@pytest.mark.slow
def test_rank0_plan_is_every_ranks_plan(tmp_path):
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(tmp_path)], cwd=ROOT, stderr=open(tmp_path / "err.txt", "a"),
                              env=child_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), LOCAL_WORLD_SIZE="2",
                                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1"))
             for r in range(2)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0], (tmp_path / "err.txt").read_text()[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["local"] != r1["local"]                     # the ranks' own draws differ ...
    assert r0["shared"] == r1["shared"] == r0["local"]    # ... the broadcast one is rank 0's everywhere
    assert r0["mean"] == r1["mean"] == {"x": 0.5, "y": 5.0}
    assert r0["max"] == r1["max"] == {"x": 1.0}


def test_draw_plan_broadcast_hook_replaces_the_draw():
    plan = draw_plan(RolloutConfig(num_frames=6, long_frames=30), 4, 3, torch.Generator().manual_seed(0),
                     broadcast=lambda values: [2, 12, 3])
    assert (plan.exit_index, plan.num_frames, plan.window_start) == (2, 12, 3)
