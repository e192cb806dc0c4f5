"""tools/bench_stream.py runs on the CPU at a tiny shape with random weights (so it will not crash on the device): every
lever as a row, the fp8 error beside it, a row of the real ``vidforce generate`` path with its mp4, and a row of
the real ``vidforce serve`` measured by ``tools/bench_serve.py``'s client."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.train.helpers import ROOT, child_env


def test_help_lists_every_lever():
    proc = subprocess.run([sys.executable, "tools/bench_stream.py", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for lever in ("graphs", "fused", "buffers", "cl", "taehv", "fp8", "overlap", "--generate"):
        assert lever in proc.stdout
    bad = subprocess.run([sys.executable, "tools/bench_stream.py", "--variants", "graphs+turbo"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "bad variant 'graphs+turbo'" in bad.stderr


def test_the_generate_line_parses_with_the_rate_after_the_first_chunk(tmp_path, capsys):
    """``vidforce generate``'s last line is what the bench's generate rows read, the steady rate included."""
    from tests.test_generate import generate  # noqa: PLC0415
    from tools.bench_stream import GENERATE_RESULT  # noqa: PLC0415
    from vidforce.cli import main  # noqa: PLC0415
    assert main(generate(tmp_path, "--random-weights", "--seconds", "4")) == 0
    found = GENERATE_RESULT.search(capsys.readouterr().out)
    assert found and float(found.group(2)) > 0 and float(found.group(3)) > 0


@pytest.mark.slow
def test_tiny_cpu_run_measures_every_lever_and_the_generate_path(tmp_path):
    out = tmp_path / "out"
    args = ["tools/bench_stream.py", "--device", "cpu", "--preset", "tiny", "--latent", "4x4", "--vae-dim", "8",
            "--windows", "6", "--sink", "3", "--chunks", "2",
            "--variants", "base,graphs+fused+buffers+cl,taehv,fp8,graphs+fused+buffers+cl+overlap",
            "--generate", "taehv+graphs+fused+overlap", "--generate-seconds", "1",
            "--serve", "taehv", "--serve-seconds", "1.5", "--serve-warmup", "3", "--switch-every", "0.5",
            "--out", str(out)]
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=child_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / "stream.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["base", "graphs+fused+buffers+cl", "taehv", "fp8", "graphs+fused+buffers+cl+overlap"]
    assert all(r["frames"] == 21 and r["fps_end_to_end"] > 0 and r["vs_base"] > 0 for r in rows.values())
    overlapped = rows["graphs+fused+buffers+cl+overlap"]
    assert overlapped["dit_ms"] is None and overlapped["chunk_ms"] > 0 and rows["base"]["dit_ms"] > 0
    assert 0 < rows["fp8"]["fp8_rel_err"] < 0.1 and rows["base"]["fp8_rel_err"] is None
    (generated,) = result["generate_rows"]
    assert generated["variant"] == "generate:taehv+graphs+fused+overlap" and generated["returncode"] == 0
    assert generated["frames"] == 21 and generated["mp4_bytes"] > 0 and generated["fps_end_to_end"] > 0
    assert generated["fps_after_first"] > 0 and generated["fps_steady"] > 0
    (served,) = result["serve_rows"]      # the real server, measured by bench_serve's client, then stopped
    assert served["variant"] == "serve:taehv" and "error" not in served, served
    assert served["frames"] > 1 and served["fps_end_to_end"] > 0 and served["vs_bench"] > 0
    assert served["switches"] >= 1 and served["switch_client_ms"] > 0
