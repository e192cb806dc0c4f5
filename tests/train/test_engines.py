"""Engine construction: DeepSpeed configs, the critic as a deep copy of the teacher, frozen teacher."""
from __future__ import annotations

import torch

import pytest

from vidforce import objectives
from vidforce.config import load
from vidforce.models.loading import save_safetensors
from vidforce.objectives.gan import CriticWithHead
from vidforce.train import dist, trainer
from vidforce.train.engines import adamw, build_modules, ds_config, uses_cpu_adam, wrap_engines

from tests.train.helpers import PROMPTS, ROOT, tiny


F_LINEAR = torch.nn.functional.linear          # as imported, before any test builds an engine


def cfg_of(*overrides: str):
    return load(ROOT / "configs/tiny/base.yaml", ["data.prompts=unused.txt", *overrides])


def modules_of(cfg):
    return build_modules(cfg, objectives.build(cfg), torch.device("cpu"))


def test_ds_config_sets_clipping_precision_batch_and_stage_explicitly():
    cfg = cfg_of("optim.grad_clip=7.5", "train.precision=bf16", "train.batch_size=3", "train.grad_accum=4")
    c = ds_config(cfg, 3)
    assert c["gradient_clipping"] == 7.5                      # DeepSpeed >= 0.19.3 would default to 1.0
    assert c["bf16"] == {"enabled": True}
    assert c["train_micro_batch_size_per_gpu"] == 3 and c["gradient_accumulation_steps"] == 4
    assert c["zero_optimization"] == {"stage": 3, "memory_efficient_linear": False}   # F.linear left alone
    assert ds_config(cfg, 2)["zero_optimization"] == {"stage": 2}
    assert c["checkpoint"] == {"load_universal": False}
    assert ds_config(cfg_of("train.precision=fp32"), 0, universal=True)["bf16"] == {"enabled": False}
    assert ds_config(cfg_of(), 0, universal=True)["checkpoint"] == {"load_universal": True}


def test_ds_config_offloads_the_optimizer_only_when_asked():
    cfg = cfg_of()
    plain = ds_config(cfg, 2)
    assert plain["zero_optimization"] == {"stage": 2} and "zero_force_ds_cpu_optimizer" not in plain
    c = ds_config(cfg, 2, offload_from=torch.device("cuda"))
    assert c["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}}
    assert c["zero_force_ds_cpu_optimizer"] is False          # our optimizer choice, torch AdamW included, stands
    cpu = ds_config(cfg, 1, offload_from=torch.device("cpu"))["zero_optimization"]["offload_optimizer"]
    assert cpu == {"device": "cpu", "pin_memory": False}      # nothing to pin without CUDA
    assert not uses_cpu_adam(None) and not uses_cpu_adam(torch.device("cpu"))   # torch AdamW, no op build


def test_adamw_uses_the_configured_hyperparameters():
    cfg = cfg_of("optim.betas=[0,0.999]", "optim.weight_decay=0.05")
    opt = adamw(torch.nn.Linear(2, 2), 1e-4, cfg.optim)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.0, 0.999) and opt.defaults["weight_decay"] == 0.05
    assert opt.defaults["lr"] == 1e-4


def test_critic_is_a_separate_copy_of_the_teacher_and_the_teacher_is_frozen():
    modules = modules_of(cfg_of("objective.name=dmd", "train.activation_checkpointing=true"))
    teacher, critic = modules["teacher"], modules["critic"]
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in critic.parameters()}
    for (name, p), (_, q) in zip(teacher.named_parameters(), critic.named_parameters()):
        assert torch.equal(p, q), name
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert all(p.requires_grad for p in critic.parameters())
    assert all(m.gradient_checkpointing for m in modules.values())
    assert modules["generator"].frames_per_chunk == 3


@pytest.mark.parametrize("name", ["gan", "dmd_gan"])
def test_same_seed_same_weights_and_gan_critic_has_a_head(name):
    a, b = modules_of(cfg_of(f"objective.name={name}")), modules_of(cfg_of(f"objective.name={name}"))
    assert isinstance(a["critic"], CriticWithHead)                # the objective's head, not the trainer's
    assert ("teacher" in a) == (name == "dmd_gan")                # GAN only needs no real score
    for name in ("generator", "critic"):
        for p, q in zip(a[name].parameters(), b[name].parameters()):
            assert torch.equal(p, q)                          # every rank builds the same initial weights


def test_engines_wrap_distinct_modules_and_expose_them_to_objectives():
    cfg = cfg_of("objective.name=dmd")
    dist.init(torch.device("cpu"), 60)                        # a world of one
    engines = wrap_engines(cfg, modules_of(cfg))
    nets = engines.nets()
    assert nets.generator is engines.generator.module and nets.critic is engines.critic.module
    assert nets.teacher is engines.teacher and engines.teacher_engine is None     # replicated, frozen
    assert set(engines.trained()) == {"generator", "critic"}
    assert engines.generator.gradient_clipping() == cfg.optim.grad_clip


