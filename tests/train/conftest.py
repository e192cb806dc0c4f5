"""Shared inputs of the training tests: a prompt file, mini-world clips and ODE pairs (built once)."""
from __future__ import annotations

import pytest

from vidforce.config import load
from vidforce.data import WorldSpec, export_mini_world
from vidforce.recipes.ode_pairs import make_ode_pairs

from tests.train.helpers import PROMPTS, ROOT


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Data shared by every run: prompts, 4 mini-world clips of 12 frames (32x32, 8 fps), 6 ODE pairs."""
    root = tmp_path_factory.mktemp("train_inputs")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    manifest = export_mini_world(root / "videos", num_clips=4, num_frames=12, spec=WorldSpec(fps=8), seed=0)
    pairs = root / "pairs.safetensors"
    cfg = load(ROOT / "configs/tiny/base.yaml", [f"data.prompts={prompts}"])
    make_ode_pairs(cfg, pairs, num=6, steps=8, batch=3, seed=0)
    return {"prompts": str(prompts), "videos": str(manifest), "pairs": str(pairs)}
