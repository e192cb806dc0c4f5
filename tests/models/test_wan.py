"""Wan2.1 DiT: official state-dict names, shapes, per-frame timesteps, (un)patchify order, checkpointing, bf16."""
import math

import pytest
import torch
from einops import rearrange

from vidforce.models.wan import WanModel, sinusoidal_embedding
from tests.models.helpers import inputs, tiny_arch, tiny_wan

PER_BLOCK = (
    ["modulation", "norm3.weight", "norm3.bias"]
    + [f"{a}.{p}.{wb}" for a in ("self_attn", "cross_attn") for p in "qkvo" for wb in ("weight", "bias")]
    + [f"{a}.norm_{n}.weight" for a in ("self_attn", "cross_attn") for n in "qk"]
    + [f"ffn.{i}.{wb}" for i in (0, 2) for wb in ("weight", "bias")]
)
TOP = [f"{m}.{wb}" for m in ("patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0",
                             "time_embedding.2", "time_projection.1", "head.head") for wb in ("weight", "bias")]


def test_state_dict_has_the_official_key_names_and_nothing_else():
    model = tiny_wan()
    a = model.arch
    sd = model.state_dict()
    expected = set(TOP) | {"head.modulation"} | {f"blocks.{i}.{k}" for i in range(a.num_layers) for k in PER_BLOCK}
    assert set(sd) == expected                                     # no rope tables, no norm1/norm2 params
    assert list(model.buffers()) == []
    d, p = a.dim, math.prod(a.patch_size)
    assert sd["blocks.0.modulation"].shape == (1, 6, d)
    assert sd["head.modulation"].shape == (1, 2, d)
    assert sd["patch_embedding.weight"].shape == (d, a.in_dim, *a.patch_size)
    assert sd["text_embedding.0.weight"].shape == (d, a.text_dim)
    assert sd["time_embedding.0.weight"].shape == (d, a.freq_dim)
    assert sd["time_projection.1.weight"].shape == (6 * d, d)
    assert sd["blocks.0.ffn.0.weight"].shape == (a.ffn_dim, d)
    assert sd["blocks.0.ffn.2.weight"].shape == (d, a.ffn_dim)
    assert sd["head.head.weight"].shape == (a.out_dim * p, d)


def test_no_cross_attn_norm_drops_norm3():
    keys = tiny_wan(cross_attn_norm=False).state_dict()
    assert not any("norm3" in k for k in keys)


def test_output_shape_equals_latent_shape():
    model = tiny_wan()
    x, t, ctx = inputs(model, batch=2, frames=3, h=4, w=6)
    with torch.no_grad():
        out = model(x, t, ctx)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_latent_not_divisible_by_patch_raises():
    model = tiny_wan()
    x, t, ctx = inputs(model, batch=1, frames=2, h=3, w=4)
    with pytest.raises(ValueError, match="not divisible by patch"):
        model(x, t, ctx)


def test_precomputed_text_kv_equals_context():
    model = tiny_wan()
    x, t, ctx = inputs(model, frames=2)
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), model(x, t, text_kv=model.text_kv(ctx)))


def test_short_context_is_zero_padded_to_text_len_as_the_official_forward():
    model = tiny_wan()
    x, t, ctx = inputs(model, frames=2)
    short = ctx[:, :3]
    padded = torch.cat([short, short.new_zeros(2, model.arch.text_len - 3, model.arch.text_dim)], dim=1)
    with torch.no_grad():
        assert all(k.shape[2] == model.arch.text_len for k, _ in model.text_kv(short))
        assert torch.equal(model(x, t, short), model(x, t, padded))


def test_context_longer_than_text_len_raises():
    model = tiny_wan()
    x, t, ctx = inputs(model, frames=2)
    with pytest.raises(ValueError, match=f"exceeds text_len={model.arch.text_len}"):
        model(x, t, torch.cat([ctx, ctx[:, :1]], dim=1))


def test_broadcast_timestep_equals_equal_per_frame_timesteps():
    model = tiny_wan()
    x, _, ctx = inputs(model, frames=3)
    t = torch.tensor([100.0, 700.0])
    with torch.no_grad():
        a = model(x, t, ctx)
        b = model(x, t[:, None].expand(2, 3), ctx)
    assert torch.equal(a, b)


def _token_local_plan(layer, q, k, v):
    """Self-attention replaced by "each token reads itself": no information moves between frames."""
    return v


