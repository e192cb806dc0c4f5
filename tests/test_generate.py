"""``vidforce generate`` as a user meets it: which weights, bad numbers, writer failures, output directories,
schedule warnings -- each an exit status and one line, never a traceback or a false "wrote"."""
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
from omegaconf import OmegaConf

from vidforce.cli import main
from vidforce.models.loading import save_safetensors
from vidforce.video_io import Mp4Writer
from tests.models.helpers import tiny_causal

OVERRIDES = ["causal.window=6", "causal.sink=0", "data.latent_height=8", "data.latent_width=8", "train.device=cpu",
             "train.precision=fp32", "schedule.denoising_steps=[1000,500]", "data.fps=8", "logging.progress=false"]


def write_cfg(tmp_path: Path, *extra: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.from_dotlist(OVERRIDES + list(extra))))
    return path


def generate(tmp_path, *argv: str, out: str = "o.mp4") -> list[str]:
    return ["generate", "--config", str(write_cfg(tmp_path)), "--prompt", "a red circle", "--seconds", "1",
            "--out", str(tmp_path / out), *argv]


def one_error_line(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vidforce generate: error: "), err
    assert all(p in err[0] for p in parts), err[0]
    return err[0]


def test_without_weights_it_refuses_and_names_the_way_out(tmp_path, capsys):
    assert main(generate(tmp_path)) == 2
    one_error_line(capsys, "no weights: give --checkpoint FILE or set model.checkpoint in", "--random-weights")
    assert not (tmp_path / "o.mp4").exists()


def test_random_weights_on_request_say_so(tmp_path, capsys):
    assert main(generate(tmp_path, "--random-weights")) == 0
    out = capsys.readouterr().out
    assert out.startswith("weights: random (--random-weights") and "wrote 9 frames" in out
    assert iio.imread(tmp_path / "o.mp4").shape == (9, 16, 16, 3)
    assert main(generate(tmp_path, "--random-weights", "--checkpoint", str(write_cfg(tmp_path)))) == 2
    one_error_line(capsys, "--checkpoint and --random-weights exclude each other")


def test_the_loaded_weights_are_named_with_where_they_came_from(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    save_safetensors(tiny_causal(), weights)
    assert main(generate(tmp_path, "--checkpoint", str(weights))) == 0
    assert capsys.readouterr().out.startswith(f"weights: {weights} (--checkpoint)\n")
    cfg = write_cfg(tmp_path, f"model.checkpoint={weights}")
    argv = ["generate", "--config", str(cfg), "--prompt", "x", "--seconds", "1", "--out", str(tmp_path / "c.mp4")]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"weights: {weights} (model.checkpoint of {cfg})\n")


@pytest.mark.parametrize("flag,value", [("--fps", "-5"), ("--fps", "0"), ("--seconds", "nan"), ("--seconds", "inf"),
                                        ("--seconds", "ten"), ("--seed", "-1")])
def test_bad_numbers_name_the_flag(tmp_path, capsys, flag, value):
    """``--fps -5`` used to print "wrote 3 frames" with exit status 0 and no file."""
    with pytest.raises(SystemExit) as stop:
        main(generate(tmp_path, "--random-weights", flag, value))
    assert stop.value.code == 2
    one_error_line(capsys, f"argument {flag}: ", repr(value))
    assert not (tmp_path / "o.mp4").exists()


def test_a_writer_failure_is_an_error_not_a_success(tmp_path, capsys, monkeypatch):
    """ffmpeg dies after the first chunk: exit status 2, one line, no "wrote"."""
    append = Mp4Writer.append

    def dying(self, frames):
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        append(self, frames)

    monkeypatch.setattr(Mp4Writer, "append", dying)
    assert main(generate(tmp_path, "--random-weights", "--seconds", "4")) == 2
    captured = capsys.readouterr()
    assert "wrote" not in captured.out and "Traceback" not in captured.err
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vidforce generate: error: ffmpeg failed to write") and "o.mp4" in err[0]


def test_an_interrupt_keeps_every_frame_appended_before_it(tmp_path, capsys, monkeypatch):
    """Ctrl-C or SIGTERM (its handler raises KeyboardInterrupt) as the third chunk reaches the writer: exit status
    130, and the finalised mp4 holds exactly the frames of the two appends before it, the count printed."""
    append, appended = Mp4Writer.append, []

    def interrupted(self, frames):
        if len(appended) == 2:
            raise KeyboardInterrupt
        append(self, frames)
        appended.append(len(frames))

    monkeypatch.setattr(Mp4Writer, "append", interrupted)
    assert main(generate(tmp_path, "--random-weights", "--seconds", "4")) == 130
    assert f"stopped early: wrote {sum(appended)} frames to " in capsys.readouterr().out
    assert appended == [3, 3] and iio.imread(tmp_path / "o.mp4").shape[0] == 6


@pytest.mark.parametrize("out,message", [("d.mp4", "is a directory"), ("f/o.mp4", "is a file, not a directory"),
                                         ("o.avi", "--out must end in .mp4")])
def test_unwritable_outputs_fail_before_any_model_is_built(tmp_path, capsys, monkeypatch, out, message):
    (tmp_path / "d.mp4").mkdir()
    (tmp_path / "f").write_text("")
    monkeypatch.setattr("vidforce.models.build.build_generator", lambda *a: pytest.fail("built the model"))
    assert main(generate(tmp_path, "--random-weights", out=out)) == 2
    one_error_line(capsys, message)


def test_no_ffmpeg_fails_before_any_model_is_built(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr("vidforce.models.build.build_generator", lambda *a: pytest.fail("built the model"))
    assert main(generate(tmp_path, "--random-weights")) == 2
    one_error_line(capsys, "writing mp4 needs ffmpeg")
    assert not (tmp_path / "o.mp4").exists()


def test_a_missing_output_directory_is_created(tmp_path):
    assert main(generate(tmp_path, "--random-weights", out="new/dir/o.mp4")) == 0
    assert iio.imread(tmp_path / "new/dir/o.mp4").shape[0] == 9


def test_schedule_entries_past_the_end_warn_in_one_line(tmp_path, capsys):
    argv = ["generate", "--config", str(write_cfg(tmp_path)), "--schedule", "0:a red circle;0.5:a dog;5:a cat;9:a cow",
            "--seconds", "1", "--out", str(tmp_path / "o.mp4"), "--random-weights"]
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vidforce generate: warning: prompt schedule entries after the video's end (1.125 s) are never "
                   "shown: 5 s ('a cat'), 9 s ('a cow')"]


def test_a_training_run_as_checkpoint_names_the_export_command(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000004").mkdir(parents=True)
    (run / "checkpoints" / "step_000004" / "trainer.pt").write_bytes(b"")
    (run / "checkpoints" / "latest").write_text("step_000004\n")
    assert main(generate(tmp_path, "--checkpoint", str(run))) == 2
    one_error_line(capsys, f"run `vidforce export {run} --out FILE.safetensors`")


@pytest.mark.parametrize("argv,message", [
    (["--checkpoint", "/nonexistent.safetensors"], "--checkpoint not found"),
    (["causal.windw=3"], "causal.windw"),
    (["--prompt", "x", "--schedule", "0:y"], "give exactly one of --prompt, --prompts-file, --schedule"),
])
def test_bad_input_fails_before_any_model_is_built(tmp_path, argv, message, capsys, monkeypatch):
    monkeypatch.setattr("vidforce.models.build.build_generator", lambda *a: pytest.fail("built the model"))
    base = generate(tmp_path, "--random-weights") if "--checkpoint" not in argv else generate(tmp_path)
    if "--prompt" in argv:
        del base[base.index("--prompt"):base.index("--prompt") + 2]
    assert main(base + argv) == 2
    one_error_line(capsys, message)


def test_overrides_may_follow_the_flags(tmp_path, capsys):
    argv = ["generate", "causal.window=9", "--config", str(write_cfg(tmp_path)), "--prompt", "x", "--seconds", "1",
            "--out", str(tmp_path / "o.mp4"), "--random-weights", "causal.windw=3"]
    assert main(argv) == 2
    one_error_line(capsys, "causal.windw")
