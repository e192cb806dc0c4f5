"""The DiT's optional guidance scale input (``model.guidance_input``): off it is the official DiT and refuses a
scale; on it needs one, starts as the same function (zero-initialised), loads checkpoints without it (not the
reverse), carries the scale through the causal paths and the CUDA-graph runner, and samples at the sampler's ``w``."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vidforce import components, config
from vidforce.diffusion import renoise
from vidforce.generate import build
from vidforce.models.build import build_generator
from vidforce.models.graphs import GraphedChunks
from vidforce.models.loading import CheckpointMismatchError, load_into
from vidforce.models.wan import WanModel
from vidforce.sampling import Sampler, timesteps
from vidforce.streaming import to_uint8_frames
from tests.models.helpers import (inputs, perturb_embedding, stream_chunks, stream_inputs, tiny_arch, tiny_causal,
                                  tiny_wan)


def perturb(model):
    """Give the guidance embedding a non-zero last layer (a trained w-conditioned student), deterministically."""
    return perturb_embedding(model, "guidance_embedding", 11)


def test_off_has_no_guidance_input_and_refuses_a_scale():
    model = tiny_wan()
    assert not hasattr(model, "guidance_embedding")
    x, t, ctx = inputs(model, frames=2)
    with pytest.raises(ValueError, match="model.guidance_input=true"):
        model(x, t, ctx, guidance=torch.full((2,), 3.0))


def test_on_needs_the_scale():
    model = tiny_wan(guidance_input=True)
    x, t, ctx = inputs(model, frames=2)
    with pytest.raises(ValueError, match="pass guidance"):
        model(x, t, ctx)


def test_on_starts_as_the_same_function_with_the_same_other_parameters():
    off, on = tiny_wan(seed=3), tiny_wan(seed=3, guidance_input=True)
    sd_off, sd_on = off.state_dict(), on.state_dict()
    assert set(sd_on) - set(sd_off) == set(WanModel.GUIDANCE_KEYS)
    assert all(torch.equal(sd_off[k], sd_on[k]) for k in sd_off)           # created last: same draws
    both, flow_map = tiny_wan(seed=3, time_to=True, guidance_input=True), tiny_wan(seed=3, time_to=True)
    assert set(both.state_dict()) - set(sd_off) == set(WanModel.OPTIONAL_KEYS)
    assert all(torch.equal(v, both.state_dict()[k]) for k, v in flow_map.state_dict().items())  # after time_to
    x, t, ctx = inputs(off, frames=3)
    with torch.no_grad():
        ref = off(x, t, ctx)
        for w in (torch.tensor([1.0, 4.0]), torch.zeros(2)):
            assert torch.equal(on(x, t, ctx, guidance=w), ref)


def test_a_trained_guidance_embedding_makes_the_scale_matter_per_sample():
    model = perturb(tiny_wan(guidance_input=True))
    x, t, ctx = inputs(model, frames=3)
    with torch.no_grad():
        low, high = (model(x, t, ctx, guidance=torch.full((2,), w)) for w in (1.0, 4.0))
        mixed = model(x, t, ctx, guidance=torch.tensor([1.0, 4.0]))
    assert (high - low).abs().max() > 1e-3
    torch.testing.assert_close(mixed[0], low[0])                 # each sample reads its own scale
    torch.testing.assert_close(mixed[1], high[1])


def test_causal_paths_carry_the_scale():
    model = perturb(tiny_causal(arch=tiny_arch(guidance_input=True)))
    x, t, ctx = inputs(model, frames=6)
    w = torch.tensor([1.5, 3.5])
    kv = model.text_kv(ctx)
    with torch.no_grad():
        full = model.forward_full(x, t, text_kv=kv, guidance=w)
        cache = model.new_cache(2, 4, 4, 6, x.device, x.dtype)
        chunks = torch.cat([model.forward_chunk(x[:, a:a + 3], t[:, a:a + 3], cache, a, write=True, text_kv=kv,
                                                guidance=w) for a in (0, 3)], dim=1)
        clean = torch.randn_like(x)
        tf = model.forward_full(x, t, text_kv=kv, clean=clean, clean_t=torch.zeros_like(t), guidance=w)
        tf_other = model.forward_full(x, t, text_kv=kv, clean=clean, clean_t=torch.zeros_like(t), guidance=w + 1)
    assert (full - chunks).abs().max() <= 1e-5
    assert (full - model.forward_full(x, t, text_kv=kv, guidance=w + 1)).abs().max() > 1e-3
    assert (tf - tf_other).abs().max() > 1e-3


def test_a_checkpoint_without_the_input_loads_into_one_with_it_and_not_back(tmp_path):
    off = tiny_wan(seed=0)
    save_file(off.state_dict(), str(tmp_path / "plain.safetensors"))
    on = tiny_wan(seed=5, guidance_input=True)
    report = load_into(on, tmp_path / "plain.safetensors", optional=WanModel.OPTIONAL_KEYS)
    assert set(report.missing) == set(WanModel.GUIDANCE_KEYS)
    x, t, ctx = inputs(off, frames=3)
    with torch.no_grad():
        assert torch.equal(on(x, t, ctx, guidance=torch.tensor([2.0, 3.0])), off(x, t, ctx))
    save_file(perturb(on).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="unexpected.*guidance_embedding"):
        load_into(tiny_wan(), tmp_path / "w.safetensors", optional=WanModel.OPTIONAL_KEYS)
    cfg = config.load(None, ["model.guidance_input=true", f"model.checkpoint={tmp_path / 'plain.safetensors'}"])
    generator = build_generator(cfg, "cpu", torch.float32)        # the build path: the same optional keys
    q = "blocks.0.self_attn.q.weight"
    assert torch.equal(generator.state_dict()[q], off.state_dict()[q])
    assert generator.state_dict()["guidance_embedding.2.weight"].abs().max() == 0


def manual_stream(model, kv, sampler, w, rng, frames=12, decode=None, noise=None):
    """The few-step chunk sampler written out on ``rng``: per chunk, its slice of ``noise`` (or fresh noise drawn
    then, as the streamer does), each step's x0 ``x - s v(x, s, w)`` re-noised to the next sigma, then the refresh of
    the last x0 at ``context_sigma``, every forward at the scale ``w``; the chunks' x0 (``decode``d if given)."""
    cache = model.new_cache(1, 4, 4, frames, "cpu", torch.float32)
    scale, outs = torch.full((1,), w), []
    for start in range(0, frames, 3):
        x = (torch.randn(1, 3, model.arch.in_dim, 4, 4, generator=rng) if noise is None
             else noise[:, start:start + 3])
        for i, s in enumerate(sampler.sigmas):
            x0 = x - s * model.forward_chunk(x, timesteps(s, x), cache, start, True, text_kv=kv, guidance=scale)
            if i < len(sampler.sigmas) - 1:
                x = renoise(x0, torch.full((), sampler.sigmas[i + 1]), rng)
        ctx = renoise(x0, torch.full((), sampler.context_sigma), rng) if sampler.context_sigma > 0 else x0
        model.forward_chunk(ctx, timesteps(sampler.context_sigma, ctx), cache, start, True, text_kv=kv, guidance=scale)
        outs.append(x0 if decode is None else decode(x0))
    return outs


