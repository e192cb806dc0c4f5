"""DMD2, ADD, LADD and GRPO (alone and with extended DMD) train a few steps on the tiny configs through the
trainer; GRPO's reference is a frozen copy of the generator as built."""
from __future__ import annotations

import math

import pytest
import torch

from vidforce import objectives
from vidforce.train.engines import build_modules
from vidforce.train.trainer import train

from tests.train.helpers import metrics, tiny

GRPO_WITH_DMD = ("objective.grpo.extended_dmd_weight=0.5", "causal.window=6", "rollout.long_frames=12")


@pytest.mark.parametrize("name, extra, critic", [
    ("dmd2", (), True),
    ("add", (), True),
    ("ladd", (), True),
    ("ladd", ("objective.ladd.teacher_steps=2",), True),
    ("grpo", (), False),
    ("grpo", GRPO_WITH_DMD, True),
])
def test_objective_trains_through_the_trainer(inputs, tmp_path, name, extra, critic):
    train(tiny(name, inputs, tmp_path, "train.steps=3", "train.checkpoint_every=100", *extra))
    lines = metrics(tmp_path)
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(math.isfinite(m["loss/generator"]) for m in lines if "loss/generator" in m)
    assert any("loss/generator" in m for m in lines)
    assert all(("loss/critic" in m) == critic for m in lines)
    if name == "grpo":
        assert all(math.isfinite(m["grpo_reward"]) for m in lines if "loss/generator" in m)


def test_grpo_reference_is_the_generator_as_built(inputs, tmp_path):
    cfg = tiny("grpo", inputs, tmp_path)
    modules = build_modules(cfg, objectives.build(cfg), torch.device("cpu"))
    ref, gen = modules["reference"], modules["generator"]
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), gen.state_dict().values()))
    assert ref is not gen
