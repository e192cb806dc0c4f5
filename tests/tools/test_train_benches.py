"""tools/bench_train.py and tools/profile_train.py run end to end on the CPU (tiny model) and write what
they promise: the result row with both turns, the phase table and the op tables."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.train.helpers import PROMPTS, ROOT, child_env


def run_tool(args: list[str], tmp_path) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=child_env(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_bench_train_reports_both_turns_and_profiles_them(tmp_path):
    out = tmp_path / "out"
    stdout = run_tool(["tools/bench_train.py", "--device", "cpu", "--preset", "tiny", "--latent", "8x8",
                       "--frames", "6", "--reps", "1", "--profile", "--out", str(out)], tmp_path)
    row = json.loads((out / "train_g1_z2_ac1_c0.json").read_text())
    assert row["gpus"] == 1 and row["zero"] == 2 and row["activation_ckpt"] is True
    printed = dict(re.findall(r"^iteration 1 (\w+) turn: ([\d.]+) s$", stdout, re.MULTILINE))
    tokens = 6 * (8 // 2) * (8 // 2)                          # 6 latent frames of 8x8, patch 2x2: 96 tokens
    for role in ("critic", "generator"):                      # one timed rep: iteration 0 only warms up
        assert row[f"{role}_s"] == pytest.approx(float(printed[role]), abs=0.006)   # the log prints 2 decimals
        assert row[f"{role}_tokens_per_s_per_gpu"] * row[f"{role}_s"] == pytest.approx(tokens)
    assert "RESULT " in stdout
    for role in ("critic", "generator"):
        assert "Self CPU" in (out / f"train_{role}_z2_ac1_ops.txt").read_text()


@pytest.mark.slow
def test_profile_train_times_every_phase(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "prof"
    stdout = run_tool(["tools/profile_train.py", "configs/tiny/dmd.yaml", f"data.prompts={prompts}",
                       "train.device=cpu", "--warmup", "1", "--steps", "2", "--out", str(out)], tmp_path)
    report = json.loads((out / "profile_train.json").read_text())
    phases = {row["phase"]: row["ms"] for row in report["phases"]}
    assert {"data", "critic turn", "log", "train_step (whole)"} <= set(phases)
    assert all(ms > 0 for ms in phases.values())
    assert report["profile"]["cpu_ops"] > 0 and "| train_step (whole) |" in stdout
    assert (out / "train_step_ops.txt").is_file()
