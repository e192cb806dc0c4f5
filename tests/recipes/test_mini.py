"""The mini-world recipe: stage selection, configs of every stage, the smoke run end to end, and
tools/teacher_sampling.py on that run."""
import importlib.util
import json

import imageio.v3 as iio
import numpy as np
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
    assert mini.parse_stages("teacher, world") == ["world", "teacher"]
    with pytest.raises(ValueError, match="unknown stage"):
        mini.parse_stages("world,techer")


def test_dotlist_flattens_nested_overrides():
    assert mini.dotlist({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == ["a.b=1", "a.c=[1, 2]", "d=x"]


@pytest.mark.parametrize("smoke", [False, True])
def test_every_stage_config_loads(smoke, tmp_path):
    run = mini.load_mini(smoke, "cpu", tmp_path)
    for stage in TRAINED:
        cfg = mini.stage_config(run, stage)
        assert cfg.train.run_dir == str(tmp_path / stage / "run")
        assert cfg.causal.rope_mode == "relative" and cfg.causal.window == cfg.rollout.num_frames
        assert cfg.causal.sink == 0 and cfg.optim.ema_warmup          # the primary setting: no sink
        assert cfg.data.world == str(tmp_path / "world" / "world_spec.json")
    model = lambda stage: mini.stage_config(run, stage).model.checkpoint  # noqa: E731
    assert mini.BIDIRECTIONAL == ("teacher",) and model("teacher") == ""              # one phase, from scratch
    assert mini.stage_config(run, "teacher").schedule.shift == 1.0                    # sigma ~ U[0, 1] in training
    if not smoke:
        assert mini.stage_config(run, "teacher").train.steps == 3000
    assert model("ode_init") == str(tmp_path / "teacher" / "model")
    assert model("tf_dmd") == str(tmp_path / "teacher_forcing" / "model")
    assert model("df_dmd") == str(tmp_path / "diffusion_forcing" / "model")
    sf, pp = mini.stage_config(run, "self_forcing"), mini.stage_config(run, "self_forcing_pp")
    assert model("self_forcing") == model("self_forcing_pp") == str(tmp_path / "ode_init" / "model")   # same init
    assert (sf.train.steps, sf.train.batch_size, sf.objective.gen_update_every) == \
        (pp.train.steps, pp.train.batch_size, pp.objective.gen_update_every)                          # same updates
    for stage in ("tf_dmd", "df_dmd"):
        cfg = mini.stage_config(run, stage)
        assert (cfg.objective.name, cfg.train.steps, cfg.optim.generator_lr) == ("dmd", sf.train.steps,
                                                                                sf.optim.generator_lr)
    assert pp.objective.name == "extended_dmd" and pp.rollout.long_sampling == "fixed"
    for stage in ("teacher_forcing", "self_forcing", "self_forcing_pp"):
        assert mini.stage_config(run, f"{stage}_seed1").train.seed != mini.stage_config(run, stage).train.seed
    if smoke:
        assert pp.model.preset == "tiny"
    else:
        assert pp.rollout.long_frames >= 10 * pp.rollout.num_frames and pp.model.preset == "mini_v2"
        assert run.recipe["evaluate"]["scenes"] >= 64 and len(run.recipe["evaluate"]["noise_seeds"]) == 2
        assert run.recipe["evaluate"]["multiples"] == [1, 4, 10, 20]


def test_smoke_override_of_an_unknown_recipe_key_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "recipe.yaml").write_text((mini.CONFIG_DIR / "recipe.yaml").read_text())
    (tmp_path / "smoke.yaml").write_text("recipe:\n  evaluate:\n    scenez: 3\n")
    monkeypatch.setattr(mini, "CONFIG_DIR", tmp_path)
    with pytest.raises(ValueError, match="scenez"):
        mini.load_mini(True, "cpu", tmp_path / "out")


def test_set_overrides_one_stage_and_bad_ones_name_the_item(tmp_path):
    run = mini.load_mini(False, "cpu", tmp_path, ["teacher:schedule.shift=8", "teacher:train.steps=5"])
    assert run.sets == {"teacher": ("schedule.shift=8", "train.steps=5")}
    assert (mini.stage_config(run, "teacher").schedule.shift, mini.stage_config(run, "teacher").train.steps) == (8.0, 5)
    other = mini.stage_config(run, "teacher_forcing")                            # the other stages keep theirs
    assert (other.schedule.shift, other.train.steps) == (1.0, 1000)
    with pytest.raises(ValueError, match=r"^--set 'teacher=8': expected STAGE:KEY=VALUE"):
        mini.parse_sets(["teacher=8"])
    with pytest.raises(ValueError, match=r"^--set 'world:a=1': 'world' is not a training stage; choose from"):
        mini.parse_sets(["world:a=1"])


def test_set_is_recorded_and_a_stage_made_with_other_settings_is_not_reused(tmp_path, monkeypatch, capsys):
    import vidforce.train.checkpoint as checkpoint
    import vidforce.train.trainer as trainer
    monkeypatch.setattr(trainer, "train", lambda cfg: {"interrupted": 3, "checkpoint": "ckpt-3", "metrics": {}})
    arm = ["teacher:schedule.shift=8"]
    assert mini.main_mini(True, "cpu", str(tmp_path), "world,teacher", sets=arm) == 130
    with pytest.raises(ValueError, match=r"was made with --set \['schedule.shift=8'\], this command sets none"):
        mini.main_mini(True, "cpu", str(tmp_path), "world,teacher")            # no resume under other settings
    monkeypatch.setattr(trainer, "train", lambda cfg: {"interrupted": None, "metrics": {"fm_loss": 0.5}})
    monkeypatch.setattr(checkpoint, "export_generator", lambda run_dir, path, **kw: path.parent.mkdir(parents=True))
    assert mini.main_mini(True, "cpu", str(tmp_path), "world,teacher", sets=arm) == 0
    assert json.loads((tmp_path / "teacher" / "done.json").read_text())["set"] == ["schedule.shift=8"]
    with pytest.raises(ValueError, match=r"this command sets \['schedule.shift=9'\]: use another --out"):
        mini.main_mini(True, "cpu", str(tmp_path), "world,teacher", sets=["teacher:schedule.shift=9"])
    assert mini.main_mini(True, "cpu", str(tmp_path), "world,teacher", sets=arm) == 0
    assert "teacher: done already" in capsys.readouterr().out


def test_stage_without_its_inputs_names_them(tmp_path):
    run = mini.load_mini(True, "cpu", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\['teacher'\]"):
        mini.run_stage(run, "ode_pairs")


def test_models_option_names_unknown_models_missing_stages_and_other_stages(tmp_path):
    with pytest.raises(ValueError, match=r"--models: unknown model\(s\) \['nope'\]"):
        mini.main_mini(True, "cpu", str(tmp_path), "evaluate", "teacher,nope")
    with pytest.raises(ValueError, match="use it with --stages evaluate"):
        mini.main_mini(True, "cpu", str(tmp_path), "teacher", "teacher")
    with pytest.raises(FileNotFoundError, match=r"needs finished stage\(s\) \['teacher_forcing', 'world'\]"):
        mini.main_mini(True, "cpu", str(tmp_path), "evaluate", "teacher_forcing_cfg")
    assert mini.model_stage("teacher_forcing_cfg") == "teacher_forcing" and mini.model_stage("tf_dmd") == "tf_dmd"


def test_interrupted_training_stage_is_not_marked_done(tmp_path, monkeypatch, capsys):
    import vidforce.train.trainer as trainer
    monkeypatch.setattr(trainer, "train", lambda cfg: {"interrupted": 7, "checkpoint": "ckpt-7", "metrics": {}})
    assert mini.main_mini(True, "cpu", str(tmp_path), "world,teacher") == 130
    assert mini.load_mini(True, "cpu", tmp_path).done("world")
    assert not (tmp_path / "teacher" / "done.json").exists()
    assert not (tmp_path / "teacher" / "model").exists()
    assert "stopped at step 7" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "teacher" / "interrupted.json").read_text())["command_seconds"]) == 1
    # the next command resumes and finishes it: done.json sums both commands' seconds
    monkeypatch.setattr(trainer, "train", lambda cfg: {"interrupted": None, "metrics": {"fm_loss": 0.5}})
    import vidforce.train.checkpoint as checkpoint
    monkeypatch.setattr(checkpoint, "export_generator", lambda run_dir, path, **kw: path.parent.mkdir(parents=True))
    assert mini.main_mini(True, "cpu", str(tmp_path), "world,teacher") == 0
    done = json.loads((tmp_path / "teacher" / "done.json").read_text())
    assert len(done["command_seconds"]) == 2 and done["seconds"] == round(sum(done["command_seconds"]), 1)
    assert done["metrics"] == {"fm_loss": 0.5} and not (tmp_path / "teacher" / "interrupted.json").exists()


