"""Checkpoint formats round-trip into fresh models and reproduce the source model's outputs exactly."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vidforce.cli import main_convert
from vidforce.config import MODEL_PRESETS, ModelConfig, load
from vidforce.models.build import build_generator, build_teacher
from vidforce.models.loading import (
    CheckpointMismatchError, Checkpoint, config_metadata, diffusers_to_wan_key, infer_arch, load_into,
    save_safetensors, wan_to_diffusers_key)
from tests.models.helpers import inputs, tiny_wan

REPO = Path(__file__).resolve().parents[2]


def outputs(model):
    x, t, ctx = inputs(model, batch=1, frames=3)
    with torch.no_grad():
        return model(x, t, ctx)


def assert_same_model(source, path, **kw):
    """Load ``path`` into a differently initialised model: the outputs must equal the source's."""
    fresh = tiny_wan(seed=123)
    assert not torch.equal(outputs(fresh), outputs(source))
    load_into(fresh, path, **kw)
    assert torch.equal(outputs(fresh), outputs(source))


def test_official_single_file_and_its_folder(tmp_path):
    model = tiny_wan(seed=0)
    save_file(model.state_dict(), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "Wan2.1_VAE.pth").write_bytes(b"not the DiT")       # the official folder holds other files too
    assert_same_model(model, tmp_path / "diffusion_pytorch_model.safetensors")
    assert_same_model(model, tmp_path)


def test_official_torch_file(tmp_path):
    model = tiny_wan(seed=0)
    torch.save(model.state_dict(), tmp_path / "dit.pth")
    assert_same_model(model, tmp_path / "dit.pth")


def test_sharded_safetensors_with_index(tmp_path):
    model = tiny_wan(seed=0)
    out = tmp_path / "diffusion_pytorch_model.safetensors"
    written = save_safetensors(model, out, max_shard_bytes=20_000)
    shards = [p for p in written if p.suffix == ".safetensors"]
    assert len(shards) > 2 and shards[0].name == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in model.state_dict().values())
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))
    assert_same_model(model, tmp_path / "diffusion_pytorch_model.safetensors.index.json")
    assert_same_model(model, tmp_path)


def test_missing_shard_names_it(tmp_path):
    written = save_safetensors(tiny_wan(), tmp_path / "m.safetensors", max_shard_bytes=20_000)
    written[1].unlink()
    with pytest.raises(FileNotFoundError, match=written[1].name):
        Checkpoint(tmp_path / "m.safetensors.index.json")


def test_diffusers_names_verified_and_round_trip(tmp_path):
    model = tiny_wan(seed=0)
    sd = model.state_dict()
    d = {wan_to_diffusers_key(k): v for k, v in sd.items()}
    expected = {"condition_embedder.text_embedder.linear_1.weight": "text_embedding.0.weight",
                "condition_embedder.time_embedder.linear_2.bias": "time_embedding.2.bias",
                "condition_embedder.time_proj.weight": "time_projection.1.weight",
                "blocks.1.attn1.to_q.weight": "blocks.1.self_attn.q.weight",
                "blocks.0.attn1.norm_k.weight": "blocks.0.self_attn.norm_k.weight",
                "blocks.0.attn2.to_out.0.bias": "blocks.0.cross_attn.o.bias",
                "blocks.0.norm2.weight": "blocks.0.norm3.weight",
                "blocks.0.ffn.net.0.proj.weight": "blocks.0.ffn.0.weight",
                "blocks.0.ffn.net.2.weight": "blocks.0.ffn.2.weight",
                "blocks.1.scale_shift_table": "blocks.1.modulation",
                "scale_shift_table": "head.modulation", "proj_out.weight": "head.head.weight",
                "patch_embedding.weight": "patch_embedding.weight"}
    for theirs, ours in expected.items():
        assert d[theirs] is sd[ours]
    dim = model.arch.dim
    assert d["scale_shift_table"].shape == (1, 2, dim) and d["blocks.0.scale_shift_table"].shape == (1, 6, dim)
    assert len(d) == len(sd) and [diffusers_to_wan_key(k) for k in d] == list(sd)
    pipeline = tmp_path / "pipe" / "transformer"
    save_safetensors(model, pipeline / "diffusion_pytorch_model.safetensors", names="diffusers")
    assert Checkpoint(pipeline.parent).names == "diffusers"
    assert_same_model(model, tmp_path / "pipe")


