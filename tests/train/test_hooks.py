"""Drift hook: long EMA / raw rollouts during training, decoded and measured, reports under run_dir/drift."""
from __future__ import annotations

import json

from vidforce.train.trainer import train

from tests.train.helpers import tiny


def test_drift_hook_writes_reports_for_every_prompt_and_seed(inputs, tmp_path):
    train(tiny("dmd", inputs, tmp_path, "train.steps=4", "drift.every=2", "drift.horizon_multiple=3",
               "drift.prompts=[a red circle,a blue square]", "drift.seeds=[0,1]", "drift.window_seconds=1.0"))
    for step in ("step_000002", "step_000004"):
        runs = sorted(p.name for p in (tmp_path / "drift" / step).iterdir())
        assert runs == ["p0_s0", "p0_s1", "p1_s0", "p1_s1"]
    out = tmp_path / "drift" / "step_000004"
    result = json.loads((out / "p0_s0" / "drift.json").read_text())
    assert result["num_frames"] == 3 * 6                      # 3 teacher horizons of 6 latent frames, 1 frame each
    assert result["fps"] == 8.0 and len(result["windows"]) == 2
    assert (out / "p0_s0" / "drift.png").is_file() and (out / "p0_s0" / "rollout.mp4").is_file()
    assert not (out / "p1_s1" / "rollout.mp4").exists()       # one short video per hook call
    assert result != json.loads((out / "p0_s1" / "drift.json").read_text())   # seeds differ


def test_drift_hook_with_raw_weights(inputs, tmp_path):
    train(tiny("ode_init", inputs, tmp_path, "train.steps=1", "drift.every=1", "drift.ema=false",
               "drift.horizon_multiple=2", "drift.prompts=[a red circle]", "drift.window_seconds=1.0"))
    assert json.loads((tmp_path / "drift/step_000001/p0_s0/drift.json").read_text())["num_frames"] == 12
