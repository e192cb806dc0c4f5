"""Ball world (mini world v2): exact physics invariants, torch render == numpy truth, count-only prompts."""
import itertools

import numpy as np
import pytest
import torch

from vidforce.data.balls import (BallScene, BallWorldSpec, hue_to_rgb, load_spec, prompt_for, render_numpy,
                                 render_torch, rgb_to_hue, sample_batch, save_spec, scene_for_seed, simulate)

SPEC = BallWorldSpec()
CROWDED = BallWorldSpec(min_balls=3)


def _scene(positions, velocities, radii, hues=None, grey=100):
    n = len(radii)
    hues = np.arange(n) * 120.0 if hues is None else np.asarray(hues, dtype=float)
    colours = np.round(hue_to_rgb(hues, SPEC.colour_intensity, SPEC.colour_chroma)).astype(np.uint8)
    return BallScene(n, radii, hues, colours, np.full(3, grey), positions, velocities)


def _gaps(scene, positions):
    """Distance between disc edges of every pair, [T, pairs] (negative = overlap)."""
    return np.stack([np.linalg.norm(positions[:, i] - positions[:, j], axis=-1) - scene.radii[i] - scene.radii[j]
                     for i, j in itertools.combinations(range(scene.count), 2)], axis=1)


@pytest.mark.parametrize("field, value", [
    ("height", 4), ("fps", 0), ("max_balls", 0), ("radius_range", (0.5, 2.0)), ("radius_range", (4.0, 3.0)),
    ("radius_range", (3.0, 16.0)),
    ("speed_range", (0.0, 1.0)), ("speed_range", (1.0, 30.0)), ("min_hue_gap", 150.0),
    ("colour_chroma", 200.0), ("background_range", (100, 300)), ("substeps", 0),
])
def test_spec_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field.split("_range")[0]):
        BallWorldSpec(**{field: value})


def test_hue_colour_model_round_trips():
    hues = np.array([0.0, 45.0, 123.4, 359.0])
    intensity, chroma, back = rgb_to_hue(hue_to_rgb(hues, 128.0, 115.0))
    np.testing.assert_allclose(back, hues, atol=1e-9)
    np.testing.assert_allclose(intensity, 128.0)
    np.testing.assert_allclose(chroma, 115.0)
    red = hue_to_rgb(0.0, 128.0, 115.0)
    assert red[0] > red[1] == pytest.approx(red[2])


def test_scenes_follow_the_rules_and_seeds_are_deterministic():
    counts = set()
    for seed in range(60):
        s = scene_for_seed(seed, SPEC)
        counts.add(s.count)
        lo, hi = SPEC.radius_range
        assert 1 <= s.count <= 3 and ((lo <= s.radii) & (s.radii <= hi)).all()
        gaps = np.diff(np.append(np.sort(s.hues), np.sort(s.hues)[0] + 360))
        assert gaps.min() >= SPEC.min_hue_gap
        np.testing.assert_array_equal(s.colours, np.round(hue_to_rgb(s.hues, 128.0, 115.0)))
        assert s.background[0] == s.background[1] == s.background[2]
        assert 60 <= s.background[0] <= 150
        speed = np.linalg.norm(s.velocities, axis=1)
        assert ((0.6 <= speed) & (speed <= 1.4)).all()
        if s.count > 1:
            assert _gaps(s, s.positions[None]).min() > 0
        assert not s.radii.flags.writeable
    assert counts == {1, 2, 3}
    a, b = scene_for_seed(7, SPEC), scene_for_seed(7, SPEC)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.colours, b.colours)


def test_prompt_states_only_the_count():
    assert prompt_for(_scene([[8.0, 8.0]], [[1.0, 0.0]], [3.0])) == "1 ball"
    two_a = _scene([[8.0, 8.0], [20.0, 20.0]], [[1.0, 0.0], [0.0, 1.0]], [3.0, 5.0], [0.0, 90.0], grey=60)
    two_b = _scene([[6.0, 20.0], [24.0, 9.0]], [[0.0, 0.7], [1.3, 0.0]], [4.5, 3.2], [200.0, 300.0], grey=150)
    assert prompt_for(two_a) == prompt_for(two_b) == "2 balls"
    prompts = {prompt_for(scene_for_seed(seed, SPEC)) for seed in range(40)}
    assert prompts == {"1 ball", "2 balls", "3 balls"}


def test_wall_bounce_is_a_reflection():
    scene = _scene([[10.0, 16.0]], [[1.0, 0.0]], [3.0])
    pos, vel = simulate(scene, SPEC, 26)
    np.testing.assert_allclose(pos[19, 0], [29.0, 16.0], atol=1e-12)   # touches the right wall at x = 32 - 3
    np.testing.assert_allclose(pos[25, 0], [23.0, 16.0], atol=1e-12)
    np.testing.assert_allclose(vel[25, 0], [-1.0, 0.0])


