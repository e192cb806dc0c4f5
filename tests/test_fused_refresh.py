"""The fused refresh (``sampling.stream_step``): chunk c's clean-context pass inside chunk c + 1's first forward gives
the plain path's outputs and cache over many chunks, with eviction (sink + window), both RoPE modes, re-noised
context and prompt switches."""
import numpy as np
import pytest
import torch

from vidforce import components, config
from vidforce.models.build import build_generator
from vidforce.sampling import Guidance, PendingRefresh, Sampler, denoise_chunk, stream_step
from vidforce.streaming import Streamer
from tests.models.helpers import stream_chunks, stream_inputs, tiny_arch, tiny_causal

SAMPLER = Sampler((1.0, 0.75, 0.5), 0.0)
ATOL = 1e-5        # fp32 round-off: the fused forward runs its matmuls on twice the rows


def _stream(model, noise, kv, sampler, fused):
    """x0 of every chunk and the final cache (the fused path's last refresh run)."""
    return stream_chunks(model, noise, kv, sampler, fused, model.frames_per_chunk, finish=True)


@pytest.mark.parametrize("window,sink,rope,context,time_to", [(9, 3, "absolute", 0.0, False),
                                                              (7, 1, "relative", 0.0, False),
                                                              (6, 0, "absolute", 0.2, False),
                                                              (0, 0, "relative", 0.2, False),
                                                              (9, 3, "absolute", 0.0, True)])
def test_fused_refresh_equals_the_plain_path(window, sink, rope, context, time_to):
    """``time_to``: a flow-map generator, whose steps pass a second time and whose refresh does not."""
    model = tiny_causal(window=window, sink=sink, rope_mode=rope, arch=tiny_arch(time_to=time_to))
    if time_to:                                              # a trained flow map: the second time matters
        torch.nn.init.normal_(model.time_to_embedding[2].weight, std=0.1)
    noise, kv = stream_inputs(model)                         # 7 chunks: the ring turns over
    sampler = Sampler(SAMPLER.sigmas, context)
    plain, plain_cache = _stream(model, noise, kv, sampler, fused=False)
    fused, fused_cache = _stream(model, noise, kv, sampler, fused=True)
    torch.testing.assert_close(fused, plain, rtol=0, atol=ATOL)
    assert plain_cache.slot_frame == fused_cache.slot_frame
    for a, b in zip(plain_cache.k + plain_cache.v, fused_cache.k + fused_cache.v):
        torch.testing.assert_close(b, a, rtol=0, atol=ATOL)


def test_the_test_sees_eviction_and_the_refresh():
    """Without the refresh (or with its K/V left noisy) the outputs differ: the comparison above is not vacuous."""
    model = tiny_causal(window=9, sink=3)
    noise, kv = stream_inputs(model, frames=15)
    plain, _ = _stream(model, noise, kv, SAMPLER, fused=False)
    cache, outs = model.new_cache(1, 4, 4, 15, "cpu", torch.float32), []
    with torch.no_grad():
        for start in range(0, 15, 3):
            outs.append(denoise_chunk(model, noise[:, start:start + 3], cache, start, kv, SAMPLER, SAMPLER.last, False))
    assert (torch.cat(outs, 1)[:, 3:] - plain[:, 3:]).abs().max() > 1e-3


def test_pending_refresh_is_restricted_to_unguided_grad_free_few_step_sampling():
    model = tiny_causal(window=9, sink=3)
    kv = model.text_kv(torch.randn(1, model.arch.text_len, model.arch.text_dim))
    cache = model.new_cache(1, 4, 4, 9, "cpu", torch.float32)
    noise = torch.randn(1, 3, model.arch.in_dim, 4, 4)
    with torch.no_grad():
        _, pending = stream_step(model, noise, cache, 0, kv, SAMPLER, None, None)
    with pytest.raises(ValueError, match="without grad"):
        denoise_chunk(model, noise, cache, 3, kv, SAMPLER, SAMPLER.last, True, None, pending)
    with pytest.raises(ValueError, match="without grad"):
        denoise_chunk(model, noise, cache, 3, kv, Sampler((1.0, 0.0), solver="euler"), 0, False, None, pending)
    guided = Sampler(SAMPLER.sigmas, guidance=Guidance(2.0))
    with pytest.raises(ValueError, match="unguided"), torch.no_grad():
        denoise_chunk(model, noise, (cache, cache), 3, (kv, kv), guided, guided.last, False, None, pending)
    stale = PendingRefresh(pending.x, pending.t, 3)
    with pytest.raises(ValueError, match="right after it"), torch.no_grad():
        denoise_chunk(model, noise, cache, 3, kv, SAMPLER, SAMPLER.last, False, None, stale)


OVERRIDES = ["causal.window=6", "causal.sink=3", "data.latent_height=8", "data.latent_width=8", "train.device=cpu",
             "train.precision=fp32", "schedule.denoising_steps=[1000,500]", "schedule.context_noise=100"]


def test_streamer_with_fused_refresh_gives_the_same_video_across_a_prompt_switch():
    cfg = config.load(None, OVERRIDES)
    videos, kept = [], []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_generator(cfg, "cpu", torch.float32).eval()
        s = Streamer(model, components.codec(cfg), components.text_encoder(cfg), Sampler.from_config(cfg.schedule),
                     (8, 8), 5, fused_refresh=fused)
        videos.append(np.concatenate(list(s.frames(18, [(0, "a red circle"), (9, "a blue square")]))))
        kept.append(torch.cat([s.kept[f] for f in sorted(s.kept)], 1))
        assert s.stats.recaches == 1
    assert np.array_equal(videos[0], videos[1])
    torch.testing.assert_close(kept[1], kept[0], rtol=0, atol=ATOL)
