"""CUDA-graph runner of the chunk forwards (``models.graphs``): on CPU its static buffers (write slots, RoPE angles,
text K/V) run eagerly and must give the plain path's outputs bit for bit over many chunks with eviction; on a GPU
the captured graphs must too."""
import numpy as np
import pytest
import torch

from vidforce import components, config
from vidforce.models.build import build_generator
from vidforce.models.graphs import GraphedChunks, without_writes
from vidforce.sampling import Sampler, stream_step
from vidforce.streaming import Streamer
from tests.models.helpers import stream_chunks, stream_inputs, tiny_arch, tiny_causal

SAMPLER = Sampler((1.0, 0.75, 0.5), 0.0)


def _stream(net, model, noise, kv, fused=False, device="cpu"):
    return stream_chunks(net, noise, kv, SAMPLER, fused, model.frames_per_chunk, device)


@pytest.mark.parametrize("rope,time_to", [("absolute", False), ("relative", False), ("absolute", True)])
@pytest.mark.parametrize("fused", [False, True])
def test_static_buffers_give_the_plain_outputs_bit_for_bit(rope, time_to, fused):
    """``time_to``: a flow-map generator, whose chunk forwards carry a second time (a static buffer too)."""
    model = tiny_causal(window=9, sink=3, rope_mode=rope, arch=tiny_arch(time_to=time_to))
    noise, kv = stream_inputs(model)                             # 7 chunks: the ring turns over twice
    plain, plain_cache = _stream(model, model, noise, kv, fused)
    runner = GraphedChunks(model, capture=False)
    graphed, cache = _stream(runner, model, noise, kv, fused)
    assert torch.equal(graphed, plain)
    assert all(torch.equal(a, b) for a, b in zip(cache.k + cache.v, plain_cache.k + plain_cache.v))
    reads = sorted({key[0] for key in runner.graphs})
    # the second time's shape: none in a plain refresh, a chunk's in a step, two chunks' in a fused step 0
    assert {key[3] for key in runner.graphs} == ({(1, 3), (1, 6)} if fused else {None, (1, 3)}) if time_to else {None}
    # one graph per fill level of the window (3, 6, 9 frames read), then the steady state reuses the last; fused:
    # also one per pair (the refresh of the chunk before, the first step of the next) for steps 0
    expected = [((3, 3),), ((3, 6),), ((3, 9),)]
    expected += [((3, 3), (3, 6)), ((3, 6), (3, 9)), ((3, 9), (3, 9))] if fused else []
    assert reads == sorted(expected)


def test_a_fused_forward_run_twice_differs_unless_its_writes_are_undone():
    """A capture's warm-up runs the forward once before the replay. At an eviction step of the fused refresh the
    later chunk overwrites frames the earlier one reads, so a second run reads the first one's writes and differs
    (an H200 showed it: the capturing stream differed from later ones by 3e-3); ``without_writes`` puts the
    written slots back, and the run after it gives the first run's output and cache, bit for bit."""
    model = tiny_causal(window=9, sink=3)
    noise, kv = stream_inputs(model)
    cache = model.new_cache(1, 4, 4, noise.shape[1], "cpu", torch.float32)
    pending, rng = None, torch.Generator().manual_seed(7)
    with torch.no_grad():
        for start in range(0, 12, 3):
            _, pending = stream_step(model, noise[:, start:start + 3], cache, start, kv, SAMPLER, rng, pending)
        t = torch.full((1, 3), 1000.0)
        call = model.chunk_call(noise[:, 12:15], t, cache, 12, True, None, (pending.x, pending.t))
        run = lambda: model(call.x, call.t, plan=call.plan, text_kv=kv)  # noqa: E731
        before = [b.clone() for b in cache.k + cache.v]
        first = without_writes(call.plan, run)
        assert all(torch.equal(a, b) for a, b in zip(cache.k + cache.v, before))
        again = run()
        after = [b.clone() for b in cache.k + cache.v]
        assert torch.equal(again, first)
        third = run()                                    # the writes of `again` not undone: a different result
        assert not torch.equal(third, first)
        assert not all(torch.equal(a, b) for a, b in zip(cache.k + cache.v, after))


