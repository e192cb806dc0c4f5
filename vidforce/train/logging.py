"""Metric sinks on rank 0: ``run_dir/metrics.jsonl`` (one line per step), a tqdm bar, and wandb.

wandb is imported lazily (vidforce runs without it), offline by default (``logging.wandb_mode``), and
resumes the same run id (kept in ``run_dir/wandb_id.txt``). Values arrive already reduced across ranks.
"""
from __future__ import annotations

import json
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

SHOWN = ("loss", "norm")    # metric names containing these go to the progress bar


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines after ``last_step`` (a resumed run rewrites the steps it repeats)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def init_wandb(cfg, run_dir: Path):
    """A wandb run (or None when wandb is off or not installed)."""
    if not cfg.logging.wandb or cfg.logging.wandb_mode == "disabled":
        return None
    try:
        import wandb  # noqa: PLC0415
    except ImportError:
        warnings.warn("logging.wandb is on but wandb is not installed; logging to metrics.jsonl only")
        return None
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id + "\n")
    return wandb.init(project=cfg.logging.project, mode=cfg.logging.wandb_mode, dir=str(run_dir), id=run_id,
                      name=run_dir.name, resume="allow", config=asdict(cfg))


class MetricLogger:
    """Rank 0 writes; other ranks hold an inert logger (``main=False``)."""

    def __init__(self, cfg, run_dir: Path, start_step: int, main: bool):
        self.main, self.every = main, cfg.train.log_every
        self.path = run_dir / "metrics.jsonl"
        self.wandb = None
        self.bar = None
        if not main:
            return
        truncate_metrics(self.path, start_step)
        self.wandb = init_wandb(cfg, run_dir)
        self.bar = tqdm(total=cfg.train.steps, initial=start_step, disable=None if cfg.logging.progress else True,
                        dynamic_ncols=True, desc=cfg.objective.name)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record the metrics of completed step ``step`` (1-based)."""
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.bar.update(1)
        if step % self.every == 0:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if any(s in k for s in SHOWN)})
            if self.wandb is not None:
                self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