def test_head_on_collision_of_equal_masses_swaps_velocities():
    scene = _scene([[8.0, 16.0], [24.0, 16.0]], [[1.0, 0.0], [-1.0, 0.0]], [3.0, 3.0])
    pos, vel = simulate(scene, SPEC, 12)
    np.testing.assert_allclose(vel[-1], [[-1.0, 0.0], [1.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(pos[5], [[13.0, 16.0], [19.0, 16.0]], atol=1e-12)  # contact at t = 5
    np.testing.assert_allclose(pos[11], [[7.0, 16.0], [25.0, 16.0]], atol=1e-12)


def test_energy_is_conserved_and_discs_never_overlap_or_leave():
    collided = 0
    for seed in range(15):
        s = scene_for_seed(seed, CROWDED)
        pos, vel = simulate(s, CROWDED, 150)
        energy = 0.5 * (vel ** 2).sum(axis=(1, 2))
        np.testing.assert_allclose(energy, energy[0], rtol=1e-12)
        gaps = _gaps(s, pos)
        assert gaps.min() >= -1e-9
        r = s.radii[None, :]
        assert ((pos[..., 0] >= r - 1e-9) & (pos[..., 0] <= 32 - r + 1e-9)).all()
        assert ((pos[..., 1] >= r - 1e-9) & (pos[..., 1] <= 32 - r + 1e-9)).all()
        speeds = np.linalg.norm(vel, axis=-1)
        collided += int(np.abs(speeds - speeds[0]).max() > 0.05)   # only ball-ball collisions change speeds
    assert collided >= 10


def test_torch_render_equals_numpy_truth_through_collisions():
    seeds = list(range(6))
    video, prompts, scenes = sample_batch(CROWDED, 48, seeds=seeds)
    assert video.shape == (6, 48, 3, 32, 32) and video.dtype == torch.float32
    contact_frames = 0
    for k, s in enumerate(scenes):
        pos, _ = simulate(s, CROWDED, 48)
        truth = render_numpy(s, CROWDED, pos)
        expected = torch.from_numpy(truth).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        torch.testing.assert_close(video[k], expected, rtol=0, atol=1e-6)
        contact_frames += int((_gaps(s, pos).min(axis=1) < 0.5).sum())
        assert prompts[k] == prompt_for(s)
    assert contact_frames >= 5


def test_numpy_render_draws_discs_at_pixel_centres():
    scene = _scene([[10.3, 12.8], [22.0, 22.0]], [[0.0, 0.0], [0.0, 0.0]], [3.6, 4.2], [0.0, 180.0], grey=90)
    frame = render_numpy(scene, SPEC, scene.positions[None])[0]
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    for n in range(2):
        inside = (xs - scene.positions[n, 0]) ** 2 + (ys - scene.positions[n, 1]) ** 2 < scene.radii[n] ** 2
        np.testing.assert_array_equal((frame == scene.colours[n]).all(-1), inside)
    assert (frame[0, 0] == 90).all()


def test_render_torch_batches_mixed_counts_with_zero_radius_padding():
    colours = torch.tensor([[[200, 40, 40], [0, 0, 0]], [[40, 200, 40], [40, 40, 200]]], dtype=torch.uint8)
    radii = torch.tensor([[4.0, 0.0], [3.0, 3.5]], dtype=torch.float64)
    background = torch.tensor([[100] * 3, [70] * 3], dtype=torch.uint8)
    positions = torch.tensor([[[[8.0, 8.0], [0.0, 0.0]]], [[[8.0, 8.0], [20.0, 20.0]]]], dtype=torch.float64)
    video = render_torch(colours, radii, background, positions, 32, 32)
    levels = torch.round((video + 1) * 127.5)
    assert levels.shape == (2, 1, 3, 32, 32)
    assert (levels[0, 0, :, 0, 0] == 100).all() and (levels[0, 0, :, 8, 8] == torch.tensor([200, 40, 40])).all()
    assert (levels[1, 0, :, 20, 20] == torch.tensor([40, 40, 200])).all()


def test_sample_batch_from_rng_is_reproducible_and_checks_its_arguments():
    a, pa, _ = sample_batch(SPEC, 8, rng=np.random.default_rng(3), batch_size=4)
    b, pb, _ = sample_batch(SPEC, 8, rng=np.random.default_rng(3), batch_size=4)
    assert torch.equal(a, b) and pa == pb and a.shape == (4, 8, 3, 32, 32)
    assert a.min() >= -1 and a.max() <= 1
    with pytest.raises(ValueError, match="seeds or rng"):
        sample_batch(SPEC, 8)
    with pytest.raises(ValueError, match="batch_size"):
        sample_batch(SPEC, 8, rng=np.random.default_rng(0))


def test_spec_json_round_trip(tmp_path):
    spec = BallWorldSpec(height=64, width=48, radius_range=(4.0, 6.0), background_range=(70, 140))
    save_spec(spec, tmp_path / "spec.json")
    assert load_spec(tmp_path / "spec.json") == spec
    (tmp_path / "bad.json").write_text('{"palette": []}')
    with pytest.raises(ValueError, match="palette"):
        load_spec(tmp_path / "bad.json")