def test_per_frame_timestep_modulates_its_own_frame():
    model = tiny_wan()
    x, t, ctx = inputs(model, batch=1, frames=4)
    t2 = t.clone()
    t2[0, 2] = (t2[0, 2] + 400) % 1000
    with torch.no_grad():
        a, b = model(x, t, ctx, plan=_token_local_plan), model(x, t2, ctx, plan=_token_local_plan)
        full_a, full_b = model(x, t, ctx), model(x, t2, ctx)
    diff = (a - b).abs().amax(dim=(0, 2, 3, 4))
    assert diff[2] > 1e-3 and diff[[0, 1, 3]].max() == 0           # only frame 2's modulation changed
    full = (full_a - full_b).abs().amax(dim=(0, 2, 3, 4))
    assert (full > 1e-4).all()                                      # bidirectional attention spreads it


def test_sinusoidal_embedding_known_values():
    e = sinusoidal_embedding(8, torch.tensor([0.0, 1.0, 250.0]))
    assert e.shape == (3, 8) and e.dtype == torch.float64
    assert e[0].tolist() == [1.0] * 4 + [0.0] * 4                  # cos first, then sin
    freqs = torch.tensor([1.0, 0.1, 0.01, 0.001], dtype=torch.float64)   # 10000^(-i/4)
    for row, p in ((1, 1.0), (2, 250.0)):
        assert torch.allclose(e[row], torch.cat([torch.cos(p * freqs), torch.sin(p * freqs)]), atol=1e-12)


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 1, 2)])
def test_unpatchify_matches_einops_reference(patch):
    model = WanModel(tiny_arch(patch_size=list(patch)))
    f, h, w = 2, 3, 2
    c = model.arch.out_dim
    out = torch.randn(2, f * h * w, math.prod(patch) * c)
    ref = rearrange(out, "b (f h w) (p q r c) -> b (f p) c (h q) (w r)", f=f, h=h, w=w,
                    p=patch[0], q=patch[1], r=patch[2])
    assert torch.equal(model.unpatchify(out, (f, h, w)), ref)


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 1)])
def test_patchify_then_unpatchify_round_trips_through_the_model(patch):
    """With no blocks, zero time embedding and a head that undoes a +/- identity patch embedding, the model
    returns every patch of the input scaled by the head's LayerNorm: token and channel orders line up."""
    c = 4
    n = c * math.prod(patch)                        # values per patch, conv order (c, p, q, r)
    model = WanModel(tiny_arch(patch_size=list(patch), num_layers=0, dim=2 * n, num_heads=2, in_dim=c, out_dim=c),
                     attention="math")
    with torch.no_grad():
        for prm in model.parameters():
            prm.zero_()
        eye = torch.eye(n).view(n, c, *patch)
        model.patch_embedding.weight.copy_(torch.cat([eye, -eye]))
        head_order = torch.arange(n).view(c, *patch).permute(1, 2, 3, 0).flatten()   # (p, q, r, c)
        model.head.head.weight[torch.arange(n), head_order] = 1.0
    x, t, ctx = inputs(model, batch=2, frames=4, h=4, w=4)
    with torch.no_grad():
        out = model(x, t, ctx)
    spec = "b (f p) c (h q) (w r) -> b f h w (p q r c)"
    px = rearrange(x, spec, p=patch[0], q=patch[1], r=patch[2])
    scale = (px.square().mean(-1, keepdim=True) + model.arch.eps).rsqrt()   # LayerNorm of [P; -P]
    expected = rearrange(px * scale, "b f h w (p q r c) -> b (f p) c (h q) (w r)", p=patch[0], q=patch[1],
                         r=patch[2], c=c)
    assert (out - expected).abs().max() < 1e-4


def test_gradient_checkpointing_gives_identical_gradients():
    x, t, ctx = inputs(tiny_wan(), frames=2)

    def grads(checkpointing):
        model = tiny_wan().train()
        model.gradient_checkpointing = checkpointing
        xg = x.clone().requires_grad_(True)
        model(xg, t, ctx).square().mean().backward()
        return [xg.grad] + [p.grad for p in model.parameters()]

    plain, ckpt = grads(False), grads(True)
    assert len(plain) == len(ckpt)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-7) for a, b in zip(plain, ckpt))
    assert plain[0].abs().sum() > 0


def test_bf16_model_runs_and_stays_close_to_fp32():
    model = tiny_wan()
    x, t, ctx = inputs(model, frames=2)
    with torch.no_grad():
        ref = model(x, t, ctx)
        out = model.to(torch.bfloat16)(x, t, ctx)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert ((out - ref).norm() / ref.norm()).item() < 0.05
