"""The learning-rate schedule: known values of the pure function, and the trainer applying it per engine."""
from __future__ import annotations

import math

import pytest
import torch

from vidforce.train.lr import lr_factor
from vidforce.train.trainer import train

from tests.train.helpers import metrics, tiny


def test_warmup_is_linear_then_constant():
    assert [lr_factor(u, 10, warmup=4) for u in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_runs_from_one_to_min_ratio():
    values = [lr_factor(u, 11, warmup=1, schedule="cosine", min_ratio=0.1) for u in range(12)]
    assert values[0] == 1.0                          # the warm-up's single update
    assert values[1] == pytest.approx(1.0)           # cosine starts at the top ...
    assert values[6] == pytest.approx(0.55)          # ... passes the middle at half way ...
    assert values[11] == pytest.approx(0.1)          # ... and ends at min_ratio (clipped beyond the total)
    assert all(a >= b for a, b in zip(values[1:], values[2:]))


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="optim.lr_schedule"):
        lr_factor(0, 10, schedule="linear")


def test_bad_schedule_fields_fail_in_the_config(inputs, tmp_path):
    with pytest.raises(ValueError, match="optim.lr_schedule"):
        tiny("flow_matching", inputs, tmp_path, "optim.lr_schedule=step")
    with pytest.raises(ValueError, match="optim.min_lr_ratio"):
        tiny("flow_matching", inputs, tmp_path, "optim.min_lr_ratio=1.5")
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        tiny("flow_matching", inputs, tmp_path, "optim.warmup_steps=-1")


def test_each_engine_follows_its_own_updates_and_resume_continues(inputs, tmp_path):
    """DMD with gen_update_every = 2 over 6 steps: the critic updates 6 times, the generator 3 times; a run
    stopped after 3 steps and resumed logs the same learning rates as one run straight through."""
    extra = ("optim.lr_schedule=cosine", "optim.warmup_steps=1", "optim.min_lr_ratio=0.2",
             "optim.generator_lr=1e-3", "optim.critic_lr=2e-3", "train.checkpoint_every=3")
    train(tiny("dmd", inputs, tmp_path / "once", "train.steps=6", *extra))
    train(tiny("dmd", inputs, tmp_path / "twice", "train.steps=3", *extra))
    lines = metrics(tmp_path / "once")
    critic = [m["lr/critic"] for m in lines]
    generator = [m["lr/generator"] for m in lines if "lr/generator" in m]
    assert critic == pytest.approx([2e-3 * lr_factor(u, 6, 1, "cosine", 0.2) for u in range(6)])
    assert generator == pytest.approx([1e-3 * lr_factor(u, 3, 1, "cosine", 0.2) for u in range(3)])
    assert critic[-1] < critic[1] and math.isclose(generator[0], 1e-3 * 1.0)
    train(tiny("dmd", inputs, tmp_path / "twice", "train.steps=6", *extra))
    resumed = metrics(tmp_path / "twice")
    assert [m["lr/critic"] for m in resumed if m["step"] > 3] == pytest.approx(critic[3:])


def test_the_set_rate_is_the_one_the_optimizer_steps_with(inputs, tmp_path):
    """ZeRO-2 wraps the AdamW: a warm-up of 10^9 updates (LR ~1e-12) leaves the weights where they started,
    the constant base LR moves them by about the LR (Adam's normalised step)."""
    from safetensors.torch import load_file

    from vidforce.train.checkpoint import export_generator
    from vidforce import objectives
    from vidforce.train.engines import build_modules

    def moved(name: str, *extra: str) -> float:
        cfg = tiny("flow_matching", inputs, tmp_path / name, "train.steps=1", "optim.generator_lr=1e-3", *extra)
        start = build_modules(cfg, objectives.build(cfg), torch.device("cpu"))["generator"].state_dict()
        train(cfg)
        end = load_file(export_generator(cfg.train.run_dir, tmp_path / f"{name}.safetensors", ema=False))
        return max((end[k].float() - start[k].float()).abs().max().item() for k in end)

    assert moved("frozen", "optim.warmup_steps=1000000000") < 1e-6
    assert moved("free") > 1e-4
