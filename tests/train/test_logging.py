"""Metric sinks: metrics.jsonl lines, truncation on resume, rank-0 only, wandb offline."""
from __future__ import annotations

import json

import pytest

from vidforce.train.logging import MetricLogger, init_wandb, truncate_metrics
from vidforce.train.trainer import train

from tests.train.helpers import tiny


def test_truncate_keeps_steps_up_to_the_resumed_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 6)))
    truncate_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    truncate_metrics(tmp_path / "absent.jsonl", 3)            # nothing to do


def test_only_the_main_rank_writes(inputs, tmp_path):
    cfg = tiny("dmd", inputs, tmp_path)
    other = MetricLogger(cfg, tmp_path, 0, main=False)
    other.log(1, {"loss/critic": 1.0})
    other.close()
    assert not (tmp_path / "metrics.jsonl").exists()
    main = MetricLogger(cfg, tmp_path, 0, main=True)
    main.log(1, {"loss/critic": 1.5, "step_time_s": 0.1})
    main.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss/critic": 1.5, "step_time_s": 0.1}
    assert init_wandb(cfg, tmp_path) is None                  # logging.wandb=false in the tiny configs


@pytest.mark.slow
def test_wandb_offline_run_with_drift_curves(inputs, tmp_path):
    pytest.importorskip("wandb")
    train(tiny("dmd", inputs, tmp_path, "train.steps=2", "logging.wandb=true", "logging.wandb_mode=offline",
               "drift.every=2", "drift.horizon_multiple=2", "drift.prompts=[a red circle]",
               "drift.window_seconds=1.0"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert (tmp_path / "wandb_id.txt").read_text().strip() in runs[0].name
    history = (runs[0] / f"run-{(tmp_path / 'wandb_id.txt').read_text().strip()}.wandb")
    assert history.is_file() and history.stat().st_size > 0
