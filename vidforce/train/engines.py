"""DeepSpeed engines: the generator and the critic (own optimizer and config each) and the frozen teacher.

- **generator**: the chunk-causal student (``models.build.build_generator``), built in fp32 so DeepSpeed's
  fp32 master weights are exact; ZeRO stage ``train.generator_zero_stage``.
- **critic** (``"critic" in objective.networks``): with ``critic.preset: teacher`` a deep copy of the
  *teacher's* weights made before any ``deepspeed.initialize`` (two engines never wrap the same module
  objects), else its own model (``critic.*``: e.g. a 1.3B fake score beside a 14B teacher); wrapped in the
  heads the objective needs (``objective.critic_module``). ZeRO stage ``train.critic_zero_stage``.
- **teacher**: frozen (eval, ``requires_grad=False``) in the training precision, replicated, or partitioned
  by a stage-3 engine without optimizer when ``train.teacher_zero3`` (never ``init_inference``).
- **reference** (``"reference" in objective.networks``): a frozen copy of the generator as built (before any
  checkpoint is loaded, so a resumed run anchors to the same starting weights), in the training precision.
With ``lora.enabled`` (``models/lora.py``) the three share one frozen base in the training precision: the teacher
(and reference) is the base, the generator and a teacher-copy critic are views holding their own adapter only (what
the engines, optimizers, EMA and checkpoints see), so the base weights are held once.
Every engine gets ``gradient_clipping = optim.grad_clip`` explicitly (DeepSpeed >= 0.19.3 defaults to 1.0)
and a ``torch.optim.AdamW`` object (no JIT-built Adam), except that with ZeRO-Offload
(``train.generator_offload_optimizer`` / ``critic_offload_optimizer``) on CUDA it is DeepSpeedCPUAdam when that op
builds (:func:`uses_cpu_adam`). Objectives see the engines' ``.module``s.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from vidforce.config import critic_copies_teacher
from vidforce.models.build import build_critic, build_generator, build_shared, build_teacher
from vidforce.models.wan import WanModel
from vidforce.objectives import Nets, Objective
from vidforce.train import sequence_parallel

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def ds_config(cfg, stage: int, universal: bool = False, offload_from: torch.device | None = None) -> dict:
    """DeepSpeed config dict of one engine (ZeRO ``stage``) from our config; ``universal``: it will load a
    universal checkpoint (resume on another world size); ``offload_from``: the training device of an engine whose
    optimizer is offloaded to the CPU (ZeRO-Offload; host buffers pinned when it is CUDA)."""
    t = cfg.train
    zero = {"stage": stage}
    if stage == 3:
        # DeepSpeed's default would replace torch.nn.functional.linear for the rest of the process with a custom
        # autograd Function that has no forward-mode derivative: every JVP objective (sCM, MeanFlow) and every other
        # model in the process would run through it
        zero["memory_efficient_linear"] = False
    if offload_from is not None:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": offload_from.type == "cuda"}
    out = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": float(cfg.optim.grad_clip),
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2 ** 31 - 1,
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": universal},
    }
    if offload_from is not None:
        out["zero_force_ds_cpu_optimizer"] = False     # we pick the optimizer ourselves (uses_cpu_adam)
    return out


def prepare_dits(module: nn.Module, checkpointing: bool, compile_blocks: bool) -> None:
    """Per-block activation checkpointing and, if asked, ``torch.compile`` on every Wan DiT in ``module``."""
    for m in module.modules():
        if isinstance(m, WanModel):
            m.gradient_checkpointing = checkpointing
            if compile_blocks:
                m.compile_blocks()


def base_lr(optim, role: str) -> float:
    """The configured learning rate of the ``generator`` or ``critic`` engine (before any schedule)."""
    return optim.critic_lr if role == "critic" else optim.generator_lr


def adamw(module: nn.Module, lr: float, optim, cpu_adam: bool = False) -> torch.optim.Optimizer:
    """AdamW over ``module``'s trainable parameters: ``torch.optim.AdamW``, or with ``cpu_adam`` DeepSpeed's
    vectorised CPU AdamW (same update and defaults: eps 1e-8, bias correction, decoupled weight decay)."""
    betas = (float(optim.betas[0]), float(optim.betas[1]))
    params = [p for p in module.parameters() if p.requires_grad]
    if cpu_adam:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # noqa: PLC0415
        return DeepSpeedCPUAdam(params, lr=lr, betas=betas, weight_decay=float(optim.weight_decay), adamw_mode=True)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=float(optim.weight_decay))


def uses_cpu_adam(offload_from: torch.device | None) -> bool:
    """Whether an engine whose optimizer is offloaded from ``offload_from`` (None: not offloaded) steps with
    DeepSpeedCPUAdam: only from a CUDA device, and only when DeepSpeed's ``cpu_adam`` op loads (prebuilt, or
    JIT-built once per machine: two minutes on 2 cores; needs ninja and a C++ compiler).

    Offloaded, every update runs on the CPU over all fp32 master weights, so the CPU step is the time offload adds:
    cpu_adam's SIMD, multi-threaded AdamW is several times faster there than torch's. Without the op, torch AdamW
    steps the CPU copies instead (the same update, slower; ``zero_force_ds_cpu_optimizer: false``). From a CPU
    device offloading moves nothing, so torch AdamW keeps the update identical to the non-offloaded run and needs
    no build."""
    if offload_from is None or offload_from.type != "cuda":
        return False
    from deepspeed.ops.op_builder import CPUAdamBuilder  # noqa: PLC0415
    try:
        CPUAdamBuilder().load(verbose=False)
    except Exception as err:  # noqa: BLE001 -- any build failure (no compiler, ninja or headers) means the fallback
        warnings.warn(f"ZeRO-Offload: DeepSpeed's cpu_adam op does not load ({err}); torch AdamW steps on the CPU")
        return False
    return True


def _initialize(module: nn.Module, config: dict, optimizer=None, mpu=None):
    import deepspeed  # noqa: PLC0415
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config, mpu=mpu)
    return engine


@dataclass
class Engines:
    """The engines of one run. ``teacher`` is the frozen module itself; with ``train.teacher_zero3`` it is
    partitioned in place by ``teacher_engine`` (a stage-3 engine without optimizer, kept alive here)."""
    generator: object
    critic: object | None = None
    teacher: nn.Module | None = None
    teacher_engine: object | None = None
    reference: nn.Module | None = None

    def nets(self) -> Nets:
        """The modules the objective calls (all ranks call them in the same order)."""
        critic = self.critic.module if self.critic is not None else None
        return Nets(generator=self.generator.module, critic=critic, teacher=self.teacher, reference=self.reference)

    def trained(self) -> dict[str, object]:
        """Engines with an optimizer, by role (checkpointed)."""
        return {name: e for name, e in (("generator", self.generator), ("critic", self.critic)) if e is not None}


def build_modules(cfg, objective: Objective, device: torch.device) -> dict[str, nn.Module]:
    """Plain modules before ``deepspeed.initialize`` for ``objective.networks``: ``generator`` (fp32),
    ``reference`` (its frozen copy), ``critic`` (the teacher's copy or its own model, grad on, in the objective's
    heads), ``teacher`` (frozen, training precision). Seeded so every rank builds the same weights."""
    torch.manual_seed(cfg.train.seed)
    if cfg.lora.enabled:
        return shared_modules(cfg, objective, device)
    networks, dtype = objective.networks, DTYPES[cfg.train.precision]
    out = {"generator": build_generator(cfg, device, torch.float32).train()}
    if "reference" in networks:
        out["reference"] = copy.deepcopy(out["generator"]).to(dtype).eval().requires_grad_(False)
    copies = "critic" in networks and critic_copies_teacher(cfg)
    teacher = build_teacher(cfg, device, dtype) if "teacher" in networks or copies else None
    if "critic" in networks:
        critic = copy.deepcopy(teacher) if copies else build_critic(cfg, device, dtype)
        out["critic"] = objective.critic_module(critic.train().requires_grad_(True))
    if "teacher" in networks:
        out["teacher"] = teacher
    for module in out.values():
        prepare_dits(module, cfg.train.activation_checkpointing, cfg.train.compile)
    return out


def shared_modules(cfg, objective: Objective, device: torch.device) -> dict[str, nn.Module]:
    """:func:`build_modules` with ``lora.enabled``: one frozen base in the training precision
    (``models.build.build_shared``); ``generator`` its causal view with the generator adapter, ``critic`` its
    bidirectional view with the critic adapter (or, with ``critic.preset`` other than ``teacher``, a critic of its
    own trained in full), ``teacher`` and ``reference`` the base itself (adapters off)."""
    networks, dtype = objective.networks, DTYPES[cfg.train.precision]
    copies = "critic" in networks and critic_copies_teacher(cfg)
    shared = build_shared(cfg, ("generator", "critic") if copies else ("generator",), device, dtype)
    out = {"generator": shared.view("generator").train()}
    if "reference" in networks:
        out["reference"] = shared.base
    if "critic" in networks:
        critic = shared.view("critic") if copies else build_critic(cfg, device, dtype).requires_grad_(True)
        out["critic"] = objective.critic_module(critic.train())
    if "teacher" in networks:
        out["teacher"] = shared.base
    for module in {id(m): m for m in (*out.values(), shared.base)}.values():
        prepare_dits(module, cfg.train.activation_checkpointing, cfg.train.compile)
    return out


def trained_engine(cfg, role: str, module: nn.Module, universal: bool, mpu):
    """The ``generator`` or ``critic`` engine: ZeRO stage ``train.<role>_zero_stage``, its optimizer offloaded to
    the CPU with ``train.<role>_offload_optimizer``."""
    stage, offload = getattr(cfg.train, f"{role}_zero_stage"), getattr(cfg.train, f"{role}_offload_optimizer")
    offload_from = next(module.parameters()).device if offload else None
    optimizer = adamw(module, base_lr(cfg.optim, role), cfg.optim, uses_cpu_adam(offload_from))
    return _initialize(module, ds_config(cfg, stage, universal, offload_from), optimizer, mpu)


def wrap_engines(cfg, modules: dict[str, nn.Module], universal: bool = False) -> Engines:
    """Wrap the plain modules of :func:`build_modules` into DeepSpeed engines (with ``train.sequence_parallel > 1``
    on DeepSpeed's Ulysses groups: gradients summed over a sequence-parallel group, ZeRO over every rank)."""
    t = cfg.train
    mpu = sequence_parallel.mpu(t.sequence_parallel)
    engines = Engines(trained_engine(cfg, "generator", modules["generator"], universal, mpu))
    if "critic" in modules:
        engines.critic = trained_engine(cfg, "critic", modules["critic"], universal, mpu)
    engines.reference = modules.get("reference")
    if "teacher" in modules:
        engines.teacher = modules["teacher"]
        if t.teacher_zero3:
            engines.teacher_engine = _initialize(engines.teacher, ds_config(cfg, 3), mpu=mpu)
    return engines
