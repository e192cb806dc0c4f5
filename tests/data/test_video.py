"""VideoClipDataset reads exported mini-world mp4s back; bad files are skipped; ClipSampler resumes."""
import json
import shutil

import numpy as np
import pytest
import torch

from vidforce.data.mini_world import WorldSpec, export_mini_world, make_clip
from vidforce.data.video import ClipSampler, VideoClipDataset, clip_source_indices

SPEC = WorldSpec()
FRAMES, SEED = 20, 100
CODEC_MAE = 6.0  # mean |decoded - rendered| in uint8 levels; yuv420p chroma blur gives about 2-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini")
    export_mini_world(out, num_clips=3, num_frames=FRAMES, spec=SPEC, seed=SEED)
    return out


def _as_uint8(video: torch.Tensor) -> np.ndarray:
    """[T, 3, H, W] in [-1, 1] -> [T, H, W, 3] float levels."""
    return ((video + 1) * 127.5).permute(0, 2, 3, 1).numpy()


def test_reads_clips_back_up_to_codec_tolerance(exported):
    ds = VideoClipDataset(exported, clip_frames=8, stride=4)
    assert len(ds) == 3 * ((FRAMES - 8) // 4 + 1) and ds.skipped == []
    for item in ds:
        seed = SEED + int(item["path"][-10:-4])
        clip = make_clip(seed, SPEC, FRAMES)
        video = item["video"]
        assert video.shape == (8, 3, 32, 32) and video.dtype == torch.float32
        assert video.min() >= -1 and video.max() <= 1
        assert item["prompt"] == clip.prompt
        expected = clip.frames[item["start"]:item["start"] + 8].astype(np.float64)
        assert np.abs(_as_uint8(video) - expected).mean() < CODEC_MAE
    assert sorted({ds[i]["start"] for i in range(4)}) == [0, 4, 8, 12]


def test_manifest_jsonl_and_csv_match_the_directory(exported, tmp_path):
    by_dir = VideoClipDataset(exported, clip_frames=8, stride=6)
    by_jsonl = VideoClipDataset(exported / "manifest.jsonl", clip_frames=8, stride=6)
    rows = [json.loads(line) for line in (exported / "manifest.jsonl").read_text().splitlines()]
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,caption\n" + "".join(
        f'{exported / r["path"]},"{r["caption"]}"\n' for r in rows))
    by_csv = VideoClipDataset(csv_path, clip_frames=8, stride=6)
    assert len(by_dir) == len(by_jsonl) == len(by_csv) == 3 * 3
    for i in (0, 4, 8):
        a, b, c = by_dir[i], by_jsonl[i], by_csv[i]
        assert a["prompt"] == b["prompt"] == c["prompt"] and a["start"] == b["start"] == c["start"]
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["video"], c["video"])


