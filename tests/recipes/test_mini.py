"""The mini-world recipe: stage selection, configs of every stage, the smoke run end to end, and
tools/teacher_sampling.py on that run."""
import importlib.util
import json

import pytest

from vidforce.recipes import mini

TRAINED = tuple(mini.TRAINED)


def teacher_sampling_tool():
    spec = importlib.util.spec_from_file_location("teacher_sampling", mini.REPO / "tools" / "teacher_sampling.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_parse_stages_orders_and_rejects_unknown():
    assert mini.parse_stages("all") == list(mini.STAGES)
    assert mini.parse_stages("teacher, data") == ["data", "teacher"]
    with pytest.raises(ValueError, match="unknown stage"):
        mini.parse_stages("data,techer")


def test_dotlist_flattens_nested_overrides():
    assert mini.dotlist({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == ["a.b=1", "a.c=[1, 2]", "d=x"]


@pytest.mark.parametrize("smoke", [False, True])
def test_every_stage_config_loads(smoke, tmp_path):
    run = mini.load_mini(smoke, "cpu", tmp_path)
    for stage in TRAINED:
        cfg = mini.stage_config(run, stage)
        assert cfg.train.run_dir == str(tmp_path / stage / "run")
        assert cfg.causal.rope_mode == "relative" and cfg.causal.window == cfg.rollout.num_frames
        assert cfg.data.videos == str(tmp_path / "data" / "manifest.jsonl")
    assert mini.stage_config(run, "ode_init").model.checkpoint == str(tmp_path / "teacher" / "model.safetensors")
    assert mini.stage_config(run, "self_forcing").model.checkpoint == str(tmp_path / "ode_init" / "model.safetensors")
    pp = mini.stage_config(run, "self_forcing_pp")
    assert pp.model.checkpoint == str(tmp_path / "self_forcing" / "model.safetensors")
    assert pp.objective.name == "extended_dmd" and pp.causal.sink > 0
    if smoke:
        assert run.recipe["data"]["clips"] < 10 and pp.model.preset == "tiny"
    else:
        assert pp.rollout.long_frames >= 4 * pp.rollout.num_frames and pp.model.preset == "mini"


def test_smoke_override_of_an_unknown_recipe_key_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "recipe.yaml").write_text((mini.CONFIG_DIR / "recipe.yaml").read_text())
    (tmp_path / "smoke.yaml").write_text("recipe:\n  evaluate:\n    scenez: 3\n")
    monkeypatch.setattr(mini, "CONFIG_DIR", tmp_path)
    with pytest.raises(ValueError, match="scenez"):
        mini.load_mini(True, "cpu", tmp_path / "out")


def test_stage_without_its_inputs_names_them(tmp_path):
    run = mini.load_mini(True, "cpu", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\['teacher'\]"):
        mini.run_stage(run, "ode_pairs")


@pytest.mark.slow
def test_smoke_recipe_end_to_end(tmp_path, capsys):
    assert mini.main_mini(smoke=True, device="cpu", out=str(tmp_path), stages="all") == 0
    run = mini.load_mini(True, "cpu", tmp_path)
    for stage in mini.STAGES:
        done = json.loads((run.dir(stage) / "done.json").read_text())
        assert done["stage"] == stage and run.artifact(stage).is_file()
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert set(results["models"]) == {"data", *TRAINED}
    assert set(results["models"]["teacher"]["horizons"]) == {"1"}
    assert set(results["models"]["self_forcing_pp"]["horizons"]) == {"1", "4", "10"}
    table = (tmp_path / "results" / "table.md").read_text()
    assert "| self_forcing_pp | 10x |" in table
    assert "| self_forcing_pp vs self_forcing_more | 10x |" in (tmp_path / "results" / "comparisons.md").read_text()
    for name in ["curves.png"] + [f"strip_{m}.png" for m in results["models"]]:
        assert 0 < (tmp_path / "results" / name).stat().st_size < 16 * 2**20
    capsys.readouterr()
    assert mini.main_mini(smoke=True, device="cpu", out=str(tmp_path), stages="teacher,evaluate") == 0
    assert capsys.readouterr().out.count("skipped") == 2
    # tools/teacher_sampling.py on the finished smoke run: one row per setting, the same scenes for each
    tool = teacher_sampling_tool()
    out = tmp_path / "sampling.md"
    assert tool.main([str(tmp_path), "--smoke", "--scenes", "2", "--guidance", "1", "3", "--steps", "2",
                      "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("`python tools/teacher_sampling.py ") and "--guidance 1 3" in lines[0]
    rows = [line for line in lines if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(rows) == 2 and all(row.count(" ± ") == len(tool.ev.WORLD_KEYS) for row in rows)


def test_teacher_sampling_without_a_teacher_names_the_file(tmp_path, capsys):
    tool = teacher_sampling_tool()
    assert tool.main([str(tmp_path), "--smoke", "--scenes", "2"]) == 2
    assert str(tmp_path / "teacher" / "model.safetensors") in capsys.readouterr().err