def wrapped(model):
    """Keys as Self-Forcing saves them: ``model.`` wrapper prefix plus FSDP / activation-checkpoint / compile
    fragments (``_fsdp_wrapped_module.model.blocks.0._checkpoint_wrapped_module.ffn.0.weight``)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("blocks."):
            _, n, rest = k.split(".", 2)
            k = f"blocks.{n}._fsdp_wrapped_module._checkpoint_wrapped_module.{rest}"
        out[f"_fsdp_wrapped_module.model.{k}" if "embedding" in k else f"model._orig_mod.{k}"] = v
    return out


def self_forcing_checkpoint(path, generator, ema):
    torch.save({"generator": wrapped(generator), "generator_ema": wrapped(ema), "critic": wrapped(tiny_wan(seed=9))},
               path)


def test_self_forcing_training_checkpoint(tmp_path):
    gen, ema = tiny_wan(seed=1), tiny_wan(seed=2)
    path = tmp_path / "model.pt"
    self_forcing_checkpoint(path, gen, ema)
    assert_same_model(ema, path)                                  # auto prefers generator_ema
    assert_same_model(gen, path, checkpoint_key="generator")
    assert_same_model(ema, tmp_path, checkpoint_key="generator_ema")
    assert Checkpoint(path).entry == "generator_ema"
    with pytest.raises(ValueError, match="generator_ema.*critic"):
        Checkpoint(path, checkpoint_key="teacher")


def test_generator_only_checkpoint(tmp_path):
    model = tiny_wan(seed=4)
    torch.save({"generator": wrapped(model), "step": 600}, tmp_path / "ode_init.pt")
    assert_same_model(model, tmp_path / "ode_init.pt")
    assert_same_model(model, tmp_path / "ode_init.pt", checkpoint_key="generator")


def test_plain_file_rejects_a_checkpoint_key(tmp_path):
    save_file(tiny_wan().state_dict(), str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="checkpoint_key='generator'.*auto"):
        load_into(tiny_wan(), tmp_path / "m.safetensors", checkpoint_key="generator")


def test_our_export_keeps_the_model_config(tmp_path):
    cfg = ModelConfig(**{**MODEL_PRESETS["tiny"], "num_heads": 4})                   # stored, not inferred
    model = tiny_wan(seed=5)
    save_safetensors(model, tmp_path / "export.safetensors", metadata=config_metadata(cfg))
    ckpt = Checkpoint(tmp_path / "export.safetensors")
    assert json.loads(ckpt.metadata["model_config"])["num_heads"] == 4
    assert infer_arch(ckpt.shapes, ckpt.metadata)["num_heads"] == 4
    assert_same_model(model, tmp_path / "export.safetensors")


def test_infer_arch_recovers_dims():
    tiny = MODEL_PRESETS["tiny"]
    arch = infer_arch(tiny_wan().state_dict())
    assert arch == {**{k: tiny[k] for k in arch if k != "cross_attn_norm"}, "cross_attn_norm": True}
    custom = infer_arch(tiny_wan(num_layers=3, ffn_dim=48, text_dim=24, freq_dim=8, in_dim=6, out_dim=5,
                                 patch_size=[1, 1, 2]).state_dict())
    assert custom == dict(dim=32, ffn_dim=48, num_heads=None, num_layers=3, text_dim=24, freq_dim=8, in_dim=6,
                          out_dim=5, patch_size=[1, 1, 2], cross_attn_norm=True)


def test_mismatch_lists_each_category(tmp_path):
    sd = dict(tiny_wan().state_dict())
    del sd["blocks.1.norm3.bias"]
    sd["blocks.0.extra.weight"] = torch.zeros(3)
    sd["blocks.0.ffn.0.weight"] = torch.zeros(65, 32)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointMismatchError) as info:
        load_into(tiny_wan(), tmp_path / "bad.safetensors")
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and "bad.safetensors" in msg
    assert "missing (1): blocks.1.norm3.bias" in msg and "unexpected (1): blocks.0.extra.weight" in msg
    assert "wrong shape (1): blocks.0.ffn.0.weight expected (64, 32) found (65, 32)" in msg


def test_mismatch_truncates_long_lists_with_counts(tmp_path):
    save_file(tiny_wan(num_layers=1).state_dict(), str(tmp_path / "short.safetensors"))
    per_block = len([k for k in tiny_wan().state_dict() if k.startswith("blocks.1.")])
    pattern = rf"missing \({per_block}\): blocks\.1\..*and {per_block - 10} more"
    with pytest.raises(CheckpointMismatchError, match=pattern) as info:
        load_into(tiny_wan(num_layers=2), tmp_path / "short.safetensors")
    assert "unexpected" not in str(info.value) and len(str(info.value)) < 2000


def test_non_strict_loads_the_rest(tmp_path):
    source = tiny_wan(seed=6)
    sd = {k: v for k, v in source.state_dict().items() if k != "head.modulation"}
    save_file({**sd, "junk": torch.zeros(1)}, str(tmp_path / "partial.safetensors"))
    fresh = tiny_wan(seed=7)
    report = load_into(fresh, tmp_path / "partial.safetensors", strict=False)
    assert report.missing == ["head.modulation"] and report.unexpected == ["junk"]
    assert torch.equal(fresh.blocks[1].ffn[2].weight, source.blocks[1].ffn[2].weight)
    assert not torch.equal(fresh.head.modulation, source.head.modulation)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_into(tiny_wan(), tmp_path / "nowhere.safetensors")


def test_format_override_and_dtype_cast(tmp_path):
    save_safetensors(tiny_wan(), tmp_path / "d.safetensors", names="diffusers")
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_into(tiny_wan(), tmp_path / "d.safetensors", fmt="wan")
    sd = dict(Checkpoint(tmp_path / "d.safetensors").tensors(torch.bfloat16))
    assert sd.keys() == tiny_wan().state_dict().keys() and {v.dtype for v in sd.values()} == {torch.bfloat16}


def test_convert_sharded_diffusers_and_back(tmp_path, capsys):
    gen, ema = tiny_wan(seed=1), tiny_wan(seed=2)
    self_forcing_checkpoint(tmp_path / "model.pt", gen, ema)
    out = tmp_path / "diff" / "diffusion_pytorch_model.safetensors"
    out.parent.mkdir()
    assert main_convert([str(tmp_path / "model.pt"), str(out), "--to", "diffusers", "--max-shard-size", "20KB",
                         "--checkpoint-key", "generator"]) == 0
    assert "generator" in capsys.readouterr().out
    assert Checkpoint(out.parent).names == "diffusers" and len(list(out.parent.glob("*-of-*"))) > 1
    assert_same_model(gen, out.parent)
    main_convert([str(out.parent), str(tmp_path / "wan.safetensors"), "--dtype", "fp32"])
    assert Checkpoint(tmp_path / "wan.safetensors").names == "wan"
    assert_same_model(gen, tmp_path / "wan.safetensors")


def test_tool_reports_bad_input_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "tools/convert_checkpoint.py", str(tmp_path / "none.pt"),
                          str(tmp_path / "o.safetensors")], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'none.pt'}"


@pytest.mark.parametrize("field", ["model", "teacher"])
def test_critic_entry_loads_through_the_config(tmp_path, field):
    """``checkpoint_key: critic`` passes config validation and picks the training checkpoint's critic."""
    self_forcing_checkpoint(tmp_path / "model.pt", tiny_wan(seed=1), tiny_wan(seed=2))
    cfg = load(None, [f"{field}.checkpoint={tmp_path / 'model.pt'}", f"{field}.checkpoint_key=critic",
                      "causal.attention=math"])
    built = (build_generator if field == "model" else build_teacher)(cfg, "cpu", torch.float32)
    assert torch.equal(outputs(built), outputs(tiny_wan(seed=9)))


