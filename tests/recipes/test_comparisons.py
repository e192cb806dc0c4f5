"""vidforce/recipes/comparisons.py: standard errors, the orientation of advantages, paired tables, bad names."""
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
    assert cmp.advantage("count_error", [0.2], [0.5])[0] == pytest.approx(0.3)          # lower error
    assert cmp.advantage("count_accuracy", [0.9], [0.6])[0] == pytest.approx(0.3)       # higher accuracy
    assert cmp.advantage("speed_ratio", [0.9], [1.5])[0] == pytest.approx(0.4)          # closer to 1
    assert cmp.advantage("speed_ratio", [1.2], [0.8])[0] == pytest.approx(0.0)          # equally far


def test_paired_uses_scene_differences_not_two_independent_errors():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    mean, se = cmp.paired("size_error", a + 0.1, a)        # a constant gap: no paired noise at all
    assert mean == pytest.approx(-0.1) and se == pytest.approx(0.0, abs=1e-12)
    assert cmp.cell(mean, 0.01) == "**-0.100 ± 0.010**" and cmp.cell(0.01, 0.01) == "+0.010 ± 0.010"


def test_comparison_table_rows_and_unknown_models():
    scenes = {"1": {"count_error": [0.0, 1.0, 0.0]}, "4": {"count_error": [1.0, 1.0, 2.0]}}
    models = {"a": {"per_scene": scenes}, "b": {"per_scene": {"1": {"count_error": [1.0, 1.0, 1.0]}}}}
    table = cmp.comparison_markdown(models, [("a", "b")], ("count_error",))
    assert table.splitlines()[2].startswith("| a vs b | 1x | +0.667 ± 0.333 |")
    assert "4x" not in table                               # b does not reach 4x
    with pytest.raises(ValueError, match=r"evaluate.comparisons: unknown model\(s\) \['c'\]"):
        cmp.comparison_markdown(models, [("a", "c")], ("count_error",))
