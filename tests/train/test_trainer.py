"""The training loop on tiny models (CPU): runs, metrics, every objective, loss decrease, 2 ranks vs 1."""
from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from vidforce.cli import main_train
from vidforce.train import checkpoint, trainer
from vidforce.train.trainer import train, train_step

from tests.train.helpers import ROOT, child_env, metrics, overrides, spawn_ranks, tiny, wait_all

OBJECTIVES = ("dmd", "sid", "gan", "ode_init", "teacher_forcing", "diffusion_forcing", "flow_matching",
              "extended_dmd")


def test_dmd_run_writes_metrics_and_keeps_last_checkpoints(inputs, tmp_path):
    cfg = tiny("dmd", inputs, tmp_path, "train.steps=5", "train.checkpoint_every=2", "train.keep_last=2")
    summary = train(cfg)
    lines = metrics(tmp_path)
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5]
    assert all("loss/critic" in m and "grad_norm/critic" in m for m in lines)      # critic every step
    assert [m["step"] for m in lines if "loss/generator" in m] == [1, 3, 5]        # gen_update_every = 2
    for m in lines:
        assert all(math.isfinite(v) for v in m.values())
        assert m["step_time_s"] > 0 and m["tokens_per_s"] > 0 and m["peak_memory_gb"] > 0
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000004", "step_000005"]
    assert (root / "latest").read_text().strip() == "step_000005"
    assert summary["checkpoint"] == str(root / "step_000005")
    ckpt = root / "step_000005"
    for name in ("trainer.pt", "rank_00000.pt", "config.yaml", "generator/state", "critic/state"):
        assert (ckpt / name).exists(), name
    state = torch.load(ckpt / "trainer.pt", weights_only=False)
    assert state["step"] == 5 and state["world_size"] == 1 and state["stages"] == {"generator": 2, "critic": 2}
    assert state["ema"]["shadow"].keys() == torch.load(ckpt / "generator/state/mp_rank_00_model_states.pt",
                                                       weights_only=False)["module"].keys()


@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_objective_trains_through_the_trainer(inputs, tmp_path, name):
    train(tiny(name, inputs, tmp_path, "train.steps=2", "train.checkpoint_every=100"))
    first = metrics(tmp_path)[0]
    assert "loss/generator" in first and math.isfinite(first["loss/generator"])
    assert ("loss/critic" in first) == (name in ("dmd", "sid", "gan", "extended_dmd"))


DECREASING = [   # (objective, metric, steps, overrides): small problems where the trained loss must fall
    ("ode_init", "loss/generator", 30, ()),
    ("teacher_forcing", "loss/generator", 30, ("train.batch_size=4",)),
    ("diffusion_forcing", "loss/generator", 30, ("train.batch_size=4",)),
    # SiD against a frozen critic: the generator loss is then exactly what the generator descends.
    ("sid", "loss/generator", 20, ("objective.gen_update_every=1", "optim.critic_lr=0.0")),
    # the discriminator against a frozen generator, at moderate noise where clips are told apart.
    ("dmd_gan", "disc_loss", 30, ("objective.gan.weight=1.0", "optim.generator_lr=0.0", "schedule.max_step=0.5",
                                  "train.batch_size=2")),
    ("gan", "disc_loss", 30, ("objective.gan.weight=1.0", "optim.generator_lr=0.0", "schedule.max_step=0.5",
                              "train.batch_size=2")),
]


@pytest.mark.parametrize("name,key,steps,extra", DECREASING, ids=[d[0] for d in DECREASING])
def test_objective_lowers_its_loss(inputs, tmp_path, name, key, steps, extra):
    train(tiny(name, inputs, tmp_path, f"train.steps={steps}", "train.checkpoint_every=1000", *extra))
    values = [m[key] for m in metrics(tmp_path) if key in m]
    n = len(values) // 5
    first, last = np.mean(values[:n]), np.mean(values[-n:])
    assert last < first, f"{name}: mean {key} of the first {n} steps {first:.4f}, of the last {n} {last:.4f}"


