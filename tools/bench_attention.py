"""Attention benchmark at the Wan2.1 shape: KV-cache reads and the block-causal full-sequence pass.

    python tools/bench_attention.py --out bench_out                       # GPU, Wan-1.3B: 12 heads x 128, bf16
    python tools/bench_attention.py --device cpu --quick --heads 2 --head-dim 16 --tokens-per-frame 16

(a) ``cache``: one chunk (frames_per_chunk x tokens_per_frame queries) against Lk = 1, 2, ... chunks of cached
    keys, through ``attention.attend`` with every dense backend that ``attention.available(device)`` lists.
(b) ``block``: all frames in one pass through ``causal.BlockCausalPlan`` as the model calls it (RoPE included;
    a ``rope`` row times RoPE alone): ``loop`` with each dense backend, ``flex``, ``dense`` with each dense
    backend (skipped where a backend refuses the mask or the scores do not fit).
Both forward (under no_grad) and forward+backward. Layouts follow the model: q/k/v come from ``[B, L, H, D]``
projections transposed to ``[B, H, L, D]``; cached keys are contiguous ``[B, H, L, D]``.

FLOPs count unmasked query-key pairs only: forward ``4 * B * H * D * sum_q Lk(q)`` with ``Lk(q)`` the keys query
``q`` may attend (block-causal: from ``causal.frame_mask``); forward+backward ``3.5x`` that (the backward is
2.5x the forward: it recomputes the scores). Masked work a kernel does anyway is not counted, so ``dense``
shows its waste as a lower rate. Prints ``auto=X fastest=Y`` per case, then a markdown table; writes
``bench_attention.json`` and ``bench_attention.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.bench_common import (add_common_args, budget, dump_json, env_info, free_memory,  # noqa: E402
                                markdown_table, parse_device, peak_memory_gib, short_error, tflops, time_ms)
from vidforce.models.attention import attend, available, flash_attn_func, resolve  # noqa: E402
from vidforce.models.causal import BlockCausalPlan, frame_mask  # noqa: E402
from vidforce.models.rope import Rope, apply_rope  # noqa: E402

MODES = ("fwd", "fwd+bwd")
FWD_BWD_FACTOR = 3.5
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
COLUMNS = ["case", "mode", "impl", "backend", "Lq", "Lk", "ms", "TFLOP/s", "peak GiB", "note"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--tokens-per-frame", type=int, default=1560)
    p.add_argument("--frames-per-chunk", type=int, default=3)
    p.add_argument("--frames", type=int, default=21, help="latent frames of the block-causal pass and max cache")
    p.add_argument("--window", type=int, default=0, help="block-causal rolling window (0 = whole video)")
    p.add_argument("--sink", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--cases", default="cache,block", help="comma-separated subset of cache,block")
    return p.parse_args()


def grid_of(tokens: int) -> tuple[int, int]:
    """A latent grid ``h x w`` with ``h * w = tokens`` (Wan 480x832: 30 x 52 for 1560)."""
    if tokens == 1560:
        return 30, 52
    h = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
    return h, tokens // h


def projected(b: int, length: int, h: int, d: int, device, dtype, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A leaf ``[B, L, H, D]`` and its ``[B, H, L, D]`` view (the layout of the model's projections)."""
    leaf = torch.randn(b, length, h, d, device=device, dtype=dtype).requires_grad_(grad)
    return leaf, leaf.transpose(1, 2)


def cached(b: int, length: int, h: int, d: int, device, dtype, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = torch.randn(b, h, length, d, device=device, dtype=dtype).requires_grad_(grad)
    return leaf, leaf


def measure(forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor], mode: str, device: torch.device,
            warm: float, rep: float) -> tuple[float, float | None]:
    """Median ms and peak GiB of ``forward`` (``fwd``: under no_grad) or forward + backward."""
    if mode == "fwd":
        def call():
            with torch.no_grad():
                return forward()
    else:
        grad_out = torch.randn_like(forward().detach())

        def call():
            forward().backward(grad_out)
    ms = time_ms(call, device, warm, rep, grad_to_none=leaves if mode != "fwd" else None)
    for t in leaves:
        t.grad = None
    return ms, peak_memory_gib(call, device)


