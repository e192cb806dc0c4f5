"""Paired comparisons across mini-world evaluations: models taken from several ``results.json`` files.

    python tools/compare_results.py --model sf_x3=runs/a/results/results.json:self_forcing \\
        --model sf=runs/b/results/results.json:self_forcing --pair sf_x3 sf [--pair ...] [--out FILE.md]

Each ``--model LABEL=FILE:MODEL`` names a model of an evaluation's ``results.json`` (``vidforce mini --stages
evaluate``); each ``--pair FIRST SECOND`` adds the per-scene paired advantage of FIRST over SECOND
on D, each normalised drift term, the motion ratio and the count accuracy, at every horizon both reach
(``vidforce.recipes.comparisons.paired_markdown``). The evaluations must share their setup (world, scene and
noise seeds, horizon, chunk, fps), so that every model saw the same scenes and the same noise; a mismatch is
an error naming both files and the field.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.bench_common import write_markdown  # noqa: E402
from vidforce.recipes.comparisons import paired_markdown  # noqa: E402
from vidforce.recipes.report import TABLE_KEYS  # noqa: E402

SHARED = ("spec", "seeds", "noise_seeds", "horizon", "chunk", "fps")   # what makes two evaluations' units equal


def parse_model(text: str) -> tuple[str, Path, str]:
    """``LABEL=FILE:MODEL`` -> ``(label, file, model)``; ValueError naming the argument."""
    label, sep, rest = text.partition("=")
    path, sep2, model = rest.rpartition(":")
    if not (sep and sep2 and label and path and model):
        raise ValueError(f"--model {text!r}: expected LABEL=RESULTS_JSON:MODEL")
    return label, Path(path), model


def load_models(specs: list[str]) -> dict[str, dict]:
    """``{label: model summary}`` from ``--model`` arguments, after checking that the setups agree."""
    models, first = {}, None
    for text in specs:
        label, path, model = parse_model(text)
        if label in models:
            raise ValueError(f"--model {text!r}: label {label!r} used twice")
        if not path.is_file():
            raise FileNotFoundError(f"--model {text!r}: no file {path}")
        results = json.loads(path.read_text())
        if model not in results.get("models", {}):
            raise ValueError(f"--model {text!r}: {path} has no model {model!r}; it has {sorted(results['models'])}")
        setup = results["setup"]
        if first is None:
            first = (path, setup)
        for field in SHARED:
            if setup.get(field) != first[1].get(field):
                raise ValueError(f"{path} and {first[0]} were evaluated on different setups ({field} differs): "
                                 "their models did not see the same scenes and noise")
        models[label] = results["models"][model]
    return models


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="LABEL=RESULTS_JSON:MODEL (repeat)")
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("FIRST", "SECOND"))
    p.add_argument("--out", default=None, help="also write the table (and this command) to this markdown file")
    args = p.parse_args(argv)
    try:
        models = load_models(args.model)
        unknown = sorted({label for pair in args.pair for label in pair} - set(models))
        if unknown:
            raise ValueError(f"--pair: unknown label(s) {unknown}; --model labels: {sorted(models)}")
        table = paired_markdown(models, [tuple(pair) for pair in args.pair], TABLE_KEYS)
    except (FileNotFoundError, ValueError) as err:
        print(f"compare_results: error: {err}", file=sys.stderr)
        return 2
    print(table)
    if args.out:
        write_markdown(args.out, "tools/compare_results.py", argv if argv is not None else sys.argv[1:], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
