"""``vidforce`` dispatches its subcommands to the entries in ``vidforce.cli`` (arguments in, messages out)."""
import pytest

from vidforce.cli import main, parse_size
from vidforce.models.loading import Checkpoint, save_safetensors
from tests.models.helpers import tiny_wan


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
