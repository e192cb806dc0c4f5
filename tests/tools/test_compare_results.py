"""tools/compare_results.py: paired advantages across results.json files, setup checks, argument errors."""
from __future__ import annotations

import importlib.util
import json

from tests.train.helpers import ROOT


def load_tool():
    spec = importlib.util.spec_from_file_location("compare_results", ROOT / "tools" / "compare_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_results(path, seeds, models, noise_seeds=(0, 1)):
    """A results.json with ``models = {name: per-scene D list}`` (other metrics: zeros) at 10x."""
    tool = load_tool()
    setup = {"spec": {"height": 32}, "seeds": seeds, "noise_seeds": list(noise_seeds), "horizon": 12, "chunk": 3,
             "fps": 8.0}
    summaries = {}
    for name, d in models.items():
        per = {k: [0.0] * len(d) for k in tool.TABLE_KEYS}
        per["D"] = d
        summaries[name] = {"per_scene": {"10x": per}}
    path.write_text(json.dumps({"setup": setup, "models": summaries}))
    return path


def test_pairs_models_of_two_files(tmp_path, capsys):
    a = write_results(tmp_path / "a.json", [1, 2, 3], {"self_forcing": [1.0, 2.0, 3.0]})
    b = write_results(tmp_path / "b.json", [1, 2, 3], {"self_forcing": [2.0, 3.0, 5.0], "other": [0.0] * 3})
    out = tmp_path / "cmp.md"
    code = load_tool().main(["--model", f"long={a}:self_forcing", "--model", f"short={b}:self_forcing",
                             "--pair", "long", "short", "--out", str(out)])
    assert code == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| long vs short | 10x |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # D advantage per scene: 1, 1, 2 -> mean 4/3, standard error sqrt(1/3)/sqrt(3) = 1/3
    assert cells[2 + load_tool().TABLE_KEYS.index("D")] == "**+1.333 ± 0.333**"
    assert out.read_text().startswith("`python tools/compare_results.py --model long=")


def test_different_seeds_are_refused_naming_both_files(tmp_path, capsys):
    a = write_results(tmp_path / "a.json", [1, 2, 3], {"m": [1.0, 2.0, 3.0]})
    b = write_results(tmp_path / "b.json", [1, 2, 4], {"m": [1.0, 2.0, 3.0]})
    assert load_tool().main(["--model", f"x={a}:m", "--model", f"y={b}:m", "--pair", "x", "y"]) == 2
    err = capsys.readouterr().err
    assert "seeds differs" in err and str(a) in err and str(b) in err
    c = write_results(tmp_path / "c.json", [1, 2, 3], {"m": [1.0, 2.0, 3.0]}, noise_seeds=(0,))
    assert load_tool().main(["--model", f"x={a}:m", "--model", f"y={c}:m", "--pair", "x", "y"]) == 2
    assert "noise_seeds differs" in capsys.readouterr().err


def test_argument_errors_name_the_argument(tmp_path, capsys):
    a = write_results(tmp_path / "a.json", [1, 2], {"m": [1.0, 2.0]})
    tool = load_tool()
    assert tool.main(["--model", f"x={a}", "--pair", "x", "x"]) == 2
    assert "LABEL=RESULTS_JSON:MODEL" in capsys.readouterr().err
    assert tool.main(["--model", f"x={a}:nope", "--pair", "x", "x"]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    assert tool.main(["--model", f"x={a}:m", "--pair", "x", "z"]) == 2
    assert "unknown label(s) ['z']" in capsys.readouterr().err
    assert tool.main(["--model", f"x={tmp_path / 'missing.json'}:m", "--pair", "x", "x"]) == 2
    assert "no file" in capsys.readouterr().err
