"""``vidforce plot`` (vidforce/diagnostics/curves.py) and its tools/plot_metrics.py wrapper: series read from
metrics.jsonl, the moving average, the PNG, errors naming the key in one line."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from vidforce.cli import main
from vidforce.diagnostics.curves import moving_average, read_series

from tests.train.helpers import ROOT


def write_run(path, rows):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_moving_average_known_values():
    np.testing.assert_allclose(moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    with pytest.raises(ValueError, match="--smooth"):
        moving_average(np.ones(3), 0)


def test_read_series_names_the_key_the_file_and_a_bad_line(tmp_path):
    run = write_run(tmp_path / "a", [{"step": 1, "loss/generator": 2.0}, {"step": 2, "lr/generator": 1e-3}])
    steps, values = read_series(run, "loss/generator")
    assert steps.tolist() == [1] and values.tolist() == [2.0]
    with pytest.raises(ValueError, match=r"'loss/critic' is not in .*metrics.jsonl; it has \['loss/generator', "):
        read_series(run, "loss/critic")
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2,\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        read_series(run, "loss/generator")


def test_vidforce_plot_writes_a_png_and_names_a_missing_key(tmp_path, capsys):
    a = write_run(tmp_path / "a", [{"step": s, "loss/generator": 1 / s, "lr/generator": 1e-3} for s in range(1, 30)])
    b = write_run(tmp_path / "b", [{"step": s, "loss/generator": 2 / s} for s in range(1, 20)])
    out = tmp_path / "new" / "plot.png"
    assert main(["plot", str(a), str(b), "--keys", "loss/generator", "--smooth", "5", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(a), str(b), "--keys", "lr/generator", "--out", str(tmp_path / "lr.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vidforce plot: error: key 'lr/generator' is not in")
    assert str(b) in err[0]
    assert not (tmp_path / "lr.png").exists()


def test_the_tool_is_the_command(tmp_path):
    a = write_run(tmp_path / "a", [{"step": s, "loss/generator": 1 / s} for s in range(1, 10)])
    out = tmp_path / "plot.png"
    run = subprocess.run([sys.executable, "tools/plot_metrics.py", str(a), "--keys", "loss/generator", "--out",
                          str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = subprocess.run([sys.executable, "tools/plot_metrics.py", str(a), "--keys", "nope", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "'nope' is not in" in run.stderr and "Traceback" not in run.stderr
