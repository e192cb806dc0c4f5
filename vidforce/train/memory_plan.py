"""Planned weight and optimizer bytes per GPU of a run, from models built on the ``meta`` device (no memory).

Per trained parameter: bf16 weight (2 bytes) and gradient (2), fp32 master weight (4) and AdamW moments (8);
ZeRO stage 1 partitions master and moments over the GPUs, stage 2 also the gradients, stage 3 also the weights.
ZeRO-Offload (``train.<role>_offload_optimizer``) moves an engine's master weights and moments (12 bytes) to host
memory, where DeepSpeed also keeps an fp32 gradient partition (4 bytes): 16 bytes per parameter on the host,
partitioned over the GPUs. Its bf16 gradients stay planned on the GPU (an upper bound: offloaded, ZeRO streams them
to the host in buckets).
A frozen network holds its bf16 weights (2 bytes / parameter), replicated. Activations, the KV cache and
allocator slack are not planned (measure them: ``tools/bench_lora.py``).

Two layouts of a Self Forcing DMD run: **lora** (``lora.enabled``: one frozen base, generator and critic adapters)
and **full** (the teacher, a trained generator and a trained critic: three copies).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vidforce.config import VidforceConfig, arch_of
from vidforce.models.build import build_shared
from vidforce.models.wan import WanModel

GiB = 2 ** 30


def trained_bytes(params: int, zero_stage: int, gpus: int, offload: bool = False) -> float:
    """Bytes per GPU of ``params`` trained parameters under ZeRO ``zero_stage`` over ``gpus`` (bf16 training);
    ``offload``: the optimizer is offloaded to the host (:func:`offloaded_bytes`)."""
    weight, grad, optim = 2.0 * params, 2.0 * params, 12.0 * params   # optim: fp32 master + AdamW m, v
    optim /= gpus if zero_stage >= 1 else 1
    grad /= gpus if zero_stage >= 2 else 1
    weight /= gpus if zero_stage >= 3 else 1
    return weight + grad + (0.0 if offload else optim)


def offloaded_bytes(params: int, gpus: int, offload: bool) -> float:
    """Host bytes per GPU (per rank) of ``params`` trained parameters whose optimizer is offloaded (ZeRO >= 1):
    fp32 master weight, gradient and AdamW moments, partitioned over ``gpus``."""
    return 16.0 * params / gpus if offload else 0.0


def frozen_bytes(params: int) -> float:
    """Bytes per GPU of a frozen bf16 network, replicated."""
    return 2.0 * params


@dataclass(frozen=True)
class MemoryPlan:
    layout: str                  # lora | full
    base_params: int             # the frozen base (lora) / the teacher (full)
    generator_params: int        # trained parameters of the generator (its adapter with LoRA)
    critic_params: int           # trained parameters of the critic
    frozen_gib: float            # per GPU: frozen bf16 weights
    trained_gib: float           # per GPU: trained weights, grads, master weights, AdamW moments
    total_gib: float
    host_gib: float              # per GPU, in host memory: the offloaded optimizer partitions (ZeRO-Offload)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def plan_memory(cfg: VidforceConfig, gpus: int = 1) -> dict[str, MemoryPlan]:
    """``{"lora": ..., "full": ...}`` for ``cfg``'s model (built on ``meta``; the critic copies the teacher or has
    its own architecture, ``critic.preset``), ZeRO stages ``train.generator_zero_stage`` / ``critic_zero_stage`` and
    offload ``train.generator_offload_optimizer`` / ``critic_offload_optimizer``."""
    t = cfg.train
    no_weights = dict(model=dataclasses.replace(cfg.model, checkpoint=""),
                      teacher=dataclasses.replace(cfg.teacher, checkpoint=""))
    shared = build_shared(dataclasses.replace(cfg, **no_weights), ("generator", "critic"), "meta", torch.bfloat16)
    base = _count(shared.base)
    gen_adapter = _count(shared.adapters["generator"])
    own_critic = cfg.critic.preset != "teacher"
    if own_critic:
        with torch.device("meta"):
            critic_full = _count(WanModel(arch_of(cfg.critic)))
    else:
        critic_full = base
    critic_lora = critic_full if own_critic else _count(shared.adapters["critic"])
    plans = {}
    for layout, gen, critic in (("lora", gen_adapter, critic_lora), ("full", base, critic_full)):
        frozen = frozen_bytes(base)
        trained = (trained_bytes(gen, t.generator_zero_stage, gpus, t.generator_offload_optimizer)
                   + trained_bytes(critic, t.critic_zero_stage, gpus, t.critic_offload_optimizer))
        host = (offloaded_bytes(gen, gpus, t.generator_offload_optimizer)
                + offloaded_bytes(critic, gpus, t.critic_offload_optimizer))
        plans[layout] = MemoryPlan(layout, base, gen, critic, frozen / GiB, trained / GiB, (frozen + trained) / GiB,
                                   host / GiB)
    return plans
