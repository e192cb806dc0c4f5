"""Engine construction: DeepSpeed configs, the critic as a deep copy of the teacher, frozen teacher."""
from __future__ import annotations

import torch

import pytest

from vidforce import objectives
from vidforce.config import load
from vidforce.models.loading import save_safetensors
from vidforce.objectives.gan import CriticWithHead
from vidforce.train import dist
from vidforce.train.engines import adamw, build_modules, ds_config, wrap_engines

from tests.train.helpers import ROOT


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
    assert c["zero_optimization"] == {"stage": 3}
    assert c["checkpoint"] == {"load_universal": False}
    assert ds_config(cfg_of("train.precision=fp32"), 0, universal=True)["bf16"] == {"enabled": False}
    assert ds_config(cfg_of(), 0, universal=True)["checkpoint"] == {"load_universal": True}


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
