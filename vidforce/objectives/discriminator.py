"""Multi-layer discriminator heads on a backbone's intermediate features (ADD, LADD, the harness's DMD2).

:class:`FeatureDiscriminator` runs its backbone once (to the deepest layer it reads), collects the outputs of
the tapped layers with forward hooks, pools each over its tokens and applies one
:func:`vidforce.objectives.gan.discriminator_head` per layer: ``logits(x, t, text_kv) -> [B, H]``, one logit
per head. With ``frozen`` the backbone's parameters never train (ADD's frozen feature network, LADD's
teacher): only the heads do, while gradients still reach the *input* (the generator's loss).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vidforce.objectives.gan import discriminator_head


def tapped_outputs(layers: Sequence[nn.Module], run) -> list[Tensor]:
    """The outputs of ``layers`` (in their order) during ``run()``; each layer must run exactly once."""
    seen: dict[int, Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, k=k: seen.setdefault(k, out)) for k, m in enumerate(layers)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    if len(seen) != len(layers):
        raise RuntimeError(f"discriminator: {len(layers) - len(seen)} tapped layers did not run")
    return [seen[k] for k in range(len(layers))]


def pool(features: Tensor) -> Tensor:
    """``[B, L, dim]`` tokens -> their mean ``[B, dim]`` (fp32); ``[B, dim]`` passes through."""
    return features.float().mean(dim=1) if features.dim() == 3 else features.float()


class FeatureDiscriminator(nn.Module):
    """Heads on ``taps`` (submodules of ``backbone`` of output width ``dim``).

    ``backbone(x, t, text_kv=..., **call_kwargs)`` is the forward that runs the taps (for a Wan DiT,
    ``features_at`` = the deepest tapped block, so later blocks and the output head never run).
    """

    def __init__(self, backbone: nn.Module, taps: Sequence[nn.Module], dim: int, frozen: bool, **call_kwargs):
        super().__init__()
        if not taps:
            raise ValueError("a feature discriminator needs at least one tapped layer")
        self.backbone = backbone.requires_grad_(False) if frozen else backbone
        self.taps, self.call_kwargs = list(taps), call_kwargs
        self.heads = nn.ModuleList(discriminator_head(dim) for _ in self.taps)

    def text_kv(self, context: Tensor):
        return self.backbone.text_kv(context)

    def forward(self, x: Tensor, t: Tensor, context=None, text_kv=None) -> Tensor:
        """The backbone's own prediction (e.g. LADD's synthetic clips come from the teacher's flow)."""
        return self.backbone(x, t, context, text_kv=text_kv)

    def logits(self, x: Tensor, t: Tensor, text_kv=None) -> Tensor:
        """Per-head logits ``[B, H]`` (fp32) of inputs ``x`` at timesteps ``t``."""
        feats = tapped_outputs(self.taps, lambda: self.backbone(x, t, text_kv=text_kv, **self.call_kwargs))
        out = [head(pool(f).to(head[1].weight.dtype)).squeeze(-1).float() for head, f in zip(self.heads, feats)]
        return torch.stack(out, dim=-1)


def dit_discriminator(model: nn.Module, layers: Sequence[int], frozen: bool, field_name: str) -> FeatureDiscriminator:
    """Heads after blocks ``layers`` (1-based; empty: every block) of a Wan DiT ``model``; ``field_name`` names
    the config key in errors."""
    n = model.arch.num_layers
    layers = sorted(set(layers)) or list(range(1, n + 1))
    if layers[-1] > n:
        raise ValueError(f"{field_name}: block {layers[-1]} of a {n}-block critic")
    return FeatureDiscriminator(model, [model.blocks[k - 1] for k in layers], model.arch.dim, frozen,
                                features_at=layers[-1])