def test_missing_inputs_fail_before_any_model_is_built(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "build_engines", lambda *a: pytest.fail("built engines"))
    with pytest.raises(FileNotFoundError, match="teacher.checkpoint not found: /no/teacher"):
        train(tiny("dmd", inputs, tmp_path, "teacher.checkpoint=/no/teacher"))
    with pytest.raises(FileNotFoundError, match="/no/prompts.txt"):
        train(tiny("dmd", inputs, tmp_path, "data.prompts=/no/prompts.txt"))
    with pytest.raises(ValueError, match="data.videos is empty"):
        train(tiny("teacher_forcing", inputs, tmp_path, "data.videos=''"))
    with pytest.raises(FileNotFoundError, match="objective.ode_init.pairs not found"):
        train(tiny("ode_init", inputs, tmp_path, "objective.ode_init.pairs=/no/pairs.safetensors"))
    with pytest.raises(ValueError, match="drift.prompts"):
        train(tiny("dmd", inputs, tmp_path, "drift.every=1"))


def test_main_train_dry_run_prints_the_resolved_config(inputs, tmp_path, capsys):
    assert main_train(str(ROOT / "configs/tiny/dmd.yaml"), overrides(inputs, tmp_path), True) == 0
    out = capsys.readouterr().out
    assert "name: dmd" in out and "generator_zero_stage: 2" in out
    assert not (tmp_path / "metrics.jsonl").exists()


COMPARED = ("loss/critic", "loss/generator", "dmd_grad_norm", "grad_norm/critic", "grad_norm/generator")


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_gloo_ranks_match_one_process(inputs, tmp_path, stage):
    """Global batch 2: one process with grad_accum=2 vs two ranks with grad_accum=1 (ZeRO-2 / ZeRO-3 with a
    partitioned teacher). Samples and noise are the same by construction; the tolerance covers float32
    summation order (gradient all-reduce vs accumulation, 1 vs 2 threads): observed differences ~1e-7."""
    one = tmp_path / "one"
    train(tiny("dmd", inputs, one, "train.steps=4", "train.grad_accum=2"))
    two = tmp_path / "two"
    args = [str(ROOT / "configs/tiny/dmd.yaml"), *overrides(inputs, two, "train.steps=4"),
            f"train.generator_zero_stage={stage}", f"train.critic_zero_stage={stage}",
            f"train.teacher_zero3={str(stage == 3).lower()}"]
    wait_all(spawn_ranks(2, args, tmp_path), tmp_path)
    a, b = metrics(one), metrics(two)
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in COMPARED:
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), (x["step"], key)


def test_activation_checkpointing_keeps_sid_losses(inputs, tmp_path):
    """SiD's generator loss sends gradients through the critic's inputs: with per-block checkpointing the
    recomputed graph must match the saved one (the critic stays frozen for the whole generator turn)."""
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    train(tiny("sid", inputs, plain, "train.steps=3"))
    train(tiny("sid", inputs, ckpt, "train.steps=3", "train.activation_checkpointing=true"))
    for a, b in zip(metrics(plain), metrics(ckpt), strict=True):
        for key in COMPARED + ("sid_loss",):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6), (a["step"], key)


def test_rollout_cuda_graphs_keep_extended_dmd_losses(inputs, tmp_path, monkeypatch):
    """``rollout.cuda_graphs`` on CPU (the runner's static buffers, eager) gives the plain run's losses exactly, over
    critic and generator turns and optimizer steps (one runner for the run, its graphs reused)."""
    runners = []

    class Recorded(trainer.GraphedChunks):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            runners.append(self)
    monkeypatch.setattr(trainer, "GraphedChunks", Recorded)
    plain, graphed = tmp_path / "plain", tmp_path / "graphed"
    train(tiny("extended_dmd", inputs, plain, "train.steps=2"))
    train(tiny("extended_dmd", inputs, graphed, "train.steps=2", "rollout.cuda_graphs=true"))
    assert len(runners) == 1 and runners[0].graphs
    lines = list(zip(metrics(plain), metrics(graphed), strict=True))
    assert "loss/generator" in lines[0][0]
    for a, b in lines:
        assert {k: a[k] for k in COMPARED if k in a} == {k: b[k] for k in COMPARED if k in b}


