"""World metrics: exact on clean renders, and they see frozen, missing, recoloured, fast videos."""
import dataclasses

import numpy as np
import pytest

from vidforce.data.mini_world import Scene, WorldSpec, make_clip, render
from vidforce.data.world_metrics import detect_sprites, world_metrics

SPEC = WorldSpec()


def _unoccluded(truth):
    return (truth.visible_area == truth.area).all(axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_clean_render_scores_perfectly(seed):
    clip = make_clip(seed, SPEC, 64)
    m = world_metrics(clip.frames, clip.scene)
    clean = _unoccluded(clip.truth)
    assert clean.sum() >= 16
    np.testing.assert_array_equal(m["count_error"][clean], 0)
    np.testing.assert_array_equal(m["count"][clean], len(clip.scene.sprites))
    np.testing.assert_allclose(m["colour_error"], 0, atol=1e-12)
    np.testing.assert_allclose(m["background_error"], 0, atol=1e-12)
    assert np.nanmean(m["size_error"][clean]) < 0.08  # rasterised vs continuous shape area
    assert 0.9 < np.nanmean(m["speed_ratio"]) < 1.1


def test_detections_sit_on_the_true_sprites():
    clip = make_clip(1, SPEC, 8)
    t = int(np.nonzero(_unoccluded(clip.truth))[0][0])
    detections, background = detect_sprites(clip.frames[t], clip.scene)
    assert sorted(d.label for d in detections) == list(range(len(clip.scene.sprites)))
    for d in detections:
        sprite = clip.scene.sprites[d.label]
        assert d.area == clip.truth.area[t, d.label]
        assert np.allclose(np.array(d.rgb) * 255, sprite.rgb)
        offset = sprite.size / 6 if sprite.shape == "triangle" else 0.0  # triangle centroid sits lower
        x, y = clip.truth.positions[t, d.label]
        assert np.hypot(d.centroid[0] - x, d.centroid[1] - y - offset) < 0.6
    assert background.sum() == 32 * 32 - clip.truth.area[t].sum()


def test_frozen_video_has_zero_speed():
    clip = make_clip(4, SPEC, 24)
    frozen = np.repeat(clip.frames[:1], 24, axis=0)
    m = world_metrics(frozen, clip.scene)
    assert np.isnan(m["speed_ratio"][:3]).all()
    np.testing.assert_array_equal(m["speed_ratio"][3:], 0.0)
    assert 0.9 < np.nanmean(world_metrics(clip.frames, clip.scene)["speed_ratio"]) < 1.1


def test_double_speed_video_has_speed_ratio_two():
    clip = make_clip(6, SPEC, 96)
    m = world_metrics(clip.frames[::2], clip.scene)
    assert 1.75 < np.nanmean(m["speed_ratio"]) < 2.1


def test_missing_sprite_counts_one_error():
    clip = make_clip(0, SPEC, 32)
    assert len(clip.scene.sprites) == 3
    reduced = dataclasses.replace(clip.scene, sprites=clip.scene.sprites[:-1])
    frames, truth = render(reduced, SPEC, 32)
    m = world_metrics(frames, clip.scene)
    clean = _unoccluded(truth)
    assert clean.sum() >= 8
    np.testing.assert_array_equal(m["count_error"][clean], 1)


def test_colour_and_background_shifts_are_measured():
    clip = make_clip(1, SPEC, 16)
    shifted_sprites = tuple(dataclasses.replace(s, rgb=(s.rgb[0], s.rgb[1], s.rgb[2] - 30))
                            for s in clip.scene.sprites)
    bg = tuple(v + 20 if v < 128 else v - 20 for v in clip.scene.background_rgb)
    frames, _ = render(Scene(shifted_sprites, clip.scene.background, bg), SPEC, 16)
    m = world_metrics(frames, clip.scene)
    np.testing.assert_allclose(m["colour_error"], 30 / 255, atol=1e-9)
    np.testing.assert_allclose(m["background_error"], 20 / 255, atol=1e-9)


def test_bad_frames_raise():
    clip = make_clip(0, SPEC, 2)
    with pytest.raises(ValueError, match="uint8"):
        world_metrics(clip.frames.astype(np.float32), clip.scene)
