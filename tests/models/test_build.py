"""build_teacher / build_generator honour the config; check_checkpoint names the field a checkpoint contradicts."""
import json

import pytest
import torch

from vidforce.config import MODEL_PRESETS, ModelConfig, VidforceConfig
from vidforce.models.build import build_generator, build_teacher, check_checkpoint
from vidforce.models.causal import CausalWan
from vidforce.models.loading import config_metadata, save_safetensors
from vidforce.models.wan import WanModel
from tests.models.helpers import inputs, tiny_wan


TINY = MODEL_PRESETS["tiny"]                     # the architecture of helpers.tiny_wan()


def tiny_config(**over) -> ModelConfig:
    return ModelConfig(**{**TINY, **over})


def config(**causal) -> VidforceConfig:
    cfg = VidforceConfig(model=tiny_config(), teacher=tiny_config())
    for key, value in causal.items():
        setattr(cfg.causal, key, value)
    cfg.causal.attention = "math"
    return cfg


def outputs(model):
    x, t, ctx = inputs(model, batch=1, frames=3)
    with torch.no_grad():
        return model(x, t, ctx)


def test_generator_honours_the_config():
    cfg = config(frames_per_chunk=2, window=6, sink=2, rope_mode="relative", full_sequence="dense")
    cfg.model.num_layers, cfg.model.ffn_dim = 3, 48
    gen = build_generator(cfg, "cpu", torch.bfloat16)
    assert type(gen) is CausalWan and len(gen.blocks) == 3 and gen.blocks[0].ffn[0].out_features == 48
    assert (gen.frames_per_chunk, gen.window, gen.sink, gen.relative, gen.full_sequence, gen.attention) == \
        (2, 6, 2, True, "dense", "math")
    assert {p.dtype for p in gen.parameters()} == {torch.bfloat16} and torch.get_default_dtype() == torch.float32
    assert all(p.requires_grad for p in gen.parameters())


def test_teacher_is_frozen_and_uses_the_teacher_config():
    cfg = config()
    cfg.teacher.num_layers = 1
    teacher = build_teacher(cfg, torch.device("cpu"), torch.float32)
    assert type(teacher) is WanModel and len(teacher.blocks) == 1 and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_loads_its_checkpoint(tmp_path):
    source = tiny_wan(seed=3)
    save_safetensors(source, tmp_path / "teacher.safetensors")
    cfg = config()
    cfg.teacher.checkpoint = str(tmp_path / "teacher.safetensors")
    assert torch.equal(outputs(build_teacher(cfg, "cpu", torch.float32)), outputs(source))


@pytest.mark.parametrize("key,seed", [("generator", 1), ("generator_ema", 2), ("auto", 2)])
def test_generator_loads_the_chosen_training_entry(tmp_path, key, seed):
    state = {name: {f"model.{k}": v for k, v in tiny_wan(seed=s).state_dict().items()}
             for name, s in (("generator", 1), ("generator_ema", 2))}
    torch.save(state, tmp_path / "model.pt")
    cfg = config()
    cfg.model.checkpoint, cfg.model.checkpoint_key = str(tmp_path / "model.pt"), key
    gen = build_generator(cfg, "cpu", torch.float32)
    assert torch.equal(outputs(gen), outputs(tiny_wan(seed=seed)))


def test_check_checkpoint_names_each_mismatching_field(tmp_path):
    save_safetensors(tiny_wan(), tmp_path / "m.safetensors")
    check_checkpoint(tmp_path / "m.safetensors", tiny_config(), "model")             # fits: no error
    wrong = tiny_config(dim=2 * TINY["dim"], num_layers=TINY["num_layers"] + 1)
    with pytest.raises(ValueError) as info:
        check_checkpoint(tmp_path / "m.safetensors", wrong, "teacher")
    msg = str(info.value)
    assert f"teacher.dim is {2 * TINY['dim']} but the checkpoint has {TINY['dim']}" in msg
    assert f"teacher.num_layers is {TINY['num_layers'] + 1} but the checkpoint has {TINY['num_layers']}" in msg
    assert "num_heads" not in msg and "ffn_dim" not in msg                             # heads: not in the weights


def test_check_checkpoint_uses_stored_num_heads(tmp_path):
    stored = tiny_config(num_heads=2 * TINY["num_heads"])
    save_safetensors(tiny_wan(), tmp_path / "m.safetensors", metadata=config_metadata(stored))
    match = rf"model\.num_heads is {TINY['num_heads']} but the checkpoint has {2 * TINY['num_heads']}"
    with pytest.raises(ValueError, match=match):
        check_checkpoint(tmp_path / "m.safetensors", tiny_config(), "model")


def test_mismatching_checkpoint_fails_before_building(tmp_path, monkeypatch):
    save_safetensors(tiny_wan(ffn_dim=TINY["ffn_dim"] + 16), tmp_path / "m.safetensors")
    cfg = config()
    cfg.model.checkpoint = str(tmp_path / "m.safetensors")
    monkeypatch.setattr("vidforce.models.build.CausalWan", lambda *a, **k: pytest.fail("built before the check"))
    match = rf"model\.ffn_dim is {TINY['ffn_dim']} but the checkpoint has {TINY['ffn_dim'] + 16}"
    with pytest.raises(ValueError, match=match):
        build_generator(cfg, "cpu", torch.float32)


