"""What the harness-table tools share (``zoo_table.py``, ``zoo_flowmap_table.py``, ``zoo_trajectory_table.py``): their
arguments and how a table page is written under the command that made it."""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch

from vidforce.toy import metrics
from vidforce.toy.gmm import GMM


def harness_parser(doc: str, objectives: tuple[str, ...], out: str) -> argparse.ArgumentParser:
    """The tools' common arguments: training lengths, sample count, seed, objectives, the page to write."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--teacher-steps", type=int, default=4000)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objectives", nargs="+", default=list(objectives))
    p.add_argument("--out", default=out)
    return p


def write_page(args, title: str, tool: str, header: str, table: list[str], verdict: list[str]) -> str:
    """The table, the data-vs-data floor and the verdict lines; printed, and written to ``args.out`` (when set)
    under the command, the machine and the data."""
    floor = metrics.data_floor(GMM.ring(), args.n)
    text = "\n".join([header, "|---|---|---|---|---|---|", *table, "",
                      f"Data-vs-data SW2 floor at n={args.n}: {floor:.4f}.", "", *verdict])
    print(text)
    if args.out:
        cmd = f"python tools/{tool} " + " ".join(sys.argv[1:])
        machine = (f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                   f"{datetime.date.today().isoformat()}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"# {title}\n\n`{cmd}`\n\nMachine: {machine}; seed {args.seed}; data GMM.ring() "
                                  f"(8 modes, radius 1.5, std 0.2, 2-D).\n\n{text}\n")
    return text