@pytest.mark.slow
def test_smoke_recipe_end_to_end(tmp_path, capsys):
    stages = ",".join(s for s in mini.STAGES if s != "evaluate")
    assert mini.main_mini(smoke=True, device="cpu", out=str(tmp_path), stages=stages) == 0
    assert mini.main_mini(True, "cpu", str(tmp_path), "evaluate", "teacher,teacher_forcing_cfg") == 0  # a part
    assert "teacher_forcing_cfg @1x: count_accuracy" in capsys.readouterr().out
    assert not (tmp_path / "results" / "probes").exists()                  # a guided baseline has no probe
    assert sorted(p.stem for p in (tmp_path / "results" / "videos").iterdir()) == \
        ["data", "teacher", "teacher_forcing_cfg"]
    assert mini.main_mini(smoke=True, device="cpu", out=str(tmp_path), stages="all") == 0
    out = capsys.readouterr().out
    assert out.count("videos loaded from") == 3                            # the part's caches reused
    run = mini.load_mini(True, "cpu", tmp_path)
    for stage in mini.STAGES:
        done = json.loads((run.dir(stage) / "done.json").read_text())
        assert done["stage"] == stage and run.artifact(stage).exists()
    for stage in TRAINED:                                   # bf16 shards within the device's return limit
        files = list(run.artifact(stage).glob("*.safetensors"))
        assert files and all(f.stat().st_size <= mini.SHARD_BYTES for f in files)
    results = tmp_path / "results"
    per_scene = json.loads((results / "per_scene.json").read_text())
    assert set(per_scene) == {"data", *TRAINED, "teacher_forcing_cfg", "diffusion_forcing_cfg"}   # + guided baselines
    assert set(per_scene["teacher"]) == {"1x"} and set(per_scene["self_forcing_pp"]) == {"1x", "2x"}
    assert len(per_scene["self_forcing"]["2x"]["D"]) == 2                     # one value per scene
    decisions = json.loads((results / "decisions.json").read_text())
    assert len(decisions) == len(run.recipe["registered"])
    assert all({"first", "second", "horizon", "metric", "advantage", "se", "verdict"} <= set(d) for d in decisions)
    for name in ["curves.png"] + [f"strip_{m}.png" for m in per_scene]:
        assert 0 < (results / name).stat().st_size < 16 * 2**20
    overview = (results / "README.md").read_text()
    assert mini.SMOKE_LABEL in overview                        # labelled for what it is
    for model in per_scene:                                    # something to watch: one playable mp4 per model
        video = iio.imread(results / "mp4" / f"{model}.mp4")
        assert video.shape[1:] == (128, 128, 3) and video.shape[0] >= 6
        assert f"mp4/{model}.mp4" in overview
    assert "vidforce generate --config" in overview
    assert str(results / "README.md") in out