def test_a_second_stream_reuses_the_cache_and_graphs():
    model = tiny_causal(window=7, sink=1)
    noise, kv = stream_inputs(model)
    runner = GraphedChunks(model, capture=False)
    first, cache = _stream(runner, model, noise, kv)
    graphs = dict(runner.graphs)
    second, cache2 = _stream(runner, model, noise, kv)
    assert cache2 is cache and runner.graphs == graphs and torch.equal(first, second)
    runner.new_cache(1, 8, 8, 21, "cpu", torch.float32)          # another shape: a new cache, graphs dropped
    assert runner.cache is not cache and not runner.graphs


def test_forwards_that_cannot_be_captured_run_eagerly():
    """They make no graph and give the model's own outputs, bit for bit."""
    model = tiny_causal(window=9, sink=3)
    noise, kv = stream_inputs(model, frames=15)
    runner = GraphedChunks(model, capture=False)
    t = torch.full((1, 3), 500.0)
    wide = model.new_cache(1, 4, 4, 15, "cpu", torch.float32, extra_capacity=3)   # gathered reads: not static
    plain = model.new_cache(1, 4, 4, 15, "cpu", torch.float32, extra_capacity=3)
    with torch.no_grad():
        for start in range(0, 15, 3):
            out = runner.forward_chunk(noise[:, start:start + 3], t, wide, start, True, text_kv=kv)
            assert torch.equal(out, model.forward_chunk(noise[:, start:start + 3], t, plain, start, True, text_kv=kv))
    assert not runner.graphs and out.shape == (1, 3, model.arch.in_dim, 4, 4)
    cache = runner.new_cache(1, 4, 4, 15, "cpu", torch.float32)
    out = runner.forward_chunk(noise[:, :3], t, cache, 0, False, text_kv=kv)   # grad, read-only
    assert not runner.graphs and out.requires_grad
    assert torch.equal(out, model.forward_chunk(noise[:, :3], t, cache, 0, False, text_kv=kv))


def test_streamer_with_the_runner_follows_a_prompt_switch():
    """The graphs read static copies of the text K/V: a switch must copy the new prompt's in."""
    cfg = config.load(None, ["causal.window=6", "causal.sink=3", "data.latent_height=8", "data.latent_width=8",
                             "train.device=cpu", "train.precision=fp32", "schedule.denoising_steps=[1000,500]"])
    torch.manual_seed(0)
    model = build_generator(cfg, "cpu", torch.float32).eval()
    parts = (model, components.codec(cfg), components.text_encoder(cfg), Sampler.from_config(cfg.schedule), (8, 8))
    schedule = [(0, "a red circle"), (9, "a blue square")]
    plain = np.concatenate(list(Streamer(*parts, 5).frames(18, schedule)))
    runner = GraphedChunks(model, capture=False)
    for fused in (False, True):
        graphed = np.concatenate(list(Streamer(*parts, 5, runner=runner, fused_refresh=fused).frames(18, schedule)))
        assert np.array_equal(graphed, plain)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True])
def test_captured_graphs_replay_the_plain_outputs(fused):
    model = tiny_causal(window=9, sink=3).cuda()
    noise, kv = stream_inputs(model, device="cuda")
    plain, plain_cache = _stream(model, model, noise, kv, fused, "cuda")
    runner = GraphedChunks(model, capture=True)
    for _ in range(2):                               # the first stream captures, the second only replays
        graphed, cache = _stream(runner, model, noise, kv, fused, "cuda")
        assert all(g.graph is not None for g in runner.graphs.values())
        assert torch.equal(graphed, plain), (graphed - plain).abs().max().item()
        assert all(torch.equal(a, b) for a, b in zip(cache.k + cache.v, plain_cache.k + plain_cache.v))