def test_train_compile_compiles_every_block_and_keeps_the_outputs():
    cfg = cfg_of("objective.name=flow_matching", "train.precision=fp32")
    plain = modules_of(cfg)["generator"]
    compiled = modules_of(cfg_of("objective.name=flow_matching", "train.precision=fp32", "train.compile=true"))["generator"]
    dit = next(m for m in compiled.modules() if hasattr(m, "blocks"))
    assert all(hasattr(b.attention_inputs, "_torchdynamo_orig_callable") for b in dit.blocks)
    assert all(hasattr(b.after_attention, "_torchdynamo_orig_callable") for b in dit.blocks)
    x = torch.randn(2, 6, 12, 8, 8)
    t = torch.full((2, 6), 500.0)
    text = torch.randn(2, cfg.model.text_len, cfg.model.text_dim)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, text), plain(x, t, text), rtol=1e-4, atol=1e-5)


def test_critic_of_its_own_architecture_beside_a_larger_teacher(tmp_path):
    """The paper's setting in tiny stand-ins: a teacher with more layers and width (14B-shaped) and a critic of
    the student's size (1.3B-shaped) with its own weights; a different critic without weights is refused."""
    torch.manual_seed(3)
    weights = tmp_path / "critic.safetensors"
    from tests.models.helpers import tiny_wan
    own = tiny_wan(seed=5)
    save_safetensors(own, weights)
    big = ("teacher.preset=custom", "teacher.dim=64", "teacher.ffn_dim=128", "teacher.num_heads=4",
           "teacher.num_layers=3")
    cfg = cfg_of("objective.name=dmd", *big, "critic.preset=tiny", f"critic.checkpoint={weights}")
    modules = modules_of(cfg)
    teacher, critic = modules["teacher"], modules["critic"]
    assert (teacher.arch.dim, teacher.arch.num_layers) == (64, 3) and (critic.arch.dim, critic.arch.num_layers) == (32, 2)
    for (name, p), q in zip(critic.named_parameters(), own.parameters()):
        assert torch.equal(p.float(), q.float()), name
    assert all(p.requires_grad for p in critic.parameters()) and critic.training
    with pytest.raises(ValueError, match="critic.checkpoint is empty"):
        modules_of(cfg_of("objective.name=dmd", *big, "critic.preset=tiny"))
    with pytest.raises(ValueError, match="critic.dim is set but critic.preset is 'teacher'"):
        cfg_of("critic.dim=64")


def offload_run(inputs, run_dir, stage: int, offload: bool, *extra: str):
    flag = str(offload).lower()
    return trainer.setup(tiny("dmd", inputs, run_dir, f"train.generator_zero_stage={stage}",
                              f"train.critic_zero_stage={stage}", f"train.generator_offload_optimizer={flag}",
                              f"train.critic_offload_optimizer={flag}", *extra))


def test_a_zero3_engine_leaves_torch_linear_and_forward_mode_ad_alone(inputs, tmp_path):
    """DeepSpeed's default ZeRO-3 would swap torch.nn.functional.linear, process-wide, for a function without a
    forward-mode derivative (the sCM / MeanFlow JVPs then fail anywhere in the process)."""
    offload_run(inputs, tmp_path / "z3", 3, False)
    assert torch.nn.functional.linear is F_LINEAR
    w, x = torch.randn(3, 4), torch.randn(2, 4)
    _, tangent = torch.func.jvp(lambda v: torch.nn.functional.linear(v, w), (x,), (torch.ones_like(x),))
    assert torch.allclose(tangent, torch.ones_like(x) @ w.T)


def trained_params(run) -> dict[str, list[torch.Tensor]]:
    """Every trained engine's parameters, gathered when ZeRO-3 partitions them."""
    import deepspeed  # noqa: PLC0415
    out = {}
    for role, engine in run.engines.trained().items():
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params):
            out[role] = [p.detach().clone() for p in params]
    return out


def optimizer_states(engine) -> list[torch.Tensor]:
    """The AdamW moments that DeepSpeed's ZeRO optimizer steps. Not the step count: torch AdamW keeps it on the host
    whatever the device (a 0-dim CPU tensor; the H200 run of the GPU test below caught it)."""
    return [v for state in engine.optimizer.optimizer.state.values() for k, v in state.items()
            if torch.is_tensor(v) and k != "step"]


@pytest.mark.parametrize("stage, extra", [(1, ()), (2, ()), (3, ()), (2, ("lora.enabled=true", "lora.rank=4"))],
                         ids=["zero1", "zero2", "zero3", "zero2-lora"])
