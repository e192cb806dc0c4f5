"""Drift report outputs: ``drift.json``, ``drift.png`` curves, the summary table and wandb logging.

``result`` is the dict of ``DriftMeter.result()`` / ``analyze_video`` (schema in docs/drift.md).
Consistency curves are always drawn and logged with motion next to them: a frozen video scores
perfectly consistent.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vidforce.diagnostics.drift import MOTION_THRESHOLD, SUMMARY_METRICS

PANELS = (  # (metric, title, y-axis unit)
    ("luminance", "luminance", "mean luma [0, 1]"),
    ("clipped_fraction", "clipped pixels", "fraction of pixels"),
    ("saturation", "saturation", "mean HSV S [0, 1]"),
    ("color_shift", "colour shift vs first window", "Lab distance (dE76)"),
    ("contrast", "contrast", "luma std [0, 1]"),
    ("sharpness", "sharpness", "Laplacian variance"),
    ("flicker", "flicker", "motion-compensated residual [0, 1]"),
    ("motion", "motion", "px/frame (256-px grid)"),
    ("hold_similarity", "hold: similarity to first window", "correlation [-1, 1]"),
    ("repetition", "repetition: best earlier match", "correlation [-1, 1]"),
)
CONSISTENCY = ("hold_similarity", "repetition")
MOTION_COLOR = "tab:red"


def window_centres(result: dict) -> list[float]:
    """Centre time in seconds of each window of ``result``."""
    return [(w["t_start"] + w["t_end"]) / 2 for w in result["windows"]]


def _shade_frozen(ax, windows: list[dict]) -> None:
    """Grey band over every window whose ``moving`` flag is false."""
    for w in windows:
        if not w["moving"]:
            ax.axvspan(w["t_start"], w["t_end"], color="0.85", zorder=0)


def _draw_panel(ax, name: str, title: str, unit: str, result: dict) -> None:
    """One metric curve vs time; consistency panels get motion on a twin axis."""
    times, windows = window_centres(result), result["windows"]
    ax.plot(times, [w[name] for w in windows], marker="o", markersize=3, label=name)
    if name == "clipped_fraction":
        ax.plot(times, [w["over_exposed"] for w in windows], linestyle="--", label="over")
        ax.plot(times, [w["under_exposed"] for w in windows], linestyle=":", label="under")
        ax.legend(fontsize=6)
    if name == "motion":
        ax.axhline(MOTION_THRESHOLD, color="0.5", linestyle="--", linewidth=0.8)
        ax.set_ylim(bottom=0)
    if name in CONSISTENCY or name == "motion":
        _shade_frozen(ax, windows)
    if name in CONSISTENCY:
        twin = ax.twinx()
        twin.plot(times, [w["motion"] for w in windows], color=MOTION_COLOR, linestyle="--",
                  linewidth=1)
        twin.axhline(MOTION_THRESHOLD, color=MOTION_COLOR, linestyle=":", linewidth=0.8)
        twin.set_ylim(bottom=0)
        twin.set_ylabel("motion px/frame", color=MOTION_COLOR, fontsize=7)
        twin.tick_params(labelsize=6, colors=MOTION_COLOR)
    ax.set_xlim(windows[0]["t_start"], windows[-1]["t_end"])
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("time [s]", fontsize=7)
    ax.set_ylabel(unit, fontsize=7)
    ax.tick_params(labelsize=6)


def plot_curves(result: dict, png_path: str | os.PathLike) -> None:
    """Write a 2 x 5 grid of per-window metric curves (Agg backend, no pyplot state)."""
    fig = Figure(figsize=(17, 6.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 5).ravel()
    for ax, (name, title, unit) in zip(axes, PANELS):
        _draw_panel(ax, name, title, unit, result)
    fig.suptitle(f"drift: {result['video'] or 'frame stream'}  ({result['num_frames']} frames, "
                 f"{result['fps']:g} fps, window {result['window_seconds']:g} s; "
                 f"grey = not moving)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


def check_report_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path; ``FileExistsError`` when it, or the nearest existing folder above it, is a file."""
    out = Path(out_dir)
    existing = next(d for d in [out.absolute(), *out.absolute().parents] if d.exists())
    if not existing.is_dir():
        raise FileExistsError(f"{existing} is a file: the drift report is a directory (DIR/drift.json, DIR/drift.png)")
    return out


def write_report(result: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/drift.json`` and ``out_dir/drift.png`` (missing directories created); return both paths."""
    out = check_report_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "drift.json", out / "drift.png"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    plot_curves(result, png_path)
    return json_path, png_path


def format_summary(result: dict) -> str:
    """Human table: one row per metric with first, last, delta and slope per second."""
    lines = [f"{'metric':<17}{'first':>12}{'last':>12}{'delta':>12}{'slope/s':>12}"]
    for name in SUMMARY_METRICS:
        s = result["summary"][name]
        lines.append(f"{name:<17}{s['first']:>12.4g}{s['last']:>12.4g}{s['delta']:>+12.4g}"
                     f"{s['slope']:>+12.4g}")
    moving = sum(w["moving"] for w in result["windows"])
    lines.append(f"moving windows: {moving}/{len(result['windows'])} "
                 f"(motion >= {MOTION_THRESHOLD} px/frame; consistency is meaningless when frozen)")
    return "\n".join(lines)


def log_wandb(result: dict, step: int, prefix: str = "drift/", run=None) -> None:
    """Log per-window curves (a table plus line plots) and summary scalars to wandb at ``step``.

    Consistency plots carry motion as a second series. Scalars are ``{prefix}{metric}/{stat}``
    and ``{prefix}moving_fraction``. Uses ``run`` or the active ``wandb.run``; wandb is imported
    here so vidforce runs without it.
    """
    import wandb

    run = run if run is not None else wandb.run
    if run is None:
        raise ValueError("log_wandb: no wandb run; call wandb.init() first or pass run=")
    windows, times = result["windows"], window_centres(result)
    columns = ["t"] + list(SUMMARY_METRICS) + ["moving"]
    rows = [[t] + [w[m] for m in SUMMARY_METRICS] + [w["moving"]] for t, w in zip(times, windows)]
    table = wandb.Table(columns=columns, data=rows)
    payload = {f"{prefix}windows": table}
    for name in SUMMARY_METRICS:
        if name in CONSISTENCY:
            payload[f"{prefix}curve/{name}"] = wandb.plot.line_series(
                xs=times, ys=[[w[name] for w in windows], [w["motion"] for w in windows]],
                keys=[name, "motion"], title=f"{name} with motion", xname="time [s]")
        else:
            payload[f"{prefix}curve/{name}"] = wandb.plot.line(table, "t", name, title=name)
        for stat, value in result["summary"][name].items():
            payload[f"{prefix}{name}/{stat}"] = value
    payload[f"{prefix}moving_fraction"] = sum(w["moving"] for w in windows) / len(windows)
    run.log(payload, step=step)

