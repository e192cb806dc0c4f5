"""DMD, DMD2, ADD and LADD on the ground-truth harness (vidforce/toy): one markdown table, printed and written.

    python tools/zoo_adversarial_table.py [--steps 600] [--seeds 3] [--teacher-steps 4000] [--n 4000] [--seed 0]
        [--objectives dmd dmd2 add ladd] [--out docs/results/zoo_adversarial.md]

Each objective trains a 1-, 2- and 4-step student from the teacher (``--steps`` generator updates; DMD and DMD2's
critic updates ``gen_update_every`` times as often) on the inputs of its paper (its own chain for DMD / DMD2,
noised data for ADD / LADD), and DMD2 once more at 4 steps on noised data (no backward simulation). Every cell
is trained with ``--seeds`` training seeds (one teacher; the seed sets the heads' initialisation and the training
noise). Distance: sliced W2 (256 fixed projections) between the few-step samples (one fixed noise set) and a fresh
data draw of the same size: the median over seeds and its range. "vs DMD": median over DMD's median at the same
step count. A comparison is called only when the seed ranges do not overlap. Runs single-threaded (small MLPs are
fastest so); "train s" is the mean wall time per seed.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.zoo_common import harness_parser, write_page  # noqa: E402
from vidforce.toy import metrics  # noqa: E402
from vidforce.toy.adversarial_train import OBJECTIVES, Run, default_inputs, train_student  # noqa: E402
from vidforce.toy.gmm import GMM  # noqa: E402
from vidforce.toy.train import HarnessConfig, cm_sample, euler_sample, train_teacher  # noqa: E402

STEPS = (1, 2, 4)


def _inputs(backward_simulation: bool) -> str:
    return "own chain" if backward_simulation else "noised data"


def rows(args) -> tuple[list[str], dict]:
    torch.manual_seed(args.seed)
    gmm, h = GMM.ring(), HarnessConfig(steps=args.steps, teacher_steps=args.teacher_steps, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed + 10)
    data = gmm.sample(args.n, g).float()
    noise = torch.randn(args.n, gmm.dim, generator=g)
    teacher, t_time = train_teacher(gmm, h)
    out, res = [], {}

    def add(label, steps, inputs, values, secs):
        res[(label, steps)] = values
        med = statistics.median(values)
        spread = f" ({min(values):.4f}-{max(values):.4f})" if len(values) > 1 else ""
        dmd = res.get(("dmd", steps))
        vs = "-" if dmd is None or label.startswith("teacher") else f"{med / statistics.median(dmd):.2f}"
        out.append(f"| {label} | {steps} | {inputs} | {med:.4f}{spread} | {vs} | {secs} |")

    for steps in (*STEPS, 64):
        add("teacher (Euler)", steps, "-", [metrics.sliced_w2(euler_sample(teacher, noise, steps), data)],
            f"{t_time:.1f}" if steps == 1 else "")
    runs = [Run(name, steps, default_inputs(name)) for name in args.objectives for steps in STEPS]
    if "dmd2" in args.objectives:
        runs.append(Run("dmd2", 4, False))
    for run in runs:
        label = run.name if run.backward_simulation == default_inputs(run.name) else f"{run.name} (noised data)"
        values, secs = [], []
        for k in range(args.seeds):
            net, t = train_student(run, teacher, gmm, dataclasses.replace(h, seed=args.seed + k))
            x = cm_sample(net, noise, run.steps, torch.Generator().manual_seed(args.seed + 20))
            values.append(metrics.sliced_w2(x, data))
            secs.append(t)
            print(f"{label} {run.steps}-step seed {args.seed + k}: SW2 {values[-1]:.4f} ({t:.0f} s)", file=sys.stderr)
        add(label, run.steps, _inputs(run.backward_simulation), values, f"{statistics.mean(secs):.1f}")
    return out, res


def compare(a: list[float], b: list[float]) -> str:
    """``beats`` / ``does not beat`` when the seed ranges are disjoint, else ``overlaps``."""
    if max(a) < min(b):
        return "beats"
    return "does not beat" if min(a) > max(b) else "overlaps"


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.4f}" + (f" [{min(values):.4f}, {max(values):.4f}]" if len(values) > 1 else "")


def verdict(res: dict, objectives) -> list[str]:
    lines = ["A verdict is called only where the seed ranges are disjoint; else the two overlap (no clear difference)."]
    for name in (o for o in objectives if o != "dmd"):
        for steps in STEPS:
            d, euler = res[(name, steps)], res[("teacher (Euler)", steps)]
            line = f"- {name} {steps}-step: SW2 {_fmt(d)}"
            if "dmd" in objectives:
                line += f"; {compare(d, res[('dmd', steps)])} DMD ({_fmt(res[('dmd', steps)])})"
            line += f"; {compare(d, euler)} the teacher's Euler-{steps} ({_fmt(euler)})"
            lines.append(line)
    if "dmd2" in objectives:
        own, noised = res[("dmd2", 4)], res[("dmd2 (noised data)", 4)]
        result = compare(own, noised)
        reading = "the two overlap" if result == "overlaps" else f"backward simulation {result} its absence"
        lines.append(f"- dmd2 4-step with backward simulation {_fmt(own)} vs without {_fmt(noised)}: {reading}")
    return lines


def main() -> int:
    parser = harness_parser(__doc__, OBJECTIVES, "docs/results/zoo_adversarial.md")
    parser.set_defaults(steps=600)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per cell")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table, res = rows(args)
    write_page(args, "Distribution matching and adversarial objectives on the ground-truth harness",
               "zoo_adversarial_table.py",
               "| objective | steps | student inputs | SW2 to data | vs DMD | train s |", table,
               verdict(res, args.objectives))
    return 0


if __name__ == "__main__":
    sys.exit(main())
