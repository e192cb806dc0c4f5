"""Real-time streaming benchmark at the Wan-1.3B shape (random weights: speed does not depend on them).

A Wan-1.3B-shaped causal DiT and a full-size WanVAE, 832x480 (latents 60x104, 1560 tokens per frame),
4 denoising steps, chunks of 3 latent frames, bf16. For each cache window (default 21 and 12, sink 3)
it streams ``--chunks`` chunks through ``vidforce.streaming.Streamer`` -- the same code path as
``vidforce generate`` -- and reports end-to-end frames/s (decode included), latency to the first frame,
per-chunk DiT and decode time, peak memory, and the compute floor (DiT FLOPs per chunk over the
measured bf16 matmul rate).

    python tools/bench_stream.py --out $OUT/stream [--windows 21,12] [--chunks 14] [--compile]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.bench_common import dump_json, env_info, markdown_table  # noqa: E402
from vidforce.config import MODEL_PRESETS, ModelConfig, arch_of  # noqa: E402
from vidforce.models.causal import CausalWan  # noqa: E402
from vidforce.models.codecs.wan_vae import WanVAE  # noqa: E402
from vidforce.sampling import Sampler  # noqa: E402
from vidforce.streaming import Streamer  # noqa: E402


class RandomText:
    """Stands in for umT5: a fixed random ``[1, text_len, text_dim]`` embedding."""

    def __init__(self, text_len: int, dim: int, device):
        self.emb = torch.randn(1, text_len, dim, device=device)

    def encode(self, prompts):
        return self.emb.expand(len(prompts), -1, -1)


def dit_flops_per_chunk(arch, tokens: int, keys: int, passes: int) -> float:
    """Matmul FLOPs of one chunk: ``passes`` forwards (steps + refresh) of ``tokens`` queries vs ``keys``."""
    d, f, layers = arch.dim, arch.ffn_dim, arch.num_layers
    linear = 2 * tokens * (4 * d * d + 2 * d * d + 2 * d * f) * layers
    attn = 4 * tokens * keys * d * layers + 4 * tokens * arch.text_len * d * layers
    head = 2 * tokens * d * arch.out_dim * 4
    return passes * (linear + attn + head)


def matmul_tflops(device) -> float:
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 20 * 2 * 8192 ** 3 / (start.elapsed_time(end) / 1e3) / 1e12


def profile_chunks(stream, window: int, out: str) -> None:
    """Print the top CUDA kernels of a short steady-state stream (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        stream(window // 3 + 2)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"profile_w{window}.txt").write_text(table)
    print(table)


def run_window(args, window: int, sink: int, vae, peak_tflops: float) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    arch = arch_of(ModelConfig(**MODEL_PRESETS[args.preset]))
    lh, lw = args.latent
    torch.manual_seed(0)
    with torch.device(device):
        model = CausalWan(arch, 3, window, sink, args.rope_mode, args.attention).to(dtype).eval()
    if args.compile:
        model.compile_blocks(dynamic=False)
    sampler = Sampler((1.0, 0.9375, 0.8333, 0.625), 0.0)
    text = RandomText(arch.text_len, arch.text_dim, device)

    def stream(chunks):
        s = Streamer(model, vae, text, sampler, (lh, lw), 0, device, dtype)
        for _ in s.frames(3 * chunks, [(0, "a")]):
            pass
        return s.stats
    stream(max(2, window // 3 + 1))                        # warm-up: kernels, autotune, compile
    if args.profile:
        profile_chunks(stream, window, args.out)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    st = stream(args.chunks)
    steady = slice(window // 3 + 1, None)                  # chunks with a full window
    dit, dec = st.chunk_dit_s[steady], st.chunk_decode_s[steady]
    frames_per_chunk = 12                                  # 3 latent frames x 4 pixel frames
    tpf = lh * lw // 4
    flops = dit_flops_per_chunk(arch, 3 * tpf, window * tpf, 5)
    chunk_s = statistics.median(dit) + statistics.median(dec)
    return {"window": window, "sink": sink, "fps_end_to_end": st.fps, "fps_steady": frames_per_chunk / chunk_s,
            "first_frame_s": st.first_frame_s, "dit_ms": 1e3 * statistics.median(dit),
            "decode_ms": 1e3 * statistics.median(dec), "peak_gib": st.peak_memory_bytes / 2 ** 30,
            "dit_tflop_per_chunk": flops / 1e12, "dit_floor_ms": 1e3 * flops / (peak_tflops * 1e12),
            "dit_achieved_tflops": flops / statistics.median(dit) / 1e12, "frames": st.frames}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="bench_out")
    p.add_argument("--device", default="cuda")
    p.add_argument("--windows", default="21,12")
    p.add_argument("--sink", type=int, default=3)
    p.add_argument("--chunks", type=int, default=14)
    p.add_argument("--attention", default="auto")
    p.add_argument("--rope-mode", default="absolute")
    p.add_argument("--compile", action="store_true", help="torch.compile the pure-tensor halves of each block")
    p.add_argument("--profile", action="store_true", help="print the top CUDA kernels per window")
    p.add_argument("--preset", default="wan2.1-t2v-1.3b", help="tiny: a CPU smoke run of this script")
    p.add_argument("--latent", type=lambda v: tuple(int(x) for x in v.split("x")), default=(60, 104),
                   help="latent HxW (60x104 = 480x832 pixels)")
    p.add_argument("--vae-dim", type=int, default=96, help="WanVAE base dim (96 = the real one)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True                  # VAE convolutions: pick the fastest algorithms
    peak = matmul_tflops(device)
    vae = WanVAE(dim=args.vae_dim).to(device, torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    rows = [run_window(args, int(w), args.sink, vae, peak) for w in args.windows.split(",")]
    dump_json(args.out, "stream", {"env": env_info(device), "matmul_tflops": peak, "compile": args.compile,
                                   "attention": args.attention, "rows": rows})
    print(f"bf16 matmul {peak:.0f} TFLOP/s; compile={args.compile}")
    print(markdown_table(rows, ["window", "sink", "fps_end_to_end", "fps_steady", "first_frame_s", "dit_ms",
                                "decode_ms", "dit_floor_ms", "dit_achieved_tflops", "peak_gib"]))


if __name__ == "__main__":
    main()
