"""Batch assembly: prompts, video clips and ODE pairs -> objectives.Batch; exact resume of positions."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vidforce import components
from vidforce.data import ClipSampler
from vidforce.train.data import BatchSource, ODEPairs, take

from tests.train.helpers import PROMPTS, tiny

CPU = torch.device("cpu")


def source(cfg, kind: str, rank: int = 0, world: int = 1) -> BatchSource:
    return BatchSource(cfg, kind, components.text_encoder(cfg), components.codec(cfg), CPU, rank, world)


def test_prompt_batches_and_exact_resume(inputs, tmp_path):
    cfg = tiny("dmd", inputs, tmp_path, "train.batch_size=3", "data.negative_prompt='blurry static'")
    text = components.text_encoder(cfg)
    a = source(cfg, "prompts")
    first = a.next()
    assert first.cond.shape == (3, cfg.model.text_len, cfg.model.text_dim)
    torch.testing.assert_close(first.uncond, text.encode(["blurry static"]).expand(3, -1, -1))
    state = a.state_dict()
    expected = [a.next().cond for _ in range(3)]              # crosses an epoch (4 prompts)
    b = source(cfg, "prompts")
    b.load_state_dict(state)
    for cond in expected:
        assert torch.equal(b.next().cond, cond)
    table = text.encode(PROMPTS)
    assert all(any(torch.equal(row, known) for known in table) for row in first.cond)   # prompts of the file
    shard0, shard1 = source(cfg, "prompts", 0, 2).next().cond, source(cfg, "prompts", 1, 2).next().cond
    assert not torch.equal(shard0, shard1)                    # ranks read different prompts


def test_video_batches_are_codec_latents_with_caption_embeddings(inputs, tmp_path):
    cfg = tiny("teacher_forcing", inputs, tmp_path, "train.batch_size=2")
    batch = source(cfg, "videos").next()
    assert batch.latents.shape == (2, cfg.rollout.num_frames, cfg.model.in_dim, 4, 4)
    assert batch.latents.abs().max() <= 1.0 and batch.latents.std() > 0.05
    assert batch.cond.shape == (2, cfg.model.text_len, cfg.model.text_dim) and batch.trajectory is None


def test_ode_pair_batches_read_the_file(inputs, tmp_path):
    cfg = tiny("ode_init", inputs, tmp_path, "train.batch_size=2")
    src = source(cfg, "ode_pairs")
    batch = src.next()
    assert batch.trajectory.shape == (2, 5, 6, cfg.model.in_dim, 4, 4)
    order = ClipSampler(6, cfg.train.seed)
    with safe_open(inputs["pairs"], "pt") as f:
        text = f.get_tensor("text")
    torch.testing.assert_close(batch.cond, text[take(order, 2)])
    src.start_epoch(3)
    assert src.state_dict()["epoch"] == 3 and src.state_dict()["position"] == 0


def test_bad_ode_pair_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="objective.ode_init.pairs is empty"):
        ODEPairs("")
    bad = tmp_path / "bad.safetensors"
    save_file({"trajectory": torch.zeros(2, 3, 3, 1, 2, 2)}, str(bad))
    with pytest.raises(ValueError, match=r"lacks \['text'\]"):
        ODEPairs(str(bad))


def test_take_continues_across_epochs():
    sampler = ClipSampler(3, seed=0)
    first = take(sampler, 5)
    assert sorted(first[:3]) == [0, 1, 2] and len(first) == 5
    assert sampler.state_dict()["epoch"] == 1 and sampler.state_dict()["position"] == 2


def test_clip_stride_cuts_overlapping_clips(inputs, tmp_path):
    """4 videos of 12 frames, clips of T frames: stride T gives floor(12 / T) clips each, stride 1 gives
    13 - T, and clip 1 of a video is clip 0 moved on by the stride."""
    cfg = tiny("teacher_forcing", inputs, tmp_path)
    t = cfg.rollout.num_frames
    assert len(source(cfg, "videos").clips) == 4 * (12 // t)
    dense = source(tiny("teacher_forcing", inputs, tmp_path, "data.clip_stride=1"), "videos").clips
    assert len(dense) == 4 * (13 - t)
    torch.testing.assert_close(dense[1]["video"][:-1], dense[0]["video"][1:])
    with pytest.raises(ValueError, match="data.clip_stride"):
        tiny("teacher_forcing", inputs, tmp_path, "data.clip_stride=-2")


def test_world_batches_are_fresh_renders_with_count_prompts_and_resume_exactly(inputs, tmp_path):
    from vidforce.data.balls import BallWorldSpec, save_spec
    spec = tmp_path / "world.json"
    save_spec(BallWorldSpec(), spec)
    cfg = tiny("teacher_forcing", inputs, tmp_path, "train.batch_size=3", f"data.world={spec}",
               "data.latent_height=16", "data.latent_width=16", "data.videos=/not/read")
    text, codec = components.text_encoder(cfg), components.codec(cfg)
    a = source(cfg, "videos")
    first = a.next()
    assert first.latents.shape == (3, cfg.rollout.num_frames, cfg.model.in_dim, 16, 16)
    pixels = codec.decode(first.latents)
    assert pixels.min() >= -1 and pixels.max() <= 1 and pixels.std() > 0.05
    table = text.encode(["1 ball", "2 balls", "3 balls"])
    assert all(any(torch.equal(row, known) for known in table) for row in first.cond)   # only the count
    state = a.state_dict()
    expected = [a.next().latents for _ in range(2)]
    b = source(cfg, "videos")
    b.load_state_dict(state)
    for latents in expected:
        assert torch.equal(b.next().latents, latents)
    assert not torch.equal(expected[0], expected[1])                       # fresh scenes every micro-batch
    assert not torch.equal(source(cfg, "videos", 0, 2).next().latents, source(cfg, "videos", 1, 2).next().latents)
    missing = tiny("teacher_forcing", inputs, tmp_path, f"data.world={tmp_path / 'none.json'}")
    with pytest.raises(FileNotFoundError, match="data.world not found"):
        source(missing, "videos")


def test_world_workers_prefetch_the_same_batches_across_resumes_and_a_dead_pool(inputs, tmp_path):
    from vidforce.data.balls import BallWorldSpec, save_spec
    spec = tmp_path / "world.json"
    save_spec(BallWorldSpec(), spec)
    args = ("train.batch_size=4", f"data.world={spec}", "data.latent_height=16", "data.latent_width=16")
    plain = source(tiny("teacher_forcing", inputs, tmp_path, *args), "videos")
    expected = [plain.next() for _ in range(8)]
    ahead = source(tiny("teacher_forcing", inputs, tmp_path, *args, "data.world_workers=2"), "videos")
    try:
        for want in expected[:2]:
            got = ahead.next()
            assert torch.equal(got.latents, want.latents) and torch.equal(got.cond, want.cond)
        assert len(ahead.world._ahead) == 2                       # micro-batches 2 and 3 queued in the workers
        ahead.load_state_dict({"epoch": 4, "position": 0, "seed": 0})   # a resume past the queued ones
        assert torch.equal(ahead.next().latents, expected[4].latents)
        assert sorted(key[2] for key in ahead.world._ahead) == [5, 6]
        for process in list(ahead.world._pool._processes.values()):
            process.kill()              # the workers die: batch 7 (queued after the kill) is simulated in the loop
        for want in expected[5:]:
            assert torch.equal(ahead.next().latents, want.latents)
        assert ahead.world.workers == 0 and ahead.world._pool is None
    finally:
        ahead.close()
    with pytest.raises(ValueError, match="data.world_workers"):
        tiny("teacher_forcing", inputs, tmp_path, *args, "data.world_workers=-1")