def test_unreadable_files_name_themselves_in_one_line(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 100)                  # an 8-byte header length far beyond the file: "header too large"
    with pytest.raises(ValueError) as err:
        Checkpoint(bad)
    assert str(err.value).startswith(f"{bad} is not a readable safetensors file: ") and "\n" not in str(err.value)
    for name, data in (("junk.pt", b"\xff" * 100), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name} is not a readable torch checkpoint: "):
            Checkpoint(tmp_path / name)


def fake_run(root: Path) -> Path:
    """The files ``Checkpoint`` sees of a vidforce run: checkpoints/latest -> step_000002 with trainer.pt and an
    engine folder."""
    step = root / "checkpoints" / "step_000002"
    (step / "generator" / "state").mkdir(parents=True)
    torch.save({"step": 2}, step / "trainer.pt")
    torch.save({"module": tiny_wan().state_dict()}, step / "generator" / "state" / "mp_rank_00_model_states.pt")
    (root / "checkpoints" / "latest").write_text("step_000002\n")
    return step


def test_a_training_checkpoint_is_refused_with_the_export_command(tmp_path):
    run = tmp_path / "run"
    step = fake_run(run)
    for given, export in ((run, run), (run / "checkpoints", run), (step, step), (step / "trainer.pt", step),
                          (step / "generator", step), (step / "generator/state/mp_rank_00_model_states.pt", step)):
        with pytest.raises(ValueError) as err:
            Checkpoint(given)
        assert str(err.value) == (f"{given} is a vidforce training checkpoint, not model weights: run `vidforce export "
                                  f"{export} --out FILE.safetensors` and load FILE.safetensors")
    save_safetensors(tiny_wan(), run / "export.safetensors")                 # weights kept beside the run load
    assert_same_model(tiny_wan(), run / "export.safetensors")


def test_safetensors_files_get_the_umask_mode(tmp_path):
    """safetensors writes its file 0600; ours are 0666 & ~umask like any file (here 0644, and 0640)."""
    old = os.umask(0o022)
    try:
        written = save_safetensors(tiny_wan(), tmp_path / "a.safetensors")
        written += save_safetensors(tiny_wan(), tmp_path / "s" / "b.safetensors", max_shard_bytes=20_000)
        assert len(written) > 2 and {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}
        os.umask(0o027)
        assert stat.S_IMODE(save_safetensors(tiny_wan(), tmp_path / "c.safetensors")[0].stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_an_output_that_is_a_directory_is_named(tmp_path):
    (tmp_path / "x.safetensors").mkdir()
    with pytest.raises(ValueError, match="x.safetensors is a directory"):
        save_safetensors(tiny_wan(), tmp_path / "x.safetensors")
