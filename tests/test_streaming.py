"""Streaming: long videos at flat memory, incremental playable mp4s, prompt switches with KV re-cache."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from vidforce import components, config
from vidforce.models.build import build_generator
from vidforce.rollout import rollout
from vidforce.sampling import Sampler, refresh_cache
from vidforce.streaming import StreamStats, Streamer, filling_outputs, switch_frames
from vidforce.video_io import Mp4Writer, to_uint8_frames

OVERRIDES = ["causal.window=6", "causal.sink=0", "data.latent_height=8", "data.latent_width=8", "train.device=cpu",
             "train.precision=fp32", "schedule.denoising_steps=[1000,500]", "data.fps=8", "logging.progress=false"]


def _streamer(cfg, seed=0, **levers):
    torch.manual_seed(0)
    model = build_generator(cfg, "cpu", torch.float32).eval()
    return Streamer(model, components.codec(cfg), components.text_encoder(cfg), Sampler.from_config(cfg.schedule),
                    (8, 8), seed, **levers)


def test_streams_past_the_window_with_flat_state(tmp_path):
    cfg = config.load(None, OVERRIDES)
    s = _streamer(cfg)
    out = tmp_path / "a.mp4"
    state, frames, mid = [], 0, 0
    with Mp4Writer(out, 8) as w:
        for i, chunk in enumerate(s.frames(24, [(0, "a red circle on a grey background")])):   # 4x the window
            w.append(chunk)
            frames += len(chunk)
            state.append(_state_bytes(s))
            if i == 5:                                      # 18 frames in: fragments are on disk already
                mid = _wait_for_size(out, 1)
    assert frames == 24 and s.stats.chunks == 8
    assert 0 < mid < out.stat().st_size                    # the file grew while generating
    assert len(set(state[2:])) == 1                        # cache + kept latents flat once the window is full
    assert len(s.kept) <= cfg.causal.window
    video = iio.imread(out)
    assert video.shape[0] == 24 and video.shape[1:] == (16, 16, 3)


def _state_bytes(s: Streamer) -> int:
    """Bytes held across chunks: the KV cache buffers and the kept latents."""
    return sum(t.numel() * t.element_size() for t in s.cache.k + s.cache.v + list(s.kept.values()))


def _wait_for_size(path: Path, at_least: int, timeout: float = 10.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.stat().st_size >= at_least:
            return path.stat().st_size
        time.sleep(0.05)
    return 0


def test_prompt_switch_recaches_and_changes_only_later_frames():
    cfg = config.load(None, OVERRIDES)
    a = np.concatenate(list(_streamer(cfg).frames(12, [(0, "a red circle")])))
    s = _streamer(cfg)
    b = np.concatenate(list(s.frames(12, [(0, "a red circle"), (6, "a blue square on a white background")])))
    assert s.stats.recaches == 1
    assert np.array_equal(a[:6], b[:6])
    assert np.abs(a[6:].astype(int) - b[6:].astype(int)).mean() > 1


def test_recache_rewrites_cross_attention_context():
    """After a switch the cached keys of earlier frames are recomputed under the new prompt."""
    cfg = config.load(None, OVERRIDES)
    s = _streamer(cfg)
    it = s.frames(12, [(0, "a red circle"), (6, "a blue square")])
    next(it), next(it)
    before = s.cache.k[1].clone()
    next(it)
    after_slots = [s.cache.slot(f) for f in (3, 4, 5)]
    assert not torch.allclose(before[:, :, after_slots], s.cache.k[1][:, :, after_slots])


def test_schedule_snaps_to_chunks():
    from vidforce.models.codecs.pixel import PixelCodec
    assert switch_frames([(0, "a"), (1.0, "b")], 8, PixelCodec(2), 3) == [(0, "a"), (9, "b")]


def _write_cfg(tmp_path):
    from omegaconf import OmegaConf
    path = tmp_path / "tiny.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.from_dotlist(OVERRIDES)))
    return path


@pytest.mark.slow
def test_sigterm_leaves_a_playable_mp4(tmp_path):
    out = tmp_path / "long.mp4"
    cmd = [sys.executable, "-m", "vidforce.cli", "generate", "--config", str(_write_cfg(tmp_path)),
           "--prompt", "a red circle", "--seconds", "3000", "--out", str(out), "--random-weights",
           "causal.rope_mode=relative"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.stat().st_size < 2000):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "stopped early" in stdout
    frames = iio.imread(out)
    assert frames.shape[0] > 0 and frames.shape[1:] == (16, 16, 3)


def test_streamer_equals_rollout_on_the_same_noise():
    """The streamed frames are the decoded ``rollout`` (exit at the last step) of the same noise: a one-step
    sampler with a clean refresh draws nothing but each chunk's noise, so the two see the same noise."""
    cfg = config.load(None, OVERRIDES + ["schedule.denoising_steps=[1000]"])
    s = _streamer(cfg, seed=5)
    streamed = np.concatenate(list(s.frames(12, [(0, "a red circle")])))
    rng = torch.Generator().manual_seed(5)
    noise = torch.cat([torch.randn((1, 3, s.model.arch.in_dim, 8, 8), generator=rng) for _ in range(4)], dim=1)
    with torch.no_grad():
        kv = s.model.text_kv(s.text.encode(["a red circle"]))
        latents = rollout(s.model, noise, kv, s.sampler, s.sampler.last)
    assert np.array_equal(streamed, to_uint8_frames(s.codec.decode(latents)[0]))


