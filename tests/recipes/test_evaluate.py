"""Long-rollout evaluation: samplers, metric aggregation and the report, on inputs with known answers."""
import json
import math

import numpy as np
import pytest
import torch

from vidforce.recipes import evaluate as ev
from vidforce.data.mini_world import WorldSpec, render, scene_for_seed
from vidforce.models.codecs.pixel import PixelCodec
from vidforce.models.text import TinyTextEncoder
from vidforce.sampling import Sampler, euler_grid
from tests.models.helpers import tiny_causal

SPEC = WorldSpec(max_sprites=1)        # one sprite: no occlusion, so the truth counts exactly


def _setup(seeds=(3, 4), horizon=6, multiples=(1, 4)):
    return ev.EvalSetup(SPEC, seeds, horizon, 3, 8.0, multiples, (12, 16, 16), 2, 4)


def _truth_videos(setup, frames):
    """The scenes' renders, uint8 ``[frames, H, W, 3]`` each (the data reference without the mp4 round trip)."""
    return [render(scene_for_seed(s, setup.spec), setup.spec, frames)[0] for s in setup.seeds]


def _truth_sampler(setup, codec):
    """A model stub that 'generates' the rendered ground truth of each scene."""
    def sample(prompts, noise):
        pixels = torch.from_numpy(np.stack(_truth_videos(setup, noise.shape[1]))).permute(0, 1, 4, 2, 3)
        pixels = pixels.float() / 127.5 - 1.0
        return codec.encode(pixels)
    return sample


def test_scene_noise_does_not_depend_on_the_batch():
    both = ev.scene_noise((1, 2), 3, (12, 4, 4), "cpu")
    alone = ev.scene_noise((2,), 3, (12, 4, 4), "cpu")
    torch.testing.assert_close(both[1], alone[0])


@pytest.mark.parametrize("kind", ["few_step", "euler"])
def test_causal_samplers_are_prefix_consistent(kind):
    """One long rollout gives every horizon: the first N frames do not depend on later ones."""
    model = tiny_causal(frames_per_chunk=3, window=6, sink=3, rope_mode="relative")
    text = TinyTextEncoder(dim=model.arch.text_dim, text_len=model.arch.text_len)
    steps = Sampler((1.0, 0.75), 0.0) if kind == "few_step" else Sampler(euler_grid(3, 3.0), 0.0, "euler")
    sample = ev.causal_sampler(model, text, steps)
    noise = ev.scene_noise((0, 1), 12, (model.arch.in_dim, 4, 4), "cpu")
    prompts = ["a red circle", "a blue square"]
    long, short = sample(prompts, noise), sample(prompts, noise[:, :6])
    assert long.shape == noise.shape
    torch.testing.assert_close(long[:, :6], short)


def test_truth_stub_scores_near_zero_error():
    setup, codec = _setup(), PixelCodec(2)
    videos = ev.generate_videos(_truth_sampler(setup, codec), codec, ["", ""], torch.zeros(2, 24, 12, 16, 16))
    summary = ev.summarize_model(videos, setup)
    for h in ("1", "4"):
        row = summary["horizons"][h]
        assert row["count_accuracy"] == 1.0 and row["count_error"] == 0.0
        assert row["colour_error"] < 1e-6 and row["background_error"] < 1e-6
        assert row["size_error"] < 0.15
        assert 0.7 < row["speed_ratio"] < 1.1
    assert len(summary["curves"]["t"]) == len(summary["curves"]["size_error"]) == 8   # 24 frames / chunk 3


def test_frozen_video_has_speed_ratio_zero_and_no_motion():
    setup = _setup(seeds=(3,))
    frame = render(scene_for_seed(3, SPEC), SPEC, 1)[0]
    summary = ev.summarize_model([np.repeat(frame, 12, axis=0)], setup)
    row = summary["horizons"]["1"]
    assert row["speed_ratio"] == pytest.approx(0.0, abs=1e-9)
    assert row["flicker"] == 0.0 and row["motion"] < 1e-3
    assert "4" not in summary["horizons"]            # 12 frames hold only the 1x horizon


def test_block_means_and_table_nan_cells():
    np.testing.assert_allclose(ev.block_means(np.array([1.0, 3.0, np.nan, 5.0, 7.0]), 2), [2.0, 5.0, 7.0])
    row = dict.fromkeys(ev.WORLD_KEYS + ev.DRIFT_KEYS, 0.5)
    row["speed_ratio"] = math.nan
    table = ev.table_markdown({"m": {"horizons": {"1": row}}})
    assert "| m | 1x | 0.500 |" in table and "| - |" in table


def test_evaluate_writes_the_report(tmp_path):
    setup, codec = _setup(), PixelCodec(2)
    samplers = {"truth": (_truth_sampler(setup, codec), 4), "short": (_truth_sampler(setup, codec), 1)}
    models = ev.evaluate(samplers, codec, setup, tmp_path, comparisons=(("truth", "data"), ("short", "truth")))
    assert set(models) == {"data", "truth", "short"}
    rows = (tmp_path / "comparisons.md").read_text().splitlines()[2:]
    assert [r.split(" | ")[:2] for r in rows] == [["| truth vs data", "1x"], ["| truth vs data", "4x"],
                                                  ["| short vs truth", "1x"]]
    assert rows[2].split(" | ")[2] == "+0.000 ± 0.000"          # the same sampler: no advantage
    assert set(models["short"]["horizons"]) == {"1"}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["models"]["data"]["horizons"]["4"]["count_accuracy"] > 0.9
    assert results["setup"]["prompts"][0].endswith("background")
    assert "| truth | 4x |" in (tmp_path / "table.md").read_text()
    for name in ("curves.png", "strip_truth.png", "strip_short.png", "strip_data.png"):
        assert 0 < (tmp_path / name).stat().st_size < 16 * 2**20


