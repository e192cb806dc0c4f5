"""Shared helpers of the vidforce benchmarks (attention, streaming, training).

Timing is the median of many runs after a warm-up: ``triton.testing.do_bench`` on CUDA when Triton is
importable (CUDA events, L2 flushed between runs), else CUDA events around each run, else (CPU) a wall
clock. Each bench prints a markdown table last and writes the full results as JSON under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

GIB = 1024 ** 3


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--out DIR``, ``--quick``, ``--device``, ``--warmup-ms``, ``--rep-ms`` (shared by every bench)."""
    parser.add_argument("--out", default="bench_out", help="directory for the JSON results")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and shorter timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup-ms", type=float, default=None, help="warm-up per measurement (ms)")
    parser.add_argument("--rep-ms", type=float, default=None, help="timed repetitions per measurement (ms)")
    return parser


def budget(args: argparse.Namespace) -> tuple[float, float]:
    """Warm-up and repetition budgets in ms (``--quick`` shortens the defaults)."""
    warm = args.warmup_ms if args.warmup_ms is not None else (10.0 if args.quick else 25.0)
    rep = args.rep_ms if args.rep_ms is not None else (40.0 if args.quick else 100.0)
    return warm, rep


def parse_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _do_bench():
    try:
        from triton.testing import do_bench  # noqa: PLC0415 (optional: CUDA machines only)
    except ImportError:
        return None
    return do_bench


def _runs_for(fn: Callable[[], Any], device: torch.device, warmup_ms: float, rep_ms: float) -> int:
    """Run ``fn`` for about ``warmup_ms``; return how many runs fit in ``rep_ms`` (at least 3)."""
    synchronize(device)
    start, n = time.perf_counter(), 0
    while n < 1 or (time.perf_counter() - start) * 1e3 < warmup_ms:
        fn()
        synchronize(device)
        n += 1
    per_run = (time.perf_counter() - start) * 1e3 / n
    return max(3, min(1000, int(rep_ms / max(per_run, 1e-3))))


def time_ms(fn: Callable[[], Any], device: torch.device, warmup_ms: float = 25.0, rep_ms: float = 100.0,
            grad_to_none: list[torch.Tensor] | None = None) -> float:
    """Median milliseconds of one call of ``fn`` on ``device``."""
    do_bench = _do_bench() if device.type == "cuda" else None
    if do_bench is not None:
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, return_mode="median"))
    clear = lambda: [setattr(t, "grad", None) for t in grad_to_none or []]  # noqa: E731
    runs = _runs_for(lambda: (clear(), fn()), device, warmup_ms, rep_ms)
    times = []
    for _ in range(runs):
        clear()
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_memory_gib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak GPU memory allocated (GiB) while ``fn`` runs once, inputs included; ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / GIB


def free_memory(device: torch.device) -> None:
    """Release cached blocks after a failed (e.g. out-of-memory) case so the next one starts clean."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def short_error(err: BaseException) -> str:
    """First line of an exception, for a table cell."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160] if text else ''}"


def tflops(flops: float, ms: float | None) -> float | None:
    return None if ms is None or ms <= 0 else flops / (ms * 1e-3) / 1e12


def env_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
        "device_name": platform.processor() or platform.machine(),
        "timer": "wall clock (median)",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / GIB, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    timer="triton.testing.do_bench (median)" if _do_bench() else "CUDA events (median)")
        try:
            import triton  # noqa: PLC0415
            info["triton"] = triton.__version__
        except ImportError:
            info["triton"] = None
    return info


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub markdown table of ``rows`` (dicts) restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(path: str | Path, tool: str, argv: list[str], text: str) -> Path:
    """Write ``text`` to the markdown file ``path`` under the command that made it (``python TOOL ARGV``)."""
    path = Path(path)
    path.write_text(f"`python {tool} {shlex.join(argv)}`\n\n{text}")
    return path


def dump_json(out_dir: str | Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``out_dir/name.json`` (directory created); return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def profile_ops(fn: Callable[[], Any], device: torch.device, out_dir: str | Path, name: str,
                rows: int = 15) -> dict[str, Any]:
    """Run ``fn`` once under ``torch.profiler``; print the ops with the most self device time (CPU time off
    CUDA) and write ``out_dir/name_ops.txt``. Returns wall ms, device-busy ms (summed kernel time) and the
    busy fraction: a fraction far below 1 means the host (Python, launches, syncs) is the limit."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        wall_ms = (time.perf_counter() - t0) * 1e3
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    busy_ms = sum(getattr(e, key) for e in events if e.device_type.name == device.type.upper()) / 1e3 \
        if device.type == "cuda" else wall_ms
    table = events.table(sort_by=key, row_limit=rows)
    counts = {"kernels": sum(e.count for e in events if e.device_type.name == "CUDA"),
              "cpu_ops": sum(e.count for e in events if e.device_type.name == "CPU")}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}_ops.txt").write_text(table + "\n")
    print(f"## {name}: wall {wall_ms:.1f} ms, device busy {busy_ms:.1f} ms ({busy_ms / wall_ms:.0%}), "
          f"{counts['kernels']} kernels, {counts['cpu_ops']} host ops\n{table}")
    return {"wall_ms": wall_ms, "busy_ms": busy_ms, "busy_fraction": busy_ms / wall_ms, **counts}