def test_frame_rate_resampling_and_resize(exported):
    ds = VideoClipDataset(exported, clip_frames=4, stride=2, target_fps=SPEC.fps / 2,
                          height=16, width=24)
    assert len(ds) == 3 * ((FRAMES // 2 - 4) // 2 + 1)
    item = ds[1]
    assert item["video"].shape == (4, 3, 16, 24) and item["start"] == 4
    np.testing.assert_array_equal(clip_source_indices(20, 8, 4, 4, 2)[1], [4, 6, 8, 10])


def test_clip_source_indices_known_values():
    np.testing.assert_array_equal(clip_source_indices(10, 8, 4, 3, 2), [[0, 2, 4], [4, 6, 8]])
    np.testing.assert_array_equal(clip_source_indices(5, 10, None, 2, 3), [[0, 1], [3, 4]])
    upsampled = [[0, 1, 1], [1, 1, 2], [1, 2, 2], [2, 2, 3], [2, 3, 3]]  # 4 fps -> 8 fps
    np.testing.assert_array_equal(clip_source_indices(4, 4, 8, 3, 1), upsampled)
    assert clip_source_indices(3, 8, None, 4, 1).shape == (0, 4)


def test_corrupt_file_is_skipped_and_counted(exported, tmp_path):
    for f in exported.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "broken.txt").write_text("a broken video\n")
    (tmp_path / "uncaptioned.mp4").write_bytes((exported / "clip_000000.mp4").read_bytes())
    with pytest.warns(UserWarning) as caught:
        ds = VideoClipDataset(tmp_path, clip_frames=8, stride=4)
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.mp4" in messages and "uncaptioned.mp4" in messages
    reasons = dict(ds.skipped)
    assert set(reasons) == {str(tmp_path / "broken.mp4"), str(tmp_path / "uncaptioned.mp4")}
    assert "cannot open" in reasons[str(tmp_path / "broken.mp4")]
    assert "no caption" in reasons[str(tmp_path / "uncaptioned.mp4")]
    assert sum(1 for _ in ds) == len(ds) == 12


def test_file_failing_at_read_time_is_skipped(exported, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(np.random.default_rng(1).bytes(4096))
    lines = [json.dumps({"path": "broken.mp4", "caption": "x", "num_frames": 20, "fps": 8}),
             json.dumps({"path": str(exported / "clip_000001.mp4"), "caption": "good"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    ds = VideoClipDataset(tmp_path / "m.jsonl", clip_frames=8, stride=4)
    assert len(ds) == 8
    with pytest.warns(UserWarning, match="read failed"):
        items = [ds[i] for i in range(len(ds))]
    assert all(item["prompt"] == "good" for item in items)
    assert [path for path, _ in ds.skipped] == [str(tmp_path / "broken.mp4")]


def test_empty_or_missing_source_raises(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        VideoClipDataset(tmp_path, clip_frames=4, stride=1)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VideoClipDataset(tmp_path / "nowhere", clip_frames=4, stride=1)
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"path": "a.mp4", "caption": "a"}\n{"path": "b.mp4"}\n')
    with pytest.raises(ValueError, match="m.jsonl:2"):
        VideoClipDataset(bad, clip_frames=4, stride=1)


def test_dataloader_batches_with_clip_sampler(exported):
    ds = VideoClipDataset(exported, clip_frames=8, stride=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=ClipSampler(len(ds), seed=0))
    batch = next(iter(loader))
    assert batch["video"].shape == (4, 8, 3, 32, 32) and len(batch["prompt"]) == 4


def test_clip_sampler_resumes_exactly():
    sampler = ClipSampler(10, seed=3)
    it = iter(sampler)
    head = [next(it) for _ in range(4)]
    state = sampler.state_dict()
    rest = list(it) + list(sampler)  # rest of epoch 0, then epoch 1
    resumed = ClipSampler(10, seed=3)
    resumed.load_state_dict(state)
    assert list(resumed) + list(resumed) == rest
    assert sorted(head + rest[:6]) == list(range(10))
    assert rest[6:] != head + rest[:6]  # epoch 1 is a new order
    with pytest.raises(ValueError, match="seed"):
        ClipSampler(10, seed=4).load_state_dict(state)


def test_clip_sampler_ranks_partition_an_epoch():
    shards = [list(ClipSampler(12, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(12))
    uneven = [list(ClipSampler(10, seed=0, rank=r, world_size=4)) for r in range(4)]
    assert {len(s) for s in uneven} == {3}
    assert set(sum(uneven, [])) == set(range(10))
    assert list(ClipSampler(12, seed=0)) == list(ClipSampler(12, seed=0))
    assert list(ClipSampler(12, seed=0)) != list(ClipSampler(12, seed=1))


def test_cache_returns_identical_clips_without_rereading(tmp_path, monkeypatch):
    from vidforce.data import video as video_mod
    from vidforce.data.mini_world import WorldSpec, export_mini_world
    manifest = export_mini_world(tmp_path / "w", num_clips=2, num_frames=8, spec=WorldSpec(), seed=0)
    ds = video_mod.VideoClipDataset(manifest, clip_frames=4, stride=4, cache=True)
    first = [ds[i]["video"] for i in range(len(ds))]
    monkeypatch.setattr(video_mod, "read_frames", lambda *a: (_ for _ in ()).throw(AssertionError("re-read")))
    assert all(torch.equal(a, ds[i]["video"]) for i, a in enumerate(first))


def test_decord_error_is_a_read_error():
    decord = pytest.importorskip("decord")
    from vidforce.data.video import read_errors
    assert decord.DECORDError in read_errors()


def test_fill_cache_decodes_every_clip_up_front_and_still_skips_bad_files(exported, tmp_path, monkeypatch):
    from vidforce.data import video as video_mod
    (tmp_path / "broken.mp4").write_bytes(np.random.default_rng(2).bytes(4096))
    lines = [json.dumps({"path": "broken.mp4", "caption": "x", "num_frames": 20, "fps": 8}),
             json.dumps({"path": str(exported / "clip_000001.mp4"), "caption": "good"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    plain = VideoClipDataset(tmp_path / "m.jsonl", clip_frames=8, stride=4)
    good = [i for i in range(len(plain)) if plain.clips[i][0] == 1]
    expected = {i: plain[i]["video"] for i in good}
    ds = VideoClipDataset(tmp_path / "m.jsonl", clip_frames=8, stride=4, cache=True)
    with pytest.warns(UserWarning, match="read failed"):
        ds.fill_cache(workers=3)
    assert [path for path, _ in ds.skipped] == [str(tmp_path / "broken.mp4")]
    monkeypatch.setattr(video_mod, "read_frames", lambda *a: (_ for _ in ()).throw(AssertionError("re-read")))
    assert all(torch.equal(ds[i]["video"], expected[i]) and ds[i]["prompt"] == "good" for i in good)
    with pytest.raises(ValueError, match="cache=True"):
        plain.fill_cache(workers=1)
