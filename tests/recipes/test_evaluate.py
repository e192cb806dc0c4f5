"""Long-rollout evaluation on the ball world: stubs with known drift, the outputs' schema, the probe, the cache."""
import json
import math

import numpy as np
import pytest
import torch

from vidforce.data.balls import BallWorldSpec, render_numpy, scene_for_seed, simulate
from vidforce.models.codecs.pixel import PixelCodec
from vidforce.models.text import TinyTextEncoder
from vidforce.recipes import evaluate as ev
from vidforce.recipes import report
from vidforce.sampling import Sampler, euler_grid
from tests.models.helpers import tiny_causal

SPEC = BallWorldSpec()
K = 8                                  # teacher horizon (frames) of every test setup


def _setup(seeds=(3, 4, 5), noise_seeds=(0, 1), multiples=(1, 4)):
    return ev.EvalSetup(SPEC, seeds, noise_seeds, K, 4, 8.0, multiples, (12, 16, 16), 2, 4)


def _truth_videos(setup, frames):
    """Each scene's truth: its simulated trajectory rendered, uint8 ``[frames, H, W, 3]``."""
    scenes = [scene_for_seed(s, setup.spec) for s in setup.seeds]
    return [render_numpy(sc, setup.spec, simulate(sc, setup.spec, frames)[0]) for sc in scenes]


