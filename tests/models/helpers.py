"""Tiny models and inputs shared by the model tests."""
import torch

from vidforce.config import MODEL_PRESETS, ModelConfig, arch_of
from vidforce.models.causal import CausalWan
from vidforce.models.wan import WanModel


def tiny_arch(**over):
    fields = dict(MODEL_PRESETS["tiny"])
    fields.update(over)
    return arch_of(ModelConfig(**fields))


def tiny_causal(seed=0, **kw):
    torch.manual_seed(seed)
    arch = kw.pop("arch", tiny_arch())
    return CausalWan(arch, attention="math", **kw).eval()


def tiny_wan(seed=0, **over):
    torch.manual_seed(seed)
    return WanModel(tiny_arch(**over), attention="math").eval()


def inputs(model, batch=2, frames=12, h=4, w=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    a = model.arch
    x = torch.randn(batch, frames, a.in_dim, h, w, generator=g)
    t = torch.rand(batch, frames, generator=g) * 1000
    ctx = torch.randn(batch, a.text_len, a.text_dim, generator=g)
    return x, t, ctx
