"""The objective zoo on the ground-truth harness (vidforce/toy): one markdown table, printed and written.

    python tools/zoo_table.py [--steps 3000] [--teacher-steps 4000] [--n 4000] [--seed 0]
        [--objectives cd ct lcm scm ctm] [--out docs/results/zoo.md]

Distance: sliced W2 (256 fixed projections) between 1/2/4-step samples and a fresh data draw of the same size;
flow-map error: RMS per coordinate against the oracle RK4 map (t -> 0 for every row; t -> s for CTM).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.zoo_common import harness_parser, write_page  # noqa: E402
from vidforce.config import ObjectiveConfig  # noqa: E402
from vidforce.toy import metrics  # noqa: E402
from vidforce.toy.gmm import GMM  # noqa: E402
from vidforce.toy.train import (OBJECTIVES, HarnessConfig, euler_sample, flow_of, map_fn, sample,  # noqa: E402
                                train_student, train_teacher)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def rows(args) -> tuple[list[str], dict]:
    torch.manual_seed(args.seed)
    gmm, h = GMM.ring(), HarnessConfig(steps=args.steps, teacher_steps=args.teacher_steps, seed=args.seed)
    ocfg = ObjectiveConfig()
    g = torch.Generator().manual_seed(args.seed + 10)
    data = gmm.sample(args.n, g).float()
    noise = torch.randn(args.n, gmm.dim, generator=g)
    teacher, t_time = train_teacher(gmm, h)
    out, dist = [], {}

    def add(name, steps, x, to0, tos, secs):
        d = metrics.sliced_w2(x, data)
        dist[(name, steps)] = d
        out.append(f"| {name} | {steps} | {d:.4f} | {_fmt(to0)} | {_fmt(tos)} | {secs} |")

    for steps in (1, 2, 4, 64):
        to0 = metrics.flow_map_error(lambda x, t, s: _euler_map(teacher, x, t, steps), gmm, to_zero=True)
        add("teacher (Euler)", steps, euler_sample(teacher, noise, steps), to0, None,
            f"{t_time:.1f}" if steps == 1 else "")
    for name in args.objectives:
        net, secs = train_student(name, teacher, gmm, h, ocfg)
        learned = map_fn(name, net)
        to0 = metrics.flow_map_error(lambda x, t, s: learned(x, t, torch.zeros_like(t)), gmm, to_zero=True)
        tos = metrics.flow_map_error(learned, gmm) if name == "ctm" else None
        for steps in (1, 2, 4):
            x = sample(name, net, noise, steps, ocfg.ctm.gamma, torch.Generator().manual_seed(args.seed + 20))
            add(name, steps, x, to0 if steps == 1 else None, tos if steps == 1 else None,
                f"{secs:.1f}" if steps == 1 else "")
    return out, dist


@torch.no_grad()
def _euler_map(teacher, x, t, steps):
    """The teacher's Euler map ``t -> 0`` in ``steps`` equal steps (per sample)."""
    flow, y = flow_of(teacher), x
    for i in range(steps):
        a, b = t * (1 - i / steps), t * (1 - (i + 1) / steps)
        y = y + (b - a)[:, None] * flow(y, a)
    return y


def verdict(dist: dict, objectives) -> list[str]:
    e1, e64 = dist[("teacher (Euler)", 1)], dist[("teacher (Euler)", 64)]
    lines = []
    for name in objectives:
        d = dist[(name, 1)]
        ok = d * 2 <= e1 and d <= 1.5 * e64
        lines.append(f"- {name}: 1-step {d:.4f} = {e1 / d:.1f}x below Euler-1, {d / e64:.2f}x Euler-64: "
                     f"{'meets' if ok else 'MISSES'} the target (>= 2x below Euler-1 and <= 1.5x Euler-64)")
    return lines


def main() -> int:
    args = harness_parser(__doc__, OBJECTIVES, "docs/results/zoo.md").parse_args()
    table, dist = rows(args)
    write_page(args, "Objective zoo on the ground-truth harness", "zoo_table.py",
               "| objective | steps | SW2 to data | map err t->0 | map err t->s | train s |", table,
               verdict(dist, args.objectives))
    return 0


if __name__ == "__main__":
    sys.exit(main())
