"""Mini world: the truth matches the render, closed-form bounces, determinism, prompts."""
import numpy as np
import pytest

from vidforce.data.mini_world import (Scene, Sprite, WorldSpec, export_mini_world, load_spec,
                                      make_clip, prompt_for, render, sample_scene, scene_for_seed,
                                      trajectory)

SPEC = WorldSpec()


def test_truth_matches_render():
    for seed in range(6):
        clip = make_clip(seed, SPEC, 40)
        truth, frames = clip.truth, clip.frames
        assert frames.shape == (40, 32, 32, 3) and frames.dtype == np.uint8
        for n, sprite in enumerate(clip.scene.sprites):
            # every pixel of a sprite's colour belongs to it: the count is its visible area
            coloured = (frames == sprite.rgb).all(-1).sum((1, 2))
            np.testing.assert_array_equal(coloured, truth.visible_area[:, n])
            unhidden = truth.visible_area[:, n] == truth.area[:, n]
            assert unhidden.any()
            cols, rows = np.floor(truth.positions[unhidden, n].T).astype(int)
            centre_pixels = frames[unhidden][np.arange(len(rows)), rows, cols]
            assert (centre_pixels == sprite.rgb).all()
        # pixels farther from every centre than any sprite reaches show the background
        ys, xs = np.mgrid[0:32, 0:32] + 0.5
        dist = np.hypot(xs[None, None] - truth.positions[..., 0, None, None],
                        ys[None, None] - truth.positions[..., 1, None, None])  # [T, N, H, W]
        far = (dist > truth.sizes[None, :, None, None] * 0.75).all(axis=1)
        assert far.any()
        np.testing.assert_array_equal(frames[far], np.broadcast_to(truth.background, (far.sum(), 3)))
        np.testing.assert_array_equal(truth.count, len(clip.scene.sprites))


def test_square_area_is_exact_and_positions_are_centres():
    sprite = Sprite("square", "red", (220, 40, 40), 7, (10.3, 12.8), (0.7, -0.4))
    scene = Scene((sprite,), "grey", (128, 128, 128))
    frames, truth = render(scene, SPEC, 30)
    np.testing.assert_array_equal(truth.area[:, 0], 49)
    rows, cols = np.nonzero((frames[0] == sprite.rgb).all(-1))
    assert abs(cols.mean() + 0.5 - 10.3) <= 0.5 and abs(rows.mean() + 0.5 - 12.8) <= 0.5


def test_bounce_stays_inside_for_10000_frames_and_keeps_speed():
    for seed in range(5):
        scene = scene_for_seed(seed, SPEC)
        pos = trajectory(scene, SPEC, np.arange(10_000))
        half = np.array([s.size / 2 for s in scene.sprites])
        assert (pos[..., 0] >= half - 1e-9).all() and (pos[..., 0] <= SPEC.width - half + 1e-9).all()
        assert (pos[..., 1] >= half - 1e-9).all() and (pos[..., 1] <= SPEC.height - half + 1e-9).all()
        step = np.abs(np.diff(pos, axis=0))
        vel = np.abs(np.array([s.velocity for s in scene.sprites]))
        assert (step <= vel + 1e-9).all()
        assert np.isclose(step, vel).mean() > 0.9  # only frames with a bounce are shorter


def test_bounce_matches_step_simulation():
    scene = scene_for_seed(11, SPEC)
    closed = trajectory(scene, SPEC, np.arange(500))
    for n, sprite in enumerate(scene.sprites):
        lo = sprite.size / 2
        hi = np.array([SPEC.width, SPEC.height]) - lo
        p, v = np.array(sprite.position), np.array(sprite.velocity)
        for t in range(500):
            np.testing.assert_allclose(closed[t, n], p, atol=1e-9)
            p = p + v
            over, under = p > hi, p < lo
            p = np.where(over, 2 * hi - p, np.where(under, 2 * lo - p, p))
            v = np.where(over | under, -v, v)