def test_offloaded_optimizer_trains_like_the_plain_one(inputs, tmp_path, stage, extra):
    """ZeRO-Offload on CPU, 4 DMD iterations in fp32 (critic every step, generator every second): DeepSpeed steps
    host copies of the fp32 partitions with torch AdamW, the same update as without offload. Measured: losses and
    parameters bit-identical at every stage and with LoRA adapters; the grad norms differ by up to 1.2e-7 relative
    (one float32 ulp: the offloaded path reduces the norm on the host in another order, in float32 where ZeRO-3
    without offload uses float64), so rel 1e-6 there. The norms stay below optim.grad_clip, so clipping never
    turns that ulp into a parameter difference."""
    plain = offload_run(inputs, tmp_path / "plain", stage, False, *extra)
    a = [trainer.train_step(plain, step) for step in range(4)]
    offloaded = offload_run(inputs, tmp_path / "offloaded", stage, True, *extra)
    start = trained_params(offloaded)
    b = [trainer.train_step(offloaded, step) for step in range(4)]
    for role, engine in offloaded.engines.trained().items():
        assert engine.zero_cpu_offload() and not plain.engines.trained()[role].zero_cpu_offload(), role
        assert type(engine.basic_optimizer) is torch.optim.AdamW, role      # on CPU: no DeepSpeedCPUAdam build
        states = optimizer_states(engine)
        assert states and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in states), role
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if key.startswith(("loss/", "dmd_")):
                assert y[key] == x[key], key
            elif key.startswith("grad_norm/"):
                assert y[key] == pytest.approx(x[key], rel=1e-6), key
    trained, reference = trained_params(offloaded), trained_params(plain)
    for role, params in reference.items():
        assert not all(torch.equal(p, q) for p, q in zip(start[role], trained[role])), role    # it trained
        assert all(torch.equal(p, q) for p, q in zip(params, trained[role], strict=True)), role



def close_runs(a: list[dict], b: list[dict], rel: float) -> None:
    """Two runs' losses and norms agree to ``rel`` at every iteration."""
    for x, y in zip(a, b, strict=True):
        for key in x:
            if key.startswith(("loss/", "dmd_", "grad_norm/")):
                assert y[key] == pytest.approx(x[key], rel=rel), (x, key)


@pytest.mark.slow
def test_cpu_adam_steps_the_offloaded_states_like_torch_adamw(inputs, tmp_path, monkeypatch):
    """The optimizer :func:`uses_cpu_adam` picks on CUDA, run on CPU (its first use JIT-builds DeepSpeed's cpu_adam
    op, about two minutes on 2 cores): DeepSpeedCPUAdam steps the offloaded ZeRO-2 partitions, the LR set through
    the engine's param groups included. Its SIMD AdamW rounds differently from torch's, so over 4 fp32 DMD
    iterations the runs part by round-off: measured up to 2e-6 relative in losses and norms and 1e-6 in
    parameters; asserted rel 1e-4 and atol 1e-5 (measured: beta1 0.1, Adam's L2 mode or no weight decay move the
    parameters by 9e-5 to 1e-2)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam  # noqa: PLC0415
    monkeypatch.setattr("vidforce.train.engines.uses_cpu_adam", lambda offload_from: offload_from is not None)
    plain = offload_run(inputs, tmp_path / "plain", 2, False)
    a = [trainer.train_step(plain, step) for step in range(4)]
    offloaded = offload_run(inputs, tmp_path / "offloaded", 2, True)
    b = [trainer.train_step(offloaded, step) for step in range(4)]
    for role, engine in offloaded.engines.trained().items():
        assert type(engine.basic_optimizer) is DeepSpeedCPUAdam, role
        assert type(plain.engines.trained()[role].basic_optimizer) is torch.optim.AdamW, role
    close_runs(a, b, rel=1e-4)
    trained, reference = trained_params(offloaded), trained_params(plain)
    for role, params in reference.items():
        for p, q in zip(params, trained[role], strict=True):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_offloaded_optimizer_on_cuda_keeps_its_states_on_the_host(tmp_path):
    """On CUDA (ZeRO-2, fp32; the machine builds DeepSpeed's cpu_adam op: ninja and a C++ compiler): the offloaded
    engines step their AdamW moments and fp32 partitions in pinned host memory with DeepSpeedCPUAdam while the
    weights stay on the GPU, and the losses follow the plain run (torch AdamW on the GPU). Tolerance rel 1e-3:
    the CPU gap of the two AdamWs (2e-6, above) plus the GPU's own rounding (CUDA kernels, TF32 convolutions)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam  # noqa: PLC0415
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    inputs = {"prompts": str(prompts), "videos": "unused", "pairs": "unused"}     # DMD reads prompts only
    plain = offload_run(inputs, tmp_path / "plain", 2, False, "train.device=cuda")
    a = [trainer.train_step(plain, step) for step in range(4)]
    offloaded = offload_run(inputs, tmp_path / "offloaded", 2, True, "train.device=cuda")
    b = [trainer.train_step(offloaded, step) for step in range(4)]
    for role, engine in offloaded.engines.trained().items():
        assert type(engine.basic_optimizer) is DeepSpeedCPUAdam and engine.zero_offload_optimizer().pin_memory, role
        assert all(t.device.type == "cpu" for t in optimizer_states(engine)), role
        assert all(p.device.type == "cuda" for p in engine.module.parameters()), role
        assert all(t.device.type == "cuda" for t in optimizer_states(plain.engines.trained()[role])), role
    close_runs(a, b, rel=1e-3)
