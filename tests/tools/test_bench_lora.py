"""tools/bench_lora.py runs end to end on the CPU (tiny model) with LoRA and writes the result row."""
from __future__ import annotations

import json

import pytest

from tests.tools.test_train_benches import run_tool


@pytest.mark.slow
def test_bench_lora_reports_both_turns_and_the_trained_parameter_counts(tmp_path):
    out = tmp_path / "out"
    stdout = run_tool(["tools/bench_lora.py", "--device", "cpu", "--preset", "tiny", "--latent", "8x8",
                       "--frames", "6", "--reps", "1", "--rank", "4", "--out", str(out)], tmp_path)
    row = json.loads((out / "lora_tiny_lora1_r4_ac1.json").read_text())
    assert row["lora"] is True and row["activation_ckpt"] is True and "RESULT " in stdout
    dim, ffn, layers = 32, 64, 2                              # the tiny preset
    adapter = 4 * layers * (8 * 2 * dim + 2 * (dim + ffn))   # 8 square linears + the FFN's two, rank 4
    assert row["generator_trained_params"] == row["critic_trained_params"] == adapter
    assert row["base_params"] > 5 * adapter
    for role in ("critic", "generator"):
        assert row[f"{role}_s"] > 0 and row[f"{role}_tokens_per_s_per_gpu"] > 0
