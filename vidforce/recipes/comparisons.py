"""Statistics over evaluation scenes: standard errors and paired model-vs-model differences.

Every model is evaluated on the same scenes with the same noise, so two models are compared *per scene*
(paired): the difference of their per-scene block means, its mean and its standard error over scenes.
Differences are oriented as an *advantage* of the first model (positive = the first is better): ``b - a``
for errors, ``a - b`` for count accuracy, ``|b - 1| - |a - 1|`` for the speed ratio (1 is right).
"""
from __future__ import annotations

import math

import numpy as np

HIGHER_IS_BETTER = ("count_accuracy",)
ONE_IS_RIGHT = ("speed_ratio",)


def standard_error(values) -> float:
    """Standard error of the mean of the finite ``values`` (NaN with fewer than two)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan


def advantage(metric: str, a, b) -> np.ndarray:
    """Per-scene advantage of model ``a`` over ``b`` on ``metric`` (positive: ``a`` is better)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if metric in HIGHER_IS_BETTER:
        return a - b
    if metric in ONE_IS_RIGHT:
        return np.abs(b - 1.0) - np.abs(a - 1.0)
    return b - a


def paired(metric: str, a, b) -> tuple[float, float]:
    """Mean advantage of ``a`` over ``b`` and its standard error, over the scenes where both are finite."""
    d = advantage(metric, a, b)
    d = d[np.isfinite(d)]
    return (float(d.mean()) if len(d) else math.nan), standard_error(d)


def cell(mean: float, se: float) -> str:
    """``+0.123 ± 0.045``, bold when the mean is more than two standard errors from zero."""
    if not math.isfinite(mean):
        return "-"
    text = f"{mean:+.3f} ± {se:.3f}" if math.isfinite(se) else f"{mean:+.3f}"
    return f"**{text}**" if math.isfinite(se) and abs(mean) > 2 * se else text


def check_names(pairs, names) -> None:
    """ValueError (naming ``evaluate.comparisons``) when a pair names a model that is not evaluated."""
    unknown = sorted({n for pair in pairs for n in pair} - set(names))
    if unknown:
        raise ValueError(f"evaluate.comparisons: unknown model(s) {unknown}; evaluated: {sorted(names)}")


def comparison_markdown(models: dict[str, dict], pairs: list[tuple[str, str]], keys: tuple[str, ...]) -> str:
    """One row per (pair, horizon both reach): the paired advantage of the first model on every metric.

    ``models[name]["per_scene"][h][metric]`` holds the per-scene block means (``evaluate.summarize_model``).
    """
    check_names(pairs, models)
    lines = ["| first vs second | horizon | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for a, b in pairs:
        sa, sb = models[a]["per_scene"], models[b]["per_scene"]
        for h in (h for h in sa if h in sb):
            cells = [cell(*paired(k, sa[h][k], sb[h][k])) for k in keys]
            lines.append(f"| {a} vs {b} | {h}x | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