def test_missing_checkpoint_names_the_path(tmp_path):
    cfg = config()
    cfg.teacher.checkpoint = str(tmp_path / "gone.safetensors")
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        build_teacher(cfg, "cpu", torch.float32)


def diffusers_folder(root, **over):
    """A diffusers pipeline folder of helpers.tiny_wan(): ``transformer/`` with weights and a full config.json."""
    sub = root / "transformer"
    save_safetensors(tiny_wan(), sub / "diffusion_pytorch_model.safetensors", names="diffusers")
    config = {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.1", "added_kv_proj_dim": None,
              "attention_head_dim": TINY["dim"] // TINY["num_heads"], "cross_attn_norm": True, "eps": 1e-6,
              "ffn_dim": TINY["ffn_dim"], "freq_dim": TINY["freq_dim"], "image_dim": None,
              "in_channels": TINY["in_dim"], "num_attention_heads": TINY["num_heads"],
              "num_layers": TINY["num_layers"], "out_channels": TINY["out_dim"], "patch_size": TINY["patch_size"],
              "pos_embed_seq_len": None, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
              "text_dim": TINY["text_dim"]}
    (sub / "config.json").write_text(json.dumps({**config, **over}))
    return root


def test_check_checkpoint_accepts_a_fitting_diffusers_config(tmp_path):
    check_checkpoint(diffusers_folder(tmp_path), tiny_config(), "model")
    check_checkpoint(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors", tiny_config(), "model")
    check_checkpoint(diffusers_folder(tmp_path, out_channels=None), tiny_config(), "model")   # null: in_channels


@pytest.mark.parametrize("field,key,ours,theirs", [
    ("num_heads", "num_attention_heads", TINY["num_heads"], 4),
    ("dim // model.num_heads", "attention_head_dim", TINY["dim"] // TINY["num_heads"], 8),
    ("num_layers", "num_layers", TINY["num_layers"], 3),
    ("ffn_dim", "ffn_dim", TINY["ffn_dim"], 48),
    ("in_dim", "in_channels", TINY["in_dim"], 4),
    ("out_dim", "out_channels", TINY["out_dim"], 4),
    ("text_dim", "text_dim", TINY["text_dim"], 24),
    ("freq_dim", "freq_dim", TINY["freq_dim"], 8),
    ("patch_size", "patch_size", TINY["patch_size"], [1, 1, 1]),
    ("cross_attn_norm", "cross_attn_norm", True, False),
    ("eps", "eps", 1e-6, 1e-5),
    ("rope_max_len", "rope_max_seq_len", 1024, 512),
])
def test_check_checkpoint_names_each_diffusers_config_field_it_contradicts(tmp_path, field, key, ours, theirs):
    folder = diffusers_folder(tmp_path, **{key: theirs})
    with pytest.raises(ValueError) as info:
        check_checkpoint(folder, tiny_config(), "model")
    assert f"model.{field} is {ours!r} but config.json has {key}={theirs!r}" in str(info.value)


def test_diffusers_config_head_count_fails_the_build_though_the_weights_fit(tmp_path):
    cfg = config()
    cfg.teacher.checkpoint = str(diffusers_folder(tmp_path, num_attention_heads=4, attention_head_dim=8))
    with pytest.raises(ValueError, match=r"teacher\.num_heads is 2 but config\.json has num_attention_heads=4"):
        build_teacher(cfg, "cpu", torch.float32)


@pytest.mark.parametrize("over,match", [
    ({"qk_norm": "rms_norm"}, r"unsupported WanTransformer3DModel architecture: qk_norm='rms_norm'"),
    ({"image_dim": 1280}, r"image_dim=1280 \(vidforce implements None\)"),
    ({"window_size": [-1, -1]}, r"config keys \['window_size'\] are not understood"),
])
def test_diffusers_config_values_vidforce_cannot_run_raise(tmp_path, over, match):
    with pytest.raises(ValueError, match=match):
        check_checkpoint(diffusers_folder(tmp_path, **over), tiny_config(), "model")


def test_official_config_json_is_checked_too(tmp_path):
    save_safetensors(tiny_wan(), tmp_path / "diffusion_pytorch_model.safetensors")
    official = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v", **TINY}
    (tmp_path / "config.json").write_text(json.dumps(official))
    check_checkpoint(tmp_path, tiny_config(), "model")
    (tmp_path / "config.json").write_text(json.dumps({**official, "num_heads": 4, "text_len": 16}))
    with pytest.raises(ValueError) as info:
        check_checkpoint(tmp_path, tiny_config(), "model")
    msg = str(info.value)
    assert "model.num_heads is 2 but config.json has num_heads=4" in msg
    assert "model.text_len is 8 but config.json has text_len=16" in msg


def test_other_config_json_is_ignored(tmp_path):
    save_safetensors(tiny_wan(), tmp_path / "m.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", "num_layers": 99}))
    check_checkpoint(tmp_path / "m.safetensors", tiny_config(), "model")
