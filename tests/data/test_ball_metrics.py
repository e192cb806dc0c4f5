"""Ball metrics: the truth scores ~0 (also noisy or blurred), and each failure moves exactly its own term."""
import cv2
import numpy as np
import pytest

from vidforce.data.ball_metrics import (VISIBLE, detect, hue_peaks, match, motion_ratio, scene_metrics,
                                        window_mean)
from vidforce.data.balls import BallScene, BallWorldSpec, hue_to_rgb, render_numpy, scene_for_seed, simulate

SPEC = BallWorldSpec()
T, WINDOW = 64, 16           # four 2-second windows at 8 fps
FLOOR = 0.3                  # the truth (clean, noisy or blurred) scores D below this
TERMS = ("d_count", "d_colour", "d_size", "d_background", "d_luminance", "d_clipped", "d_motion")
SEEDS = range(6)


def _truth(seed):
    scene = scene_for_seed(seed, SPEC)
    positions, _ = simulate(scene, SPEC, T)
    return scene, positions, render_numpy(scene, SPEC, positions)


def _with_hues(scene, hues):
    colours = np.round(hue_to_rgb(hues, SPEC.colour_intensity, SPEC.colour_chroma)).astype(np.uint8)
    return BallScene(scene.count, scene.radii, hues, colours, scene.background, scene.positions, scene.velocities)


def _noisy(video, sigma=8.0, seed=0):
    noise = np.random.default_rng(seed).normal(0.0, sigma, video.shape)
    return np.clip(np.round(video + noise), 0, 255).astype(np.uint8)


def _box(video):
    return np.stack([cv2.blur(f, (3, 3), borderType=cv2.BORDER_REFLECT) for f in video])


def _gauss(video):
    return np.stack([cv2.GaussianBlur(f, (0, 0), 0.7, borderType=cv2.BORDER_REFLECT) for f in video])


def _only_moves(m, moved):
    """Terms of the windows after the first: ``moved`` is a visible failure everywhere, the rest stay low."""
    assert (m[moved][1:] >= 1.0).all(), (moved, m[moved])
    for term in TERMS:
        if term != moved:
            assert np.nan_to_num(m[term][1:]).max() < FLOOR, (term, m[term])


