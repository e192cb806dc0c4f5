"""Models from the config: the frozen bidirectional teacher and the chunk-causal generator, with their weights.

Parameters are created directly on ``device`` in ``dtype`` (no fp32 CPU copy of a 14B model first). A checkpoint
is checked against the config from its headers before anything is built (:func:`check_checkpoint`), then
streamed in tensor by tensor (:func:`vidforce.models.loading.load_into`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from vidforce.config import ModelConfig, VidforceConfig, arch_of
from vidforce.models.causal import CausalWan
from vidforce.models.loading import (CONFIG_JSON, Checkpoint, infer_arch, load_into, metadata_model_config, plain,
                                     stated_arch)
from vidforce.models.lora import SharedBase
from vidforce.models.wan import WanModel

ARCH_FIELDS = ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "freq_dim", "in_dim", "out_dim",
               "patch_size", "cross_attn_norm")


def check_checkpoint(path: str | Path, model_cfg: ModelConfig, field_name: str) -> None:
    """Raise ``ValueError`` naming every config field (``model.dim``, ``teacher.num_layers`` ...) that the
    checkpoint at ``path`` contradicts. Reads headers only (cheap for 14B).

    The weights' shapes are compared; ``num_heads`` only when the checkpoint's metadata stores it (weights do not
    determine it). A diffusers / official ``config.json`` beside the weights is compared field by field
    (:func:`vidforce.models.loading.stated_arch`), ``num_heads`` included.
    """
    ckpt = Checkpoint(path, model_cfg.checkpoint_key)
    try:
        found = infer_arch(ckpt.shapes, ckpt.metadata)
        stated = stated_arch(ckpt.config, str(ckpt.files[0].parent / CONFIG_JSON)) if ckpt.config else {}
    except ValueError as err:
        raise ValueError(f"{field_name}.checkpoint {ckpt.describe()}: {err}") from None
    stored = metadata_model_config(ckpt.metadata) or {}
    fields = [f for f in ARCH_FIELDS if f != "num_heads" or "num_heads" in stored]
    bad = [f"{field_name}.{f} is {plain(getattr(model_cfg, f))!r} but the checkpoint has {plain(found[f])!r}"
           for f in fields if plain(getattr(model_cfg, f)) != plain(found[f])]
    bad += _contradictions(stated, model_cfg, field_name)
    if bad:
        raise ValueError(f"{field_name}.checkpoint {ckpt.describe()} does not fit the config:\n  " + "\n  ".join(bad))


def _contradictions(stated: dict[str, tuple[str, object]], model_cfg: ModelConfig, field_name: str) -> list[str]:
    """``model.num_heads is 2 but config.json has num_attention_heads=4`` for each stated field that differs."""
    out = []
    for f, (key, value) in stated.items():
        if f == "head_dim":
            name, ours = f"{field_name}.dim // {field_name}.num_heads", model_cfg.dim // model_cfg.num_heads
        else:
            name, ours = f"{field_name}.{f}", plain(getattr(model_cfg, f))
        if ours != value:
            out.append(f"{name} is {ours!r} but {CONFIG_JSON} has {key}={value!r}")
    return out


@contextlib.contextmanager
def _creating_on(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """New parameters are created on ``device`` in ``dtype`` (the default dtype is restored after)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _build(make: Callable[[], nn.Module], model_cfg: ModelConfig, field_name: str, device, dtype) -> nn.Module:
    """Check the checkpoint (if any), construct on device in dtype, stream the weights in."""
    if model_cfg.checkpoint:
        check_checkpoint(model_cfg.checkpoint, model_cfg, field_name)
    with _creating_on(device, dtype):
        model = make()
    if model_cfg.checkpoint:
        load_into(model, model_cfg.checkpoint, model_cfg.checkpoint_key, optional=WanModel.OPTIONAL_KEYS)
    return model


def build_teacher(cfg: VidforceConfig, device: torch.device | str, dtype: torch.dtype) -> WanModel:
    """The bidirectional teacher of ``cfg.teacher`` (weights from ``teacher.checkpoint`` when set).

    Returned frozen: eval mode, ``requires_grad=False`` (a critic is a deep copy with grad switched back on).
    """
    model = _build(lambda: WanModel(arch_of(cfg.teacher), cfg.causal.attention), cfg.teacher, "teacher",
                   device, dtype)
    return model.eval().requires_grad_(False)


def build_critic(cfg: VidforceConfig, device: torch.device | str, dtype: torch.dtype) -> WanModel:
    """A critic (fake score) of its own architecture, ``cfg.critic`` (weights from ``critic.checkpoint``); a
    critic that copies the teacher is made by the caller from the teacher itself."""
    if not cfg.critic.checkpoint:
        raise ValueError("critic.checkpoint is empty: a critic of its own architecture (critic.preset "
                         f"{cfg.critic.preset!r}) starts from weights, e.g. the Wan2.1 checkpoint of that size")
    return _build(lambda: WanModel(arch_of(cfg.critic), cfg.causal.attention), cfg.critic, "critic", device, dtype)


def build_generator(cfg: VidforceConfig, device: torch.device | str, dtype: torch.dtype) -> CausalWan:
    """The chunk-causal generator of ``cfg.model`` run as ``cfg.causal`` says (weights from ``model.checkpoint``)."""
    return _build(lambda: _causal(cfg), cfg.model, "model", device, dtype)


def _causal(cfg: VidforceConfig) -> CausalWan:
    """A fresh ``CausalWan`` of ``cfg.model``'s architecture run as ``cfg.causal`` says."""
    c = cfg.causal
    return CausalWan(arch_of(cfg.model), c.frames_per_chunk, c.window, c.sink, c.rope_mode, c.attention,
                     c.full_sequence)


def build_shared(cfg: VidforceConfig, roles: tuple[str, ...], device: torch.device | str,
                 dtype: torch.dtype) -> SharedBase:
    """With ``lora.enabled``: the frozen base (``cfg.model``'s causal DiT, weights from ``teacher.checkpoint`` or
    else ``model.checkpoint``; ``config.validate`` makes them one) in ``dtype``, with an fp32 adapter per role."""
    lo, field_name = cfg.lora, "teacher" if cfg.teacher.checkpoint else "model"
    base = _build(lambda: _causal(cfg), getattr(cfg, field_name), field_name, device, dtype)
    return SharedBase(base.eval(), roles, lo.target_modules, lo.rank, lo.alpha, lo.dropout)


def merged_generator(cfg: VidforceConfig, adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full fp32 generator weights of a LoRA run: its base (built on CPU as training built it: seeded by
    ``train.seed``, in the training precision) with the generator adapter's weights ``adapter`` merged in."""
    torch.manual_seed(cfg.train.seed)
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    return build_shared(cfg, ("generator",), "cpu", dtype).merged_state_dict("generator", adapter)
