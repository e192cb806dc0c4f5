"""Rank liveness for multi-process training: a dead or frozen rank ends the whole job with its name.

Every rank of a world larger than one runs a ``RankWatchdog`` on its own client of the rendezvous store
(``MASTER_ADDR:MASTER_PORT``, the ``TCPStore`` every launcher here sets up):

- a heartbeat thread adds 1 to ``beat/<rank>`` every ``interval_s`` and ``start`` publishes ``who/<rank>`` =
  ``host:pid`` once;
- the main thread calls ``progress(where)`` at each phase of the loop (a turn, a checkpoint, a hook);
- a watch thread ends the process (``os._exit(EXIT_HUNG)``) when no progress came for ``timeout_s``
  (``train.dist_timeout_s``): a rank frozen or gone makes a collective hang, under NCCL silently;
- ``failure(err)`` turns an error of a collective (gloo reports a closed peer at once) into a
  ``RankFailure`` naming the ranks whose heartbeat stopped.

Either way the message names the silent ranks (host and pid), the phase and the last checkpoint, and the
process exits non-zero; the launcher of each node then ends its other ranks. The process group's own
timeout is set ``GRACE_S`` longer, so this message comes first.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
import threading
import time
from typing import Callable

import torch.distributed as tdist

EXIT_HUNG = 3        # exit status when the watch thread ends a hung process
GRACE_S = 60         # the process group's timeout exceeds train.dist_timeout_s by this much


class RankFailure(RuntimeError):
    """Another rank stopped responding (its heartbeat ended)."""


def connect(timeout_s: float) -> tdist.Store:
    """A fresh client of the rendezvous store (``MASTER_ADDR`` / ``MASTER_PORT``), keys under ``vidforce/``."""
    store = tdist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                           timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
    return tdist.PrefixStore("vidforce/", store)


def silent_ranks(read: Callable[[int], int | None], world: int, wait_s: float) -> list[int]:
    """Ranks whose beat counter did not move over ``wait_s`` seconds (or cannot be read: ``read`` -> None)."""
    before = [read(r) for r in range(world)]
    time.sleep(wait_s)
    after = [read(r) for r in range(world)]
    return [r for r in range(world) if before[r] is None or after[r] is None or after[r] == before[r]]


class RankWatchdog:
    """Heartbeat, hang watch and failure diagnosis of one rank (see the module docstring)."""

    def __init__(self, store: tdist.Store, rank: int, world: int, timeout_s: float, interval_s: float = 1.0,
                 checkpoint: Callable[[], str] = lambda: "none", exit_fn: Callable[[int], None] = os._exit):
        self.store, self.rank, self.world = store, rank, world
        self.timeout_s, self.interval_s = timeout_s, interval_s
        self.checkpoint, self.exit_fn = checkpoint, exit_fn
        self.where, self.last = "start-up", time.monotonic()
        self.lock = threading.Lock()         # the store client is shared by both threads
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> RankWatchdog:
        with self.lock:
            self.store.set(f"who/{self.rank}", f"{socket.gethostname()}:{os.getpid()}")
        for target in (self._beat, self._watch):
            thread = threading.Thread(target=target, daemon=True, name=f"vidforce-{target.__name__[1:]}")
            thread.start()
            self.threads.append(thread)
        return self

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def progress(self, where: str) -> None:
        """The main thread reached ``where`` (e.g. ``"step 12, critic turn"``)."""
        self.where, self.last = where, time.monotonic()

    def _read(self, rank: int) -> int | None:
        try:
            with self.lock:
                return int(self.store.add(f"beat/{rank}", 0))
        except Exception:        # noqa: BLE001 (store host gone: that rank is named as silent)
            return None

    def _who(self, rank: int) -> str:
        try:
            with self.lock:
                return self.store.get(f"who/{rank}").decode()
        except Exception:        # noqa: BLE001
            return "unreachable"

    def _beat(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                with self.lock:
                    self.store.add(f"beat/{self.rank}", 1)
            except Exception:    # noqa: BLE001 (the store host died; the watch thread reports it)
                pass

    def _watch(self) -> None:
        while not self.stop.wait(min(self.interval_s, self.timeout_s / 4)):
            idle = time.monotonic() - self.last
            if idle > self.timeout_s:
                message = self.describe(f"no progress for {idle:.0f} s", self.silent_others())
                print(f"vidforce: {message}", file=sys.stderr, flush=True)
                self.exit_fn(EXIT_HUNG)
                return

    def silent_others(self) -> list[int] | None:
        """Other ranks whose heartbeat stopped; ``None`` when the store itself is unreachable."""
        silent = silent_ranks(self._read, self.world, 3 * self.interval_s)
        return None if self.rank in silent else silent

    def describe(self, what: str, silent: list[int] | None) -> str:
        """``what`` happened at the current phase: the silent ranks, their hosts, and the last checkpoint."""
        if silent is None:
            cause = (f"the rendezvous store at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                     "is unreachable, so rank 0 (or the launcher that hosts it) stopped responding")
        elif silent:
            cause = ", ".join(f"rank {r} ({self._who(r)})" for r in silent) + " stopped responding"
        else:
            cause = "every other rank still beats (the failure is elsewhere: see the other ranks' logs)"
        return (f"rank {self.rank}: {what} during {self.where}: {cause}; exiting. Last checkpoint: "
                f"{self.checkpoint()} (resume with train.resume=auto, on any number of ranks)")

    def failure(self, err: BaseException) -> BaseException:
        """The error to raise for ``err`` from the main thread: a ``RankFailure`` when another rank is silent."""
        silent = self.silent_others()
        if silent == []:
            return err
        first = str(err).splitlines()[0] if str(err) else ""
        return RankFailure(self.describe(f"{type(err).__name__}: {first}", silent))
