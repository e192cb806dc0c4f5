"""The one mp4 writer: pixel mapping, a near-lossless plain mp4, a fragmented stream, the even-size rule."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from vidforce.video_io import Mp4Writer, to_uint8_frames


def test_to_uint8_frames_maps_the_pixel_range():
    video = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    frames = to_uint8_frames(video)
    assert frames.shape == (4, 2, 2, 3) and frames.dtype == np.uint8
    assert frames[:, 0, 0, 0].tolist() == [0, 128, 255, 255]                 # (x + 1) * 127.5, rounded, clipped


def blocks(n=6, size=32):
    """Flat colour blocks (8x8, so chroma subsampling keeps them) that change per frame."""
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (n, size // 8, size // 8, 3), dtype=np.uint8)
    return tiles.repeat(8, axis=1).repeat(8, axis=2)


def atoms(path):
    """Top-level mp4 box types in file order."""
    data, out, i = path.read_bytes(), [], 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i:i + 4], "big")
        out.append(data[i + 4:i + 8].decode("latin-1"))
        i += size if size >= 8 else len(data)
    return out


def mean_error(path, frames):
    decoded = iio.imread(path)
    assert decoded.shape == frames.shape
    return np.abs(decoded.astype(int) - frames.astype(int)).mean()


def test_plain_mp4_keeps_its_crf(tmp_path):
    """crf 4 (the mini world's data) decodes close to the input; crf 40 visibly worse (the argument is used)."""
    frames = blocks()
    with Mp4Writer(tmp_path / "a.mp4", 8, crf=4, stream=False) as w:
        w.append(frames[:2])
        w.append(frames[2:])
    assert w.frames == 6 and "moof" not in atoms(tmp_path / "a.mp4")
    with Mp4Writer(tmp_path / "b.mp4", 8, crf=40, stream=False) as w:
        w.append(frames)
    near, coarse = mean_error(tmp_path / "a.mp4", frames), mean_error(tmp_path / "b.mp4", frames)
    assert near < 4.0 and coarse > 3 * near                      # ~2.9 (yuv420p rounding) vs ~12 levels


def test_stream_mp4_is_fragmented_and_plays(tmp_path):
    frames = blocks(n=16)
    with Mp4Writer(tmp_path / "s.mp4", 8) as w:
        w.append(frames)
    kinds = atoms(tmp_path / "s.mp4")
    assert kinds[:2] == ["ftyp", "moov"] and kinds.count("moof") >= 2          # a keyframe (fragment) per second
    assert iio.imread(tmp_path / "s.mp4").shape == frames.shape


def test_odd_size_raises(tmp_path):
    with Mp4Writer(tmp_path / "o.mp4", 8) as w, pytest.raises(ValueError, match="even height and width"):
        w.append(np.zeros((1, 5, 4, 3), np.uint8))