def test_render_window_equals_long_render():
    scene = scene_for_seed(2, SPEC)
    long_frames, long_truth = render(scene, SPEC, 110)
    frames, truth = render(scene, SPEC, 10, start_frame=100)
    np.testing.assert_array_equal(frames, long_frames[100:])
    np.testing.assert_array_equal(truth.positions, long_truth.positions[100:])
    np.testing.assert_array_equal(truth.frames, np.arange(100, 110))
    far, far_truth = render(scene, SPEC, 2, start_frame=10_000)
    expected = trajectory(scene, SPEC, np.array([10_000, 10_001]))
    np.testing.assert_array_equal(far_truth.positions, expected)
    np.testing.assert_array_equal(far, render(scene, SPEC, 5, start_frame=9_997)[0][3:])


def test_clips_are_deterministic_per_seed():
    a, b, c = make_clip(5, SPEC, 16), make_clip(5, SPEC, 16), make_clip(6, SPEC, 16)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.prompt == b.prompt and a.scene == b.scene
    assert a.scene != c.scene and not np.array_equal(a.frames, c.frames)


def test_sampled_scenes_follow_the_spec():
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(200):
        scene = sample_scene(SPEC, rng)
        counts.add(len(scene.sprites))
        assert len({s.colour for s in scene.sprites}) == len(scene.sprites)
        for s in scene.sprites:
            assert SPEC.size_range[0] <= s.size <= SPEC.size_range[1]
            assert SPEC.speed_range[0] <= s.speed <= SPEC.speed_range[1]
            assert s.size / 2 <= s.position[0] <= SPEC.width - s.size / 2
            assert dict(SPEC.palette)[s.colour] == s.rgb
        assert dict(SPEC.backgrounds)[scene.background] == scene.background_rgb
    assert counts == {1, 2, 3}


def test_prompt_names_every_sprite_in_sorted_order():
    red = Sprite("circle", "red", (220, 40, 40), 6, (8.0, 8.0), (1.0, 0.0))
    blue = Sprite("square", "blue", (40, 80, 220), 6, (20.0, 8.0), (0.0, 1.0))
    cyan = Sprite("triangle", "cyan", (40, 200, 210), 6, (8.0, 20.0), (1.0, 1.0))
    assert prompt_for(Scene((red,), "grey", (128,) * 3)) == "a red circle on a grey background"
    assert prompt_for(Scene((red, blue), "black", (16,) * 3)) == \
        "a blue square and a red circle on a black background"
    assert prompt_for(Scene((red, cyan, blue), "white", (240,) * 3)) == \
        "a blue square, a cyan triangle and a red circle on a white background"
    clip = make_clip(9, SPEC, 2)
    for s in clip.scene.sprites:
        assert f"a {s.colour} {s.shape}" in clip.prompt
    assert clip.prompt.endswith(f"on a {clip.scene.background} background")


def test_spec_validation_names_the_field():
    with pytest.raises(ValueError, match="shapes"):
        WorldSpec(shapes=("circle", "star"))
    with pytest.raises(ValueError, match="too close to background 'grey'"):
        WorldSpec(palette=(("silver", (140, 140, 140)),), max_sprites=1)
    with pytest.raises(ValueError, match="size_range"):
        WorldSpec(size_range=(6, 40))


def test_export_writes_clips_captions_manifest_and_spec(tmp_path):
    spec = WorldSpec(height=16, width=16, size_range=(4, 6))
    manifest = export_mini_world(tmp_path, num_clips=2, num_frames=5, spec=spec, seed=7)
    lines = manifest.read_text().splitlines()
    assert len(lines) == 2 and '"seed": 8' in lines[1]
    assert (tmp_path / "clip_000001.txt").read_text().strip() == make_clip(8, spec, 1).prompt
    assert (tmp_path / "clip_000000.mp4").stat().st_size > 0
    assert load_spec(tmp_path / "world_spec.json") == spec
