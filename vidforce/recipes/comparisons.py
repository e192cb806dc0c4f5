"""Statistics over evaluation scenes: standard errors, paired model-vs-model differences, registered decisions.

Every model is evaluated on the same scenes with the same noise, so two models are compared *per scene*
(paired): the difference of their per-scene values, its mean and its standard error over scenes.
Differences are oriented as an *advantage* of the first model (positive = the first is better): ``b - a``
for drift terms and errors, ``a - b`` for count accuracy, ``|b - 1| - |a - 1|`` for the motion ratio (1 is
right).

A *registered decision* (fixed before the run) names two models, a horizon, a metric and a rule. A model
name may carry its own horizon (``"teacher_forcing@20x"``), which overrides the entry's ``horizon``. Rules,
with ``adv`` the paired mean over scenes and ``se`` its standard error:

- ``lower_2se``: ``adv = mean(second - first)``, pass when ``adv > 2 se`` (first lower by more than 2 SE);
- ``not_worse_2se``: the same ``adv``, pass when ``adv >= -2 se`` (first no more than 2 SE worse);
- ``higher_3se``: ``adv = mean(first - second)``, pass when ``adv > 3 se`` (the positive control: first's
  D exceeds second's);
- ``closer_to_1``: ``adv = mean(|second - 1| - |first - 1|)`` (metric ``motion_ratio``), pass when ``adv > 2 se``;
- ``gate_teacher``: no second model; ``value`` = the first's mean count accuracy, pass when
  ``value >= GATE_COUNT_ACCURACY`` and its mean ``D <= GATE_D`` at the same horizon.

The verdict is ``"missing"`` where a model or horizon is absent from the results, or fewer than two scenes
have finite values on both sides (no standard error).
"""
from __future__ import annotations

import math

import numpy as np

HIGHER_IS_BETTER = ("count_accuracy",)
ONE_IS_RIGHT = ("motion_ratio",)
LOWER_IS_BETTER = ("D", "d_count", "d_colour", "d_size", "d_background", "d_luminance", "d_clipped", "d_motion",
                   "count_error", "colour_drift", "size_drift", "background_drift", "luminance_drift",
                   "clipped_drift")
RULE_METRICS = {"lower_2se": LOWER_IS_BETTER, "not_worse_2se": LOWER_IS_BETTER,
                "higher_3se": LOWER_IS_BETTER + HIGHER_IS_BETTER, "closer_to_1": ONE_IS_RIGHT,
                "gate_teacher": ("count_accuracy",)}
RULE_TEXT = {"lower_2se": "first lower by > 2 SE", "not_worse_2se": "first no more than 2 SE worse",
             "higher_3se": "first higher by > 3 SE", "closer_to_1": "abs(first - 1) lower by > 2 SE",
             "gate_teacher": "count accuracy >= 0.95 and D <= 1"}
GATE_COUNT_ACCURACY = 0.95
GATE_D = 1.0


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
    return _mean_se(advantage(metric, a, b))


def _mean_se(d: np.ndarray) -> tuple[float, float]:
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