def test_table_shows_standard_errors_and_evaluate_checks_comparison_names_first(tmp_path):
    row = dict.fromkeys(ev.WORLD_KEYS + ev.DRIFT_KEYS, 0.5)
    table = ev.table_markdown({"m": {"horizons": {"1": row}, "se": {"1": {"count_error": 0.25}}}})
    assert "| m | 1x | 0.500 | 0.500 ± 0.250 | 0.500 |" in table
    setup, codec = _setup(), PixelCodec(2)
    never = lambda prompts, noise: pytest.fail("sampled before the comparison names were checked")  # noqa: E731
    with pytest.raises(ValueError, match=r"evaluate.comparisons: unknown model\(s\) \['nope'\]"):
        ev.evaluate({"truth": (never, 4)}, codec, setup, tmp_path, comparisons=(("truth", "nope"),))


def _counting(fn):
    """``fn`` plus the number of times it was called (``calls[0]``)."""
    calls = [0]

    def wrapped(*args):
        calls[0] += 1
        return fn(*args)
    return wrapped, calls


def test_video_cache_round_trip_is_atomic_and_names_a_foreign_file(tmp_path, monkeypatch):
    path, key = tmp_path / "videos" / "m.npz", ev.CacheKey("w1", (3, 4), 5)
    videos = [np.full((5, 4, 6, 3), i, dtype=np.uint8) for i in range(2)]
    ev.save_videos(path, videos, key)
    assert ev.read_key(path) == key and ev.differing(key, ev.CacheKey("w2", (3,), 5)) == ["fingerprint", "seeds"]
    for got, want in zip(ev.load_videos(path), videos):
        np.testing.assert_array_equal(got, want)

    def interrupted(file, **arrays):
        file.write(b"trunc")
        raise KeyboardInterrupt
    monkeypatch.setattr(ev.np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ev.save_videos(path, videos, ev.CacheKey("w2", (3, 4), 5))
    assert ev.read_key(path) == key                   # the old cache is whole
    np.savez(tmp_path / "other.npz", x=np.zeros(1))
    with pytest.raises(ValueError, match=r"other.npz: not a video cache"):
        ev.read_key(tmp_path / "other.npz")


def test_evaluate_reuses_cached_videos(tmp_path, monkeypatch, capsys):
    setup, codec = _setup(seeds=(3,), multiples=(1,)), PixelCodec(2)
    sample, calls = _counting(_truth_sampler(setup, codec))
    data, data_calls = _counting(_truth_videos)
    monkeypatch.setattr(ev, "data_videos", data)
    prints = {"truth": "weights-a", "data": "world-a"}
    first = ev.evaluate({"truth": (sample, 1)}, codec, setup, tmp_path, fingerprints=prints)
    second = ev.evaluate({"truth": (sample, 1)}, codec, setup, tmp_path, fingerprints=prints)
    assert calls[0] == 1 and data_calls[0] == 1
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["data.npz", "truth.npz"]
    assert capsys.readouterr().out.count("videos loaded from") == 2
    with pytest.raises(ValueError, match=r"evaluate fingerprints: unknown model\(s\) \['nope'\]"):
        ev.evaluate({"truth": (sample, 1)}, codec, setup, tmp_path, fingerprints={"nope": "x"})


@pytest.mark.parametrize("change", ["fingerprint", "seeds", "frames"])
def test_evaluate_regenerates_a_stale_cache(change, tmp_path, monkeypatch, capsys):
    codec = PixelCodec(2)
    monkeypatch.setattr(ev, "data_videos", _truth_videos)
    sample, calls = _counting(_truth_sampler(_setup(seeds=(3,)), codec))
    ev.evaluate({"truth": (sample, 1)}, codec, _setup(seeds=(3,)), tmp_path, fingerprints={"truth": "weights-a"})
    weights, seeds, multiple = {"fingerprint": ("weights-b", (3,), 1), "seeds": ("weights-a", (4,), 1),
                                "frames": ("weights-a", (3,), 4)}[change]
    capsys.readouterr()
    ev.evaluate({"truth": (sample, multiple)}, codec, _setup(seeds=seeds), tmp_path, fingerprints={"truth": weights})
    assert calls[0] == 2
    assert f"made for another {change}; regenerating" in capsys.readouterr().out
    assert ev.read_key(tmp_path / "videos" / "truth.npz") == ev.CacheKey(weights, seeds, multiple * 6)


def test_evaluate_without_fingerprint_always_generates_and_caches_nothing(tmp_path, monkeypatch):
    setup, codec = _setup(seeds=(3,), multiples=(1,)), PixelCodec(2)
    monkeypatch.setattr(ev, "data_videos", _truth_videos)
    sample, calls = _counting(_truth_sampler(setup, codec))
    for _ in range(2):
        ev.evaluate({"truth": (sample, 1)}, codec, setup, tmp_path)
    assert calls[0] == 2 and not (tmp_path / "videos").exists()