def _encode(codec, videos):
    pixels = torch.from_numpy(np.stack(videos)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
    return codec.encode(pixels)


def _truth_sampler(setup, codec, freeze=lambda unit: False):
    """A model stub that 'generates' the encoded truth of each unit's scene; units where ``freeze(unit)``
    repeat the last frame of the first K-frame window from then on."""
    def sample(prompts, noise):
        per_scene = len(prompts) // len(setup.seeds)
        latents = _encode(codec, _truth_videos(setup, noise.shape[1])).repeat_interleave(per_scene, 0)
        for unit in range(len(latents)):
            if freeze(unit):
                latents[unit, K:] = latents[unit, K - 1:K]
        return latents
    return sample


def test_scene_noise_is_per_unit_and_does_not_depend_on_the_batch():
    both = ev.scene_noise((1, 2), (0, 1), 3, (12, 4, 4), "cpu")
    alone = ev.scene_noise((2,), (1,), 3, (12, 4, 4), "cpu")
    assert both.shape == (4, 3, 12, 4, 4)
    torch.testing.assert_close(both[3], alone[0])                  # scene-major: (2, 1) is unit 3
    assert not torch.equal(both[0], both[1]) and not torch.equal(both[0], both[2])
    assert ev.unit_prompts(_setup(seeds=(3, 4))) == [p for p in ev.scene_prompts(_setup(seeds=(3, 4))) for _ in (0, 1)]


@pytest.mark.parametrize("kind", ["few_step", "euler"])
def test_causal_samplers_are_prefix_consistent(kind):
    """One long rollout gives every horizon: the first N frames do not depend on later ones."""
    model = tiny_causal(frames_per_chunk=3, window=6, sink=3, rope_mode="relative")
    text = TinyTextEncoder(dim=model.arch.text_dim, text_len=model.arch.text_len)
    steps = Sampler((1.0, 0.75), 0.0) if kind == "few_step" else Sampler(euler_grid(3, 3.0), 0.0, "euler")
    sample = ev.causal_sampler(model, text, steps)
    noise = ev.scene_noise((0,), (0, 1), 12, (model.arch.in_dim, 4, 4), "cpu")
    prompts = ["1 ball", "2 balls"]
    long, short = sample(prompts, noise), sample(prompts, noise[:, :6])
    assert long.shape == noise.shape
    torch.testing.assert_close(long[:, :6], short)


GATE = {"first": "teacher", "second": None, "horizon": "1x", "metric": "count_accuracy", "rule": "gate_teacher"}


def test_truth_scores_d_near_zero_at_every_horizon_and_passes_the_teacher_gate(tmp_path):
    setup, codec = _setup(), PixelCodec(2)
    truth = _truth_sampler(setup, codec)
    results = ev.evaluate({"teacher": (truth, 1), "truth": (truth, 4)}, codec, setup, tmp_path, registered=[GATE])
    for name in ("data", "truth"):
        rows = results["models"][name]["horizons"]
        assert set(rows) == {"1x", "4x"}
        assert rows["1x"]["D"] == 0.0 and rows["1x"]["count_accuracy"] == 1.0
        assert rows["4x"]["D"] < 0.2 and rows["4x"]["count_accuracy"] == 1.0
        assert abs(rows["4x"]["motion_ratio"] - 1.0) < 0.05
    assert set(results["models"]["teacher"]["horizons"]) == {"1x"}          # bidirectional: 1x only
    gate = results["decisions"][0]
    assert gate["verdict"] == "pass" and gate["value"] == 1.0 and gate["D"] == 0.0
    curves = results["models"]["truth"]["curves"]
    assert curves["t"] == [1.0, 2.0, 3.0, 4.0] and len(curves["D"]) == len(curves["d_motion"]) == 4


def test_a_frozen_stub_fails_nothing_at_1x_but_stops_and_drifts_at_4x(tmp_path):
    setup, codec = _setup(), PixelCodec(2)
    registered = [
        {"first": "frozen", "second": "truth", "horizon": "1x", "metric": "D", "rule": "not_worse_2se"},
        {**GATE, "first": "frozen"},
        {"first": "truth", "second": "frozen", "horizon": "4x", "metric": "D", "rule": "lower_2se"},
        {"first": "truth", "second": "frozen", "horizon": "4x", "metric": "motion_ratio", "rule": "closer_to_1"},
        {"first": "frozen@4x", "second": "frozen@1x", "horizon": None, "metric": "D", "rule": "higher_3se"},
    ]
    samplers = {"truth": (_truth_sampler(setup, codec), 4),
                "frozen": (_truth_sampler(setup, codec, freeze=lambda unit: True), 4)}
    results = ev.evaluate(samplers, codec, setup, tmp_path, registered=registered)
    frozen, truth = results["models"]["frozen"]["per_scene"], results["models"]["truth"]["per_scene"]
    assert frozen["1x"] == truth["1x"]                                    # identical first window
    assert frozen["4x"]["motion_ratio"] == [0.0, 0.0, 0.0]
    assert min(frozen["4x"]["D"]) >= 1.0
    verdicts = [d["verdict"] for d in results["decisions"]]
    assert verdicts == ["pass", "pass", "pass", "pass", "pass"]
    assert results["decisions"][0]["advantage"] == 0.0 and results["decisions"][0]["se"] == 0.0
    positive_control = np.mean(frozen["4x"]["D"]) - np.mean(frozen["1x"]["D"])
    assert results["decisions"][4]["advantage"] == pytest.approx(positive_control)


def test_per_scene_json_schema_scene_order_and_noise_seed_mean(tmp_path):
    setup, codec = _setup(), PixelCodec(2)
    samplers = {"teacher": (_truth_sampler(setup, codec), 1),
                "scene4": (_truth_sampler(setup, codec, freeze=lambda unit: unit in (2, 3)), 4),   # seed 4 only
                "half": (_truth_sampler(setup, codec, freeze=lambda unit: unit % 2 == 1), 4)}      # noise seed 1
    results = ev.evaluate(samplers, codec, setup, tmp_path)
    per_scene = json.loads((tmp_path / "per_scene.json").read_text())
    assert list(per_scene) == ["data", "teacher", "scene4", "half"]
    assert list(per_scene["teacher"]) == ["1x"] and list(per_scene["scene4"]) == ["1x", "4x"]
    for model in per_scene.values():
        for metrics in model.values():
            assert list(metrics) == list(ev.METRIC_KEYS) and all(len(v) == 3 for v in metrics.values())
    assert per_scene["scene4"]["4x"]["motion_ratio"][1] == 0.0                  # seeds (3, 4, 5): the second
    assert min(per_scene["scene4"]["4x"]["motion_ratio"][::2]) > 0.9
    truth = per_scene["data"]["4x"]["motion_ratio"]                             # mean of moving and frozen
    np.testing.assert_allclose(per_scene["half"]["4x"]["motion_ratio"], np.array(truth) / 2, rtol=1e-12)
    assert per_scene == json.loads(json.dumps(report._clean({n: m["per_scene"] for n, m in results["models"].items()})))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["setup"]["noise_seeds"] == [0, 1] and saved["setup"]["prompts"] == ev.scene_prompts(setup)
    assert json.loads((tmp_path / "decisions.json").read_text()) == []
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("| model | horizon | D | d_count |") and "| scene4 | 4x |" in table
    for name in ("curves.png", "strip_data.png", "strip_teacher.png", "strip_scene4.png", "comparisons.md"):
        assert 0 < (tmp_path / name).stat().st_size < 16 * 2**20


def test_unknown_registered_names_and_unreached_horizons_raise_before_sampling(tmp_path):
    setup, codec = _setup(), PixelCodec(2)
    never = lambda prompts, noise: pytest.fail("sampled before the registered entries were checked")  # noqa: E731
    pair = {"first": "truth", "second": "teacher", "horizon": "1x", "metric": "D"}
    bad = [({**pair, "second": "nope", "rule": "lower_2se"}, "unknown model 'nope'"),
           ({**pair, "first": "teacher@4x", "second": "truth@4x", "horizon": None, "rule": "higher_3se"},
            r"teacher is evaluated at \['1x'\], not at horizon '4x'"),
           ({**pair, "rule": "lower"}, "rule must be"),
           ({**pair, "rule": "closer_to_1"}, "takes metric")]
    for entry, message in bad:
        with pytest.raises(ValueError, match=message):
            ev.evaluate({"truth": (never, 4), "teacher": (never, 1)}, codec, setup, tmp_path, registered=[entry])


def _fake_probe(setup, codec, decay):
    """``ProbeFn`` of a causal 'model' that repeats each scene's first truth chunk and keeps ``decay`` of the
    previous chunk's deviation from it: an injected error decays by ``decay`` per chunk."""
    def make(prompts):
        base = _encode(codec, _truth_videos(setup, setup.chunk))[:len(prompts)]

        def run(noise, edit):
            outs, deviation = [], torch.zeros_like(base)
            for k in range(noise.shape[1] // setup.chunk):
                x0 = base + decay * deviation
                if edit is not None:
                    x0 = edit(k * setup.chunk, x0)
                deviation = x0 - base
                outs.append(x0)
            return torch.cat(outs, dim=1)
        return run
    return make


def test_probe_half_life_table_of_fake_models_with_known_decay(tmp_path):
    setup, codec = _setup(multiples=(1,)), PixelCodec(2)
    truth = _truth_sampler(setup, codec)
    probes = {"halving": _fake_probe(setup, codec, 2.0 ** -0.5), "keeping": _fake_probe(setup, codec, 1.0)}
    results = ev.evaluate({"halving": (truth, 1), "keeping": (truth, 1)}, codec, setup, tmp_path, probes=probes,
                          probe_chunk=2, probe_chunks=8)
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["scenes"] == [3, 4, 5] and probe["inject_chunk"] == 2 and probe["chunks"] == 8
    for corruption, res in probe["models"]["halving"].items():
        np.testing.assert_allclose(res["half_lives"], [2.0] * 3, atol=1e-4, err_msg=corruption)
        assert res["mean"] == pytest.approx(2.0, abs=1e-4) and res["persists"] == 0.0
        assert res["errors"][:2] == [0.0, 0.0] and res["errors"][2] > 1.0
    for res in probe["models"]["keeping"].values():
        assert res["half_lives"] == ["inf"] * 3 and res["persists"] == 1.0 and res["mean"] is None
    assert results["probe"]["models"]["keeping"]["hue_shift"]["median"] == math.inf
    table = (tmp_path / "table.md").read_text()
    assert "| halving | 2.000 | 2.000 | 0.000 | 2.000 | 2.000 | 0.000 | 2.000 | 2.000 | 0.000 |" in table
    assert "| keeping | - | inf | 1.000 | - | inf | 1.000 | - | inf | 1.000 |" in table
    with pytest.raises(ValueError, match=r"evaluate probes: unknown model\(s\) \['nope'\]"):
        ev.evaluate({"halving": (truth, 1)}, codec, setup, tmp_path, probes={"nope": probes["halving"]})


def test_table_cells_show_standard_errors_and_nan():
    row = dict.fromkeys(report.TABLE_KEYS, 0.5)
    row["motion_ratio"] = math.nan
    table = report.table_markdown({"m": {"horizons": {"1x": row}, "se": {"1x": {"d_count": 0.25}}}})
    assert "| m | 1x | 0.500 | 0.500 ± 0.250 | 0.500 |" in table and "| - |" in table


def _counting(fn):
    """``fn`` plus the number of times it was called (``calls[0]``)."""
    calls = [0]

    def wrapped(*args):
        calls[0] += 1
        return fn(*args)
    return wrapped, calls


def test_video_cache_round_trip_is_atomic_and_names_a_foreign_file(tmp_path, monkeypatch):
    path, key = tmp_path / "videos" / "m.npz", ev.CacheKey("w1", (3, 4), 5, (0, 1))
    videos = [np.full((5, 4, 6, 3), i, dtype=np.uint8) for i in range(2)]
    ev.save_videos(path, videos, key)
    assert ev.read_key(path) == key
    assert ev.differing(key, ev.CacheKey("w2", (3,), 5, (0, 1))) == ["fingerprint", "seeds"]
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
    np.savez(tmp_path / "v1.npz", videos=np.zeros((1, 2, 4, 6, 3), np.uint8), fingerprint=np.array("w"),
             seeds=np.array([3]), frames=np.array(2))
    assert ev.read_key(tmp_path / "v1.npz") == ev.CacheKey("w", (3,), 2)       # before noise seeds: none


def test_evaluate_reuses_cached_videos(tmp_path, monkeypatch, capsys):
    setup, codec = _setup(seeds=(3, 4), multiples=(1,)), PixelCodec(2)
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
    assert ev.read_key(tmp_path / "videos" / "data.npz") == ev.CacheKey("world-a", (3, 4), K)
    with pytest.raises(ValueError, match=r"evaluate fingerprints: unknown model\(s\) \['nope'\]"):
        ev.evaluate({"truth": (sample, 1)}, codec, setup, tmp_path, fingerprints={"nope": "x"})


@pytest.mark.parametrize("change", ["fingerprint", "seeds", "frames", "noise_seeds"])
def test_evaluate_regenerates_a_stale_cache(change, tmp_path, monkeypatch, capsys):
    codec = PixelCodec(2)
    monkeypatch.setattr(ev, "data_videos", _truth_videos)
    sample, calls = _counting(_truth_sampler(_setup(seeds=(3, 4)), codec))
    ev.evaluate({"truth": (sample, 1)}, codec, _setup(seeds=(3, 4)), tmp_path, fingerprints={"truth": "weights-a"})
    weights, seeds, noise, multiple = {"fingerprint": ("weights-b", (3, 4), (0, 1), 1),
                                       "seeds": ("weights-a", (4, 5), (0, 1), 1),
                                       "frames": ("weights-a", (3, 4), (0, 1), 4),
                                       "noise_seeds": ("weights-a", (3, 4), (0, 2), 1)}[change]
    capsys.readouterr()
    ev.evaluate({"truth": (sample, multiple)}, codec, _setup(seeds=seeds, noise_seeds=noise), tmp_path,
                fingerprints={"truth": weights})
    assert calls[0] == 2
    assert f"made for another {change}; regenerating" in capsys.readouterr().out
    assert ev.read_key(tmp_path / "videos" / "truth.npz") == ev.CacheKey(weights, seeds, multiple * K, noise)


def test_evaluate_without_fingerprint_always_generates_and_caches_nothing(tmp_path, monkeypatch):
    setup, codec = _setup(seeds=(3, 4), multiples=(1,)), PixelCodec(2)
    monkeypatch.setattr(ev, "data_videos", _truth_videos)
    sample, calls = _counting(_truth_sampler(setup, codec))
    for _ in range(2):
        ev.evaluate({"truth": (sample, 1)}, codec, setup, tmp_path)
    assert calls[0] == 2 and not (tmp_path / "videos").exists()


def test_prepare_fills_the_caches_that_evaluate_reuses(tmp_path, monkeypatch, capsys):
    """A device run prepares some models (videos and probe), the full evaluation elsewhere loads them."""
    setup, codec = _setup(multiples=(1,)), PixelCodec(2)
    monkeypatch.setattr(ev, "data_videos", _truth_videos)
    sample, calls = _counting(_truth_sampler(setup, codec))
    made = [0]

    def probe(prompts):
        made[0] += 1
        return _fake_probe(setup, codec, 2.0 ** -0.5)(prompts)
    prints = {"truth": "weights-a", "data": "world-a"}
    summaries = ev.prepare({"truth": (sample, 1)}, codec, setup, tmp_path, fingerprints=prints,
                           probes={"truth": probe}, probe_chunk=2, probe_chunks=8)
    assert sorted(summaries) == ["data", "truth"] and summaries["truth"]["horizons"]["1x"]["count_accuracy"] > 0.9
    assert not (tmp_path / "table.md").exists()                        # no report from a part
    results = ev.evaluate({"truth": (sample, 1)}, codec, setup, tmp_path, fingerprints=prints,
                          probes={"truth": probe}, probe_chunk=2, probe_chunks=8)
    assert calls[0] == 1 and made[0] == 1                              # both loaded from the caches
    assert results["probe"]["models"]["truth"]["hue_shift"]["mean"] == pytest.approx(2.0, abs=1e-4)
    assert "probe loaded from" in capsys.readouterr().out
    ev.evaluate({"truth": (sample, 1)}, codec, setup, tmp_path, fingerprints=prints, probes={"truth": probe},
                probe_chunk=3, probe_chunks=8)                         # another probe setting: rerun
    assert made[0] == 2
