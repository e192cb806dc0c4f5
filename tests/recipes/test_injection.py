"""Error injection: corruptions do what they say, a known half-life comes back, the probe sees the edit."""
import math

import numpy as np
import pytest
import torch

from vidforce.data.ball_metrics import scene_metrics
from vidforce.data.balls import (BallScene, BallWorldSpec, hue_to_rgb, render_torch, rgb_to_hue,
                                 sample_batch)
from vidforce.models.codecs.pixel import PixelCodec
from vidforce.recipes.injection import (background_shift, half_life, hue_shift, mean_abs_error, probe,
                                        rollout_run, spurious_object)
from vidforce.sampling import Sampler
from tests.models.helpers import inputs, tiny_causal

SPEC = BallWorldSpec()


def _levels(video):
    """[B, T, 3, H, W] in [-1, 1] -> uint8 [T, H, W, 3] of the first sample."""
    return torch.round((video[0] + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _scene_video(seed, frames=16):
    video, _, scenes = sample_batch(SPEC, frames, seeds=[seed])
    return video, scenes[0]


def test_hue_shift_rotates_ball_hues_and_fixes_the_grey_background():
    video, scene = _scene_video(3)
    shifted = hue_shift(video, 30.0)
    before, after = _levels(video).astype(np.float64), _levels(shifted).astype(np.float64)
    on_ball = (before != scene.background).any(-1)
    _, chroma, hue = rgb_to_hue(after[on_ball])
    _, _, hue_before = rgb_to_hue(before[on_ball])
    assert np.abs((hue - hue_before - 30.0 + 180.0) % 360.0 - 180.0).max() < 1.0
    np.testing.assert_allclose(chroma, 115.0, atol=1.5)
    np.testing.assert_array_equal(after[~on_ball], before[~on_ball])
    torch.testing.assert_close(hue_shift(video, 360.0), video, rtol=0, atol=1e-5)


def test_hue_shift_equals_rendering_the_rotated_hues():
    video, scene = _scene_video(5)
    rotated = BallScene(scene.count, scene.radii, scene.hues + 40.0,
                        np.round(hue_to_rgb(scene.hues + 40.0, 128.0, 115.0)).astype(np.uint8), scene.background,
                        scene.positions, scene.velocities)
    expected = render_torch(torch.tensor(rotated.colours[None]), torch.tensor(rotated.radii[None]),
                            torch.tensor(rotated.background[None]), torch.tensor(scene.positions[None, None]), 32, 32)
    torch.testing.assert_close(hue_shift(video[:, :1], 40.0), expected, rtol=0, atol=1.5 / 127.5)


def test_background_shift_moves_only_background_pixels():
    video, scene = _scene_video(1)
    delta = 10 / 127.5                                      # +10 grey levels
    shifted = background_shift(video, delta)
    diff = (shifted - video)[0].permute(0, 2, 3, 1).numpy()
    on_ball = (_levels(video) != scene.background).any(-1)
    np.testing.assert_allclose(diff[on_ball], 0.0)
    np.testing.assert_allclose(diff[~on_ball], delta, atol=1e-6)
    long = torch.cat([video, background_shift(video, 3 * delta)], dim=1)
    m = scene_metrics(_levels(long), scene.count, 16)
    assert m["background_drift"][1] == pytest.approx(30 * math.sqrt(3), abs=0.01)
    assert m["count_error"].max() == 0


def test_spurious_object_adds_one_disc_to_the_count():
    video, scene = _scene_video(0)
    colour = hue_to_rgb(scene.hues[0] + 180.0, 128.0, 115.0) / 127.5 - 1.0
    far = max(((4.5, 4.5), (27.5, 4.5), (4.5, 27.5), (27.5, 27.5)),
              key=lambda c: np.linalg.norm(scene.positions - np.array(c), axis=1).min())
    painted = spurious_object(video, far, 4.0, colour)
    assert int(((painted - video).abs().sum(2) > 0)[0, 0].sum()) > 30
    m = scene_metrics(_levels(torch.cat([video, painted], dim=1)), scene.count, 16)
    np.testing.assert_array_equal(m["count_error"], [0, 1])
    with pytest.raises(ValueError, match="radius"):
        spurious_object(video, far, 0.0, colour)


@pytest.mark.parametrize("true_half_life", [1.0, 2.0, 3.0, 4.0])
def test_half_life_of_an_exponential_decay_is_exact_at_integer_values(true_half_life):
    m = np.arange(12)
    curve = np.concatenate([np.zeros(3), 5.0 * 2.0 ** (-m / true_half_life)])
    assert half_life(curve, inject_index=3) == pytest.approx(true_half_life, abs=1e-12)


def test_half_life_interpolates_and_subtracts_the_baseline():
    m = np.arange(20)
    decay = 2.0 * 2.0 ** (-m / 2.5)
    assert half_life(decay) == pytest.approx(2.5, abs=0.05)          # linear interpolation, 2.53
    baseline = 0.7 + 0.1 * np.sin(m)
    assert half_life(decay + baseline, baseline=baseline) == half_life(decay)
    assert half_life(np.array([0.0, 1.0, 0.9, 0.8, 0.7]), inject_index=1) == math.inf
    with pytest.raises(ValueError, match="errors"):
        half_life(np.array([0.0, 1.0]), inject_index=0)
    with pytest.raises(ValueError, match="inject_index"):
        half_life(np.array([1.0, 0.5]), inject_index=2)


def _fake_run(base, chunks, decay):
    """A causal 'model' that repeats ``base`` [B, F, C, h, w] and keeps ``decay`` of the previous
    committed chunk's deviation from it: an injected error decays by ``decay`` per chunk."""
    def run(noise, edit):
        outs, deviation = [], torch.zeros_like(base)
        for k in range(chunks):
            x0 = base + decay * deviation
            if edit is not None:
                x0 = edit(k * base.shape[1], x0)
            deviation = x0 - base
            outs.append(x0)
        return torch.cat(outs, dim=1)
    return run


def test_probe_recovers_the_half_life_of_a_fake_causal_model():
    codec = PixelCodec(spatial_factor=2)
    video, _ = _scene_video(2, frames=3)
    base = codec.encode(video)
    run = _fake_run(base, chunks=8, decay=2.0 ** -0.5)                 # half-life 2 chunks
    corrupt = lambda v: hue_shift(v, 60.0)                           # noqa: E731
    result = probe(run, torch.zeros(1, 24, 12, 16, 16), codec, corrupt, inject_chunk=2, frames_per_chunk=3)
    np.testing.assert_array_equal(result.errors[:2], 0.0)
    assert result.errors[2] == pytest.approx(mean_abs_error(corrupt(video), video), rel=1e-5)
    np.testing.assert_allclose(result.errors[3:] / result.errors[2], 2.0 ** (-np.arange(1, 6) / 2), rtol=1e-4)
    assert result.half_life == pytest.approx(2.0, abs=1e-4)
    assert result.injected.shape == result.baseline.shape == (1, 24, 3, 32, 32)


def test_probe_through_the_real_rollout_edit_hook():
    model = tiny_causal()
    noise, _, ctx = inputs(model, batch=1, frames=9)
    run = rollout_run(model, model.text_kv(ctx), Sampler((1.0, 0.5), 0.0), exit_index=1)
    codec = PixelCodec(spatial_factor=2)                                             # 12 channels = 3 * 2^2
    result = probe(run, noise, codec, lambda v: background_shift(v, 0.3, threshold=10.0), inject_chunk=1,
                   frames_per_chunk=model.frames_per_chunk)
    assert result.errors[0] == 0.0                             # same noise and seed: identical before it
    assert result.errors[1] > 1.0
    assert result.errors[2] > 0.0                              # the committed edit reaches the next chunk
    assert result.half_life > 0
    with pytest.raises(ValueError, match="inject_chunk"):
        probe(run, noise, codec, lambda v: v, inject_chunk=3, frames_per_chunk=3)
