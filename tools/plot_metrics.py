"""Training curves from ``metrics.jsonl`` files: the same as ``vidforce plot`` (vidforce/diagnostics/curves.py).

    python tools/plot_metrics.py RUN_DIR [RUN_DIR ...] --keys loss/generator lr/generator --out curves.png
        [--smooth 50] [--labels a b]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vidforce.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["plot", *sys.argv[1:]]))
