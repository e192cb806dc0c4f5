"""The consistency and flow-map objectives' video plugins train a few steps on the tiny configs with finite losses."""
from __future__ import annotations

import math

import pytest

from vidforce.objectives import build
from vidforce.train.trainer import train

from tests.train.helpers import metrics, tiny


@pytest.mark.parametrize("name", ["cd", "ct", "lcm", "scm", "ctm", "meanflow", "shortcut", "flowmap_semigroup"])
def test_consistency_objective_trains_through_the_trainer(inputs, tmp_path, name):
    train(tiny(name, inputs, tmp_path, "train.steps=3", "train.checkpoint_every=100"))
    lines = metrics(tmp_path)
    assert [m["step"] for m in lines] == [1, 2, 3]
    for m in lines:
        assert math.isfinite(m["loss/generator"]) and m["loss/generator"] >= 0
        assert "loss/critic" not in m


@pytest.mark.parametrize("name", ["ctm", "meanflow", "shortcut", "flowmap_semigroup"])
def test_flow_map_objectives_need_the_second_time(inputs, tmp_path, name):
    with pytest.raises(ValueError, match="model.time_to=true"):
        build(tiny(name, inputs, tmp_path, "model.time_to=false"))


@pytest.mark.parametrize("name", ["scm", "meanflow"])
def test_jvp_objectives_need_an_attention_with_forward_ad(inputs, tmp_path, name):
    with pytest.raises(ValueError, match="causal.attention must be one of"):
        build(tiny(name, inputs, tmp_path, "causal.attention=sdpa"))