def test_a_missing_data_file_fails_fast_before_deepspeed_is_imported(tmp_path):
    """The check of every input comes before the process group: no DeepSpeed import (and op build) first."""
    code = ("import sys, time; from vidforce.cli import main; t = time.perf_counter(); "
            f"rc = main(['train', {str(ROOT / 'configs/tiny/dmd.yaml')!r}, 'data.prompts=/no/prompts.txt', "
            f"'train.run_dir={tmp_path / 'run'}']); "
            "print(rc, 'deepspeed' in sys.modules, time.perf_counter() - t)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    rc, imported, seconds = run.stdout.split()
    assert (rc, imported) == ("2", "False") and float(seconds) < 20, run.stdout     # the op build took 50-60 s
    assert run.stderr.strip() == "vidforce train: error: data.prompts not found: /no/prompts.txt"
    assert not (tmp_path / "run").exists()


def test_the_run_dir_and_the_data_of_the_objective_are_checked_first(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer.dist, "init", lambda *a: pytest.fail("started the process group"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="train.run_dir .*file/run: .*file is a file, not a directory"):
        train(tiny("dmd", inputs, tmp_path / "file" / "run"))
    with pytest.raises(ValueError, match="data.prompts is empty: objective.name=dmd reads prompts"):
        train(tiny("dmd", inputs, tmp_path, "data.prompts=''"))
    with pytest.raises(FileNotFoundError, match="data.world not found: /no/world.json"):
        train(tiny("teacher_forcing", inputs, tmp_path, "data.world=/no/world.json"))
    with pytest.raises(FileNotFoundError, match="objective.ode_init.pairs not found"):
        train(tiny("ode_init", inputs, tmp_path, "objective.ode_init.pairs=/no/pairs.safetensors"))
    with pytest.raises(FileNotFoundError, match="train.resume: no checkpoint at /no/run"):
        train(tiny("dmd", inputs, tmp_path, "train.resume=/no/run"))


def stop_at(monkeypatch, signum: int, step_index: int) -> None:
    """Send ``signum`` to this process at the start of step ``step_index`` (0-based)."""
    step = trainer.train_step

    def signalled(run, i):
        if i == step_index:
            os.kill(os.getpid(), signum)
        return step(run, i)

    monkeypatch.setattr(trainer, "train_step", signalled)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_step_saves_and_names_the_resume_command(inputs, tmp_path, monkeypatch, capsys,
                                                                           signum):
    """Ctrl-C / SIGTERM at step 3 of 5: a checkpoint of step 3 (between the every-2 checkpoints), the resume
    command, exit status 130; the rerun (once) says where it resumed and ends on the uninterrupted losses."""
    monkeypatch.setattr(trainer.dist, "shutdown", lambda: None)      # the process group serves the later tests
    config, args = str(ROOT / "configs/tiny/dmd.yaml"), overrides(inputs, tmp_path / "run", "train.steps=5")
    stop_at(monkeypatch, signum, 2)
    handler = signal.getsignal(signum)
    assert main_train(config, args, False) == 130
    step3 = tmp_path / "run" / "checkpoints" / "step_000003"
    err = capsys.readouterr().err.strip().splitlines()
    command = shlex.join(["vidforce", "train", config, *args])
    assert err == [f"interrupted at step 3; checkpoint {step3}; resume with: {command} (train.resume=auto)"]
    assert checkpoint.latest(tmp_path / "run") == step3 and len(metrics(tmp_path / "run")) == 3
    assert signal.getsignal(signum) is handler                                   # the handlers are restored
    if signum == signal.SIGTERM:
        return
    monkeypatch.setattr(trainer, "train_step", train_step)
    assert main_train(config, args, False) == 0
    assert capsys.readouterr().err.strip().splitlines() == [f"resumed from step 3 ({step3})"]
    train(tiny("dmd", inputs, tmp_path / "ref", "train.steps=5"))
    assert metrics_without_time(tmp_path / "run") == metrics_without_time(tmp_path / "ref")


def metrics_without_time(run_dir):
    return [{k: v for k, v in m.items() if k not in ("step_time_s", "tokens_per_s", "peak_memory_gb")}
            for m in metrics(run_dir)]


def test_a_second_signal_interrupts_at_once():
    before = signal.getsignal(signal.SIGINT)     # default_int_handler, or SIG_IGN under a background shell
    with trainer.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT and stop.agreed()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before                             # restored, whatever it was


@pytest.mark.slow
def test_sigterm_to_the_command_saves_and_exits_130(inputs, tmp_path):
    """The real process (formerly a silent exit 143): checkpoint, one message, no traceback."""
    run = tmp_path / "run"
    args = [str(ROOT / "configs/tiny/dmd.yaml"), *overrides(inputs, run, "train.steps=100000",
                                                            "train.checkpoint_every=1000")]
    proc = subprocess.Popen([sys.executable, "-m", "vidforce.cli", "train", *args], cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not (run / "metrics.jsonl").is_file() or len(metrics(run)) < 2):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = checkpoint.latest(run)
    assert "Traceback" not in err and f"interrupted at step {int(done.name[5:])}; checkpoint {done}; resume" in err
