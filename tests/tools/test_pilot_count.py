"""tools/pilot_count.py: the luminance-contrast count pilot runs end to end at toy size and writes its table."""
from __future__ import annotations

import importlib.util
import json

import torch

from tests.train.helpers import ROOT


def load_tool():
    spec = importlib.util.spec_from_file_location("pilot_count", ROOT / "tools" / "pilot_count.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arm_b_is_a_valid_world_differing_only_in_looks():
    worlds = load_tool().arm_worlds()
    a, b = worlds["A"], worlds["B"]
    assert (b.background_range, b.colour_intensity, b.colour_chroma) == ((20, 80), 150.0, 100.0)
    assert (a.background_range, a.colour_intensity, a.colour_chroma) == ((60, 150), 128.0, 115.0)
    assert (a.radius_range, a.speed_range, a.max_balls) == (b.radius_range, b.speed_range, b.max_balls)


def test_toy_pilot_writes_both_arms(tmp_path, capsys):
    out = tmp_path / "pilot" / "table.md"
    argv = ["--frames", "1", "--steps", "2", "--scenes", "2", "--noise-seeds", "0", "--batch", "2", "--dim", "32",
            "--layers", "1", "--heads", "2", "--ffn", "64", "--warmup", "1", "--eval-batch", "2", "--threads", "1",
            "--out", str(out)]
    threads = torch.get_num_threads()
    try:
        assert load_tool().main(argv) == 0
    finally:
        torch.set_num_threads(threads)          # main sets the process's thread count
    text = out.read_text()
    assert text.startswith("`python tools/pilot_count.py --frames 1 --steps 2")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| A | bg 60-150") for r in rows) and any(r.startswith("| B | bg 20-80") for r in rows)
    assert any(r.startswith("| B - A |") for r in rows)
    for arm in ("A", "B"):
        curve = json.loads((out.parent / f"loss_{arm}.json").read_text())
        assert curve["steps"] == 2 and len(curve["loss"]) == 2 and len(curve["lr"]) == 2
        assert (out.parent / f"videos_{arm}.npz").is_file()
    results = json.loads((out.parent / "results.json").read_text())
    assert results["arms"]["A"]["counts"] == results["arms"]["B"]["counts"]   # the same scenes in both worlds
    capsys.readouterr()
