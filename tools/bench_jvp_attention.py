"""Attention output + forward-mode tangent (jvp_attention.py) against one SDPA forward, at the Wan2.1 shape.

    python tools/bench_jvp_attention.py                        # GPU, Wan-1.3B: 12 heads x 128, bf16, cuDNN reference
    python tools/bench_jvp_attention.py --device cpu --small   # proves the script runs (math SDPA reference)

Cases (``--cases``): ``cache`` (one chunk of ``frames_per_chunk x tokens_per_frame`` queries against the whole
video's keys: Lq 4680, Lk 32760), ``full`` (32760 x 32760, no mask), ``block`` (32760 x 32760 with the
block-causal chunk mask). Columns: one SDPA forward (``cudnn`` on CUDA, ``math`` on CPU; the block case runs it
per query chunk over the key prefix, as ``masked_sdpa``), ``fused`` = ``attention_with_tangent`` (O and dO in one
pass; the target is at most 2.5x one cuDNN forward), ``func.jvp`` = ``torch.func.jvp`` through ``jvp_attention``
(SDPA forward + the fused pass). FLOPs count attended query-key pairs: forward ``4 D`` per pair, fused ``10 D``
(five matmuls). ``--check`` compares the fused result with the fp32 dense formulas on one head.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.bench_common import (add_common_args, budget, dump_json, env_info, free_memory,  # noqa: E402
                                markdown_table, parse_device, peak_memory_gib, short_error, tflops, time_ms)
from vidforce.models.jvp_attention import (attention_with_tangent, dense_tangent, jvp_attention,  # noqa: E402
                                           key_limits, masked_sdpa, triton_runs)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
COLUMNS = ["case", "Lq", "Lk", "mask", "kernel", "sdpa fwd ms", "fused ms", "fused / fwd", "func.jvp ms",
           "func.jvp / fwd", "fused TFLOP/s", "peak GiB", "rel err O", "rel err dO", "note"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--small", action="store_true", help="2 heads x 32, 8 tokens per frame (CPU smoke run)")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--tokens-per-frame", type=int, default=1560)
    p.add_argument("--frames-per-chunk", type=int, default=3)
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--cases", default="cache,full,block", help="comma-separated subset of cache,full,block")
    p.add_argument("--check", action="store_true", help="also compare with the fp32 dense formulas on one head")
    args = p.parse_args()
    if args.small:
        args.heads, args.head_dim, args.tokens_per_frame = 2, 32, 8
    return args


def shapes(args) -> list[tuple[str, int, int, int]]:
    """(case, Lq, Lk, chunk) for the requested cases."""
    chunk_tokens = args.frames_per_chunk * args.tokens_per_frame
    total = args.frames * args.tokens_per_frame
    table = {"cache": (chunk_tokens, total, 0), "full": (total, total, 0), "block": (total, total, chunk_tokens)}
    out = []
    for name in args.cases.split(","):
        if name not in table:
            raise SystemExit(f"--cases: unknown case {name!r} (cache, full, block)")
        out.append((name, *table[name]))
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b).norm() / b.norm()).item()


def check(q, k, v, tq, tk, tv, chunk) -> tuple[float, float]:
    """Relative error of the fused (O, dO) of head 0 against the dense fp32 formulas."""
    head = [t[:1, :1] for t in (q, k, v, tq, tk, tv)]
    out, tangent = attention_with_tangent(*head, chunk=chunk)
    ref_out, ref_tangent = dense_tangent(*(t.float() for t in head), chunk=chunk)
    return rel_err(out, ref_out), rel_err(tangent, ref_tangent)


def run_case(args, device, dtype, name, lq, lk, chunk) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    shape = lambda n: (args.batch, args.heads, n, args.head_dim)  # noqa: E731
    q, tq = (torch.randn(shape(lq), generator=g, device=device, dtype=dtype) for _ in range(2))
    k, v, tk, tv = (torch.randn(shape(lk), generator=g, device=device, dtype=dtype) for _ in range(4))
    pairs = int(key_limits(lq, lk, chunk).sum()) * args.batch * args.heads
    backend = SDPBackend.CUDNN_ATTENTION if device.type == "cuda" else SDPBackend.MATH
    warm, rep = budget(args)
    row = {"case": name, "Lq": lq, "Lk": lk, "mask": "block-causal" if chunk else "none",
           "kernel": "triton" if triton_runs(q) else "dense torch"}

    def sdpa_fwd():
        with sdpa_kernel([backend]):
            return masked_sdpa(q, k, v, chunk)

    fused = lambda: attention_with_tangent(q, k, v, tq, tk, tv, chunk=chunk)  # noqa: E731
    func_jvp = lambda: torch.func.jvp(lambda a, b, c: jvp_attention(a, b, c, chunk=chunk), (q, k, v),  # noqa: E731
                                      (tq, tk, tv))
    with torch.no_grad():
        row["sdpa fwd ms"] = time_ms(sdpa_fwd, device, warm, rep)
        row["fused ms"] = time_ms(fused, device, warm, rep)
        row["func.jvp ms"] = time_ms(func_jvp, device, warm, rep)
        row["peak GiB"] = peak_memory_gib(fused, device)
        if args.check:
            row["rel err O"], row["rel err dO"] = check(q, k, v, tq, tk, tv, chunk)
    row["fused / fwd"] = row["fused ms"] / row["sdpa fwd ms"]
    row["func.jvp / fwd"] = row["func.jvp ms"] / row["sdpa fwd ms"]
    row["fused TFLOP/s"] = tflops(10 * args.head_dim * pairs, row["fused ms"])
    target = "meets 2.5x" if row["fused / fwd"] <= 2.5 else "above 2.5x"
    row["note"] = target if device.type == "cuda" else "CPU smoke run"
    return row


def main() -> None:
    args = parse_args()
    device = parse_device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    rows = []
    for name, lq, lk, chunk in shapes(args):
        try:
            rows.append(run_case(args, device, dtype, name, lq, lk, chunk))
        except (RuntimeError, ValueError) as err:          # out of memory, a kernel that refuses the shape
            free_memory(device)
            rows.append({"case": name, "Lq": lq, "Lk": lk, "note": short_error(err)})
        print(markdown_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    path = dump_json(args.out, "bench_jvp_attention", {"env": env_info(device), "args": vars(args), "rows": rows})
    print(f"\n{args.heads} heads x {args.head_dim}, {dtype}, batch {args.batch}; wrote {path}\n")
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
