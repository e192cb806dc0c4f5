"""tools/plot_metrics.py: series read from metrics.jsonl, the moving average, the PNG, errors naming the key."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.train.helpers import ROOT


def write_run(path, rows):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tool():
    spec = importlib.util.spec_from_file_location("plot_metrics", ROOT / "tools" / "plot_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_moving_average_known_values():
    moving_average = tool().moving_average
    np.testing.assert_allclose(moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    with pytest.raises(ValueError, match="--smooth"):
        moving_average(np.ones(3), 0)


def run(args):
    return subprocess.run([sys.executable, "tools/plot_metrics.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_a_png_and_names_a_missing_key(tmp_path):
    a = write_run(tmp_path / "a", [{"step": s, "loss/generator": 1 / s, "lr/generator": 1e-3} for s in range(1, 30)])
    b = write_run(tmp_path / "b", [{"step": s, "loss/generator": 2 / s} for s in range(1, 20)])
    out = tmp_path / "plot.png"
    proc = run([a, b, "--keys", "loss/generator", "--smooth", "5", "--out", out])
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = run([a, b, "--keys", "lr/generator", "--out", out])
    assert proc.returncode != 0 and "'lr/generator' is not in" in proc.stderr and str(b) in proc.stderr
    assert "Traceback" not in proc.stderr
