"""The tolerant video reader: every decodable frame of a whole or a truncated fragmented mp4."""
import numpy as np
import pytest

from vidforce.diagnostics.reader import open_video
from vidforce.video_io import Mp4Writer

FPS = 8


def gradient_frames(n: int) -> np.ndarray:
    """``[n, 32, 48, 3]`` uint8 frames: a horizontal ramp whose brightness rises with time."""
    ramp = np.linspace(0, 150, 48)[None, :, None]
    return np.stack([np.broadcast_to(ramp + 2 * i, (32, 48, 3)) for i in range(n)]).astype(np.uint8)


@pytest.fixture
def fragmented(tmp_path):
    path = tmp_path / "stream.mp4"
    with Mp4Writer(path, FPS, crf=4, stream=True) as writer:
        writer.append(gradient_frames(48))
    return path


def decode(path) -> tuple[float, np.ndarray]:
    with open_video(path) as (fps, frames):
        return fps, np.stack(list(frames))


def test_whole_file_decodes_every_frame(fragmented):
    fps, decoded = decode(fragmented)
    assert fps == pytest.approx(FPS) and decoded.shape == (48, 32, 48, 3)
    assert np.abs(decoded.astype(int) - gradient_frames(48)).mean() < 2.0


def test_truncated_file_yields_the_frames_before_the_cut(fragmented, tmp_path):
    cut = tmp_path / "cut.mp4"
    data = fragmented.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    whole = decode(fragmented)[1]
    fps, prefix = decode(cut)
    assert fps == pytest.approx(FPS) and FPS <= len(prefix) < 48
    assert np.array_equal(prefix, whole[:len(prefix)])


def test_leaving_the_block_early_stops_the_stream(fragmented):
    with open_video(fragmented) as (_, frames):
        first = next(frames)
    assert first.shape == (32, 48, 3) and list(frames) == []


@pytest.mark.parametrize("content", [b"", b"not a video" * 100])
def test_unreadable_files_name_the_file(tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="bad.mp4"):
        decode(bad)
    with pytest.raises(FileNotFoundError, match="gone.mp4"):
        decode(tmp_path / "gone.mp4")
