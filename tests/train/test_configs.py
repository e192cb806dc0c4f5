"""Every shipped config loads; the Wan recipes carry the published Self Forcing values."""
from __future__ import annotations

from dataclasses import fields

import pytest
from omegaconf import OmegaConf

from vidforce.config import VidforceConfig, load

from tests.train.helpers import ROOT

SECTIONS = {f.name for f in fields(VidforceConfig)} | {"inherit"}


def is_training_config(path) -> bool:
    """Training configs hold config sections only (configs/mini/recipe.yaml etc. are recipe knobs)."""
    return set(OmegaConf.load(path)) <= SECTIONS


SHIPPED = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if is_training_config(p))


def test_there_are_shipped_configs():
    names = {str(p.relative_to(ROOT / "configs")) for p in SHIPPED}
    assert {"wan1.3b/self_forcing_dmd.yaml", "wan1.3b/self_forcing_sid.yaml", "wan1.3b/ode_init.yaml",
            "wan1.3b/teacher_forcing.yaml", "wan1.3b/diffusion_forcing.yaml", "wan1.3b/self_forcing_pp.yaml",
            "wan14b/self_forcing_dmd.yaml", "tiny/dmd.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT / "configs")) for p in SHIPPED])
def test_shipped_config_loads(path):
    load(path)


def test_self_forcing_recipe_values():
    c = load(ROOT / "configs/wan1.3b/self_forcing_dmd.yaml")
    assert (c.model.dim, c.teacher.dim, c.objective.name) == (1536, 1536, "dmd")
    assert (c.optim.generator_lr, c.optim.critic_lr, list(c.optim.betas)) == (2e-6, 4e-7, [0.0, 0.999])
    assert (c.objective.gen_update_every, c.optim.grad_clip) == (5, 10.0)
    # Self Forcing's guidance 3 in its code's convention (x0_c + 3 (x0_c - x0_u)) = 4 in vidforce's
    assert (c.objective.guidance.scale, c.objective.guidance.convention) == (3.0, "cond")
    assert c.schedule.time_sampling == "clamp" and (c.schedule.min_step, c.schedule.max_step) == (0.02, 0.98)
    assert c.data.negative_prompt.startswith("色调艳丽") and c.data.negative_prompt.endswith("倒着走")
    assert list(c.schedule.denoising_steps) == [1000, 750, 500, 250] and c.schedule.warp and c.schedule.shift == 5
    assert (c.rollout.num_frames, c.causal.frames_per_chunk) == (21, 3)
    assert (c.optim.ema_decay, c.optim.ema_start) == (0.99, 200)
    assert (c.train.precision, c.train.generator_zero_stage, c.text.encoder, c.codec.kind) == ("bf16", 2, "cache",
                                                                                                "wan_vae")


def test_self_forcing_pp_and_14b_variants():
    pp = load(ROOT / "configs/wan1.3b/self_forcing_pp.yaml")
    assert pp.objective.name == "extended_dmd" and pp.causal.window == pp.rollout.num_frames == 21
    assert pp.rollout.long_frames % pp.causal.frames_per_chunk == 0 and 96 <= pp.rollout.long_frames / 4 <= 100
    assert (pp.optim.generator_lr, pp.optim.critic_lr, pp.objective.gen_update_every) == (2e-6, 4e-7, 5)
    big = load(ROOT / "configs/wan14b/self_forcing_dmd.yaml")       # the published setting: 14B real score,
    assert (big.teacher.dim, big.model.dim, big.critic.dim) == (5120, 1536, 1536)      # 1.3B fake score
    assert big.critic.checkpoint and big.train.teacher_zero3 and big.train.critic_zero_stage == 2
    assert big.critic.num_layers == 30 and big.teacher.num_layers == 40


def test_self_forcing_sid_values():
    c = load(ROOT / "configs/wan1.3b/self_forcing_sid.yaml")
    assert (c.objective.name, c.objective.sid.alpha) == ("sid", 1.0)
    assert (c.optim.generator_lr, c.optim.critic_lr, c.optim.weight_decay) == (2e-6, 2e-6, 0.0)
