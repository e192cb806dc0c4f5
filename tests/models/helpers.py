"""Tiny models and inputs shared by the model tests."""
import torch

from vidforce.config import MODEL_PRESETS, ModelConfig, arch_of
from vidforce.models.causal import CausalWan
from vidforce.models.wan import WanModel
from vidforce.sampling import chunk_step, stream_step


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


def stream_inputs(model, frames=21, device="cpu"):
    """Noise ``[1, frames, C, 4, 4]`` and the text K/V of one random prompt embedding (one generator, seed 3)."""
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(1, frames, model.arch.in_dim, 4, 4, generator=g).to(device)
    ctx = torch.randn(1, model.arch.text_len, model.arch.text_dim, generator=g).to(device)
    with torch.no_grad():
        return noise, model.text_kv(ctx)


def stream_chunks(net, noise, kv, sampler, fused, frames_per_chunk, device="cpu", finish=False):
    """x0 of every chunk of ``noise [1, T, C, h, w]`` and the final cache, streamed through ``net`` (a ``CausalWan``
    or a runner with its ``new_cache`` / ``forward_chunk``) chunk by chunk under ``no_grad`` (noise seed 7): plain
    ``chunk_step`` or fused ``stream_step``. ``finish``: the fused path also runs its last pending refresh, so its
    cache holds the clean last chunk as the plain path's does."""
    cache = net.new_cache(1, noise.shape[3], noise.shape[4], noise.shape[1], device, torch.float32)
    outs, pending, rng = [], None, torch.Generator(device).manual_seed(7)
    with torch.no_grad():
        for start in range(0, noise.shape[1], frames_per_chunk):
            chunk = noise[:, start:start + frames_per_chunk]
            if fused:
                x0, pending = stream_step(net, chunk, cache, start, kv, sampler, rng, pending)
            else:
                x0 = chunk_step(net, chunk, cache, start, kv, sampler, sampler.last, False, rng)
            outs.append(x0)
        if fused and finish:
            net.forward_chunk(pending.x, pending.t, cache, pending.start, True, text_kv=kv)
    return torch.cat(outs, 1), cache


def perturb_embedding(model, name: str, seed: int):
    """Give the zero-initialised last layer of the extra-input embedding ``name`` (``time_to_embedding``,
    ``guidance_embedding``) non-zero values (a trained input), deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in getattr(model, name)[2].parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model
