"""Live prompts: ``LiveLines`` follows a file (or stdin) like ``tail -f``; ``generate --prompts-live`` switches at
the next chunk boundary, to the same video as a scheduled switch at that chunk."""
import io
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from vidforce.cli import main
from vidforce.live_prompts import MAX_PROMPT_CHARS, LiveLines, check_prompt
from vidforce.video_io import Mp4Writer
from tests.test_generate import write_cfg


def test_lines_appended_after_opening_arrive_once_and_complete(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("the past\n")
    live = LiveLines(str(path))
    assert live.poll() == []
    with open(path, "a") as f:
        f.write("a blue square\n\n  a dog  \nhalf a li")
    assert live.poll() == ["a blue square", "a dog"]
    with open(path, "a") as f:
        f.write("ne\n")
    assert live.poll() == ["half a line"] and live.poll() == []
    path.write_text("rewritten\n")                      # shorter than before: read again from the start
    assert live.poll() == ["rewritten"]


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path):
    live = LiveLines(str(tmp_path / "later.txt"))
    assert live.poll() == []
    (tmp_path / "later.txt").write_text("a cat\n")
    assert live.poll() == ["a cat"]
    with pytest.raises(ValueError, match="is a directory"):
        LiveLines(str(tmp_path))


def test_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a cat\n\na dog\n"))
    live = LiveLines("-")
    deadline = time.time() + 10
    got = []
    while len(got) < 2 and time.time() < deadline:
        got += live.poll()
        time.sleep(0.01)
    assert got == ["a cat", "a dog"]


def test_check_prompt():
    assert check_prompt("  a cat \n") == "a cat"
    with pytest.raises(ValueError, match="empty"):
        check_prompt(" \t")
    with pytest.raises(ValueError, match=f"at most {MAX_PROMPT_CHARS}"):
        check_prompt("a" * (MAX_PROMPT_CHARS + 1))


def _run(tmp_path, out, *argv):
    """``vidforce generate`` of 3 s from the same random weights every call."""
    torch.manual_seed(0)
    cfg = write_cfg(tmp_path)
    return main(["generate", "--config", str(cfg), "--seconds", "3", "--random-weights", "--out",
                 str(tmp_path / out), *argv])


def test_a_line_appended_while_streaming_switches_at_the_next_chunk_boundary(tmp_path, capsys, monkeypatch):
    """The line is appended once the second chunk (frames 3-5) is written, while the stream runs: it switches at
    the next chunk, frame 6 -- the same video as a schedule that switches there (0.75 s at 8 fps)."""
    live = tmp_path / "live.txt"
    live.write_text("an old line\n")
    append, written = Mp4Writer.append, []

    def appending(self, frames):
        append(self, frames)
        written.append(len(frames))
        if len(written) == 2:
            with open(live, "a") as f:
                f.write("a blue square\n")
    monkeypatch.setattr(Mp4Writer, "append", appending)
    assert _run(tmp_path, "live.mp4", "--prompt", "a red circle", "--prompts-live", str(live)) == 0
    out = capsys.readouterr().out
    assert f"live prompt from {live}: 'a blue square' (switches at the next chunk boundary)" in out
    assert "prompt switch at latent frame 6 (0.750 s): re-cached 3 frames in " in out and "'a blue square'" in out
    assert "an old line" not in out and "prompt switches 1" in out
    monkeypatch.setattr(Mp4Writer, "append", append)
    assert _run(tmp_path, "scheduled.mp4", "--schedule", "0:a red circle;0.75:a blue square") == 0
    assert "prompt switch at latent frame 6 (0.750 s)" in capsys.readouterr().out
    assert _run(tmp_path, "plain.mp4", "--prompt", "a red circle") == 0
    live_video, scheduled = iio.imread(tmp_path / "live.mp4"), iio.imread(tmp_path / "scheduled.mp4")
    plain = iio.imread(tmp_path / "plain.mp4")
    assert np.array_equal(live_video, scheduled)
    assert np.array_equal(live_video[:6], plain[:6]) and not np.array_equal(live_video[6:], plain[6:])


def test_a_bad_live_line_is_skipped_with_a_warning(tmp_path, capsys, monkeypatch):
    live = tmp_path / "live.txt"
    append = Mp4Writer.append

    def appending(self, frames):
        append(self, frames)
        if self.frames == 3:
            live.write_text("x" * (MAX_PROMPT_CHARS + 1) + "\n")
    monkeypatch.setattr(Mp4Writer, "append", appending)
    assert _run(tmp_path, "o.mp4", "--prompt", "a red circle", "--prompts-live", str(live)) == 0
    captured = capsys.readouterr()
    assert f"vidforce generate: warning: live prompt from {live} skipped: the prompt has" in captured.err
    assert "prompt switches 0" in captured.out
