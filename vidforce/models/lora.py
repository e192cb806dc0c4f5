"""LoRA adapters over one frozen base DiT shared by the teacher, the generator and the critic.

A target linear ``y = W x + b`` (``W [out, in]``) of an adapter computes
``y = W x + b + (alpha / r) B A dropout(x)`` with ``A [r, in]`` (Kaiming-uniform, as ``nn.Linear`` draws its
weight) and ``B [out, r]`` zero-initialised, so a fresh adapter gives exactly the base's output (Hu et al. 2021).

:class:`SharedBase` holds the frozen base once: a :class:`~vidforce.models.causal.CausalWan`, because the causal
student and the bidirectional teacher are the same weights (``forward_chunk`` / ``forward_full`` run them
chunk-causally, the plain ``forward`` bidirectionally). One forward hook per target linear adds the *active*
adapter's delta; no adapter is active outside a role's call, so the base called directly is the teacher (adapters
off, the base's exact output). :class:`AdapterView` is one role (``generator``, ``critic``): an ``nn.Module`` whose
only parameters are its adapter -- what its DeepSpeed engine, optimizer, EMA and checkpoints see -- and whose calls
(``forward``, ``forward_chunk``, ``text_kv``, ...) run the base with that adapter active. Activation checkpointing
recomputes a block in backward, after the call returned: the base's ``recompute_context`` re-activates the adapter
that ran the block's forward.

Why not ``peft``: its adapter switching (``set_adapter`` / ``enable_adapters``) also sets ``requires_grad`` of the
adapters it activates and deactivates. Here three roles switch on the same layers several times inside one
training turn (rollout with grad, teacher and critic scores under ``no_grad``, the backward's recomputation), so
switching must leave the trainable set alone (the trainer freezes the other engine itself); peft offers that only
by writing its private ``_active_adapter`` attribute, and peft's mixed-adapter batches refuse training mode.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from vidforce.models.wan import WanModel


def lora_delta(x: Tensor, a: Tensor, b: Tensor, scale: float) -> Tensor:
    """``scale * B A x`` for ``x [..., in]``, ``A [r, in]``, ``B [out, r]`` -> ``[..., out]`` (in ``A``'s dtype)."""
    return nn.functional.linear(nn.functional.linear(x.to(a.dtype), a), b) * scale


def merged_weight(w: Tensor, a: Tensor, b: Tensor, scale: float) -> Tensor:
    """``W + scale * B A`` (fp32) -- the linear that computes base plus adapter in one matmul."""
    return w.float() + scale * (b.float() @ a.float())


def target_linears(base: WanModel, targets: Sequence[str]) -> dict[str, nn.Linear]:
    """The linears of every block named ``blocks.N.<target>`` for ``targets`` such as ``self_attn.q``, in model
    order."""
    out = {}
    for name, module in base.named_modules():
        parts = name.split(".")
        if parts[0] == "blocks" and len(parts) > 2 and ".".join(parts[2:]) in targets:
            if not isinstance(module, nn.Linear):
                raise TypeError(f"lora target {name} is a {type(module).__name__}, not a linear")
            out[name] = module
    return out


def key_of(name: str) -> str:
    """Parameter-dict key of a target module name (``blocks.0.self_attn.q`` -> ``blocks-0-self_attn-q``)."""
    return name.replace(".", "-")


class Adapter(nn.Module):
    """Rank-``r`` pairs ``A [r, in]``, ``B [out, r]`` for each target linear (created on the linear's device in
    ``dtype``), scale ``alpha / r``, dropout on the input."""

    def __init__(self, linears: dict[str, nn.Linear], rank: int, alpha: float, dropout: float,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.scale = alpha / rank
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        for name, lin in linears.items():
            a = torch.empty(rank, lin.in_features, device=lin.weight.device, dtype=dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.A[key_of(name)] = nn.Parameter(a)
            self.B[key_of(name)] = nn.Parameter(torch.zeros(lin.out_features, rank, device=a.device, dtype=dtype))
        self.dropout = nn.Dropout(dropout)

    def delta(self, key: str, x: Tensor) -> Tensor:
        return lora_delta(self.dropout(x), self.A[key], self.B[key], self.scale)


class SharedBase:
    """A frozen base DiT with one :class:`Adapter` per role, applied by forward hooks on the target linears."""

    def __init__(self, base: WanModel, roles: Sequence[str], targets: Sequence[str], rank: int, alpha: float,
                 dropout: float):
        self.base = base.requires_grad_(False)
        self.active: str | None = None
        linears = target_linears(base, targets)
        if not linears:
            raise ValueError(f"lora.target_modules {list(targets)} match no linear of the DiT blocks")
        self.targets = list(linears)
        self.adapters = {role: Adapter(linears, rank, alpha, dropout) for role in roles}
        for name, lin in linears.items():
            lin.register_forward_hook(self._hook(key_of(name)))
        base.recompute_context = self._recompute_context

    def _hook(self, key: str):
        def add_delta(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
            if self.active is None:
                return None
            return out + self.adapters[self.active].delta(key, args[0]).to(out.dtype)
        return add_delta

    @contextlib.contextmanager
    def using(self, role: str | None) -> Iterator[None]:
        """Run the base with ``role``'s adapter (None: adapters off) inside the block; restores the previous."""
        previous, self.active = self.active, role
        try:
            yield
        finally:
            self.active = previous

    def _recompute_context(self):
        """``torch.utils.checkpoint`` context pair: nothing around the forward, the forward's adapter around the
        recomputation."""
        return contextlib.nullcontext(), self.using(self.active)

    def view(self, role: str) -> "AdapterView":
        return AdapterView(self, role)

    def merged_state_dict(self, role: str, adapter: dict[str, Tensor] | None = None,
                          prefix: str = "adapter.") -> dict[str, Tensor]:
        """The base's parameters (fp32 copies) with ``role``'s adapter merged into each target linear: a plain DiT
        state dict. ``adapter``: the view's parameters by name (e.g. an EMA; keys ``adapter.A.<key>``); default
        the live adapter."""
        live = self.adapters[role]
        if adapter is None:
            adapter = {f"{prefix}{n}": p for n, p in live.named_parameters()}
        out = {k: v.detach().float().clone() for k, v in self.base.named_parameters()}
        for name in self.targets:
            a, b = adapter[f"{prefix}A.{key_of(name)}"], adapter[f"{prefix}B.{key_of(name)}"]
            out[f"{name}.weight"] = merged_weight(out[f"{name}.weight"], a.to(out[f"{name}.weight"].device),
                                                  b.to(out[f"{name}.weight"].device), live.scale)
        return out


class AdapterView(nn.Module):
    """One role of a :class:`SharedBase`: its parameters are the role's adapter alone (the base is not a
    submodule); calls and attributes are the base's, run with the adapter active."""

    def __init__(self, shared: SharedBase, role: str):
        super().__init__()
        self.adapter = shared.adapters[role]
        self.shared, self.role = shared, role

    def forward(self, *args, **kwargs):
        with self.shared.using(self.role):
            return self.shared.base(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        shared = self.__dict__.get("shared")
        if shared is None:
            raise AttributeError(name)
        value = getattr(shared.base, name)
        if callable(value) and not isinstance(value, nn.Module):
            def in_role(*args, **kwargs):
                with self.shared.using(self.role):
                    return value(*args, **kwargs)
            return in_role
        return value

    def merged_state_dict(self, adapter: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The base with this view's adapter (or ``adapter``: its parameters by name) merged in."""
        return self.shared.merged_state_dict(self.role, adapter)
