"""tools/time_mini_stages.py: per-iteration times of the mini stages, a table under its command."""
from __future__ import annotations

import importlib.util

import pytest

from tests.train.helpers import ROOT


def load_tool():
    spec = importlib.util.spec_from_file_location("time_mini_stages", ROOT / "tools" / "time_mini_stages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_times_a_smoke_stage_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "stages.md"
    assert load_tool().main(["--device", "cpu", "--smoke", "--iters", "3", "--warmup", "1", "--stages", "teacher",
                             "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("`python tools/time_mini_stages.py --device cpu --smoke")
    row = next(line for line in text.splitlines() if line.startswith("| teacher |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2" and cells[2] == "2" and float(cells[4]) > 0 and cells[5] == "3"   # batch, timed, s/it, iters
    capsys.readouterr()


def test_unknown_stage_is_named(capsys):
    with pytest.raises(SystemExit):
        load_tool().main(["--stages", "teacher,techer"])
    assert "techer" in capsys.readouterr().err
