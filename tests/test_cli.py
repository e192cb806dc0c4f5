"""``vidforce`` dispatches its subcommands to the entries in ``vidforce.cli`` (arguments in, messages out)."""
import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vidforce
from vidforce.cli import _parser, main, parse_args, parse_size
from vidforce.config import load, to_yaml
from vidforce.models.loading import Checkpoint, save_safetensors
from vidforce.video_io import Mp4Writer
from tests.models.helpers import tiny_wan

ROOT = Path(__file__).resolve().parents[1]


def test_convert_through_the_command_line(tmp_path, capsys):
    save_safetensors(tiny_wan(), tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(tmp_path / "in.safetensors"), str(out), "--to", "diffusers", "--dtype", "bf16"]) == 0
    assert f"-> diffusers names in {out}" in capsys.readouterr().out
    assert Checkpoint(out).names == "diffusers"


def test_drift_of_a_missing_video_is_one_error_line(tmp_path, capsys):
    assert main(["drift", str(tmp_path / "gone.mp4"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vidforce drift: error:") and "gone.mp4" in err[0]


def test_parse_size():
    assert parse_size("5GB") == 5 * 10 ** 9 and parse_size("512MiB") == 512 * 2 ** 20
    assert parse_size("1000") == 1000 and parse_size("0") == 0
    with pytest.raises(ValueError, match="max-shard-size"):
        parse_size("lots")


# ---- the parser as a new user meets it: help, version, overrides after flags, README command lines ----

def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = tuple(subparsers(_parser()))


def test_top_level_help_lists_the_real_commands_in_plain_text(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0 and "bench" not in text and "``" not in text and "`" not in text
    assert set(COMMANDS) == {"train", "generate", "serve", "drift", "export", "convert", "plot", "mini"}
    assert all(name in text for name in COMMANDS)


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"vidforce {vidforce.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_for_every_argument(command, capsys):
    parser = subparsers(_parser())[command]
    for action in parser._actions:
        assert action.help, f"vidforce {command}: {action.dest} has no help"
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0 and f"usage: vidforce {command}" in text and "`" not in text
    shown = [a for a in parser._actions if a.help != argparse.SUPPRESS and a.dest != "help"]
    assert all((a.option_strings[0] if a.option_strings else a.dest) in text for a in shown)


def test_convert_help_shows_its_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = capsys.readouterr().out
    assert all(word in text for word in ("input", "output", "--to", "--max-shard-size", "--checkpoint-key"))


def test_train_dry_run_takes_overrides_after_the_flag(capsys):
    assert main(["train", str(ROOT / "configs/tiny/dmd.yaml"), "train.seed=5", "--dry-run", "train.steps=9"]) == 0
    out = capsys.readouterr().out
    assert "steps: 9" in out and "seed: 5" in out


@pytest.mark.parametrize("argv,flag", [(["drift", "v.mp4", "--out", "o", "--window", "0"], "--window"),
                                       (["drift", "v.mp4", "--out", "o", "--window", "nan"], "--window"),
                                       (["plot", "r", "--keys", "k", "--out", "p.png", "--smooth", "0"], "--smooth"),
                                       (["generate", "--config", "c", "--out", "o.mp4", "--fps", "-5"], "--fps"),
                                       (["train", "c.yaml", "--dry-rnu"], "--dry-rnu")])
def test_a_usage_error_is_one_line_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and flag in err[0]
    assert err[0].startswith(f"vidforce {argv[0]}: error: ") and err[0].endswith(f"(see vidforce {argv[0]} --help)")


def readme_commands() -> list[str]:
    """The command lines of README.md's bash blocks (continuations joined, comments dropped, ``&&`` split)."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    words = [shlex.split(line, comments=True) for line in lines]
    return [shlex.join(part) for line in words for part in _split(line, "&&") if part]


def _split(words: list[str], separator: str) -> list[list[str]]:
    parts = [[]]
    for word in words:
        if word == separator:
            parts.append([])
        else:
            parts[-1].append(word)
    return parts


def test_readme_command_lines_parse():
    commands = readme_commands()
    vidforce_lines = [c for c in commands if c.split()[0].endswith("vidforce")]
    tools = [c.split()[1] for c in commands if c.startswith("python tools/")]
    assert len(vidforce_lines) >= 8 and len(tools) >= 3
    for line in vidforce_lines:
        argv = shlex.split(line)[1:]
        args = parse_args(argv)                                # SystemExit (exit status 2) on a wrong line
        assert all("=" in o for o in getattr(args, "overrides", [])), line
        for path in [getattr(args, "config", None)] + [a for a in argv if a.startswith("configs/")]:
            assert path is None or (ROOT / path).is_file(), f"{line}: no {path}"
    for other in (c for c in commands if c not in vidforce_lines and not c.startswith("python tools/")):
        assert other.startswith((".venv/bin/python -m pytest", "bash tools/")), other
        assert other.startswith(".venv/") or (ROOT / other.split()[1]).is_file(), other
    for tool in sorted(set(tools)):
        run = subprocess.run([sys.executable, tool, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "usage:" in run.stdout, f"{tool}: {run.stderr[-500:]}"


# ---- one-line errors and the output-directory rule ----

def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vidforce {command}: error: "), err
    return err[0]


def test_malformed_yaml_is_one_line_with_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 3\n   run_dir: x\n")
    assert main(["train", str(bad), "--dry-run"]) == 2
    assert f"{bad}:3:" in one_error_line(capsys, "train")


def test_corrupt_safetensors_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    assert main(["convert", str(tmp_path / "bad.safetensors"), str(tmp_path / "o.safetensors")]) == 2
    line = one_error_line(capsys, "convert")
    assert f"{tmp_path / 'bad.safetensors'} is not a readable safetensors file: " in line


def test_drift_onto_an_existing_file_is_one_line(tmp_path, capsys):
    video, out = write_video(tmp_path / "v.mp4"), tmp_path / "report"
    out.write_text("")
    assert main(["drift", str(video), "--out", str(out)]) == 2
    assert f"{out} is a file" in one_error_line(capsys, "drift")


def test_export_onto_a_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "o.safetensors").mkdir()
    assert main(["export", str(fake_run(tmp_path / "run")), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "o.safetensors is a directory" in one_error_line(capsys, "export")


def write_video(path: Path) -> Path:
    frames = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    with Mp4Writer(path, 8) as w:
        w.append(frames)
    return path


def fake_run(run: Path) -> Path:
    """A run directory ``vidforce export`` reads: a checkpoint whose EMA holds a tiny model."""
    step = run / "checkpoints" / "step_000001"
    step.mkdir(parents=True)
    torch.save({"step": 1, "world_size": 1, "stages": {"generator": 0}, "ema": {"shadow": tiny_wan().state_dict()}},
               step / "trainer.pt")
    (step / "config.yaml").write_text(to_yaml(load(None)))
    (run / "checkpoints" / "latest").write_text("step_000001\n")
    return run


def test_every_command_creates_a_missing_output_directory(tmp_path, capsys):
    new = tmp_path / "new" / "dir"
    assert main(["drift", str(write_video(tmp_path / "v.mp4")), "--out", str(new / "drift")]) == 0
    assert main(["export", str(fake_run(tmp_path / "run")), "--out", str(new / "e.safetensors")]) == 0
    assert main(["convert", str(new / "e.safetensors"), str(new / "c" / "c.safetensors")]) == 0
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss/generator": 1.0}\n')
    assert main(["plot", str(tmp_path / "run"), "--keys", "loss/generator", "--out", str(new / "p" / "p.png")]) == 0
    assert all((new / f).is_file() for f in ("drift/drift.json", "e.safetensors", "c/c.safetensors", "p/p.png"))
    # generate: tests/test_generate.py::test_a_missing_output_directory_is_created


def test_a_closed_stdout_ends_quietly(tmp_path):
    """``vidforce train CFG --dry-run | head -1``: no BrokenPipeError traceback."""
    cmd = f"{shlex.quote(sys.executable)} -m vidforce.cli train configs/tiny/dmd.yaml --dry-run | head -1"
    run = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.stdout == "model:\n" and "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr
