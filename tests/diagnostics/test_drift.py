"""Drift metrics on synthetic videos with known answers (64x64, 10 fps, 2 s windows)."""
import json
import os

import cv2
import imageio.v2 as imageio
import numpy as np
import pytest

from vidforce.diagnostics.drift import (MOTION_THRESHOLD, DriftMeter, analyze_frames,
                                        analyze_video, compensated_residual, consistency,
                                        flicker, flow_grey, frame_metrics, linear_slope,
                                        motion_magnitude)
from vidforce.diagnostics.reader import open_video
from vidforce.video_io import Mp4Writer

FPS = 10
SIZE = 64
WINDOW_KEYS = {"t_start", "t_end", "luminance", "clipped_fraction", "over_exposed",
               "under_exposed", "saturation", "color_shift", "contrast", "sharpness", "flicker",
               "motion", "frozen_fraction", "moving", "hold_similarity", "repetition"}


def sprite_frames(n: int, speed: int = 2) -> list[np.ndarray]:
    """A yellow 12x12 square sliding right over a blue background, ``speed`` px/frame."""
    frames = []
    for i in range(n):
        frame = np.full((SIZE, SIZE, 3), (40, 80, 120), np.uint8)
        x = (4 + speed * i) % (SIZE - 12)
        frame[20:32, x:x + 12] = (230, 200, 30)
        frames.append(frame)
    return frames


def texture(width: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture ``[SIZE, width, 3]`` uint8 spanning 0..255."""
    noise = np.random.default_rng(seed).random((SIZE, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2)
    return ((smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255).astype(np.uint8)


def pan_frames(n: int, step: int = 3) -> list[np.ndarray]:
    """A camera panning ``step`` px/frame over a non-repeating texture."""
    strip = texture(SIZE + step * n)
    return [strip[:, step * i:step * i + SIZE].copy() for i in range(n)]


def noisy_scene(n: int, step: int, noise: float, seed: int = 1) -> list[np.ndarray]:
    """An iid random RGB texture shifted ``step`` px/frame, plus fresh per-frame Gaussian noise
    of std ``noise`` (8-bit levels)."""
    rng = np.random.default_rng(seed)
    strip = rng.integers(0, 256, (SIZE, SIZE + step * n, 3)).astype(np.float32)
    frames = []
    for i in range(n):
        frame = strip[:, step * i:step * i + SIZE] + rng.normal(0.0, noise, (SIZE, SIZE, 3))
        frames.append(np.clip(frame, 0, 255).round().astype(np.uint8))
    return frames


def write_mp4(path, frames, fps=FPS) -> None:
    """Near-lossless H.264 mp4 of uint8 frames."""
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=10,
                            macro_block_size=16) as writer:
        for frame in frames:
            writer.append_data(frame)


def test_frame_metrics_known_values():
    black = frame_metrics(np.zeros((8, 8, 3), np.uint8))
    white = frame_metrics(np.full((8, 8, 3), 255, np.uint8))
    red = frame_metrics(np.tile(np.array([255, 0, 0], np.uint8), (8, 8, 1)))
    assert black["luminance"] == 0.0 and black["under_exposed"] == 1.0
    assert black["over_exposed"] == 0.0
    assert white["luminance"] == pytest.approx(1.0) and white["over_exposed"] == 1.0
    assert red["luminance"] == pytest.approx(0.299) and red["saturation"] == pytest.approx(1.0)
    assert red["contrast"] == pytest.approx(0.0, abs=1e-6)
    assert red["sharpness"] == pytest.approx(0.0, abs=1e-6)


def test_pure_helpers_known_values():
    black, white = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    assert flicker(black, white) == 1.0 and flicker(white, white) == 0.0
    assert linear_slope([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]) == pytest.approx(2.0)
    assert linear_slope([1.0], [7.0]) == 0.0
    desc = np.random.default_rng(1).random((16, 16, 3))
    hold, repetition = consistency([desc, desc, 1.0 - desc])
    assert hold == pytest.approx([1.0, 1.0, -1.0]) and repetition == pytest.approx([0.0, 0.0, -1.0])
    assert consistency([np.full(5, 0.2), np.full(5, 0.7)])[0] == [1.0, 1.0]      # two flat pictures


def test_compensated_residual_of_an_exact_shift_is_zero():
    prev = np.random.default_rng(2).integers(0, 256, (8, 8, 3), np.uint8)
    cur = np.roll(prev, 1, axis=1)                          # cur[:, x] = prev[:, x - 1]
    shift = np.zeros((8, 8, 2), np.float32)
    shift[..., 0] = -1.0                                    # cur[p] = prev[p + (-1, 0)]
    assert compensated_residual(prev, cur, shift) == 0.0    # column 0 (entering content) left out
    still = np.abs(cur.astype(float) - prev).mean() / 255
    assert compensated_residual(prev, cur, np.zeros_like(shift)) == pytest.approx(still)


def test_motion_magnitude_of_a_shift_is_on_the_256_grid():
    strip = texture(SIZE + 4)
    a, b = flow_grey(strip[:, :SIZE].copy()), flow_grey(strip[:, 1:SIZE + 1].copy())
    assert motion_magnitude(a, b) == pytest.approx(256 / SIZE, rel=0.15)
    assert motion_magnitude(a, a) < 0.05


def test_brightening_ramp_raises_luminance_and_clipping():
    gradient = np.linspace(0, 60, SIZE, dtype=np.float32)[None, :, None]
    frames = [np.clip(gradient + level, 0, 255).astype(np.uint8).repeat(SIZE, 0).repeat(3, 2)
              for level in np.linspace(20, 240, 60)]
    result = analyze_frames(frames, FPS)
    lum, clipped = result["summary"]["luminance"], result["summary"]["clipped_fraction"]
    assert lum["slope"] > 0.1 and lum["delta"] > 0.5
    assert clipped["first"] == 0.0 and clipped["last"] > 0.2
    assert result["windows"][-1]["over_exposed"] == clipped["last"]


def test_frozen_segment_is_not_moving_and_sprite_is():
    moving = sprite_frames(20)
    result = analyze_frames(moving + [moving[-1]] * 20, FPS)
    first, frozen = result["windows"]
    assert first["moving"] is True and first["motion"] > MOTION_THRESHOLD
    assert frozen["moving"] is False and frozen["motion"] < 1e-3
    assert frozen["flicker"] == 0.0
    assert first["frozen_fraction"] == 0.0 and frozen["frozen_fraction"] == 1.0
    assert result["summary"]["frozen_fraction"]["last"] == 1.0   # the summary flags the freeze


def test_stuttering_video_is_half_frozen_but_moving():
    doubled = [frame for frame in sprite_frames(20) for _ in range(2)]
    [window, _] = analyze_frames(doubled, FPS)["windows"]
    assert window["moving"] is True
    assert window["frozen_fraction"] == pytest.approx(10 / 19)    # 10 of its 19 pairs repeat


def test_frozen_video_scores_perfectly_consistent():
    result = analyze_frames([sprite_frames(1)[0]] * 60, FPS)
    assert [w["moving"] for w in result["windows"]] == [False, False, False]
    assert all(w["hold_similarity"] == pytest.approx(1.0) for w in result["windows"])
    assert result["windows"][2]["repetition"] == pytest.approx(1.0)


def test_iid_noise_flickers_far_more_than_a_moving_sprite():
    rng = np.random.default_rng(0)
    noise = analyze_frames([rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8) for _ in range(40)],
                           FPS)
    smooth = analyze_frames(sprite_frames(40), FPS)
    assert noise["summary"]["flicker"]["first"] > 0.15
    assert noise["summary"]["flicker"]["first"] > 10 * smooth["summary"]["flicker"]["first"]


def test_flicker_separates_smooth_motion_from_per_frame_noise():
    def flicker_of(frames):
        return analyze_frames(frames, FPS, window_frames=len(frames))["windows"][0]["flicker"]

    static, panning = flicker_of(noisy_scene(20, 0, 2.0)), flicker_of(noisy_scene(20, 1, 2.0))
    noisy_static = flicker_of(noisy_scene(20, 0, 20.0))
    noisy_pan = flicker_of(noisy_scene(20, 1, 20.0))
    assert panning < 2 * static                     # 1 px/frame pan: flicker of the sensor noise
    assert noisy_pan > 5 * panning and noisy_static > 5 * static
    assert noisy_pan == pytest.approx(noisy_static, rel=0.25)    # noise reads alike moving or not
    clean_pan = noisy_scene(20, 1, 0.0)
    plain_difference = np.mean([np.abs(b.astype(float) - a).mean() / 255
                                for a, b in zip(clean_pan, clean_pan[1:])])
    assert flicker_of(clean_pan) < 0.005 < 0.3 < plain_difference


def test_sharpness_falls_with_motion_blur_and_rises_with_noise():
    frame = pan_frames(1)[0]
    blurred = cv2.filter2D(frame, -1, np.full((1, 7), 1 / 7))          # 7 px horizontal smear
    noisy = np.clip(frame + np.random.default_rng(0).normal(0, 10, frame.shape), 0, 255)
    sharp = frame_metrics(frame)["sharpness"]
    assert frame_metrics(blurred)["sharpness"] < 0.5 * sharp
    assert frame_metrics(noisy.astype(np.uint8))["sharpness"] > 2 * sharp


def test_hue_rotation_grows_color_shift():
    hsv = cv2.cvtColor(sprite_frames(1)[0], cv2.COLOR_RGB2HSV)
    frames = []
    for i in range(60):
        rotated = hsv.copy()
        rotated[..., 0] = (rotated[..., 0].astype(np.int32) + i * 90 // 60) % 180
        frames.append(cv2.cvtColor(rotated, cv2.COLOR_HSV2RGB))
    shifts = [w["color_shift"] for w in analyze_frames(frames, FPS)["windows"]]
    assert shifts[0] == 0.0
    assert shifts[0] < shifts[1] < shifts[2] and shifts[2] > 10.0


def test_loop_repeats_and_a_panning_video_does_not():
    loop = analyze_frames(sprite_frames(20, speed=3) * 4, FPS)
    pan = analyze_frames(pan_frames(80), FPS)
    assert [w["repetition"] for w in loop["windows"]][:2] == [0.0, 0.0]
    assert loop["summary"]["repetition"]["last"] > 0.99
    assert max(w["repetition"] for w in pan["windows"]) < 0.6
    assert pan["summary"]["hold_similarity"]["last"] < 0.6
    assert all(w["moving"] for w in pan["windows"] + loop["windows"])


def test_trailing_partial_window_is_merged_or_kept():
    merged = analyze_frames(sprite_frames(45), FPS)
    kept = analyze_frames(sprite_frames(50), FPS)
    assert [(w["t_start"], w["t_end"]) for w in merged["windows"]] == [(0.0, 2.0), (2.0, 4.5)]
    assert [w["t_end"] for w in kept["windows"]] == [2.0, 4.0, 5.0]
    short = analyze_frames(sprite_frames(5), FPS)
    assert len(short["windows"]) == 1 and short["windows"][0]["t_end"] == 0.5


def test_per_chunk_windows_and_effective_window_seconds():
    result = analyze_frames(sprite_frames(12), FPS, window_frames=3)
    assert result["window_seconds"] == pytest.approx(0.3)
    assert len(result["windows"]) == 4 and result["num_frames"] == 12


def test_result_schema_types_and_json():
    result = analyze_frames(sprite_frames(30), FPS)
    assert set(result) == {"video", "fps", "window_seconds", "num_frames", "windows", "summary"}
    for window in result["windows"]:
        assert set(window) == WINDOW_KEYS
        assert all(type(v) is float for k, v in window.items() if k != "moving")
        assert type(window["moving"]) is bool
    for stats in result["summary"].values():
        assert set(stats) == {"slope", "first", "last", "delta"}
        assert all(type(v) is float for v in stats.values())
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_meter_streams_and_result_does_not_end_the_stream():
    meter = DriftMeter(FPS)
    for frame in sprite_frames(25):
        meter.update(frame)
    assert meter.result() == meter.result() and len(meter.result()["windows"]) == 1
    for frame in sprite_frames(15):
        meter.update(frame)
    assert len(meter.result()["windows"]) == 2 and meter.result()["num_frames"] == 40


@pytest.mark.parametrize("kwargs, match", [({"fps": 0.0}, "fps"),
                                           ({"fps": 10.0, "window_frames": 1}, "window_frames"),
                                           ({"fps": 10.0, "window_seconds": -1.0},
                                            "window_seconds")])
def test_invalid_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DriftMeter(**kwargs)


def test_bad_frames_are_rejected():
    meter = DriftMeter(FPS)
    with pytest.raises(ValueError, match="frame 0"):
        meter.update(np.zeros((8, 8, 3), np.float32))
    meter.update(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 2 frames"):
        meter.result()
    with pytest.raises(ValueError, match="differs from"):
        meter.update(np.zeros((8, 9, 3), np.uint8))


def test_missing_empty_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        analyze_video(tmp_path / "nope.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp4"):
        analyze_video(empty)
    corrupt = tmp_path / "x.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(ValueError, match="x.mp4"):
        analyze_video(corrupt)


def test_truncated_fragmented_mp4_yields_its_decodable_frames(tmp_path):
    full, cut = tmp_path / "full.mp4", tmp_path / "cut.mp4"
    with Mp4Writer(full, FPS, stream=True) as writer:       # fragmented, a keyframe every second
        writer.append(np.stack(sprite_frames(60)))
    cut.write_bytes(full.read_bytes()[:os.path.getsize(full) // 2])
    with open_video(full) as (_, frames):
        decoded = list(frames)
    result = analyze_video(cut)
    assert FPS <= result["num_frames"] < 60 and result["fps"] == pytest.approx(FPS)
    assert result == analyze_frames(decoded[:result["num_frames"]], FPS, video=str(cut))


def test_file_api_agrees_with_frame_api(tmp_path):
    frames = sprite_frames(20) + [sprite_frames(20)[-1]] * 15
    path = tmp_path / "clip.mp4"
    write_mp4(path, frames)
    from_file = analyze_video(path)
    from_frames = analyze_frames(frames, FPS)
    assert from_file["video"] == str(path) and from_file["num_frames"] == 35
    assert from_file["fps"] == pytest.approx(FPS)
    timing = [[t for w in r["windows"] for t in (w["t_start"], w["t_end"])]
              for r in (from_file, from_frames)]
    assert timing[0] == pytest.approx(timing[1]) == [0.0, 2.0, 2.0, 3.5]
    for a, b in zip(from_file["windows"], from_frames["windows"]):
        assert a["moving"] == b["moving"]
        for key in ("luminance", "saturation", "contrast", "flicker", "hold_similarity"):
            assert a[key] == pytest.approx(b[key], abs=0.03)
