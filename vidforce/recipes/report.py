"""The evaluation report: JSON files, markdown tables, drift curves and frame strips.

Written by :func:`write_report` under the output directory, from the results of
``vidforce.recipes.evaluate.evaluate`` (``{"setup", "models", "decisions", "probe"}``):

- ``results.json``: setup, models (per horizon: means, se, per_scene; curves) and decisions;
- ``per_scene.json``: ``{model: {horizon: {metric: [one value per scene, setup.seeds order]}}}``;
- ``decisions.json``: the registered decisions (``comparisons.decide``); ``comparisons.md``: the same table;
- ``table.md``: mean ± standard error per model x horizon (the primary D first), and with a probe the
  half-life table; ``probe.json``: the probe (``probing.probe_model`` per model);
- ``curves.png``: D and each normalised term vs time, one line per model;
- ``strip_<model>.png``: frames spread over each model's whole rollout, the first ``strip_scenes`` scenes.
NaN and inf become ``null`` in the JSON files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from vidforce.recipes.comparisons import comparison_markdown
from vidforce.recipes.probing import CORRUPTIONS

TABLE_KEYS = ("D", "d_count", "d_colour", "d_size", "d_background", "d_luminance", "d_clipped", "d_motion",
              "motion_ratio", "count_accuracy")   # table.md columns, the primary D first


def _clean(x):
    """JSON-safe copy: NaN / inf -> None."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def value_cell(value, se=None) -> str:
    """A table cell: ``value`` to 3 decimals, ``± se`` where finite; ``-`` for a missing or non-finite value."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3f}" if se is None or not math.isfinite(se) else f"{value:.3f} ± {se:.3f}"


def table_markdown(models: dict[str, dict], keys: tuple[str, ...] = TABLE_KEYS) -> str:
    """Markdown table: one row per (model, horizon), one column per metric, mean ± standard error over scenes
    where the summary has one."""
    lines = ["| model | horizon | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, res in models.items():
        for h, row in res["horizons"].items():
            se = res.get("se", {}).get(h, {})
            cells = [value_cell(row.get(k), se.get(k)) for k in keys]
            lines.append(f"| {name} | {h} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _life(x) -> str:
    return "inf" if x == math.inf else value_cell(x)


def probe_markdown(probe: dict) -> str:
    """Half-life table (chunks): per model and corruption, the mean finite half-life, the median (inf
    included) and the fraction of scenes where the error never halves."""
    head = [f"{c} {part}" for c in CORRUPTIONS for part in ("mean", "median", "persists")]
    lines = [f"Error-injection half-life in chunks (injected at chunk {probe['inject_chunk']} of "
             f"{probe['chunks']}, scenes {probe['scenes']}):", "",
             "| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name, res in probe["models"].items():
        cells = [c for k in CORRUPTIONS for c in (_life(res[k]["mean"]), _life(res[k]["median"]),
                                                  value_cell(res[k]["persists"]))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(models: dict[str, dict], setup, path: Path) -> None:
    """One panel per curve of the summaries (D and the normalised terms), one line per model (the data
    reference dashed black), time in seconds at the end of each K-frame window; grey lines at the horizons."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    keys = [k for k in next(iter(models.values()))["curves"] if k != "t"]
    cols = 4
    fig = Figure(figsize=(4 * cols, 3.2 * math.ceil(len(keys) / cols)))
    FigureCanvasAgg(fig)
    for ax, key in zip(fig.subplots(math.ceil(len(keys) / cols), cols, squeeze=False).ravel(), keys):
        for name, res in models.items():
            style = dict(color="black", linestyle="--") if name == "data" else {}
            ax.plot(res["curves"]["t"], res["curves"][key], label=name, linewidth=1.2, marker="o", markersize=2,
                    **style)
        for h in setup.multiples:
            ax.axvline(h * setup.horizon / setup.fps, color="0.8", linewidth=0.8, zorder=0)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("time [s]", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def write_strip(videos: list[np.ndarray], setup, path: Path, scale: int = 3) -> None:
    """PNG grid: rows = the first ``strip_scenes`` videos, columns = ``strip_frames`` frames evenly spread
    over the whole video (nearest-neighbour upscaled, 2-px white gaps)."""
    length = videos[0].shape[0]
    picks = np.unique(np.linspace(0, length - 1, setup.strip_frames).round().astype(int))
    rows = []
    for video in videos[:setup.strip_scenes]:
        tiles = [np.pad(video[i].repeat(scale, 0).repeat(scale, 1), ((2, 2), (2, 2), (0, 0)), constant_values=255)
                 for i in picks]
        rows.append(np.concatenate(tiles, axis=1))
    imageio.imwrite(path, np.concatenate(rows, axis=0))


def _dump(path: Path, payload) -> None:
    path.write_text(json.dumps(_clean(payload), indent=1) + "\n")


def write_report(results: dict, videos: dict[str, list[np.ndarray]], setup, out: Path) -> Path:
    """Every file of the module doc in ``out``; ``videos``: ``{model: one uint8 [T, H, W, 3] video per scene}``
    for the strips. Returns the path of ``results.json``."""
    out.mkdir(parents=True, exist_ok=True)
    models, decisions, probe = results["models"], results["decisions"], results["probe"]
    _dump(out / "results.json", {"setup": results["setup"], "models": models, "decisions": decisions})
    _dump(out / "per_scene.json", {name: res["per_scene"] for name, res in models.items()})
    _dump(out / "decisions.json", decisions)
    (out / "comparisons.md").write_text(comparison_markdown(decisions))
    table = table_markdown(models)
    if probe is not None:
        _dump(out / "probe.json", probe)
        table += "\n" + probe_markdown(probe)
    (out / "table.md").write_text(table)
    plot_curves(models, setup, out / "curves.png")
    for name, vids in videos.items():
        write_strip(vids, setup, out / f"strip_{name}.png")
    return out / "results.json"
