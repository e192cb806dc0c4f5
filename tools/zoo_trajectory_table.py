"""Trajectory distillation (KD, Reflow rounds, progressive rounds) on the ground-truth harness (vidforce/toy): one
markdown table, printed and written.

    python tools/zoo_trajectory_table.py [--steps 3000] [--teacher-steps 4000] [--n 4000] [--seed 0]
        [--pairs 50000] [--ode-steps 512] [--rounds 2] [--round-steps 1000]
        [--objectives kd reflow progressive] [--out docs/results/zoo_trajectory.md]

Couplings: ``--pairs`` noise draws and the trained teacher's Euler ODE endpoints in ``--ode-steps`` steps (one pool
for KD and Reflow round 1; each later round makes its own from the previous round's flow). Distance: sliced W2
(256 fixed projections) of ``--n`` samples against a fresh data draw, and against the teacher's own ODE endpoints
of the same noise ("teacher ODE"); "RMS to teacher endpoint": per-coordinate RMS of each sample minus the teacher's
ODE endpoint of its own noise (the coupling a student was asked to keep). KD samples in one step; the teacher, the
Reflow rounds and the progressive students with their Euler sampler on the uniform grid. Progressive distillation
halves the teacher's 64 Euler steps round by round (``--round-steps`` optimisation steps each,
:mod:`vidforce.toy.progressive_train`); its 4-, 2- and 1-step students are reported. Guided distillation (stage 1: the
CFG teacher's ``v_u + 2 (v_c - v_u)`` in one call, then the same progressive rounds from it) runs on the ring split
into two classes of alternating modes (``LabelledGMM``) with a CFG teacher of its own, in a second table: its
reference is the guided teacher's 64-step samples of the same noise and class (guided samples are not the data
distribution), SW2 the mean over the classes; calls = network calls per sample.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.zoo_common import harness_parser, write_page  # noqa: E402
from vidforce.toy import metrics  # noqa: E402
from vidforce.toy.gmm import GMM  # noqa: E402
from vidforce.toy.progressive_train import RoundsConfig, guided_rows, train_progressive  # noqa: E402
from vidforce.toy.train import HarnessConfig, euler_sample, train_teacher  # noqa: E402
from vidforce.toy import trajectory_train  # noqa: E402
from vidforce.toy.trajectory_train import CouplingConfig, couplings, kd_sample, reflow_rounds, train_kd  # noqa: E402

OBJECTIVES = (*trajectory_train.OBJECTIVES, "progressive", "guided")

KD_MARGIN = 3.0        # pre-registered: KD 1-step SW2 at least 3x below the teacher's 1-step Euler
REFLOW_MARGIN = 2.0    # pre-registered: each Reflow round's 1- and 2-step SW2 at least 2x below the teacher's
PROGRESSIVE_MARGIN = 2.0   # the Reflow margin, for the 1- and 2-step progressive students (set after a first run)


def parser():
    c = CouplingConfig()
    p = harness_parser(__doc__, OBJECTIVES, "docs/results/zoo_trajectory.md")
    p.add_argument("--pairs", type=int, default=c.pairs)
    p.add_argument("--ode-steps", type=int, default=c.ode_steps)
    p.add_argument("--rounds", type=int, default=c.rounds)
    p.add_argument("--round-steps", type=int, default=RoundsConfig().steps, help="optimisation steps per progressive round")
    return p


def rows(args) -> tuple[list[str], dict]:
    torch.manual_seed(args.seed)
    gmm, h = GMM.ring(), HarnessConfig(steps=args.steps, teacher_steps=args.teacher_steps, seed=args.seed)
    c = CouplingConfig(pairs=args.pairs, ode_steps=args.ode_steps, rounds=args.rounds)
    g = torch.Generator().manual_seed(args.seed + 10)
    data = gmm.sample(args.n, g).float()
    noise = torch.randn(args.n, gmm.dim, generator=g)
    teacher, t_time = train_teacher(gmm, h)
    for p in teacher.parameters():
        p.requires_grad_(False)
    ode = euler_sample(teacher, noise, c.ode_steps)
    res = {"solver_rms": (euler_sample(teacher, noise, 2 * c.ode_steps) - ode).square().mean().sqrt().item()}
    out = []

    def add(name, steps, x, secs):
        d = metrics.sliced_w2(x, data)
        res[(name, steps)] = d
        rms = (x - ode).square().mean().sqrt().item()
        out.append(f"| {name} | {steps} | {d:.4f} | {metrics.sliced_w2(x, ode):.4f} | {rms:.4f} | {secs} |")

    for steps in (1, 2, 4, 64):
        add("teacher (Euler)", steps, euler_sample(teacher, noise, steps), f"{t_time:.1f}" if steps == 1 else "")
    start = time.perf_counter()
    pool = couplings(teacher, c.pairs, gmm.dim, c.ode_steps, torch.Generator().manual_seed(args.seed + 20))
    res["pairs_s"] = time.perf_counter() - start
    if "kd" in args.objectives:
        net, secs = train_kd(teacher, *pool, h)
        add("kd", 1, kd_sample(net, noise), f"{secs:.1f}")
    if "reflow" in args.objectives:
        for k, (net, secs) in enumerate(reflow_rounds(teacher, pool, h, c), start=1):
            for steps in (1, 2, 4):
                add(f"reflow round {k}", steps, euler_sample(net, noise, steps), f"{secs:.1f}" if steps == 1 else "")
    if "progressive" in args.objectives:
        students = train_progressive(teacher, gmm, h, RoundsConfig(steps=args.round_steps))
        total = sum(secs for _, secs in students.values())
        for steps in (4, 2, 1):
            add("progressive", steps, euler_sample(students[steps][0], noise, steps),
                f"{total:.1f} (all rounds)" if steps == 4 else "")
    if "guided" in args.objectives:
        res["guided"] = guided_rows(args.teacher_steps, args.steps, args.n, args.seed, args.round_steps)
    return out, res


def guided_table(rows: list[tuple[str, int, float, int, float]]) -> list[str]:
    """The guided rows (:func:`guided_rows`) as their own table, and the reading of its 1- and 2-step rows."""
    lines = ["", "Guided distillation (two classes, w = 2 in the `uncond` convention):", "",
             "| row | steps | SW2 to the guided teacher (64 steps) | calls / sample | train s |",
             "|---|---|---|---|---|"]
    shown = set()
    for name, steps, d, calls, secs in rows:
        lines.append(f"| {name} | {steps} | {d:.4f} | {calls} | {'' if name in shown else f'{secs:.1f}'} |")
        shown.add(name)
    at = {(name, steps): d for name, steps, d, _, _ in rows}
    if ("guided + progressive", 1) in at:
        g1, g2 = at[("teacher (guided Euler)", 1)], at[("teacher (guided Euler)", 2)]
        p1, p2 = at[("guided + progressive", 1)], at[("guided + progressive", 2)]
        lines += ["", f"- guided + progressive: 1 step (1 call) {p1:.4f} = {g1 / p1:.1f}x below the guided teacher's "
                  f"1-step Euler (2 calls), 2 steps {p2:.4f} = {g2 / p2:.1f}x below its 2-step Euler; the stage-1 "
                  f"student alone at 64 steps is {at[('guided student', 64)]:.4f} from the guided teacher (the "
                  f"unguided teacher: {at[('teacher (unguided Euler)', 64)]:.4f})"]
    return lines


def verdict(res: dict, args) -> list[str]:
    e1, e2 = res[("teacher (Euler)", 1)], res[("teacher (Euler)", 2)]
    lines = [f"- couplings: {args.pairs} pairs by {args.ode_steps} Euler steps in {res['pairs_s']:.1f} s; their "
             f"solver error (RMS against {2 * args.ode_steps} steps, per coordinate) {res['solver_rms']:.5f}"]
    if ("kd", 1) in res:
        d = res[("kd", 1)]
        lines.append(f"- kd: 1-step SW2 {d:.4f} = {e1 / d:.1f}x below Euler-1: "
                     f"{'meets' if d * KD_MARGIN <= e1 else 'MISSES'} the target (>= {KD_MARGIN:g}x below Euler-1)")
    k = 1
    while (f"reflow round {k}", 1) in res:
        d1, d2 = res[(f"reflow round {k}", 1)], res[(f"reflow round {k}", 2)]
        ok = d1 * REFLOW_MARGIN <= e1 and d2 * REFLOW_MARGIN <= e2
        lines.append(f"- reflow round {k}: 1-step SW2 {d1:.4f} = {e1 / d1:.1f}x below Euler-1, 2-step {d2:.4f} = "
                     f"{e2 / d2:.1f}x below Euler-2: {'meets' if ok else 'MISSES'} the target (both >= "
                     f"{REFLOW_MARGIN:g}x below the teacher's Euler at the same steps)")
        k += 1
    if ("progressive", 1) in res:
        d1, d2 = res[("progressive", 1)], res[("progressive", 2)]
        ok = d1 * PROGRESSIVE_MARGIN <= e1 and d2 * PROGRESSIVE_MARGIN <= e2
        lines.append(f"- progressive: 1-step SW2 {d1:.4f} = {e1 / d1:.1f}x below Euler-1, 2-step {d2:.4f} = "
                     f"{e2 / d2:.1f}x below Euler-2: {'meets' if ok else 'MISSES'} the target (both >= "
                     f"{PROGRESSIVE_MARGIN:g}x below the teacher's Euler at the same steps)")
    return lines + (guided_table(res["guided"]) if "guided" in res else [])


def main() -> int:
    args = parser().parse_args()
    table, res = rows(args)
    write_page(args, "Trajectory distillation (KD, Reflow, progressive, guided) on the ground-truth harness",
               "zoo_trajectory_table.py",
               "| objective | steps | SW2 to data | SW2 to teacher ODE | RMS to teacher endpoint | train s |", table,
               verdict(res, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
