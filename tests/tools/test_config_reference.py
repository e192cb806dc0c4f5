"""tools/config_reference.py: docs/config.md is current, lists every key, and reads comments from the source."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from tests.train.helpers import ROOT
from vidforce import config


def load_tool():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "tools" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Base:
    """A base section."""
    kept: int = 1                  # inherited meaning


@dataclass
class Sample(Base):
    plain: str = ""
    rate: float = 0.5              # first part of the meaning,
                                   # continued below | with a bar
    # a section comment, not a continuation
    sizes: list[int] = field(      # spans lines
        default_factory=lambda: [1, 2])
    flag: bool = True


def leaf_keys(node, prefix=""):
    """Dotted keys of every non-dataclass field, from OmegaConf (independent of the tool's walk)."""
    keys = []
    for name, value in node.items():
        keys += leaf_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [prefix + name]
    return keys


def test_docs_config_md_is_current():
    expected = load_tool().render()
    actual = (ROOT / "docs" / "config.md").read_text()
    assert actual == expected, ("docs/config.md is stale: run `.venv/bin/python tools/config_reference.py` "
                                "and commit the result")


def test_every_key_has_a_row_with_type_and_default():
    text = load_tool().render()
    keys = leaf_keys(OmegaConf.to_container(OmegaConf.structured(config.VidforceConfig())))
    assert len(keys) > 100
    for key in keys:
        assert text.count(f"| `{key}` |") == 1, key
    num_frames = config.RolloutConfig().num_frames
    assert f"| `rollout.num_frames` | `int` | `{num_frames}` | > 0 |" in text
    assert "| `causal.rope_mode` | `str` | `\"absolute\"` | one of `absolute`, `relative` |" in text


def test_comments_are_read_from_the_source():
    tool = load_tool()
    assert tool.field_comments(Sample) == {"plain": "", "rate": "first part of the meaning, continued below | "
                                           "with a bar", "sizes": "spans lines", "flag": ""}
    assert tool.all_comments(Sample)["kept"] == "inherited meaning"
    assert tool.class_doc(Base) == "A base section." and tool.class_doc(Sample) == ""


def test_sections_rows_and_cells():
    tool = load_tool()
    [(name, cls, rows)] = tool.sections(Sample(), "demo.")
    assert (name, cls) == ("demo", Sample)
    assert rows[0] == ("demo.kept", "int", "1", "", "inherited meaning")
    assert rows[2][:3] == ("demo.rate", "float", "0.5") and rows[3][2] == "[1, 2]" and rows[4][2] == "true"
    assert tool.cell("a | b ``x``") == "a \\| b `x`"


def test_main_writes_the_rendered_file(tmp_path, capsys):
    tool = load_tool()
    out = tmp_path / "config.md"
    assert tool.main(["--out", str(out)]) == 0
    assert out.read_text() == tool.render() and str(out) in capsys.readouterr().out