def test_recache_is_the_refresh_pass_with_context_noise():
    """With context_noise > 0 a prompt switch re-commits each kept chunk exactly as ``refresh_cache`` does:
    re-noised with the streamer's generator to context_sigma (not the clean latents)."""
    cfg = config.load(None, OVERRIDES + ["schedule.context_noise=100"])
    s = _streamer(cfg)
    it = s.frames(12, [(0, "a red circle"), (6, "a blue square")])
    next(it), next(it)
    frames = sorted(s.kept)                                 # the window's frames the next chunk attends
    kept = torch.cat([s.kept[f] for f in frames], dim=1)
    assert frames == [3, 4, 5]
    state = s.rng.get_state()
    text_kv = s._text_kv("a blue square")
    s._recache(text_kv)
    got = [k.clone() for k in s.cache.k]
    s.rng.set_state(state)
    ref = s.model.new_cache(1, 8, 8, 12, "cpu", torch.float32)
    refresh_cache(s.model, kept, ref, 3, text_kv, s.sampler, s.rng)
    slots = [s.cache.slot(f) for f in frames]
    for a, b in zip(got, ref.k):
        torch.testing.assert_close(a[:, :, slots], b[:, :, slots], rtol=0, atol=0)
    clean = s.model.new_cache(1, 8, 8, 12, "cpu", torch.float32)
    refresh_cache(s.model, kept, clean, 3, text_kv, Sampler(s.sampler.sigmas, 0.0))
    assert not torch.allclose(got[1][:, :, slots], clean.k[1][:, :, slots])


