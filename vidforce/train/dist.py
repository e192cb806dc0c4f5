"""Process-group helpers. A single process is a DeepSpeed world of size 1: there is one code path.

``init`` fills ``MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE / LOCAL_RANK`` when no launcher did (one
process; MPI launchers are left to DeepSpeed's MPI discovery, which needs mpi4py), then
``deepspeed.init_distributed`` with gloo on CPU or nccl on CUDA. Collectives (``broadcast_ints``,
``reduce_mean``, ``reduce_max``, ``barrier``) also work before ``init`` in a world of one.
"""
from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as tdist

from vidforce.train.watchdog import GRACE_S

_STATE = {"device": torch.device("cpu")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
MPI_LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK")


def local_rank() -> int:
    """This process's rank on its host: ``LOCAL_RANK`` (deepspeed / torchrun launchers) or the MPI variable."""
    for var in ("LOCAL_RANK", *MPI_LOCAL_RANK_VARS):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def pick_device(choice: str) -> torch.device:
    """``train.device``: auto (CUDA when available) | cpu | cuda; CUDA uses ``cuda:<local rank>``."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", local_rank())
    elif choice == "cpu":
        return torch.device("cpu")
    else:
        raise ValueError(f"train.device must be auto, cpu or cuda, got {choice!r}")


def init(device: torch.device, timeout_s: int) -> None:
    """Join (or create) the process group: gloo on CPU, nccl on CUDA, collectives timing out after
    ``timeout_s + watchdog.GRACE_S``. Idempotent. Without launcher variables
    (``RANK`` or an MPI launcher's) this process is a world of one on a free local port."""
    if "RANK" not in os.environ and not any(v in os.environ for v in MPI_RANK_VARS):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0")
    _STATE["device"] = device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if "OMP_NUM_THREADS" not in os.environ:     # share the cores between this host's ranks
            local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    if tdist.is_available() and tdist.is_initialized():
        return
    import deepspeed  # noqa: PLC0415 (heavy; only training needs it)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                               timeout=datetime.timedelta(seconds=timeout_s + GRACE_S))


def _active() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def data_rank(sequence_parallel: int) -> int:
    """This rank's data shard: the ``train.sequence_parallel`` consecutive ranks of a group share one."""
    return rank() // sequence_parallel


def data_world(sequence_parallel: int) -> int:
    """Number of data shards (sequence-parallel groups)."""
    return world_size() // sequence_parallel


def broadcast_ints(values: list[int]) -> list[int]:
    """Rank 0's ``values`` on every rank (the same list back in a world of one)."""
    if not _active():
        return [int(v) for v in values]
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=_STATE["device"])
    tdist.broadcast(t, src=0)
    return [int(v) for v in t.tolist()]


def _reduce(metrics: dict[str, float], op) -> dict[str, float]:
    if not _active() or not metrics:
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_STATE["device"])
    tdist.all_reduce(t, op=op)
    return dict(zip(keys, t.tolist()))


def reduce_mean(metrics: dict[str, float]) -> dict[str, float]:
    """Mean over ranks of each value (every rank passes the same keys, in any order)."""
    total = _reduce(metrics, tdist.ReduceOp.SUM)
    return {k: v / world_size() for k, v in total.items()}


def reduce_max(metrics: dict[str, float]) -> dict[str, float]:
    """Max over ranks of each value (peak memory, slowest step time)."""
    return _reduce(metrics, tdist.ReduceOp.MAX)


def barrier() -> None:
    if _active():
        tdist.barrier()


def shutdown() -> None:
    """Wait for every rank, then destroy the process group (end of a CLI run)."""
    if tdist.is_available() and tdist.is_initialized():
        barrier()
        tdist.destroy_process_group()
