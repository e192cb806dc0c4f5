"""vidforce/recipes/comparisons.py: standard errors, advantages, paired tables, registered decisions by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vidforce.recipes import comparisons as cmp


def test_standard_error_known_value_and_nan_handling():
    assert cmp.standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert cmp.standard_error([1.0, math.nan, 3.0]) == pytest.approx(1.0)      # std 1.414 / sqrt 2
    assert math.isnan(cmp.standard_error([5.0]))


def test_advantage_is_positive_when_the_first_model_is_better():
    assert cmp.advantage("D", [0.2], [0.5])[0] == pytest.approx(0.3)                    # lower drift
    assert cmp.advantage("count_accuracy", [0.9], [0.6])[0] == pytest.approx(0.3)       # higher accuracy
    assert cmp.advantage("motion_ratio", [0.9], [1.5])[0] == pytest.approx(0.4)         # closer to 1
    assert cmp.advantage("motion_ratio", [1.2], [0.8])[0] == pytest.approx(0.0)         # equally far


def test_paired_uses_scene_differences_not_two_independent_errors():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    mean, se = cmp.paired("d_size", a + 0.1, a)            # a constant gap: no paired noise at all
    assert mean == pytest.approx(-0.1) and se == pytest.approx(0.0, abs=1e-12)
    assert cmp.cell(mean, 0.01) == "**-0.100 ± 0.010**" and cmp.cell(0.01, 0.01) == "+0.010 ± 0.010"


def test_paired_table_rows_and_unknown_models():
    scenes = {"1x": {"D": [0.0, 1.0, 0.0]}, "4x": {"D": [1.0, 1.0, 2.0]}}
    models = {"a": {"per_scene": scenes}, "b": {"per_scene": {"1x": {"D": [1.0, 1.0, 1.0]}}}}
    table = cmp.paired_markdown(models, [("a", "b")], ("D", "motion_ratio"))
    assert table.splitlines()[2] == "| a vs b | 1x | +0.667 ± 0.333 | - |"
    assert "4x" not in table                               # b does not reach 4x
    with pytest.raises(ValueError, match=r"evaluate.comparisons: unknown model\(s\) \['c'\]"):
        cmp.paired_markdown(models, [("a", "c")], ("D",))


# per-scene values with known paired statistics (4 scenes)
A_D, B_D = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 5.0, 6.0]         # b - a = 1, 1, 2, 2: mean 1.5, se 0.2887
SE_D = np.std([1, 1, 2, 2], ddof=1) / 2
A_MOTION, B_MOTION = [1.0, 0.9, 1.1, 1.0], [0.5, 0.4, 0.6, 0.5]  # |b-1| - |a-1| = .5 .5 .3 .5: 0.45, se 0.05
MODELS = {
    "a": {"per_scene": {"1x": {"D": A_D, "motion_ratio": A_MOTION}, "4x": {"D": [x + 10 for x in A_D]}}},
    "b": {"per_scene": {"1x": {"D": B_D, "motion_ratio": B_MOTION}}},
    "teacher": {"per_scene": {"1x": {"count_accuracy": [0.96, 1.0], "D": [0.5, 1.2]}}},
    "poor": {"per_scene": {"1x": {"count_accuracy": [0.9, 0.96], "D": [0.0, 0.0]}}},
    "drifty": {"per_scene": {"1x": {"count_accuracy": [1.0, 1.0], "D": [1.0, 1.2]}}},
}


def _entry(first, second, metric, rule, horizon="1x"):
    return {"first": first, "second": second, "horizon": horizon, "metric": metric, "rule": rule}


@pytest.mark.parametrize("entry, advantage, se, verdict", [
    (_entry("a", "b", "D", "lower_2se"), 1.5, SE_D, "pass"),
    (_entry("b", "a", "D", "lower_2se"), -1.5, SE_D, "fail"),
    (_entry("b", "a", "D", "not_worse_2se"), -1.5, SE_D, "fail"),          # 1.5 worse > 2 se = 0.577
    (_entry("a", "b", "D", "not_worse_2se"), 1.5, SE_D, "pass"),
    (_entry("b", "a", "D", "higher_3se"), 1.5, SE_D, "pass"),               # 1.5 > 3 se = 0.866
    (_entry("a@4x", "a@1x", "D", "higher_3se", None), 10.0, 0.0, "pass"),   # names carry their horizons
    (_entry("a", "b", "motion_ratio", "closer_to_1"), 0.45, 0.05, "pass"),
    (_entry("b", "a", "motion_ratio", "closer_to_1"), -0.45, 0.05, "fail"),
])
def test_decisions_with_known_paired_values(entry, advantage, se, verdict):
    (d,) = cmp.decide(MODELS, [entry])
    assert d["advantage"] == pytest.approx(advantage) and d["se"] == pytest.approx(se, abs=1e-12)
    assert d["verdict"] == verdict
    assert {k: d[k] for k in ("first", "second", "horizon", "metric", "rule")} == entry


def test_not_worse_passes_within_two_standard_errors():
    models = {"x": {"per_scene": {"1x": {"D": [1.1, 1.0, 1.3, 1.0]}}},       # x - y = .1 0 .3 0: 0.1 worse
              "y": {"per_scene": {"1x": {"D": [1.0, 1.0, 1.0, 1.0]}}}}       # se 0.0707: 2 se = 0.141
    (d,) = cmp.decide(models, [_entry("x", "y", "D", "not_worse_2se")])
    assert d["advantage"] == pytest.approx(-0.1) and d["verdict"] == "pass"
    (d,) = cmp.decide(models, [_entry("x", "y", "D", "lower_2se")])
    assert d["verdict"] == "fail"


def test_teacher_gate_needs_count_accuracy_and_d():
    gate = {"first": "teacher", "second": None, "horizon": "1x", "metric": "count_accuracy", "rule": "gate_teacher"}
    passed, poor, drifty = cmp.decide(MODELS, [gate, {**gate, "first": "poor"}, {**gate, "first": "drifty"}])
    assert passed["value"] == pytest.approx(0.98) and passed["D"] == pytest.approx(0.85)
    assert passed["verdict"] == "pass" and passed["se"] == pytest.approx(0.02)
    assert poor["value"] == pytest.approx(0.93) and poor["verdict"] == "fail"        # accuracy < 0.95
    assert drifty["D"] == pytest.approx(1.1) and drifty["verdict"] == "fail"          # D > 1


def test_missing_models_are_written_with_verdict_missing_and_the_table():
    decisions = cmp.decide(MODELS, [_entry("a", "gone", "D", "lower_2se"), _entry("a", "b", "D", "lower_2se", "4x"),
                                    {"first": "gone", "horizon": "1x", "metric": "count_accuracy",
                                     "rule": "gate_teacher"}])
    assert [d["verdict"] for d in decisions] == ["missing"] * 3
    table = cmp.comparison_markdown(cmp.decide(MODELS, [_entry("a", "b", "D", "lower_2se")]) + decisions[:1])
    rows = table.splitlines()
    assert rows[0] == "| first | second | horizon | metric | rule | advantage of first | verdict |"
    assert rows[2] == "| a | b | 1x | D | lower_2se: first lower by > 2 SE | +1.500 ± 0.289 | **pass** |"
    assert rows[3].endswith("| - | **missing** |")


def test_check_registered_names_every_bad_entry():
    reach = {"a": ("1x", "4x"), "teacher": ("1x",)}
    cmp.check_registered([_entry("a@4x", "a@1x", "D", "higher_3se", None)], reach)
    bad = [(_entry("a", "zz", "D", "lower_2se"), r"unknown model 'zz'"),
           (_entry("teacher@4x", "a", "D", "lower_2se", None), r"not at horizon '4x'"),
           (_entry("a", "teacher", "D", "lower_2se", None), r"not at horizon None"),
           (_entry("a", "teacher", "count_accuracy", "lower_2se"), r"takes metric"),
           (_entry("a", "teacher", "D", "closer_to_1"), r"takes metric"),
           (_entry("a", "teacher", "D", "better"), r"rule must be one of")]
    for entry, message in bad:
        with pytest.raises(ValueError, match=message):
            cmp.check_registered([entry], reach)
