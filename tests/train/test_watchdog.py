"""Rank liveness: silent ranks are found by their heartbeat, a hang ends the process naming them, and a
rank killed (or frozen) mid-run makes a 2-rank job exit non-zero, naming it, within the configured timeout."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch.distributed as tdist

from tests.train.helpers import ROOT, metrics, overrides, spawn_ranks
from vidforce.train import checkpoint
from vidforce.train.watchdog import EXIT_HUNG, RankFailure, RankWatchdog, silent_ranks


def test_silent_ranks_are_those_whose_counter_did_not_move():
    counters = {0: iter([1, 5]), 1: iter([7, 7]), 2: iter([None, 3])}
    assert silent_ranks(lambda r: next(counters[r]), 3, 0.0) == [1, 2]


def dogs(world: int, **kw) -> list[RankWatchdog]:
    store = tdist.HashStore()
    return [RankWatchdog(store, r, world, interval_s=0.05, **kw) for r in range(world)]


def test_a_stopped_heartbeat_is_named_and_a_live_one_is_not():
    a, b, c = (d.start() for d in dogs(3, timeout_s=60))
    try:
        assert a.silent_others() == []
        c.close()                                          # rank 2's threads end: its beats stop
        assert a.silent_others() == [2]
        err = a.failure(RuntimeError("Connection closed by peer\nlong trace"))
        assert isinstance(err, RankFailure)
        assert "rank 2 (" in str(err) and f":{os.getpid()})" in str(err) and "Connection closed by peer" in str(err)
    finally:
        a.close(), b.close()


def test_an_error_with_every_rank_alive_is_returned_unchanged():
    a, b = (d.start() for d in dogs(2, timeout_s=60))
    try:
        err = ValueError("a local bug")
        assert a.failure(err) is err
    finally:
        a.close(), b.close()


def test_no_progress_for_the_timeout_exits_with_the_silent_rank_named(capfd):
    codes: list[int] = []
    a, b = dogs(2, timeout_s=0.5, exit_fn=codes.append, checkpoint=lambda: "run/checkpoints/step_000004")
    b.start().close()                                      # rank 1 published who it is, then went silent
    a.start()
    a.progress("step 5, critic turn, micro-batch 0")
    deadline = time.monotonic() + 10
    while not codes and time.monotonic() < deadline:
        time.sleep(0.05)
    a.close()
    assert codes == [EXIT_HUNG]
    err = capfd.readouterr().err
    assert "no progress for" in err and "step 5, critic turn" in err and "rank 1 (" in err
    assert "run/checkpoints/step_000004" in err


def start_job(inputs, tmp_path: Path, timeout_s: int) -> tuple[list[subprocess.Popen], Path]:
    run = tmp_path / "run"
    args = [str(ROOT / "configs/tiny/dmd.yaml"),
            *overrides(inputs, run, "train.steps=500", "train.checkpoint_every=2", f"train.dist_timeout_s={timeout_s}",
                       "logging.progress=false")]
    return spawn_ranks(2, args, tmp_path), run


def wait_for_steps(procs, run: Path, n: int, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if (run / "metrics.jsonl").is_file() and len(metrics(run)) >= n:
            return
        assert all(p.poll() is None for p in procs), "a rank ended before the fault was injected"
        time.sleep(0.2)
    raise AssertionError(f"{n} steps not reached in {limit} s")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_a_rank_that_dies_or_freezes_ends_the_job_naming_it(inputs, tmp_path, fault):
    """SIGKILL closes rank 1's sockets (gloo fails at once); SIGSTOP leaves them open (the collective hangs
    and the watchdog ends rank 0 after the timeout). Either way rank 0 exits non-zero naming rank 1, in time,
    and the last checkpoint stays loadable."""
    timeout_s = 15
    procs, run = start_job(inputs, tmp_path, timeout_s)
    try:
        wait_for_steps(procs, run, 3)
        t0 = time.monotonic()
        procs[1].send_signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        code = procs[0].wait(timeout=timeout_s + 45)
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    log = (tmp_path / "rank0.log").read_text()
    assert code != 0, log[-3000:]
    assert elapsed < timeout_s + 30, f"rank 0 took {elapsed:.0f} s to exit"
    assert "rank 1 (" in log and "stopped responding" in log, log[-3000:]
    assert "Traceback" not in log.split("vidforce: rank 0:")[-1]
    if fault == "freeze":
        assert code == EXIT_HUNG and elapsed >= timeout_s
    latest = checkpoint.latest(run)
    assert latest is not None and checkpoint.read_trainer_state(latest)["step"] >= 2
