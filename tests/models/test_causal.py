"""Per-chunk KV-cache forward == full-sequence block-causal forward (fp32, CPU)."""
import pytest
import torch

from vidforce.models.causal import BlockCausalPlan, frame_mask
from vidforce.models.attention import attend
from vidforce.models.rope import apply_rope
from tests.models.helpers import inputs, tiny_causal


def run_chunks(model, x, t, ctx, frames_per_chunk=3, extra=0):
    cache = model.new_cache(x.shape[0], x.shape[3], x.shape[4], x.shape[1], x.device, x.dtype, extra)
    kv = model.text_kv(ctx)
    outs = []
    with torch.no_grad():
        for s in range(0, x.shape[1], frames_per_chunk):
            e = s + frames_per_chunk
            outs.append(model.forward_chunk(x[:, s:e], t[:, s:e], cache, s, write=True, text_kv=kv))
    return torch.cat(outs, 1)


@pytest.mark.parametrize("window,sink", [(0, 0), (6, 0), (9, 3), (7, 1)])
@pytest.mark.parametrize("impl", ["loop", "dense", "flex"])
def test_cache_equals_full_sequence(window, sink, impl):
    model = tiny_causal(window=window, sink=sink, full_sequence=impl)
    x, t, ctx = inputs(model, frames=15)           # 5 chunks
    with torch.no_grad():
        full = model.forward_full(x, t, ctx)
    chunked = run_chunks(model, x, t, ctx)
    assert (full - chunked).abs().max().item() <= 1e-5


def test_eviction_matters():
    """A window that evicts frames must change the output of late chunks (the test above is not vacuous)."""
    x, t, ctx = inputs(tiny_causal(), frames=15)
    with torch.no_grad():
        a = tiny_causal(window=0).forward_full(x, t, ctx)
        b = tiny_causal(window=6).forward_full(x, t, ctx)
    assert (a[:, :6] - b[:, :6]).abs().max() < 1e-5
    assert (a[:, 9:] - b[:, 9:]).abs().max() > 1e-3


@pytest.mark.parametrize("window,sink", [(0, 0), (9, 3)])
def test_relative_rope_cache_equals_reference(window, sink):
    model = tiny_causal(window=window, sink=sink, rope_mode="relative")
    x, t, ctx = inputs(model, frames=15)
    with torch.no_grad():
        full = model.forward_full(x, t, ctx)
    assert (full - run_chunks(model, x, t, ctx)).abs().max() <= 1e-5


def test_relative_rope_runs_past_the_table():
    from tests.models.helpers import tiny_arch
    arch = tiny_arch(rope_max_len=8)
    rel = tiny_causal(arch=arch, window=6, sink=0, rope_mode="relative")
    x, t, ctx = inputs(rel, batch=1, frames=30)
    out = run_chunks(rel, x, t, ctx)
    assert out.shape == x.shape and torch.isfinite(out).all()
    ab = tiny_causal(arch=arch, window=6, sink=0, rope_mode="absolute")
    with pytest.raises(ValueError, match="past the RoPE table"):
        run_chunks(ab, x, t, ctx)


def test_teacher_forcing_full_equals_cache_of_clean_context():
    """Noisy chunk c attending clean chunks < c (full sequence) == cache filled with clean frames."""
    model = tiny_causal(window=9, sink=3)
    x, t, ctx = inputs(model, frames=12)
    clean, _, _ = inputs(model, frames=12, seed=5)
    tc = torch.zeros_like(t)
    with torch.no_grad():
        full = model.forward_full(x, t, ctx, clean=clean, clean_t=tc)
        cache = model.new_cache(2, 4, 4, 12, "cpu", torch.float32)
        kv = model.text_kv(ctx)
        outs = []
        for s in range(0, 12, 3):
            outs.append(model.forward_chunk(x[:, s:s + 3], t[:, s:s + 3], cache, s, write=True, text_kv=kv))
            model.forward_chunk(clean[:, s:s + 3], tc[:, s:s + 3], cache, s, write=True, text_kv=kv)
    assert (full - torch.cat(outs, 1)).abs().max() <= 1e-5


def test_read_only_step_matches_write_step_and_has_grad():
    """The grad step (write=False) equals the no-grad write step and leaves the cache untouched."""
    model = tiny_causal(window=9, sink=3)
    x, t, ctx = inputs(model, frames=15)
    cache = model.new_cache(2, 4, 4, 15, "cpu", torch.float32)
    kv = model.text_kv(ctx)
    with torch.no_grad():
        for s in range(0, 12, 3):
            model.forward_chunk(x[:, s:s + 3], t[:, s:s + 3], cache, s, write=True, text_kv=kv)
    snapshot = [k.clone() for k in cache.k]
    xg = x[:, 12:].clone().requires_grad_(True)
    out = model.forward_chunk(xg, t[:, 12:], cache, 12, write=False, context=ctx)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, cache.k))
    out.square().sum().backward()
    assert xg.grad.abs().sum() > 0
    with torch.no_grad():
        ref = model.forward_chunk(x[:, 12:], t[:, 12:], cache, 12, write=True, text_kv=kv)
    assert (out.detach() - ref).abs().max() <= 1e-5


def test_cache_write_rules():
    model = tiny_causal(window=9, sink=3)
    cache = model.new_cache(1, 4, 4, 30, "cpu", torch.float32)
    cache.layout(0, 3, True)
    cache.layout(0, 3, True)            # overwrite the last chunk: allowed
    cache.layout(3, 6, True)
    with pytest.raises(ValueError, match="overwrite the last chunk"):
        cache.layout(0, 3, True)
    with pytest.raises(RuntimeError, match="no_grad"):
        x, t, ctx = inputs(model, batch=1, frames=3)
        model.forward_chunk(x, t, cache, 6, write=True, context=ctx)


def test_ring_keeps_sink_and_newest_frames():
    model = tiny_causal(window=9, sink=3)
    cache = model.new_cache(1, 4, 4, 30, "cpu", torch.float32)
    for s in range(0, 24, 3):
        cache.layout(s, s + 3, True)
    assert sorted(f for f in cache.slot_frame if f >= 0) == [0, 1, 2, 18, 19, 20, 21, 22, 23]
    assert len(cache.k[0][0, 0]) == 9                        # static buffer: window frames


def test_frame_mask_known_values():
    m = frame_mask(6, 3)
    assert m[0].tolist() == [True, True, True, False, False, False]
    assert m[5].tolist() == [True] * 6
    w = frame_mask(9, 3, window=6, sink=0)
    assert w[8].tolist() == [False, False, False] + [True] * 6
    tf = frame_mask(6, 3, clean=True)                         # [clean 0..5; noisy 0..5]
    assert tf[9].tolist() == [True] * 3 + [False] * 3 + [False] * 3 + [True] * 3
    assert tf[6].tolist() == [False] * 6 + [True] * 3 + [False] * 3


def test_relative_rope_first_chunk_with_grad_and_empty_cache():
    """The step with grad reads an empty cache on the first chunk (no cached keys to rotate)."""
    model = tiny_causal(window=6, sink=0, rope_mode="relative")
    x, t, ctx = inputs(model, batch=1, frames=3)
    cache = model.new_cache(1, 4, 4, 12, "cpu", torch.float32)
    out = model.forward_chunk(x.requires_grad_(True), t, cache, 0, write=False, context=ctx)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
