"""Rewards: motion continuity ranks a jittering video below a frozen one below a smoothly moving one; the drift
reward scores a true ball-world render near 0 and one whose balls freeze below it."""
import cv2
import numpy as np
import pytest

from vidforce.data.balls import BallWorldSpec, render_numpy, scene_for_seed, simulate
from vidforce.rewards import drift_reward, motion_continuity, track_jerk, video_rewards

T = 12


def _texture(seed: int = 0) -> np.ndarray:
    """A smooth 96 x 96 grey texture (Farneback needs texture to track)."""
    noise = np.random.default_rng(seed).uniform(0, 255, (96, 96)).astype(np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), 3)
    return ((tex - tex.min()) / (tex.max() - tex.min()) * 255).astype(np.uint8)


def _video(offsets: list[int]) -> np.ndarray:
    """64 x 64 crops of the texture shifted right by ``offsets[t]`` pixels, as RGB frames ``[T, 64, 64, 3]``."""
    tex = _texture()
    return np.stack([np.repeat(tex[16:80, 16 + d:80 + d, None], 3, axis=-1) for d in offsets])


def test_motion_reward_ranks_jitter_below_frozen_below_smooth():
    frozen = motion_continuity(_video([0] * T))
    smooth = motion_continuity(_video(list(range(T))))                   # 1 px / frame, steady
    jitter = motion_continuity(_video([2 * (t % 2) for t in range(T)]))  # +-2 px back and forth
    assert jitter < frozen < smooth
    assert abs(frozen) < 0.1                                             # nothing moves: ~0
    assert smooth == pytest.approx(4.0, rel=0.1)        # 1 px/frame on 64 px is 4 px/frame on the 256-px grid
    assert jitter < -4.0                                                 # m ~ 8, jerk ~ 16


def test_jerk_follows_each_point_along_its_track():
    """A steady translation has zero jerk even where the moving field changes at a fixed pixel; a reversal has
    twice the displacement."""
    flow = np.zeros((8, 8, 2), dtype=np.float32)
    flow[:, 2:5] = (1.0, 0.0)              # an object moving 1 px left: each of its pixels was 1 px right before
    shifted = np.zeros_like(flow)
    shifted[:, 1:4] = (1.0, 0.0)           # one frame later, the object one pixel further left
    assert np.abs(track_jerk(flow, shifted)[:, 1:4]).max() == 0    # its points keep their displacement
    reversed_flow = np.where(flow != 0, -flow, 0).astype(np.float32)
    assert np.abs(track_jerk(flow, reversed_flow)[:, 3:5, 0]).min() == pytest.approx(2.0)


def test_drift_reward_of_a_true_render_beats_a_frozen_continuation():
    spec = BallWorldSpec()
    scene = scene_for_seed(3, spec)
    positions, _ = simulate(scene, spec, 24)
    truth = render_numpy(scene, spec, positions)
    frozen = truth.copy()
    frozen[8:] = truth[8]                                                # stops moving after the first window
    r_truth, r_frozen = drift_reward(truth, 8, spec.radius_range[0]), drift_reward(frozen, 8, spec.radius_range[0])
    assert r_truth > -0.5 and r_frozen < r_truth - 1.0


def test_video_rewards_dispatch_and_names_unknown_kinds():
    """Each kind is its reward function per video, with the weight, window and radius passed through."""
    videos = [_video([0] * 4), _video(list(range(4))), _video([0, 2, 0, 2])]
    r = video_rewards(videos, "motion", 0.5, 4, 3.0)
    assert r.dtype == np.float64 and r.tolist() == [motion_continuity(v, 0.5) for v in videos]
    assert r[0] < r[1] and r[2] > motion_continuity(videos[2], 1.0)          # the jitter's jerk, half weighted
    spec = BallWorldSpec()
    scene = scene_for_seed(3, spec)
    truth = render_numpy(scene, spec, simulate(scene, spec, 16)[0])
    frozen = np.concatenate([truth[:8], np.repeat(truth[8:9], 8, axis=0)])
    radius = spec.radius_range[0]
    assert video_rewards([truth, frozen], "drift", 1.0, 8, radius).tolist() == [drift_reward(truth, 8, radius),
                                                                                drift_reward(frozen, 8, radius)]
    with pytest.raises(ValueError, match="objective.grpo.reward"):
        video_rewards(videos, "aesthetic", 1.0, 4, 3.0)
    with pytest.raises(ValueError, match="uint8"):
        motion_continuity(_video([0, 1]))                                # 2 frames: no jerk to measure
