"""Checkpoints: atomic layout, exact resume after a crash or SIGKILL, resume on another world size, export."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from vidforce.cli import main_export
from vidforce.models.build import build_generator
from vidforce.models.loading import metadata_model_config
from vidforce.train import checkpoint, trainer
from vidforce.train.checkpoint import export_generator, find_resume, latest, resume_mode
from vidforce.train.trainer import train

from tests.train.helpers import ROOT, child_env, metrics, overrides, spawn_ranks, tiny, wait_all

LOSSES = ("loss/critic", "loss/generator", "grad_norm/critic", "grad_norm/generator")


def losses(run_dir) -> list[dict]:
    return [{k: m[k] for k in ("step", *LOSSES) if k in m} for m in metrics(run_dir)]


def test_crash_then_resume_reproduces_the_uninterrupted_losses_exactly(inputs, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    train(tiny("dmd", inputs, ref, "train.steps=7", "train.checkpoint_every=3"))
    crashed = tmp_path / "crashed"
    step = trainer.train_step

    def crash_at_5(run, i):
        if i == 5:
            raise KeyboardInterrupt("killed")
        return step(run, i)

    monkeypatch.setattr(trainer, "train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny("dmd", inputs, crashed, "train.steps=7", "train.checkpoint_every=3"))
    assert latest(crashed).name == "step_000003" and len(metrics(crashed)) == 5
    monkeypatch.setattr(trainer, "train_step", step)
    summary = train(tiny("dmd", inputs, crashed, "train.steps=7", "train.checkpoint_every=3"))
    assert summary["start_step"] == 3
    assert losses(crashed) == losses(ref)              # bit-identical, steps 4-5 recomputed and not duplicated



@pytest.mark.parametrize("stage", [2, 3])
def test_an_offloaded_optimizer_resumes_exactly(inputs, tmp_path, stage):
    """ZeRO-Offload (both engines): the host-side fp32 partitions and AdamW moments go into the checkpoint and come
    back, so a run stopped at step 3 and resumed reproduces the uninterrupted losses bit for bit."""
    offload = (f"train.generator_zero_stage={stage}", f"train.critic_zero_stage={stage}", "train.checkpoint_every=3",
               "train.generator_offload_optimizer=true", "train.critic_offload_optimizer=true")
    train(tiny("dmd", inputs, tmp_path / "ref", "train.steps=6", *offload))
    train(tiny("dmd", inputs, tmp_path / "resumed", "train.steps=3", *offload))
    assert train(tiny("dmd", inputs, tmp_path / "resumed", "train.steps=6", *offload))["start_step"] == 3
    assert losses(tmp_path / "resumed") == losses(tmp_path / "ref")

@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(inputs, tmp_path):
    run = tmp_path / "killed"
    args = [str(ROOT / "configs/tiny/dmd.yaml"), *overrides(inputs, run, "train.steps=100000",
                                                            "train.checkpoint_every=3")]
    proc = subprocess.Popen([sys.executable, "-m", "vidforce.cli", "train", *args], cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while (latest(run) is None or int(latest(run).name[5:]) < 6) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it was killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = int(latest(run).name[5:])
    steps = resumed_from + 2
    train(tiny("dmd", inputs, run, f"train.steps={steps}", "train.checkpoint_every=3"))
    ref = tmp_path / "ref"
    train(tiny("dmd", inputs, ref, f"train.steps={steps}", "train.checkpoint_every=3"))
    assert losses(run) == losses(ref)


@pytest.mark.slow
def test_resume_on_another_world_size_continues_the_loss_sequence(inputs, tmp_path):
    """2 ranks (ZeRO-2) for 4 steps, then 1 process with grad_accum=2 to step 6: module and AdamW states move
    through a universal checkpoint, so the sequence matches a 1-process run (float32 tolerance)."""
    run = tmp_path / "run"
    args = [str(ROOT / "configs/tiny/dmd.yaml"), *overrides(inputs, run, "train.steps=4")]
    wait_all(spawn_ranks(2, args, tmp_path), tmp_path)
    train(tiny("dmd", inputs, run, "train.steps=6", "train.grad_accum=2"))
    assert (run / "checkpoints" / "universal_step_000004" / "generator").is_dir()
    ref = tmp_path / "ref"
    train(tiny("dmd", inputs, ref, "train.steps=6", "train.grad_accum=2"))
    for a, b in zip(losses(run), losses(ref), strict=True):
        assert a.keys() == b.keys()
        for key in LOSSES:
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)


def test_resume_mode_picks_native_universal_or_weights(monkeypatch):
    state = {"world_size": 2, "stages": {"generator": 2, "critic": 2}}
    monkeypatch.setattr(checkpoint.dist, "world_size", lambda: 2)
    assert resume_mode(state, {"generator": 2, "critic": 2}) == "native"
    monkeypatch.setattr(checkpoint.dist, "world_size", lambda: 4)
    assert resume_mode(state, {"generator": 2, "critic": 2}) == "universal"
    assert resume_mode(state, {"generator": 3, "critic": 2}) == "weights"
    assert resume_mode({"world_size": 2, "stages": {"generator": 3}}, {"generator": 3}) == "weights"
    assert resume_mode({"world_size": 2, "stages": {"generator": 0}}, {"generator": 0}) == "native"


def test_incomplete_checkpoints_are_ignored_and_bad_resume_paths_named(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_000004").mkdir(parents=True)
    (root / "step_000004" / "trainer.pt").write_bytes(b"")
    (root / "step_000006.tmp").mkdir()                         # a save killed midway
    (root / "latest").write_text("step_000004\n")
    assert latest(tmp_path) == root / "step_000004"
    assert find_resume(tmp_path, "auto") == root / "step_000004"
    assert find_resume(tmp_path, "none") is None
    assert find_resume(tmp_path, str(tmp_path)) == root / "step_000004"
    assert checkpoint.complete_checkpoints(root) == [root / "step_000004"]
    with pytest.raises(FileNotFoundError, match="train.resume: no checkpoint at /no/run"):
        find_resume(tmp_path, "/no/run")


def test_export_writes_a_generator_that_reproduces_the_trained_one(inputs, tmp_path):
    cfg = tiny("dmd", inputs, tmp_path, "train.steps=4")
    train(cfg)
    ckpt = latest(tmp_path)
    ema_file, raw_file = tmp_path / "ema.safetensors", tmp_path / "raw.safetensors"
    assert main_export(str(tmp_path), str(ema_file), True) == 0
    export_generator(tmp_path, raw_file, ema=False)
    with safe_open(ema_file, "pt") as f:
        assert metadata_model_config(f.metadata())["dim"] == cfg.model.dim
    trained = torch.load(ckpt / "generator/state/mp_rank_00_model_states.pt", weights_only=False)["module"]
    shadow = torch.load(ckpt / "trainer.pt", weights_only=False)["ema"]["shadow"]
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 6, 12, 4, 4, generator=g), torch.rand(1, 6, generator=g) * 1000
    ctx = torch.randn(1, 8, 16, generator=g)
    for path, weights in ((raw_file, trained), (ema_file, shadow)):
        loaded = build_generator(replace(cfg, model=replace(cfg.model, checkpoint=str(path))), "cpu", torch.float32)
        reference = build_generator(cfg, "cpu", torch.float32)
        reference.load_state_dict(weights)
        with torch.no_grad():
            torch.testing.assert_close(loaded.forward_full(x, t, ctx), reference.forward_full(x, t, ctx), rtol=0, atol=0)
    assert not torch.equal(trained["head.head.weight"], shadow["head.head.weight"])   # EMA differs from raw



def test_bf16_sharded_export_loads_as_the_checkpoint_of_a_later_stage(inputs, tmp_path):
    """``dtype=bf16`` with a shard limit: every shard within the limit, the index is what to load, and the
    loaded model equals the EMA weights rounded to bf16 (what crosses device calls in the mini recipe)."""
    cfg = tiny("dmd", inputs, tmp_path, "train.steps=2")
    train(cfg)
    out = tmp_path / "model" / "model.safetensors"
    path = export_generator(tmp_path, out, dtype=torch.bfloat16, max_shard_bytes=20_000)
    shards = sorted(out.parent.glob("model-*.safetensors"))
    assert path.name == "model.safetensors.index.json" and len(shards) > 1
    assert all(f.stat().st_size <= 20_000 + 4_096 for f in shards)            # + the header
    shadow = torch.load(latest(tmp_path) / "trainer.pt", weights_only=False)["ema"]["shadow"]
    for target in (path, out.parent):                                         # the index or its directory
        loaded = build_generator(replace(cfg, model=replace(cfg.model, checkpoint=str(target))), "cpu",
                                 torch.float32)
        for name, p in loaded.state_dict().items():
            assert torch.equal(p, shadow[name].to(torch.bfloat16).float()), name

def test_export_without_a_checkpoint_names_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="export RUN_DIR: no checkpoint"):
        export_generator(tmp_path, tmp_path / "out.safetensors")


def test_rerunning_a_run_with_other_settings_is_refused_naming_them(inputs, tmp_path, monkeypatch):
    train(tiny("dmd", inputs, tmp_path, "train.steps=2"))
    saved = (tmp_path / "config.yaml").read_text()
    monkeypatch.setattr(trainer.dist, "init", lambda *a: pytest.fail("started the process group"))
    with pytest.raises(ValueError) as err:
        train(tiny("dmd", inputs, tmp_path, "train.steps=4", "optim.generator_lr=0.002", "causal.window=6"))
    message = str(err.value)
    assert message.startswith(f"train.run_dir {tmp_path} holds a run with other settings (causal.window: 0 -> 6; "
                              "optim.generator_lr: 0.001 -> 0.002): use a new train.run_dir, or train.resume=none")
    assert "train.steps" in message and "logging.*" in message and "\n" not in message
    assert (tmp_path / "config.yaml").read_text() == saved                   # not overwritten
    monkeypatch.undo()
    summary = train(tiny("dmd", inputs, tmp_path, "train.steps=4", "train.checkpoint_every=1", "train.log_every=2",
                         "logging.progress=true", "drift.window_seconds=1"))           # bookkeeping may change
    assert summary["start_step"] == 2
    summary = train(tiny("dmd", inputs, tmp_path, "train.steps=2", "optim.generator_lr=0.002", "train.resume=none"))
    assert summary["start_step"] == 0 and "generator_lr: 0.002" in (tmp_path / "config.yaml").read_text()
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path / "checkpoints")] == ["step_000002"]  # 3, 4 gone
    assert latest(tmp_path).name == "step_000002"


def test_the_global_batch_may_move_between_batch_size_and_ranks_only(tmp_path):
    ckpt = tmp_path / "checkpoints" / "step_000002"
    ckpt.mkdir(parents=True)
    (ckpt / "config.yaml").write_text("train: {batch_size: 1, grad_accum: 1}\n")
    two_ranks = SimpleNamespace(train=SimpleNamespace(batch_size=1, grad_accum=2))
    checkpoint.check_global_batch(tmp_path, ckpt, two_ranks, saved_world=2, world=1)     # 1 x 1 x 2 = 1 x 2 x 1
    with pytest.raises(ValueError, match=r"global batch train.batch_size x train.grad_accum x ranks: 1 x 1 x 2 -> "
                                         r"1 x 2 x 2\): use a new train.run_dir"):
        checkpoint.check_global_batch(tmp_path, ckpt, two_ranks, saved_world=2, world=2)
    assert checkpoint.changed_settings({"train.grad_accum": 1, "logging.wandb": True, "optim.betas": [0, 0.9]},
                                       {"train.grad_accum": 2, "logging.wandb": False, "optim.betas": [0, 0.99]}) == [
        "optim.betas: [0, 0.9] -> [0, 0.99]"]
