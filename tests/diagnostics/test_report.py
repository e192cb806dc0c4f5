"""Drift report files, the human table, the CLI entry and wandb logging (offline)."""
import json

import imageio.v2 as imageio
import numpy as np
import pytest

from vidforce.diagnostics.drift import SUMMARY_METRICS, analyze_frames
from vidforce.cli import main_drift
from vidforce.diagnostics.report import format_summary, log_wandb, write_report

FPS = 10


def moving_then_frozen() -> list[np.ndarray]:
    """2 s of a square sliding 2 px/frame over a 64x64 background, then 1.5 s frozen."""
    frames = []
    for i in range(20):
        frame = np.full((64, 64, 3), (40, 80, 120), np.uint8)
        frame[20:32, 4 + 2 * i:16 + 2 * i] = (230, 200, 30)
        frames.append(frame)
    return frames + [frames[-1]] * 15


@pytest.fixture(scope="module")
def result() -> dict:
    return analyze_frames(moving_then_frozen(), FPS)


def test_write_report_writes_json_and_png(result, tmp_path):
    json_path, png_path = write_report(result, tmp_path / "new" / "dir")
    assert (json_path.name, png_path.name) == ("drift.json", "drift.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 10_000
    loaded = json.loads(json_path.read_text())
    assert loaded == result
    assert set(loaded) == {"video", "fps", "window_seconds", "num_frames", "windows", "summary"}
    assert set(loaded["summary"]) == set(SUMMARY_METRICS)
    assert all(set(s) == {"slope", "first", "last", "delta"} for s in loaded["summary"].values())


def test_format_summary_lists_every_metric_and_motion(result):
    table = format_summary(result).splitlines()
    assert table[0].split() == ["metric", "first", "last", "delta", "slope/s"]
    assert [line.split()[0] for line in table[1:-1]] == list(SUMMARY_METRICS)
    assert table[-1].startswith("moving windows: 1/2")


def test_main_drift_on_a_file(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    with imageio.get_writer(video, fps=FPS, codec="libx264", quality=10) as writer:
        for frame in moving_then_frozen():
            writer.append_data(frame)
    assert main_drift(str(video), str(tmp_path / "out"), 2.0) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"drift.json", "drift.png"}
    out = capsys.readouterr().out
    assert "hold_similarity" in out and "moving windows: 1/2" in out


def test_main_drift_reports_a_missing_file(tmp_path, capsys):
    assert main_drift(str(tmp_path / "gone.mp4"), str(tmp_path / "out"), 2.0) == 2
    assert "gone.mp4" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class RecordingRun:
    """Stands in for a wandb run: keeps what ``log`` received."""

    def __init__(self):
        self.calls = []

    def log(self, payload, step):
        self.calls.append((payload, step))


def test_log_wandb_payload(result):
    wandb = pytest.importorskip("wandb")
    run = RecordingRun()
    log_wandb(result, step=7, prefix="eval/drift/", run=run)
    [(payload, step)] = run.calls
    assert step == 7
    assert payload["eval/drift/luminance/delta"] == result["summary"]["luminance"]["delta"]
    assert payload["eval/drift/moving_fraction"] == 0.5
    assert isinstance(payload["eval/drift/windows"], wandb.Table)
    assert len(payload["eval/drift/windows"].data) == len(result["windows"])
    curves = {k for k in payload if k.startswith("eval/drift/curve/")}
    assert curves == {f"eval/drift/curve/{name}" for name in SUMMARY_METRICS}


def test_log_wandb_offline_run(result, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(ValueError, match="wandb.init"):
        log_wandb(result, step=0)
    run = wandb.init(project="vidforce-test", dir=str(tmp_path), mode="offline")
    try:
        log_wandb(result, step=3)
    finally:
        run.finish()
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