def test_teacher_sampling_start_grid_keeps_the_steps_below_the_start():
    tool = teacher_sampling_tool()
    grid = (1.0, 0.9, 0.75, 0.5, 0.0)
    assert tool.start_grid(grid, 1.0) == grid
    assert tool.start_grid(grid, 0.8) == (0.8, 0.75, 0.5, 0.0)
    with pytest.raises(ValueError, match="--start"):
        tool.start_grid(grid, 0.0)


def test_teacher_sampling_rejects_a_start_outside_the_unit_interval(tmp_path, capsys):
    tool = teacher_sampling_tool()
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path), "--start", "1.5"])
    assert "--start sigmas must be in (0, 1]" in capsys.readouterr().err


def test_teacher_sampling_without_a_teacher_names_the_file(tmp_path, capsys):
    tool = teacher_sampling_tool()
    assert tool.main([str(tmp_path), "--smoke", "--scenes", "2"]) == 2
    assert str(tmp_path / "teacher" / "model") in capsys.readouterr().err


def test_teacher_sampling_finds_the_erased_ball_and_no_other():
    """True renders keep every ball; painting one ball's disc over with the background in every frame erases that
    ball only, and the table counts it in its radius, background and count rows."""
    from vidforce.data.balls import BallWorldSpec, disc_mask, render_numpy, scene_for_seed, simulate  # noqa: PLC0415
    tool = teacher_sampling_tool()
    spec, frames = BallWorldSpec(), 12
    seeds = tuple(s for s in range(40) if scene_for_seed(s, spec).count == 3)[:2]
    videos = []
    for seed in seeds:
        scene = scene_for_seed(seed, spec)
        videos.append(render_numpy(scene, spec, simulate(scene, spec, frames)[0]))
    assert not any(r["erased"] for r in tool.erased_balls(videos, seeds, 1, spec))
    scene, positions = scene_for_seed(seeds[1], spec), simulate(scene_for_seed(seeds[1], spec), spec, frames)[0]
    videos[1][disc_mask(positions[:, 2], scene.radii[2], spec.height, spec.width)] = scene.background
    rows = tool.erased_balls(videos, seeds, 1, spec)
    assert [r["erased"] for r in rows] == [False] * 5 + [True]
    assert rows[5]["radius"] == scene.radii[2] and rows[5]["count"] == 3
    table = tool.erased_table(rows, spec, 0.8)
    assert "| all | 6 | 0.167 |" in table and "| count 3 | 6 | 0.167 |" in table and "| count 1 | 0 | - |" in table
    radius_rows = [line for line in table.splitlines() if line.startswith("| radius")]
    assert sum(int(line.split("|")[2]) for line in radius_rows) == 6


