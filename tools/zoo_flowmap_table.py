"""Flow-map objectives on the ground-truth harness (vidforce/toy): one markdown table, printed and written.

    python tools/zoo_flowmap_table.py [--steps 3000] [--teacher-steps 4000] [--n 4000] [--seed 0]
        [--objectives meanflow shortcut flowmap_lagrangian flowmap_eulerian flowmap_semigroup]
        [--out docs/results/zoo_flowmap.md]

Distance: sliced W2 (256 fixed projections) between 1/2/4-step samples (chained jumps on the uniform grid) and
a fresh data draw of the same size, beside the teacher's Euler at 1/2/4/64 steps. Map error: RMS per coordinate
of ``X_theta(x_t, t, s)`` against the oracle RK4 map at random ``t ~ U(0, 1]``, ``s ~ U[0, t]``; "init" is the
same error of the untrained student (the same seed, before its first step); the teacher's row is its one-step
Euler jump ``x - (t - s) v(x, t)`` (and 64 / 4 / 2 equal Euler steps from t to s on its other rows).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.zoo_common import harness_parser, write_page  # noqa: E402
from vidforce.config import ObjectiveConfig  # noqa: E402
from vidforce.toy import metrics  # noqa: E402
from vidforce.toy.flowmap_train import OBJECTIVES, map_fn, sample, student_init, train_student  # noqa: E402
from vidforce.toy.gmm import GMM  # noqa: E402
from vidforce.toy.train import HarnessConfig, euler_sample, flow_of, train_teacher  # noqa: E402


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


@torch.no_grad()
def _euler_map(teacher, x, t, s, steps):
    """The teacher's Euler map ``t -> s`` in ``steps`` equal steps (per sample)."""
    flow, y = flow_of(teacher), x
    for i in range(steps):
        a, b = t + (s - t) * i / steps, t + (s - t) * (i + 1) / steps
        y = y + (b - a)[:, None] * flow(y, a)
    return y


def rows(args) -> tuple[list[str], dict]:
    torch.manual_seed(args.seed)
    gmm, h = GMM.ring(), HarnessConfig(steps=args.steps, teacher_steps=args.teacher_steps, seed=args.seed)
    ocfg = ObjectiveConfig()
    g = torch.Generator().manual_seed(args.seed + 10)
    data = gmm.sample(args.n, g).float()
    noise = torch.randn(args.n, gmm.dim, generator=g)
    teacher, t_time = train_teacher(gmm, h)
    out, res = [], {}

    def add(name, steps, x, init, err, secs):
        d = metrics.sliced_w2(x, data)
        res[(name, steps)] = d
        out.append(f"| {name} | {steps} | {d:.4f} | {_fmt(init)} | {_fmt(err)} | {secs} |")

    for steps in (1, 2, 4, 64):
        err = metrics.flow_map_error(lambda x, t, s: _euler_map(teacher, x, t, s, steps), gmm)
        add("teacher (Euler)", steps, euler_sample(teacher, noise, steps), None, err,
            f"{t_time:.1f}" if steps == 1 else "")
    for name in args.objectives:
        init = metrics.flow_map_error(map_fn(student_init(gmm, h)), gmm)
        net, secs = train_student(name, teacher, gmm, h, ocfg)
        err = metrics.flow_map_error(map_fn(net), gmm)
        res[(name, "init")], res[(name, "err")] = init, err
        for steps in (1, 2, 4):
            add(name, steps, sample(net, noise, steps), init if steps == 1 else None, err if steps == 1 else None,
                f"{secs:.1f}" if steps == 1 else "")
    return out, res


def verdict(res: dict, objectives) -> list[str]:
    e1 = res[("teacher (Euler)", 1)]
    lines = []
    for name in objectives:
        init, err, d = res[(name, "init")], res[(name, "err")], res[(name, 1)]
        line = f"- {name}: map error {err:.4f} = {init / err:.1f}x below its initial {init:.4f}"
        if name.startswith("flowmap_"):
            line += f": {'meets' if err * 5 <= init else 'MISSES'} the target (>= 5x below initial)"
        line += f"; 1-step SW2 {d:.4f} = {e1 / d:.1f}x below Euler-1"
        if name == "meanflow":
            line += f": {'meets' if d * 2 <= e1 else 'MISSES'} the target (>= 2x below Euler-1)"
        lines.append(line)
    return lines


def main() -> int:
    args = harness_parser(__doc__, OBJECTIVES, "docs/results/zoo_flowmap.md").parse_args()
    table, res = rows(args)
    write_page(args, "Flow-map objectives on the ground-truth harness", "zoo_flowmap_table.py",
               "| objective | steps | SW2 to data | init map err t->s | map err t->s | train s |", table,
               verdict(res, args.objectives))
    return 0


if __name__ == "__main__":
    sys.exit(main())
