"""tools/mini_lease.sh: one device command of the mini recipe, run here on the CPU smoke recipe."""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "mini_lease.sh"


def lease(root: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    inherited = {k: v for k, v in os.environ.items()      # not this process's rendezvous: its port may be taken
                 if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env = {**inherited, "OUT": str(out), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--smoke", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_lease_fetches_exports_and_a_carried_stage_is_not_rerun(tmp_path):
    first, out = tmp_path / "first", tmp_path / "out1"
    first.mkdir()
    done = lease(first, out, "--fetch", "teacher", "world,teacher")
    assert done.returncode == 0, done.stdout + done.stderr
    shards = sorted(p.name for p in out.glob("teacher-*.safetensors"))
    assert shards and all((out / s).stat().st_size <= 16 * 2 ** 20 for s in shards)
    with tarfile.open(out / "small.tar") as small:
        names = small.getnames()
    assert {"teacher/done.json", "world/done.json", "teacher/metrics.jsonl.gz"} <= set(names), names
    second = tmp_path / "second"                     # a fresh machine: the teacher arrives packed
    (second / "out" / "carry").mkdir(parents=True)
    with tarfile.open(second / "out" / "carry" / "teacher.tar.xz", "w:xz") as pack:
        pack.add(first / "runs" / "mini" / "teacher", "teacher")
    again = lease(second, tmp_path / "out2", "--limit", "300", "world,teacher")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "teacher: done already" in again.stdout and "teacher: running" not in again.stdout
    assert (second / "runs" / "mini" / "teacher" / "model").is_dir()


def test_lease_rejects_an_unknown_option(tmp_path):
    bad = lease(tmp_path, tmp_path / "out", "--nope", "x", "world")
    assert bad.returncode == 2 and "unknown option --nope" in bad.stderr


@pytest.mark.slow
def test_an_arm_runs_in_its_own_directory_and_comes_back_prefixed(tmp_path):
    out = tmp_path / "out"
    part = 64 * 1024                                 # the return limit, shrunk so that the shards go in parts
    arm = lease(tmp_path, out, "--run", "runs/mini-c", "--set", "teacher:train.steps=2", "--fetch", "teacher",
                "--tag", "t", "--part-bytes", str(part), "world,teacher")
    assert arm.returncode == 0, arm.stdout + arm.stderr
    assert not (tmp_path / "runs" / "mini").exists()
    assert (out / "mini-c-small-t.tar").stat().st_size <= part and not list(out.glob("small*.tar"))
    shards = sorted((tmp_path / "runs" / "mini-c" / "teacher" / "model").glob("*.safetensors"))
    assert shards and all(s.stat().st_size > part for s in shards)
    for shard in shards:                             # every part under the limit; joined, the shard itself
        name = "mini-c-teacher-" + shard.name.removeprefix("model-")
        parts = sorted(out.glob(name + ".part-*"))
        assert len(parts) >= 2 and not (out / name).exists() and all(p.stat().st_size <= part for p in parts)
        assert b"".join(p.read_bytes() for p in parts) == shard.read_bytes()
    done = (tmp_path / "runs" / "mini-c" / "teacher" / "done.json").read_text()
    assert '"set": [\n  "train.steps=2"\n ]' in done and '"steps": 2' in done
