"""Config loading: schema defaults, presets, YAML inheritance, overrides, validation messages."""
import dataclasses
import re

import pytest

from vidforce.config import MODEL_PRESETS, VidforceConfig, arch_of, load, to_yaml, validate

WAN13 = ["model.preset=wan2.1-t2v-1.3b", "teacher.preset=wan2.1-t2v-1.3b"]


def test_load_without_file_gives_defaults():
    cfg = load()
    assert cfg == VidforceConfig()
    assert cfg.schedule.denoising_steps == [1000.0, 750.0, 500.0, 250.0]
    assert cfg.causal.attention == "auto" and cfg.optim.betas == [0.0, 0.999]
    assert validate(VidforceConfig()) == cfg                       # the defaults are valid


def test_tiny_preset_equals_the_schema_defaults():
    """The default preset is ``tiny``: its values must be the dataclass defaults, or ``load()`` != schema."""
    defaults = dataclasses.asdict(VidforceConfig().model)
    assert VidforceConfig().model.preset == "tiny"
    assert {k: defaults[k] for k in MODEL_PRESETS["tiny"]} == MODEL_PRESETS["tiny"]


def test_preset_fills_fields_and_explicit_override_wins():
    cfg = load(None, WAN13 + ["model.num_layers=4"])
    m = cfg.model
    assert (m.dim, m.ffn_dim, m.num_heads, m.text_dim, m.in_dim) == (1536, 8960, 12, 4096, 16)
    assert m.num_layers == 4                                        # override beats the preset's 30
    assert cfg.teacher.num_layers == 30                             # the teacher keeps its preset
    assert arch_of(m).head_dim == 128


def test_override_before_preset_in_list_still_wins():
    cfg = load(None, ["model.num_heads=3", "model.dim=96"] + WAN13)
    assert (cfg.model.num_heads, cfg.model.dim, cfg.model.ffn_dim) == (3, 96, 8960)