@pytest.mark.parametrize("fused,start_image", [(False, False), (True, False), (False, True), (True, True)])
def test_overlapped_decode_hands_out_the_serial_frames(fused, start_image):
    """``overlap_decode`` over 4x the window (evictions), across a scheduled switch, from a start image, with the
    fused refresh: every output equals the serial stream's, the switch lands at the same frame."""
    cfg = config.load(None, OVERRIDES)
    first = None
    if start_image:                                 # clean latents of a start image (PixelCodec: any in [-1, 1])
        first = torch.rand(1, 1, cfg.model.in_dim, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    offset = 0 if first is None else 1
    schedule = [(0, "a red circle"), (9 + offset, "a blue square")]
    outs, stats = [], []
    for overlap in (False, True):
        s = _streamer(cfg, 5, fused_refresh=fused, overlap_decode=overlap)
        outs.append(list(s.frames(24 if first is None else 22, schedule, first)))
        stats.append(s.stats)
    assert len(outs[0]) == len(outs[1]) == 8
    assert all(np.array_equal(a, b) for a, b in zip(*outs))
    assert [sw[:3] for sw in stats[1].switches] == [sw[:3] for sw in stats[0].switches] == [
        (9 + offset, "a blue square", 3)]
    serial, overlapped = stats
    assert len(serial.chunk_dit_s) == len(serial.chunk_decode_s) == 8 and overlapped.chunk_dit_s == []
    assert overlapped.chunk_decode_s == [] and len(overlapped.chunk_wall_s) == 8
    assert sum(overlapped.chunk_wall_s) == pytest.approx(overlapped.wall_s)
    assert overlapped.first_frame_s == pytest.approx(overlapped.chunk_wall_s[0])


@pytest.mark.parametrize("start_image", [False, True])
def test_the_rate_after_the_first_output_leaves_its_start_up_out(start_image):
    """A slow first output (a stand-in for compiles and captures: 0.3 s more in its first forward) lowers the
    throughput, not ``fps_after_first``: the frames after the first output over the time after it; nan with one."""
    cfg = config.load(None, OVERRIDES)
    first = None if not start_image else torch.rand(1, 1, cfg.model.in_dim, 8, 8) * 2 - 1
    s = _streamer(cfg)
    forward, calls = s.model.forward_chunk, []

    def slow_first(*args, **kwargs):
        if not calls:
            time.sleep(0.3)
        calls.append(1)
        return forward(*args, **kwargs)
    s.model.forward_chunk = slow_first
    outs = list(s.frames(12 if first is None else 10, [(0, "a red circle")], first))
    st = s.stats
    assert st.first_frames == len(outs[0]) == (3 if first is None else 1) and st.first_frame_s > 0.3
    assert st.fps_after_first == pytest.approx((st.frames - len(outs[0])) / (st.wall_s - st.first_frame_s))
    assert st.fps_after_first > 2 * st.fps
    one = _streamer(cfg)
    list(one.frames(3, [(0, "a red circle")]))
    assert one.stats.chunks == 1 and math.isnan(one.stats.fps_after_first)


def test_the_steady_rate_is_one_output_over_the_median_period_after_the_window_fills():
    """``fps_steady(skip)``: the frames of a later output over the median of the periods after the first ``skip``
    outputs (all of them when none is left); ``filling_outputs`` sets apart the outputs before the window is full."""
    st = StreamStats(frames=9 + 4 * 12, chunks=5, first_frames=9, chunk_wall_s=[5.0, 4.0, 2.0, 1.0, 3.0])
    assert st.fps_steady(2) == 12 / 2.0 and st.fps_steady(4) == 12 / 3.0 and st.fps_steady(9) == 12 / 3.0
    assert math.isnan(StreamStats(frames=9, chunks=1, first_frames=9, chunk_wall_s=[1.0]).fps_steady(1))
    assert filling_outputs(21, 3) == 8 and filling_outputs(12, 3) == 5
    assert filling_outputs(None, 3) == filling_outputs(0, 3) == 1


def test_overlapped_decode_issues_the_next_chunks_dit_before_the_decode():
    """The order of work (CPU: no streams, the issue order is the order run): serially each chunk is decoded after
    its DiT; overlapped, after the next chunk's DiT, but the first chunk at once and the last at the end."""
    cfg = config.load(None, OVERRIDES)
    orders = []
    for overlap in (False, True):
        s, log = _streamer(cfg, overlap_decode=overlap), []
        forward, stream_decoder = s.model.forward_chunk, s.codec.stream_decoder

        def logged_forward(*args, start, **kwargs):
            if log[-1:] != [f"dit {start}"]:
                log.append(f"dit {start}")
            return forward(*args, start=start, **kwargs)

        def logged_decoder():
            decoder = stream_decoder()
            decode = decoder.decode
            decoder.decode = lambda x0: log.append("decode") or decode(x0)
            return decoder
        s.model.forward_chunk, s.codec.stream_decoder = logged_forward, logged_decoder
        for _ in s.frames(12, [(0, "a red circle")]):
            log.append("out")
        orders.append(log)
    assert orders[0] == ["dit 0", "decode", "out", "dit 3", "decode", "out", "dit 6", "decode", "out",
                         "dit 9", "decode", "out"]
    assert orders[1] == ["dit 0", "decode", "out", "dit 3", "dit 6", "decode", "out", "dit 9", "decode", "out",
                         "decode", "out"]


@pytest.mark.parametrize("start_image", [False, True])
@pytest.mark.parametrize("overlap", [False, True])
def test_a_request_lands_one_chunk_later_with_overlap(overlap, start_image):
    """A request after the first output lands at the next chunk either way; one after a later output lands at the
    next chunk serially and one chunk later overlapped (the next chunk had started), recorded when that chunk is
    handed out -- the video of a schedule switching there. ``request`` returns that frame (``Streamer.lands_at``,
    what ``vidforce serve`` names), 0 before the first output (the first prompt)."""
    cfg = config.load(None, OVERRIDES)
    first = torch.zeros(1, 1, cfg.model.in_dim, 8, 8) if start_image else None
    o = 0 if first is None else 1
    starts = [0] * o + list(range(o, 18 + o, 3))    # of the outputs: the start image, then the chunks
    s = _streamer(cfg, overlap_decode=overlap)
    frames = s.frames(18 + o, [(0, "a red circle")], first)
    assert s.request("a blue square") == 0 and Streamer.lands_at(0, 3, o, overlap) == 0
    blue = _streamer(cfg).frames(18 + o, [(0, "a blue square")], first)
    assert all(np.array_equal(next(frames), next(blue)) for _ in range(2))
    for received, lands in ((starts[0], starts[1]), (starts[1], starts[1] + (6 if overlap else 3))):
        s, video, recorded = _streamer(cfg, overlap_decode=overlap), [], []
        for start, frames in zip(starts, s.frames(18 + o, [(0, "a red circle")], first)):
            video.append(frames)
            recorded.append(len(s.stats.switches))
            if start == received:
                assert s.request("a blue square") == lands
                assert Streamer.lands_at(starts[starts.index(start) + 1], 3, o, overlap) == lands
        assert [sw.frame for sw in s.stats.switches] == [lands]
        assert recorded.index(1) == starts.index(lands)
        scheduled = _streamer(cfg).frames(18 + o, [(0, "a red circle"), (lands, "a blue square")], first)
        assert np.array_equal(np.concatenate(video), np.concatenate(list(scheduled)))


@pytest.mark.gpu
def test_on_cuda_the_overlapped_decode_hands_out_the_serial_frames():
    """The side stream on a GPU (CUDA graphs, fused refresh, a switch, a Wan VAE decoding into its buffers): the same
    frames as the serial stream, and the switch recorded at the same frame."""
    from vidforce.models.codecs.wan_vae import WanVAE
    from vidforce.models.graphs import GraphedChunks
    cfg = config.load(None, OVERRIDES + ["model.in_dim=16", "model.out_dim=16"])
    torch.manual_seed(0)
    model = build_generator(cfg, "cuda", torch.float32).eval()
    vae = WanVAE(dim=8)
    vae.set_decode_layout(True, False)
    vae = vae.cuda().eval()
    runner, text = GraphedChunks(model, capture=True), components.text_encoder(cfg, "cuda")
    videos, switches = [], []
    for overlap in (True, False, True):              # the first stream captures the graphs, the others replay
        s = Streamer(model, vae, text, Sampler.from_config(cfg.schedule), (8, 8), 5, "cuda", runner=runner,
                     fused_refresh=True, overlap_decode=overlap)
        videos.append(np.concatenate(list(s.frames(24, [(0, "a red circle"), (9, "a blue square")]))))
        switches.append([sw[:3] for sw in s.stats.switches])
        assert s.stats.switches[0].seconds > 0
    assert all(np.array_equal(v, videos[0]) for v in videos[1:])
    assert switches == [[(9, "a blue square", 3)]] * 3