def test_the_chunk_sampler_feeds_its_w_to_every_forward():
    """``Sampler.w`` reaches each denoising step and refresh: plain and fused (through the CUDA-graph runner's eager
    static buffers) streams equal the written-out loop at that w, and another w gives another video; a
    w-conditioned model sampled without a w is refused."""
    model = perturb(tiny_causal(arch=tiny_arch(guidance_input=True), window=6, sink=3))
    noise, kv = stream_inputs(model, frames=12)
    sampler = Sampler((1.0, 0.75, 0.5), context_sigma=0.1, w=2.5)
    with torch.no_grad():
        manual = torch.cat(manual_stream(model, kv, sampler, 2.5, torch.Generator().manual_seed(7), noise=noise), 1)
    plain, _ = stream_chunks(model, noise, kv, sampler, False, 3)
    fused, _ = stream_chunks(GraphedChunks(model, capture=False), noise, kv, sampler, True, 3)
    other, _ = stream_chunks(model, noise, kv, Sampler((1.0, 0.75, 0.5), context_sigma=0.1, w=4.0), False, 3)
    torch.testing.assert_close(plain, manual)
    torch.testing.assert_close(fused, manual)
    assert (other - manual).abs().max() > 1e-3
    with pytest.raises(ValueError, match="pass guidance"):
        stream_chunks(model, noise, kv, Sampler((1.0, 0.75, 0.5)), False, 3)


def test_generate_streams_a_w_conditioned_generator_at_the_guidance_scale():
    """``vidforce generate``'s build samples a ``model.guidance_input`` generator at ``objective.guidance.scale``: its
    stream (CUDA-graph runner on CPU, eager; fused refresh) is the written-out loop at that w, decoded, and another
    scale gives other frames."""
    def stream(scale, fused):
        cfg = config.load(None, ["train.device=cpu", "train.precision=fp32", "data.latent_height=4",
                                 "data.latent_width=4", "causal.window=6", "causal.sink=3", "model.guidance_input=true",
                                 f"objective.guidance.scale={scale}", "stream.cuda_graphs=true",
                                 f"stream.fused_refresh={fused}", "schedule.denoising_steps=[1000,500]",
                                 "schedule.context_noise=100"])
        torch.manual_seed(0)
        parts = build(cfg, False)
        perturb(parts.model)
        return cfg, parts, np.concatenate(list(parts.streamer(4).frames(12, [(0, "a red circle")])))
    cfg, parts, frames = stream(2.5, "false")
    assert parts.sampler.w == 2.5 and isinstance(parts.runner, GraphedChunks)
    assert Sampler.for_generator(config.load(None, ["objective.guidance.scale=2.5"])).w is None   # no input: no w
    with torch.no_grad():
        kv = parts.model.text_kv(components.text_encoder(cfg).encode(["a red circle"]))
        manual = np.concatenate(manual_stream(parts.model, kv, parts.sampler, 2.5, torch.Generator().manual_seed(4),
                                              decode=lambda x0: to_uint8_frames(parts.codec.decode(x0)[0])))
    assert np.array_equal(frames, manual)
    fused = stream(2.5, "true")[2]
    assert np.abs(fused.astype(int) - manual).max() <= 1             # one forward fewer per chunk: rounding only
    assert not np.array_equal(stream(4.0, "false")[2], frames)