@pytest.mark.parametrize("name, degrade", [
    ("clean", lambda v: v), ("noise", _noisy), ("box blur", _box), ("gaussian blur", _gauss),
    ("blur + noise", lambda v: _noisy(_box(v))),
])
def test_truth_scores_below_the_floor(name, degrade):
    for seed in SEEDS:
        scene, _, video = _truth(seed)
        m = scene_metrics(degrade(video), scene.count, WINDOW)
        assert m["D"].shape == (T // WINDOW,)
        assert m["D"].max() < FLOOR, (name, seed, {k: m[k] for k in TERMS})
        np.testing.assert_array_equal(m["count_error"], 0)
        assert m["D"][0] == pytest.approx(0.0, abs=1e-12)     # the first window is its own reference


def test_clean_truth_measures_exact_areas_and_colours():
    scene, positions, video = _truth(2)
    det = detect(video, 11.0)
    np.testing.assert_array_equal(det.count, scene.count)
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    true_areas = sorted(((xs - positions[0, n, 0]) ** 2 + (ys - positions[0, n, 1]) ** 2 < scene.radii[n] ** 2).sum()
                        for n in range(scene.count))
    assert sorted(det.area[0, :scene.count]) == true_areas
    assert {tuple(c) for c in det.colour[0, :scene.count].astype(int)} == {tuple(c) for c in scene.colours.astype(int)}


def test_brightening_moves_luminance_and_background_but_not_count():
    for seed in SEEDS:
        scene, _, video = _truth(seed)
        bright = np.clip(video.astype(np.int64) + 40, 0, 255).astype(np.uint8)
        bright[:WINDOW] = video[:WINDOW]
        m = scene_metrics(bright, scene.count, WINDOW)
        assert (m["d_luminance"][1:] >= 1).all() and (m["d_background"][1:] >= 1).all()
        np.testing.assert_array_equal(m["count_error"], 0)
        assert np.nanmax(m["d_motion"]) < FLOOR


def test_hue_rotation_of_the_balls_moves_exactly_colour():
    for seed in SEEDS:
        scene, positions, video = _truth(seed)
        rotated = render_numpy(_with_hues(scene, scene.hues + 45.0), SPEC, positions)
        rotated[:WINDOW] = video[:WINDOW]
        _only_moves(scene_metrics(rotated, scene.count, WINDOW), "d_colour")


def test_freeze_moves_exactly_motion():
    for seed in SEEDS:
        scene, _, video = _truth(seed)
        frozen = video.copy()
        frozen[WINDOW:] = video[WINDOW]
        m = scene_metrics(frozen, scene.count, WINDOW)
        _only_moves(m, "d_motion")
        np.testing.assert_array_equal(m["motion_ratio"][2:], 0.0)


def test_vanished_ball_moves_exactly_count():
    # two balls in separate lanes (never collide), background near the balls' intensity 128 so the
    # frame's mean intensity barely changes when one goes
    scene = BallScene(2, [4.0, 3.5], [30.0, 200.0], np.round(hue_to_rgb([30.0, 200.0], 128, 115)).astype(np.uint8),
                      np.full(3, 124), [[6.0, 7.0], [20.0, 24.0]], [[1.1, 0.0], [-0.8, 0.0]])
    positions, _ = simulate(scene, SPEC, T)
    assert (np.abs(positions[:, 0, 1] - positions[:, 1, 1]) > 7.5).all()
    video = render_numpy(scene, SPEC, positions)
    alone = BallScene(1, scene.radii[:1], scene.hues[:1], scene.colours[:1], scene.background,
                      scene.positions[:1], scene.velocities[:1])
    video[WINDOW:] = render_numpy(alone, SPEC, positions[WINDOW:, :1])
    m = scene_metrics(video, 2, WINDOW)
    _only_moves(m, "d_count")
    np.testing.assert_array_equal(m["count"], [2, 1, 1, 1])


def test_specks_and_thin_lines_are_not_objects_but_a_disc_is():
    scene, _, video = _truth(0)
    dirty = video.copy()
    dirty[:, 1:4, 1:4] = (250, 250, 0)          # a 3x3 speck
    dirty[:, 30, 4:28] = (0, 0, 250)            # a 1-pixel line of 24 pixels
    m = scene_metrics(dirty, scene.count, WINDOW)
    np.testing.assert_array_equal(m["count_error"], 0)
    extra = video.copy()
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    extra[WINDOW:, (xs - 3.5) ** 2 + (ys - 28.5) ** 2 < 3.0 ** 2] = (240, 240, 240)   # a grey disc, radius 3
    m = scene_metrics(extra, scene.count, WINDOW)
    np.testing.assert_array_equal(m["count_error"], [0, 1, 1, 1])


def test_touching_balls_of_different_hue_count_as_two():
    scene = BallScene(2, [4.0, 4.0], [0.0, 60.0], np.round(hue_to_rgb([0.0, 60.0], 128, 115)).astype(np.uint8),
                      np.full(3, 100), [[12.0, 16.0], [20.0, 16.0]], [[0.0, 0.0], [0.0, 0.0]])
    video = _box(render_numpy(scene, SPEC, np.repeat(scene.positions[None], 4, axis=0)))
    assert detect(video, 11.0).count.tolist() == [2, 2, 2, 2]


def test_hue_peaks_finds_the_dominant_hues():
    rng = np.random.default_rng(0)
    hues = np.concatenate([rng.normal(10.0, 2.0, 40), rng.normal(200.0, 2.0, 30), rng.uniform(0, 360, 5)]) % 360
    np.testing.assert_allclose(hue_peaks(hues, 11.0), [10.0, 200.0], atol=1.0)
    assert hue_peaks(hues[:8], 11.0).size == 0


def test_match_is_optimal_where_greedy_is_not():
    ref = hue_to_rgb(np.array([0.0, 60.0]), 128, 115)
    seen = hue_to_rgb(np.array([100.0, 40.0]), 128, 115)     # both rotated by 40: ball 0 is now nearest ref 1
    np.testing.assert_array_equal(match(ref, seen), [1, 0])
    np.testing.assert_array_equal(match(ref, seen[:1]), [-1, 0])
    np.testing.assert_array_equal(match(ref[:1], seen), [1])


def test_motion_ratio_and_window_mean_known_answers():
    t = np.arange(8, dtype=float)
    x = np.where(t < 4, t, 3 + 0.5 * (t - 3))                 # 1 px/frame, then 0.5 px/frame
    centroid = np.stack([x, np.zeros(8)], -1)[:, None, :]     # [T, 1, 2]
    np.testing.assert_allclose(motion_ratio(centroid, 4), [1.0, 0.5])
    np.testing.assert_allclose(window_mean(np.array([1.0, np.nan, 3.0, 5.0, 7.0]), 2), [1.0, 4.0])


def test_clipping_is_measured_against_the_first_window():
    scene, _, video = _truth(1)
    clipped = video.copy()
    clipped[WINDOW:, :, :4] = 255                              # an eighth of every later frame blown out
    m = scene_metrics(clipped, scene.count, WINDOW)
    np.testing.assert_allclose(m["clipped_drift"], [0, 0.125, 0.125, 0.125])
    assert (m["d_clipped"][1:] >= 1).all() and VISIBLE["clipped"] == 0.02


def test_an_empty_video_fails_only_on_count():
    m = scene_metrics(np.full((32, 32, 32, 3), 100, dtype=np.uint8), 2, WINDOW)
    np.testing.assert_array_equal(m["count_error"], [2, 2])
    assert np.isnan(m["colour_drift"]).all() and np.isnan(m["motion_ratio"]).all()
    np.testing.assert_array_equal(m["D"], [4.0, 4.0])          # capped at D_CLIP


def test_bad_inputs_name_the_argument():
    video = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="video"):
        scene_metrics(video.astype(np.float32), 1, 4)
    with pytest.raises(ValueError, match="window"):
        scene_metrics(video, 1, 9)
    with pytest.raises(ValueError, match="count"):
        scene_metrics(video, -1, 4)
