"""The one mp4 writer: pixel mapping, a near-lossless plain mp4, a fragmented stream, the even-size rule, the
writer thread (every frame, the same file, errors on the caller's next call, a bounded queue)."""
import re
import subprocess
import sys
import threading
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from vidforce.video_io import QUEUE_DEPTH, Mp4Writer, ffmpeg_exe, to_uint8_frames


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


def test_an_ffmpeg_that_cannot_write_is_an_error(tmp_path):
    """Once an output ffmpeg cannot open (a directory), once ffmpeg dying mid-stream (a broken pipe): OSError."""
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(OSError, match=r"ffmpeg failed to write .*d\.mp4 \(exit status [1-9]\d*\): .*directory"):
        with Mp4Writer(tmp_path / "d.mp4", 8) as w:
            w.append(blocks(n=2))
    w = Mp4Writer(tmp_path / "k.mp4", 8)
    w.append(blocks(n=2))
    w._proc.kill()
    w._proc.wait()
    with pytest.raises(OSError, match=r"ffmpeg failed to write .*k\.mp4 \(exit status -9\)"):
        for _ in range(100):                                     # the pipe buffer fills, then the write fails
            w.append(blocks(n=16))


def test_frame_rate_and_frames_are_checked(tmp_path):
    for fps in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="frame rate must be > 0 and finite"):
            Mp4Writer(tmp_path / "a.mp4", fps)
    with Mp4Writer(tmp_path / "a.mp4", 8) as w, pytest.raises(ValueError, match="must be uint8"):
        w.append(np.zeros((1, 4, 4, 3), np.float32))


def test_a_missing_parent_directory_is_created(tmp_path):
    with Mp4Writer(tmp_path / "new" / "dir" / "a.mp4", 8) as w:
        w.append(blocks(n=4))
    assert iio.imread(tmp_path / "new" / "dir" / "a.mp4").shape == (4, 32, 32, 3)


def test_without_imageio_ffmpeg_the_ffmpeg_on_path_is_used_else_one_line(tmp_path, monkeypatch):
    """imageio-ffmpeg missing (e.g. a GPU image without it): an ``ffmpeg`` on PATH writes; neither: OSError."""
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)           # import raises ImportError
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert ffmpeg_exe() == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(OSError, match=r"^writing mp4 needs ffmpeg: pip install imageio-ffmpeg, or put an ffmpeg on PATH$"):
        ffmpeg_exe()


def test_many_appends_write_every_frame_as_a_synchronous_pipe_would(tmp_path):
    """The thread changes when ffmpeg reads, not what: 40 appends of 3 frames from one reused array decode to the
    frames of the same bytes piped to the same ffmpeg command in one synchronous write (and count 120)."""
    frames = blocks(n=120)
    buffer = np.empty_like(frames[:3])
    with Mp4Writer(tmp_path / "t.mp4", 8) as w:
        for i in range(0, 120, 3):
            buffer[:] = frames[i:i + 3]                          # append copies: the caller may reuse its array
            w.append(buffer)
    reference = Mp4Writer(tmp_path / "r.mp4", 8)
    subprocess.run(reference._command(32, 32), input=frames.tobytes(), check=True, capture_output=True)
    written = iio.imread(tmp_path / "t.mp4")
    assert w.frames == 120 and written.shape == frames.shape
    assert np.array_equal(written, iio.imread(tmp_path / "r.mp4"))
    assert np.abs(written.astype(int) - frames.astype(int)).mean() < 4.0


def test_a_failure_after_the_last_append_is_raised_by_close_once(tmp_path):
    """ffmpeg killed while the thread writes: close raises the one-line OSError; the writer is then closed."""
    w = Mp4Writer(tmp_path / "k.mp4", 8)
    w.append(blocks(n=2))
    w._proc.kill()
    w._proc.wait()
    w.append(blocks(n=2))                                        # queued; the thread meets the broken pipe
    with pytest.raises(OSError, match=r"^ffmpeg failed to write .*k\.mp4 \(exit status -9\): no message$") as err:
        w.close()
    assert "\n" not in str(err.value)
    w.close()                                                    # nothing left to raise


def test_append_blocks_once_the_queue_is_full(tmp_path, monkeypatch):
    """An "ffmpeg" that never reads: the thread blocks on its first write, QUEUE_DEPTH more appends queue, and the
    next one waits -- memory stays bounded. Killing it unblocks that append and the one after raises."""
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setattr("vidforce.video_io.ffmpeg_exe", lambda: str(fake))
    w = Mp4Writer(tmp_path / "b.mp4", 8)
    chunk = np.zeros((8, 256, 256, 3), np.uint8)                # 1.5 MB: more than a pipe holds
    done, errors = [], []

    def appending():
        try:
            for _ in range(QUEUE_DEPTH + 3):
                w.append(chunk)
                done.append(1)
        except OSError as err:
            errors.append(err)
    helper = threading.Thread(target=appending, daemon=True)
    helper.start()
    deadline = time.time() + 10
    while len(done) < QUEUE_DEPTH + 1 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    assert len(done) == QUEUE_DEPTH + 1 and helper.is_alive()   # one in the thread's write, QUEUE_DEPTH queued
    w._proc.kill()
    helper.join(timeout=10)
    assert not helper.is_alive() and len(done) == QUEUE_DEPTH + 2
    assert len(errors) == 1 and re.match(r"ffmpeg failed to write .*b\.mp4 \(exit status -9\): no message$",
                                         str(errors[0]))
    w.close()