def test_yaml_file_keys_win_over_preset(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model:\n  preset: mini\n  num_layers: 3\nteacher:\n  preset: mini\n")
    cfg = load(f)
    assert cfg.model.num_layers == 3 and cfg.model.dim == MODEL_PRESETS["mini"]["dim"]
    assert cfg.teacher.num_layers == MODEL_PRESETS["mini"]["num_layers"]


def test_inherit_merges_parent_then_child(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "train:\n  steps: 7\n  seed: 3\nschedule:\n  shift: 3.0\ncausal:\n  window: 9\n  sink: 3\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "mid.yaml").write_text("inherit: ../base.yaml\ntrain:\n  steps: 11\noptim:\n  critic_lr: 1.0e-5\n")
    (sub / "leaf.yaml").write_text("inherit: mid.yaml\ntrain:\n  seed: 5\n")
    cfg = load(sub / "leaf.yaml", ["optim.critic_lr=2e-5"])
    assert cfg.train.steps == 11                 # child (mid) over parent (base)
    assert cfg.train.seed == 5                   # leaf over base
    assert cfg.schedule.shift == 3.0             # only in the grandparent
    assert (cfg.causal.window, cfg.causal.sink) == (9, 3)
    assert cfg.optim.critic_lr == 2e-5           # the command line over every file


def test_inherit_cycle_raises(tmp_path):
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ValueError, match="inherit cycle"):
        load(tmp_path / "a.yaml")


def test_missing_yaml_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load(tmp_path / "nope.yaml")
    (tmp_path / "child.yaml").write_text("inherit: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match="gone.yaml"):
        load(tmp_path / "child.yaml")


@pytest.mark.parametrize("overrides,field", [
    (["model.foo=1"], "model.foo"),
    (["nosuchsection=1"], "nosuchsection"),
    (["train.steps=abc"], "train.steps"),
    (["model.patch_size=3"], "model.patch_size"),
    (["causal.rope_mode=foo"], "causal.rope_mode"),
    (["causal.attention=fast"], "causal.attention"),
    (["objective.name=ppo"], "objective.name"),
    (["rollout.num_frames=20"], "rollout.num_frames"),
    (["causal.window=4", "causal.sink=2"], "causal.window"),
    (["causal.sink=3"], "causal.sink"),
    (["schedule.denoising_steps=[250,500,750]"], "schedule.denoising_steps"),
    (["schedule.denoising_steps=[1500,500]"], "schedule.denoising_steps"),
    (["schedule.min_step=0.9", "schedule.max_step=0.5"], "schedule.min_step"),
    (["optim.betas=[0.0,1.0]"], "optim.betas"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["train.generator_zero_stage=4"], "train.generator_zero_stage"),
    (["train.critic_zero_stage=-1"], "train.critic_zero_stage"),
    (["train.steps=0"], "train.steps"),
    (["optim.generator_lr=-1"], "optim.generator_lr"),
    (["model.preset=nope"], "model.preset"),
    (["model.dim=33"], "model.dim"),
    (["teacher.text_dim=8"], "teacher.text_dim"),
    (["notakeyvalue"], "notakeyvalue"),
    (["objective.meanflow.fm_fraction=1.5"], "objective.meanflow.fm_fraction"),
    (["objective.shortcut.levels=0"], "objective.shortcut.levels"),
    (["objective.ctm.gamma=-0.1"], "objective.ctm.gamma"),
    (["objective.reflow.weighting=sqrt"], "objective.reflow.weighting"),
])
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.").replace("[", r"\[")):
        load(None, overrides)


@pytest.mark.parametrize("role", ["generator", "critic"])
def test_optimizer_offload_needs_a_zero_stage(role):
    message = (f"train.{role}_offload_optimizer needs train.{role}_zero_stage >= 1 (ZeRO-Offload moves the ZeRO "
               "optimizer's partition to the CPU), got 0")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load(None, [f"train.{role}_offload_optimizer=true", f"train.{role}_zero_stage=0"])
    for stage in (1, 2, 3):
        load(None, [f"train.{role}_offload_optimizer=true", f"train.{role}_zero_stage={stage}"])
    load(None, [f"train.{role}_zero_stage=0"])                   # stage 0 alone stays valid


def test_bad_key_in_yaml_names_it(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("causal:\n  windw: 9\n")
    with pytest.raises(ValueError, match=r"causal\.windw"):
        load(f)


def test_to_yaml_round_trips(tmp_path):
    cfg = load(None, ["model.preset=mini", "teacher.preset=mini", "causal.window=9", "causal.sink=3",
                      "causal.rope_mode=relative", "schedule.denoising_steps=[1000,500]", "drift.prompts=[a,b]",
                      "optim.betas=[0.5,0.9]", "train.run_dir=runs/x"])
    f = tmp_path / "resolved.yaml"
    f.write_text(to_yaml(cfg))
    back = load(f)
    assert back == cfg
    assert dataclasses.asdict(back)["drift"]["prompts"] == ["a", "b"]
    assert to_yaml(back) == to_yaml(cfg)


@pytest.mark.parametrize("text,where,problem", [
    ("train:\n  steps: 3\n   x: 1\n", ":3:5: invalid YAML", "mapping values are not allowed"),
    ("train: {steps: [1, 2}\n", ":1:", "invalid YAML"),
    ("- 1\n- 2\n", "", "a config is a mapping of sections"),
])
def test_malformed_yaml_names_the_file_and_line(tmp_path, text, where, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}{where}") and problem in message and "\n" not in message


def test_malformed_inherited_yaml_names_the_parent(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n\tsteps: 3\n")
    (tmp_path / "child.yaml").write_text("inherit: base.yaml\n")
    with pytest.raises(ValueError, match=r"base\.yaml:2:1: invalid YAML"):
        load(tmp_path / "child.yaml")
