"""Training curves from ``metrics.jsonl`` files (runs without wandb): one panel per key, one line per run.

``vidforce plot RUN_DIR [RUN_DIR ...] --keys loss/generator lr/generator --out curves.png [--smooth 50]
[--labels a b]``. Each run's curve is smoothed by a trailing moving average of ``smooth`` logged steps (1: raw);
loss panels have a log y axis.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def read_series(run_dir: str | Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``key`` in ``run_dir/metrics.jsonl``; ValueError naming the key and file."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not a JSON line ({err.msg})") from None
    pairs = [(r["step"], r[key]) for r in rows if key in r]
    if not pairs:
        known = sorted({k for r in rows for k in r} - {"step"})
        raise ValueError(f"key {key!r} is not in {path}; it has {known}")
    steps, values = zip(*pairs)
    return np.asarray(steps), np.asarray(values, dtype=float)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (the first points average what exists)."""
    if window < 1:
        raise ValueError(f"--smooth must be >= 1, got {window}")
    sums = np.cumsum(np.concatenate([[0.0], values]))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (sums[idx] - sums[lo]) / (idx - lo)


def plot(runs: list[str | Path], keys: list[str], out: str | Path, smooth: int = 1,
         labels: list[str] | None = None) -> Path:
    """One panel per key (log y for losses), a line per run; written to ``out`` (PNG; parent dirs created)."""
    labels = labels or [Path(r).name for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"--labels: {len(labels)} labels for {len(runs)} runs")
    series = {(run, key): read_series(run, key) for key in keys for run in runs}    # every error before drawing
    fig = Figure(figsize=(5 * len(keys), 3.5))
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for run, label in zip(runs, labels):
            steps, values = series[run, key]
            ax.plot(steps, moving_average(values, smooth), label=label)
        if key.startswith("loss"):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(key if smooth == 1 else f"{key} (mean of {smooth})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