def test_teacher_sampling_counts_by_prompt_read_each_videos_median_count():
    """True renders of 1-, 2- and 3-ball scenes score their own counts; a video whose ball is painted over in all
    but 4 of 12 frames has median count 0, and it moves only its prompt's mean (with the standard error of two)."""
    from vidforce.data.balls import BallWorldSpec, render_numpy, scene_for_seed, simulate  # noqa: PLC0415
    tool = teacher_sampling_tool()
    spec, frames = BallWorldSpec(), 12
    seeds = [next(s for s in range(100) if scene_for_seed(s, spec).count == n) for n in (1, 1, 2, 3)]
    scenes = [scene_for_seed(s, spec) for s in seeds]
    videos = [render_numpy(sc, spec, simulate(sc, spec, frames)[0]) for sc in scenes]
    counts = [sc.count for sc in scenes]
    clean = tool.counts_by_prompt(videos, counts, spec)
    assert clean[1] == (1.0, 0.0) and [clean[n][0] for n in (2, 3)] == [2.0, 3.0] and np.isnan(clean[3][1])
    videos[1][4:] = scenes[1].background                        # the second "1 ball" video: empty after frame 3
    out = tool.counts_by_prompt(videos, counts, spec)
    assert out[1] == (0.5, 0.5) and out[2][0] == 2.0 and out[3][0] == 3.0
