"""The consistency objectives' video plugins train a few steps on the tiny configs with finite losses."""
from __future__ import annotations

import math

import pytest

from vidforce.train.trainer import train

from tests.train.helpers import metrics, tiny


@pytest.mark.parametrize("name", ["cd", "ct", "lcm"])
def test_consistency_objective_trains_through_the_trainer(inputs, tmp_path, name):
    train(tiny(name, inputs, tmp_path, "train.steps=3", "train.checkpoint_every=100"))
    lines = metrics(tmp_path)
    assert [m["step"] for m in lines] == [1, 2, 3]
    for m in lines:
        assert math.isfinite(m["loss/generator"]) and m["loss/generator"] >= 0
        assert "loss/critic" not in m
