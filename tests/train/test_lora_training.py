"""LoRA shared-base training through the real trainer (tiny DMD, CPU): the loss moves, only adapters change and are
checkpointed, resume is exact, the merged export is the trained generator; config errors; the 14B meta plan."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from vidforce.config import load
from vidforce.models.build import build_generator
from vidforce.models.lora import AdapterView
from vidforce.models.wan import WanModel
from vidforce.train import trainer
from vidforce.train.checkpoint import export_generator, latest
from vidforce.train.memory_plan import plan_memory
from vidforce.train.trainer import train

from tests.train.helpers import ROOT, metrics, tiny

LORA = ("lora.enabled=true", "lora.rank=4", "lora.alpha=8.0", "train.activation_checkpointing=true")


def lora_run(inputs, run_dir, *extra):
    return tiny("dmd", inputs, run_dir, *LORA, *extra)


def test_lora_dmd_trains_only_adapters_over_one_shared_base(inputs, tmp_path):
    run = trainer.setup(lora_run(inputs, tmp_path, "train.steps=6"))
    nets = run.engines.nets()
    base = nets.teacher
    assert isinstance(nets.generator, AdapterView) and isinstance(nets.critic, AdapterView)
    assert nets.generator.shared.base is base and nets.critic.shared.base is base
    before = {n: p.detach().numpy().tobytes() for n, p in base.named_parameters()}
    adapters = {n: p.detach().clone() for n, p in nets.generator.named_parameters()}
    logs = [trainer.train_step(run, step) for step in range(6)]
    for n, p in base.named_parameters():
        assert p.detach().numpy().tobytes() == before[n], n
    assert any(not torch.equal(p, adapters[n]) for n, p in nets.generator.named_parameters())
    critic = [m["loss/critic"] for m in logs]
    gen = [m["loss/generator"] for m in logs if "loss/generator" in m]
    assert all(math.isfinite(v) for v in critic + gen) and len(set(critic)) == len(critic) and len(set(gen)) > 1
    assert set(run.ema.shadow) == {n for n, _ in nets.generator.named_parameters()}


def test_a_lora_generator_lowers_the_ode_regression_loss(inputs, tmp_path):
    """ODE init through LoRA alone (base frozen): the regression loss on fixed teacher pairs falls."""
    train(tiny("ode_init", inputs, tmp_path, *LORA, "lora.rank=8", "lora.alpha=64.0", "train.steps=30",
               "train.checkpoint_every=100"))
    loss = [m["loss/generator"] for m in metrics(tmp_path)]
    assert sum(loss[-6:]) / 6 < 0.9 * sum(loss[:6]) / 6, loss


def test_lora_resume_reproduces_the_uninterrupted_losses_exactly(inputs, tmp_path):
    ref, part = tmp_path / "ref", tmp_path / "part"
    train(lora_run(inputs, ref, "train.steps=5", "train.checkpoint_every=3"))
    train(lora_run(inputs, part, "train.steps=3", "train.checkpoint_every=3"))
    state = torch.load(latest(part) / "generator/state/mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert state and all(k.startswith("adapter.") for k in state)           # adapters only, no base copy
    summary = train(lora_run(inputs, part, "train.steps=5", "train.checkpoint_every=3"))
    assert summary["start_step"] == 3
    keys = ("step", "loss/critic", "loss/generator")
    strip = lambda run: [{k: m[k] for k in keys if k in m} for m in metrics(run)]  # noqa: E731
    assert strip(part) == strip(ref)


def test_the_merged_export_reproduces_the_trained_lora_generator(inputs, tmp_path):
    """Raw weights: the exported full generator (W + s B A, fp32) vs the trained base + adapter (atol 1e-5)."""
    cfg = lora_run(inputs, tmp_path, "train.steps=3", "train.checkpoint_every=3")
    run = trainer.setup(cfg)
    for step in range(3):
        trainer.train_step(run, step)
    trainer.save_checkpoint(run, 3)
    out = export_generator(tmp_path, tmp_path / "merged.safetensors", ema=False)
    plain = replace(cfg, lora=replace(cfg.lora, enabled=False), model=replace(cfg.model, checkpoint=str(out)))
    loaded = build_generator(plain, "cpu", torch.float32)       # what `vidforce generate` builds
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 6, 12, 4, 4, generator=g), torch.rand(1, 6, generator=g) * 1000
    ctx = torch.randn(1, 8, 16, generator=g)
    view = run.engines.generator.module
    with torch.no_grad():
        want, base = view.forward_full(x, t, ctx), view.shared.base.forward_full(x, t, ctx)
        got = loaded.forward_full(x, t, ctx)
    assert not torch.equal(want, base)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert export_generator(tmp_path, tmp_path / "ema.safetensors", ema=True).is_file()


def test_a_critic_of_its_own_size_beside_the_shared_base(inputs, tmp_path):
    from tests.models.helpers import tiny_wan
    own = tiny_wan(seed=5, num_layers=1)
    weights = tmp_path / "critic.pt"
    torch.save(own.state_dict(), weights)
    run = trainer.setup(lora_run(inputs, tmp_path, "critic.preset=tiny", f"critic.checkpoint={weights}",
                                 "critic.num_layers=1"))
    nets = run.engines.nets()
    assert type(nets.critic) is WanModel and nets.critic.arch.num_layers == 1
    assert all(p.requires_grad for p in nets.critic.parameters())
    assert "critic" not in nets.generator.shared.adapters
    assert math.isfinite(trainer.train_step(run, 0)["loss/critic"])


@pytest.mark.parametrize("override, message", [
    ("lora.rank=0", "lora.rank must be > 0"),
    ("lora.alpha=0", "lora.alpha must be > 0"),
    ("lora.dropout=1.0", "lora.dropout must be in [0, 1)"),
    ("lora.target_modules=[self_attn.q,mlp]", "lora.target_modules must be"),
    ("lora.target_modules=[]", "lora.target_modules must be"),
    ("train.teacher_zero3=true", "train.teacher_zero3"),
    ("train.generator_zero_stage=3", "train.generator_zero_stage is 3"),
    ("train.critic_zero_stage=3", "train.critic_zero_stage is 3"),
    ("teacher.num_layers=3", "teacher.num_layers (3) must equal model.num_layers (2)"),
    ("model.checkpoint=a.pt", "model.checkpoint (a.pt) must be empty or equal teacher.checkpoint"),
    ("lora.rank=x", "lora.rank"),
])
def test_lora_config_errors_name_the_key(override, message):
    extra = ["teacher.checkpoint=b.pt"] if override.startswith("model.checkpoint") else []
    with pytest.raises(ValueError) as err:
        load(ROOT / "configs/tiny/dmd.yaml", ["lora.enabled=true", *extra, override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_lora_is_off_by_default():
    assert load(ROOT / "configs/tiny/dmd.yaml").lora.enabled is False


def test_the_14b_lora_config_builds_on_meta_and_plans_one_gpu():
    cfg = load(ROOT / "configs/wan14b/self_forcing_dmd_lora.yaml")
    plans = plan_memory(cfg, gpus=1)
    lora, full = plans["lora"], plans["full"]
    assert 14.0e9 < lora.base_params < 14.5e9                    # Wan2.1-T2V-14B
    r, layers, d, f = cfg.lora.rank, cfg.model.num_layers, cfg.model.dim, cfg.model.ffn_dim
    assert lora.generator_params == lora.critic_params == r * layers * (8 * 2 * d + 2 * (d + f))
    assert lora.frozen_gib == pytest.approx(2 * lora.base_params / 2 ** 30)
    assert lora.trained_gib == pytest.approx(2 * 16 * lora.generator_params / 2 ** 30)
    assert lora.total_gib < 40 < 141 < full.total_gib               # one H200 (141 GB) vs three copies
    assert full.trained_gib == pytest.approx(2 * 16 * full.base_params / 2 ** 30)
    assert lora.host_gib == full.host_gib == 0.0


def test_offloaded_optimizers_leave_the_gpu_for_host_memory():
    """ZeRO-Offload of both 14B engines over 2 GPUs (ZeRO-2): master weights and moments (12 bytes / parameter)
    leave each GPU; the host holds them plus an fp32 gradient partition (16 bytes), partitioned over the GPUs."""
    cfg = load(ROOT / "configs/wan14b/self_forcing_dmd_lora.yaml")
    plain = plan_memory(cfg, gpus=2)["full"]
    offloaded = plan_memory(load(ROOT / "configs/wan14b/self_forcing_dmd_lora.yaml",
                                 ["train.generator_offload_optimizer=true", "train.critic_offload_optimizer=true"]),
                            gpus=2)["full"]
    both = offloaded.generator_params + offloaded.critic_params
    assert plain.trained_gib - offloaded.trained_gib == pytest.approx(12 * both / 2 / 2 ** 30)
    assert offloaded.host_gib == pytest.approx(16 * both / 2 / 2 ** 30)
    assert offloaded.frozen_gib == plain.frozen_gib and offloaded.total_gib < 141 < plain.total_gib  # fits an H200