def paired_markdown(models: dict[str, dict], pairs: list[tuple[str, str]], keys: tuple[str, ...]) -> str:
    """One row per (pair, horizon both reach): the paired advantage of the first model on every metric.

    ``models[name]["per_scene"][horizon][metric]`` holds the per-scene values (``evaluate.summarize_model``).
    """
    check_names(pairs, models)
    lines = ["| first vs second | horizon | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for a, b in pairs:
        sa, sb = models[a]["per_scene"], models[b]["per_scene"]
        for h in (h for h in sa if h in sb):
            cells = [cell(*paired(k, sa[h][k], sb[h][k])) if k in sa[h] and k in sb[h] else "-" for k in keys]
            lines.append(f"| {a} vs {b} | {h} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- registered decisions

def side(name: str, horizon: str | None) -> tuple[str, str | None]:
    """``"model@10x"`` -> ``("model", "10x")``; a plain name takes the entry's ``horizon``."""
    model, at, own = name.partition("@")
    return model, (own if at else horizon)


def check_registered(registered, reach: dict[str, tuple[str, ...]]) -> None:
    """ValueError unless every entry names a known rule, a metric the rule accepts, and models of ``reach``
    (``{model: horizons it is evaluated at}``) at horizons they reach. Run it before any sampling."""
    for entry in registered:
        rule, metric = entry.get("rule"), entry.get("metric")
        if rule not in RULE_METRICS:
            raise ValueError(f"evaluate.registered {entry}: rule must be one of {sorted(RULE_METRICS)}")
        if metric not in RULE_METRICS[rule]:
            raise ValueError(f"evaluate.registered {entry}: rule {rule} takes metric {RULE_METRICS[rule]}")
        names = ("first",) if rule == "gate_teacher" else ("first", "second")
        for key in names:
            model, h = side(str(entry.get(key)), entry.get("horizon"))
            if model not in reach:
                raise ValueError(f"evaluate.registered {entry}: unknown model {model!r}; evaluated: {sorted(reach)}")
            if h not in reach[model]:
                raise ValueError(f"evaluate.registered {entry}: {model} is evaluated at {list(reach[model])}, "
                                 f"not at horizon {h!r}")


def _scene_values(models: dict[str, dict], name: str, horizon: str | None, metric: str) -> np.ndarray | None:
    model, h = side(name, horizon)
    per_scene = models.get(model, {}).get("per_scene", {}).get(h, {})
    return np.asarray(per_scene[metric], dtype=np.float64) if metric in per_scene else None


def rule_advantage(rule: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-scene advantage of the first model under ``rule`` (module doc)."""
    if rule in ("lower_2se", "not_worse_2se"):
        return b - a
    if rule == "higher_3se":
        return a - b
    if rule == "closer_to_1":
        return np.abs(b - 1.0) - np.abs(a - 1.0)
    raise ValueError(f"rule_advantage.rule: unknown rule {rule!r}")


def rule_passes(rule: str, adv: float, se: float) -> bool:
    """Whether a paired advantage ``adv`` with standard error ``se`` passes ``rule``."""
    if rule in ("lower_2se", "closer_to_1"):
        return adv > 2 * se
    if rule == "not_worse_2se":
        return adv >= -2 * se
    if rule == "higher_3se":
        return adv > 3 * se
    raise ValueError(f"rule_passes.rule: unknown rule {rule!r}")


def _gate(models: dict[str, dict], entry: dict) -> dict:
    acc = _scene_values(models, entry["first"], entry.get("horizon"), "count_accuracy")
    d = _scene_values(models, entry["first"], entry.get("horizon"), "D")
    value, se = _mean_se(acc) if acc is not None else (math.nan, math.nan)
    d_mean = _mean_se(d)[0] if d is not None else math.nan
    out = {"advantage": None, "se": se, "value": value, "D": d_mean}
    if not (math.isfinite(value) and math.isfinite(d_mean)):
        return {**out, "verdict": "missing"}
    return {**out, "verdict": "pass" if value >= GATE_COUNT_ACCURACY and d_mean <= GATE_D else "fail"}


def decide(models: dict[str, dict], registered) -> list[dict]:
    """One decision per registered entry: ``{first, second, horizon, metric, rule, advantage, se, verdict}``
    (the gate adds ``value`` and ``D``). ``models[name]["per_scene"][horizon][metric]``: per-scene values."""
    decisions = []
    for entry in registered:
        row = {"first": entry["first"], "second": entry.get("second"), "horizon": entry.get("horizon"),
               "metric": entry["metric"], "rule": entry["rule"]}
        if entry["rule"] == "gate_teacher":
            decisions.append({**row, **_gate(models, entry)})
            continue
        a = _scene_values(models, entry["first"], entry.get("horizon"), entry["metric"])
        b = _scene_values(models, entry["second"], entry.get("horizon"), entry["metric"])
        adv, se = (math.nan, math.nan) if a is None or b is None else _mean_se(rule_advantage(entry["rule"], a, b))
        if not math.isfinite(se):
            verdict = "missing"
        else:
            verdict = "pass" if rule_passes(entry["rule"], adv, se) else "fail"
        decisions.append({**row, "advantage": adv, "se": se, "verdict": verdict})
    return decisions


def _number(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"


def comparison_markdown(decisions: list[dict]) -> str:
    """The registered decisions as a table: models, horizon, metric, rule, the first model's advantage
    (mean ± SE over scenes; the gate: its count accuracy and D) and the verdict."""
    lines = ["| first | second | horizon | metric | rule | advantage of first | verdict |",
             "|---|---|---|---|---|---|---|"]
    for d in decisions:
        if d["rule"] == "gate_teacher":
            value = f"count accuracy {_number(d['value'])}, D {_number(d['D'])}"
        else:
            value = _number(d["advantage"]) if d["se"] is None or not math.isfinite(d["se"]) else \
                f"{d['advantage']:+.3f} ± {d['se']:.3f}"
        lines.append(f"| {d['first']} | {d['second'] or '-'} | {d['horizon'] or '-'} | {d['metric']} | "
                     f"{d['rule']}: {RULE_TEXT[d['rule']]} | {value} | **{d['verdict']}** |")
    return "\n".join(lines) + "\n"