def run_one(rows: list[dict], row: dict, forward_factory: Callable[[], tuple[Callable, list]], flops_fwd: float,
            device: torch.device, warm: float, rep: float) -> None:
    """Measure one (case, mode, impl, backend); a backend that errors is recorded as skipped with its reason."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            forward, leaves = forward_factory()
            ms, peak = measure(forward, leaves, row["mode"], device, warm, rep)
            flops = flops_fwd * (FWD_BWD_FACTOR if row["mode"] != "fwd" else 1.0)
            row.update({"ms": ms, "TFLOP/s": tflops(flops, ms), "peak GiB": peak, "flops": flops, "note": ""})
        except Exception as err:  # noqa: BLE001 (any backend failure is a result: skip and say why)
            why = [str(w.message) for w in caught if "not used because" not in str(w.message)
                   and "runtime disabled" not in str(w.message)]
            reason = "; ".join([short_error(err)] + why[:2])
            row.update({"ms": None, "TFLOP/s": None, "peak GiB": None, "note": "skipped: " + reason})
            print(f"  skip {row['case']} {row['mode']} {row['impl']}/{row['backend']} Lk={row['Lk']}: {reason}",
                  flush=True)
    free_memory(device)
    rows.append(row)
    if row["ms"] is not None:
        print(f"  {row['case']:5s} {row['mode']:7s} {row['impl']:5s} {row['backend']:10s} Lq={row['Lq']} "
              f"Lk={row['Lk']}: {row['ms']:.3f} ms {row['TFLOP/s'] or 0:.1f} TFLOP/s", flush=True)


def bench_cache(args, device, dtype, backends, warm, rep) -> list[dict]:
    """(a) one chunk of queries against a growing number of cached chunks."""
    b, h, d = args.batch, args.heads, args.head_dim
    lq = args.frames_per_chunk * args.tokens_per_frame
    chunks = list(range(1, args.frames // args.frames_per_chunk + 1))
    if args.quick:
        chunks = sorted({chunks[0], chunks[len(chunks) // 2], chunks[-1]})
    rows: list[dict] = []
    for mode in MODES:
        for n in chunks:
            lk = n * lq
            for name in backends:
                def factory(lk=lk, name=name, grad=mode != "fwd"):
                    ql, q = projected(b, lq, h, d, device, dtype, grad)
                    kl, k = cached(b, lk, h, d, device, dtype, grad)
                    vl, v = cached(b, lk, h, d, device, dtype, grad)
                    return (lambda: attend(q, k, v, name)), [ql, kl, vl]
                row = {"case": "cache", "mode": mode, "impl": "attend", "backend": name, "Lq": lq, "Lk": lk}
                run_one(rows, row, factory, 4.0 * b * h * d * lq * lk, device, warm, rep)
    return rows


def block_plans(args, device, backends) -> list[tuple[str, str, Callable[[], BlockCausalPlan]]]:
    """(impl, backend, plan factory) of every block-causal variant; a dense plan (its token mask) is built once."""
    hh, ww = grid_of(args.tokens_per_frame)
    rope = Rope(args.head_dim, max(1024, args.frames))
    built: dict[str, BlockCausalPlan] = {}

    def factory(impl: str, backend: str) -> Callable[[], BlockCausalPlan]:
        def make() -> BlockCausalPlan:
            if impl not in built:
                built[impl] = BlockCausalPlan(rope, args.frames, hh, ww, args.frames_per_chunk, args.window,
                                              args.sink, False, device, "auto", impl)
            plan = copy.copy(built[impl])
            plan.backend = backend
            return plan
        return make

    variants = [("loop", name) for name in backends] + [("flex", "flex")] + [("dense", name) for name in backends]
    return [(impl, backend, factory(impl, backend)) for impl, backend in variants]


def bench_block(args, device, dtype, backends, warm, rep) -> list[dict]:
    """(b) the full block-causal sequence through ``BlockCausalPlan`` (and RoPE alone, for reference)."""
    b, h, d, tpf = args.batch, args.heads, args.head_dim, args.tokens_per_frame
    length = args.frames * tpf
    pairs = int(frame_mask(args.frames, args.frames_per_chunk, args.window, args.sink).sum()) * tpf * tpf
    flops_fwd = 4.0 * b * h * d * pairs
    print(f"block-causal: {args.frames} frames x {tpf} tokens, chunk {args.frames_per_chunk}, window "
          f"{args.window or 'all'}, sink {args.sink}: {pairs / length:.0f} keys per query on average", flush=True)
    rows: list[dict] = []
    plans = block_plans(args, device, backends)
    for mode in MODES:
        grad = mode != "fwd"
        for impl, backend, make_plan in plans:
            def factory(make_plan=make_plan, grad=grad):
                plan = make_plan()
                (ql, q), (kl, k), (vl, v) = (projected(b, length, h, d, device, dtype, grad) for _ in range(3))
                return (lambda: plan(0, q, k, v)), [ql, kl, vl]
            row = {"case": "block", "mode": mode, "impl": impl, "backend": backend, "Lq": length, "Lk": length}
            run_one(rows, row, factory, flops_fwd, device, warm, rep)

        def rope_factory(grad=grad):
            plan = plans[0][2]()
            (ql, q), (kl, k) = (projected(b, length, h, d, device, dtype, grad) for _ in range(2))
            return (lambda: apply_rope(q, plan.cos, plan.sin) + apply_rope(k, plan.cos, plan.sin)), [ql, kl]
        row = {"case": "block", "mode": mode, "impl": "rope", "backend": "-", "Lq": length, "Lk": length}
        run_one(rows, row, rope_factory, 0.0, device, warm, rep)
        rows[-1]["TFLOP/s"] = None
    return rows


def auto_vs_fastest(rows: list[dict], device: torch.device) -> list[str]:
    """One ``auto=X fastest=Y`` line per case (cache: per Lk and mode; block: per mode, default impl loop)."""
    auto = resolve("auto", device)
    lines = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["impl"] != "rope":
            groups.setdefault((r["case"], r["mode"], r["Lk"]), []).append(r)
    for (case, mode, lk), group in groups.items():
        ok = [r for r in group if r["ms"] is not None]
        label = (lambda r: r["backend"]) if case == "cache" else (lambda r: f"{r['impl']}/{r['backend']}")
        want = auto if case == "cache" else f"loop/{auto}"
        mine = next((r for r in ok if label(r) == want), None)
        if not ok:
            lines.append(f"{case} {mode} Lk={lk}: auto={want} fastest=none (every backend skipped)")
            continue
        best = min(ok, key=lambda r: r["ms"])
        mine_ms = f"{mine['ms']:.3f} ms" if mine else "skipped"
        ratio = f", auto/fastest = {mine['ms'] / best['ms']:.2f}x" if mine else ""
        lines.append(f"{case} {mode} Lk={lk}: auto={want} ({mine_ms}) fastest={label(best)} "
                     f"({best['ms']:.3f} ms{ratio})")
    return lines


def main() -> None:
    args = parse_args()
    device, dtype = parse_device(args.device), DTYPES[args.dtype]
    warm, rep = budget(args)
    backends = available(device)
    env = env_info(device)
    env["flash_attn"] = "available" if flash_attn_func() is not None else "unavailable (package not importable)"
    print(f"device {env['device_name']} torch {env['torch']}; dense backends {backends}; auto -> "
          f"{resolve('auto', device)}; flash_attn: {env['flash_attn']}", flush=True)
    cases = set(args.cases.split(","))
    if not cases <= {"cache", "block"}:
        raise SystemExit(f"--cases must name cache and/or block, got {args.cases!r}")
    rows: list[dict] = []
    if "cache" in cases:
        rows += bench_cache(args, device, dtype, backends, warm, rep)
    if "block" in cases:
        rows += bench_block(args, device, dtype, backends, warm, rep)
    summary = auto_vs_fastest(rows, device)
    table = markdown_table(rows, COLUMNS)
    path = dump_json(args.out, "bench_attention", {"env": env, "args": vars(args), "summary": summary,
                                                   "flops_fwd_bwd_factor": FWD_BWD_FACTOR, "results": rows})
    path.with_suffix(".md").write_text("\n".join(summary) + "\n\n" + table + "\n")
    print("\n".join(summary))
    print()
    print(table)


if __name__ == "__main__":
    main()
