"""The consistency and flow-map objectives' video plugins train a few steps on the tiny configs with finite losses."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from vidforce.models.build import build_generator
from vidforce.models.wan import WanModel
from vidforce.objectives import build
from vidforce.train.checkpoint import export_generator
from vidforce.train.trainer import train

from tests.train.helpers import metrics, tiny


@pytest.mark.parametrize("name", ["cd", "ct", "lcm", "scm", "ctm", "meanflow", "shortcut", "flowmap_lagrangian",
                                  "flowmap_eulerian", "flowmap_semigroup", "kd", "reflow", "progressive",
                                  "guided", "guided_w"])
def test_consistency_objective_trains_through_the_trainer(inputs, tmp_path, name):
    train(tiny(name, inputs, tmp_path, "train.steps=3", "train.checkpoint_every=100"))
    lines = metrics(tmp_path)
    assert [m["step"] for m in lines] == [1, 2, 3]
    for m in lines:
        assert math.isfinite(m["loss/generator"]) and m["loss/generator"] >= 0
        assert "loss/critic" not in m


FLOW_MAPS = ["ctm", "meanflow", "shortcut", "flowmap_lagrangian", "flowmap_eulerian", "flowmap_semigroup"]


@pytest.mark.parametrize("name", FLOW_MAPS)
def test_flow_map_objectives_train_the_second_time_and_export_it(inputs, tmp_path, name):
    """The second-time embedding starts at zero and receives gradient; the export loads into a generator."""
    cfg = tiny(name, inputs, tmp_path / "run", "train.steps=2", "train.checkpoint_every=100")
    train(cfg)
    out = export_generator(tmp_path / "run", tmp_path / "gen.safetensors", ema=False)
    weights = load_file(str(out))
    assert set(WanModel.TIME_TO_KEYS) <= set(weights)
    assert weights["time_to_embedding.2.weight"].abs().max() > 0
    cfg.model.checkpoint = str(out)
    generator = build_generator(cfg, "cpu", torch.float32)
    assert torch.equal(generator.state_dict()["time_to_embedding.2.weight"], weights["time_to_embedding.2.weight"])


@pytest.mark.parametrize("name", FLOW_MAPS)
def test_flow_map_objectives_need_the_second_time(inputs, tmp_path, name):
    with pytest.raises(ValueError, match="model.time_to=true"):
        build(tiny(name, inputs, tmp_path, "model.time_to=false"))


@pytest.mark.parametrize("name", ["scm", "meanflow", "flowmap_lagrangian", "flowmap_eulerian"])
def test_jvp_objectives_need_an_attention_with_forward_ad(inputs, tmp_path, name):
    with pytest.raises(ValueError, match="causal.attention must be one of"):
        build(tiny(name, inputs, tmp_path, "causal.attention=sdpa"))


@pytest.mark.parametrize("name", ["meanflow", "flowmap_lagrangian", "flowmap_eulerian"])
def test_jvp_objectives_train_through_the_jvp_attention_backend(inputs, tmp_path, name):
    """causal.attention=jvp (the fused tangent kernel on CUDA; its dense torch formulas on CPU) under the JVP."""
    train(tiny(name, inputs, tmp_path, "train.steps=2", "train.checkpoint_every=100", "causal.attention=jvp"))
    assert all(math.isfinite(m["loss/generator"]) for m in metrics(tmp_path))


@pytest.mark.parametrize("name, extra", [("progressive", ()), ("guided", ()),
                                         ("progressive", ("objective.progressive.teacher=causal",))])
def test_progressive_and_guided_rounds_change_the_generator(inputs, tmp_path, name, extra):
    """One round (or stage 1) trains the generator away from its start (at lr 0 the export is the start: the check
    compares against the trainer's own starting weights); with the causal teacher the frozen reference is the
    starting generator, so the first loss is its one step against its own two (positive)."""
    def run(where, *more):
        cfg = tiny(name, inputs, tmp_path / where, "train.steps=2", "train.checkpoint_every=100", *extra, *more)
        train(cfg)
        assert all(math.isfinite(m["loss/generator"]) and m["loss/generator"] > 0 for m in metrics(tmp_path / where))
        return cfg, load_file(str(export_generator(tmp_path / where, tmp_path / f"{where}.safetensors", ema=False)))
    cfg, weights = run("run")
    torch.manual_seed(cfg.train.seed)                       # the trainer's seeding before it builds the generator
    start = build_generator(cfg, "cpu", torch.float32).state_dict()
    assert any(not torch.equal(weights[k], v) for k, v in start.items())
    _, still = run("still", "optim.generator_lr=0")
    assert all(torch.equal(still[k], v) for k, v in start.items())


def test_guided_distillation_with_a_guidance_input_trains_the_w_embedding_and_exports_it(inputs, tmp_path):
    """configs/tiny/guided_w.yaml: the guidance embedding starts at zero (last layer) and moves; the export holds it
    and loads into a w-conditioned generator."""
    cfg = tiny("guided_w", inputs, tmp_path / "run", "train.steps=2", "train.checkpoint_every=100")
    assert cfg.model.guidance_input
    train(cfg)
    weights = load_file(str(export_generator(tmp_path / "run", tmp_path / "gen.safetensors", ema=False)))
    assert set(WanModel.GUIDANCE_KEYS) <= set(weights)
    assert weights["guidance_embedding.2.weight"].abs().max() > 0
    cfg.model.checkpoint = str(tmp_path / "gen.safetensors")
    generator = build_generator(cfg, "cpu", torch.float32)
    assert torch.equal(generator.state_dict()["guidance_embedding.2.weight"], weights["guidance_embedding.2.weight"])
