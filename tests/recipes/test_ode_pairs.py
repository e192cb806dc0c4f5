"""vidforce/recipes/ode_pairs.py (tools/make_ode_pairs.py): the Euler grid, exact integration of a known flow, the written file."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors import safe_open

from vidforce.recipes import ode_pairs as ode
from vidforce.sampling import Guidance, ode_grid

from tests.train.helpers import ROOT
SIGMAS = (1.0, 0.9375, 0.8333333333333334, 0.625)


def load_tool():
    """tools/make_ode_pairs.py as a module (its ``main`` is the command line)."""
    spec = importlib.util.spec_from_file_location("make_ode_pairs", ROOT / "tools" / "make_ode_pairs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PointTeacher(torch.nn.Module):
    """The exact flow towards one point ``x0``: ``v = (x - x0) / s`` (cond) or towards ``-x0`` (uncond)."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0

    def text_kv(self, context):
        return float(context.flatten()[0])

    def forward(self, x, t, text_kv=None):
        s = (t / 1000.0)[..., None, None, None]
        return (x - text_kv * self.x0) / s


def test_grid_is_decreasing_and_holds_the_step_sigmas_once():
    grid = torch.tensor(ode_grid(SIGMAS, 6, 5.0), dtype=torch.float64)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and torch.all(grid[1:] < grid[:-1])
    for s in SIGMAS:
        assert (grid == s).sum() == 1 and (torch.isclose(grid, torch.tensor(s, dtype=torch.float64))).sum() == 1


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_euler_on_the_exact_flow_records_the_noising_path(scale):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 3, 2, 2, 2, generator=g), torch.randn(1, 3, 2, 2, 2, generator=g)
    cond, uncond = torch.ones(1, 1, 1), -torch.ones(1, 1, 1)
    traj = ode.integrate(PointTeacher(x0), noise, cond, uncond, ode_grid(SIGMAS, 8, 5.0), SIGMAS, Guidance(scale))
    target = x0 * (1 + (scale - 1) * 2)                       # CFG of the flows towards x0 and -x0
    assert traj.shape == (1, len(SIGMAS) + 1, 3, 2, 2, 2)
    for i, s in enumerate(SIGMAS):                            # linear paths: Euler is exact
        torch.testing.assert_close(traj[:, i], (1 - s) * target + s * noise)
    torch.testing.assert_close(traj[:, -1], target)


def test_written_pairs_match_the_schema(tmp_path):
    prompts, pairs = tmp_path / "prompts.txt", tmp_path / "pairs.safetensors"
    prompts.write_text("a red circle\na blue square\n")
    assert load_tool().main([str(ROOT / "configs/tiny/base.yaml"), f"data.prompts={prompts}", "train.device=cpu",
                             "--out", str(pairs), "--num", "6", "--steps", "8", "--batch", "3"]) == 0
    with safe_open(pairs, "pt") as f:
        traj, text, meta = f.get_tensor("trajectory"), f.get_tensor("text"), f.metadata()
    assert traj.shape == (6, 5, 6, 12, 4, 4) and text.shape == (6, 8, 16)
    assert len(json.loads(meta["prompts"])) == 6 and json.loads(meta["sigmas"])[0] == 1.0
    assert traj[:, 0].std() == pytest.approx(1.0, abs=0.1)    # pure noise at sigma 1
