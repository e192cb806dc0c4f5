"""tools/setup.sh: the plan of pip commands (torch's index choice) and the stamp's idempotence, without
installing anything (``--print-plan`` / ``VIDFORCE_SETUP_DRY_RUN=1``)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from tests.train.helpers import ROOT

SCRIPT = ROOT / "tools" / "setup.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TOOLS = ("dirname", "sha1sum", "cut", "grep", "env", "touch")   # what the script runs besides python


def torch_line(plan: str) -> str:
    """The plan's torch pip command."""
    [line] = [x for x in plan.splitlines() if x.startswith("+") and "torch==" in x]
    return line


@pytest.fixture
def run_setup(tmp_path):
    """Run setup.sh with a bare PATH (only TOOLS, plus a fake nvidia-smi on request), pip's config files
    disabled and no PIP_* variables unless given, and a venv under tmp_path that does not exist."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))

    def run(*args, gpu=False, pip_env=None, env=None, keep_machine_pip=False):
        if gpu:
            (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
            (bin_dir / "nvidia-smi").chmod(0o755)
        dropped = ("VIDFORCE_",) if keep_machine_pip else ("VIDFORCE_", "PIP_")
        base = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        if not keep_machine_pip:
            base["PIP_CONFIG_FILE"] = os.devnull
        base.update(PATH=str(bin_dir), PYTHON=sys.executable, VIDFORCE_VENV=str(tmp_path / "venv"),
                    **(pip_env or {}), **(env or {}))
        done = subprocess.run([shutil.which("bash"), str(SCRIPT), *args], env=base, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


def test_no_gpu_and_no_pip_index_gets_the_cpu_build(run_setup, tmp_path):
    plan = run_setup("--print-plan")
    assert f"--index-url {CPU_INDEX} torch==2.13.0" in torch_line(plan)
    assert "dry run" in plan.splitlines()[0] and "+ " + sys.executable + " -m venv" in plan
    assert not (tmp_path / "venv").exists()                      # a dry run creates nothing


@pytest.mark.parametrize("pip_env", [{"PIP_EXTRA_INDEX_URL": "file:///srv/mirror/simple"},
                                     {"PIP_INDEX_URL": "https://mirror.example/simple"},
                                     {"PIP_FIND_LINKS": "/srv/wheels"}])
def test_a_configured_pip_index_is_left_to_decide(run_setup, pip_env):
    line = torch_line(run_setup(pip_env=pip_env, env={"VIDFORCE_SETUP_DRY_RUN": "1"}))
    assert "--index-url" not in line and line.endswith("install torch==2.13.0")


def test_a_gpu_machine_gets_pip_default(run_setup):
    assert "--index-url" not in torch_line(run_setup("--print-plan", gpu=True))


@pytest.mark.parametrize("index, expected", [("https://download.pytorch.org/whl/cu128",
                                              "--index-url https://download.pytorch.org/whl/cu128 torch=="),
                                             ("", "install torch==")])
def test_vidforce_torch_index_overrides(run_setup, index, expected):
    plan = run_setup("--print-plan", env={"VIDFORCE_TORCH_INDEX": index, "VIDFORCE_TORCH": "2.12.1"})
    assert expected in torch_line(plan) and torch_line(plan).endswith("torch==2.12.1")


def test_this_machine_keeps_its_pip_configuration(run_setup):
    """CI runs the real script on this machine: where pip is configured with a mirror, no CPU index."""
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                            text=True).stdout
    configured = any(key in config for key in ("index-url=", "find-links=", "no-index="))
    line = torch_line(run_setup("--print-plan", keep_machine_pip=True))
    if shutil.which("nvidia-smi") or configured:
        assert "--index-url" not in line
    else:
        assert f"--index-url {CPU_INDEX}" in line


def test_progress_is_announced_and_big_installs_are_not_quiet(run_setup):
    plan = run_setup("--print-plan").splitlines()
    steps = [x for x in plan if x.startswith("==> ")]
    commands = [x for x in plan if x.startswith("+ ")]
    assert len(steps) == len(commands) == 7                      # venv, pip, torch, deps, deepspeed, -e, stamp
    for name in ("torch==", "deepspeed=="):
        [command] = [x for x in commands if name in x]
        assert " -q " not in command


def test_a_real_run_runs_the_plan_then_stamps(run_setup, tmp_path):
    """A real run against a stand-in venv python that logs its arguments (imports fail, pip succeeds):
    every planned command runs, in order, the stamp is written, and a second run runs nothing."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" != "-c" ]\n')
    (bin_dir / "python").chmod(0o755)
    plan = [x[2:].replace(str(bin_dir / "python") + " ", "") for x in run_setup("--print-plan").splitlines()
            if x.startswith("+ ") and "touch" not in x]
    log.write_text("")
    out = run_setup()
    installs = [c for c in log.read_text().splitlines() if c.startswith("-m pip install")]
    assert installs == [c.replace("env DS_BUILD_OPS=0 ", "") for c in plan] and len(installs) == 5
    assert installs[1].endswith(f"--index-url {CPU_INDEX} torch==2.13.0") and "==> install torch" in out
    assert list((tmp_path / "venv").glob(".vidforce-setup-*"))
    log.write_text("")
    assert run_setup() == "" and log.read_text() == ""


def test_stamp_makes_a_second_run_exit_at_once(run_setup, tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    digest = hashlib.sha1((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    (venv / f".vidforce-setup-{digest}").touch()
    assert run_setup() == ""                                     # a real run: nothing printed, nothing run
    assert "a real run stops here" in run_setup("--print-plan")


def test_unknown_argument_is_refused():
    done = subprocess.run(["bash", str(SCRIPT), "--install-everything"], capture_output=True, text=True)
    assert done.returncode == 2 and "--print-plan" in done.stderr
