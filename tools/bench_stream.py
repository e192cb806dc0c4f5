"""Real-time streaming benchmark at the Wan-1.3B shape, lever by lever (random weights: speed does not depend on them).

A Wan-1.3B-shaped causal DiT, 832x480 (latents 60x104, 1560 tokens per frame), 4 denoising steps + the cache
refresh, chunks of 3 latent frames, bf16. Every row streams ``--chunks`` chunks (after a warm-up stream that fills
the window, compiles and captures) through ``vidforce.streaming.Streamer`` -- the code path of ``vidforce
generate`` -- and reports end-to-end frames/s (decode included), latency to the first frame, the steady chunk
period (host time from one chunk's frames to the next), per-chunk DiT and decode time (serial rows only: with
``overlap`` they run at once, and the steady FPS is that of the chunk period), the DiT compute floor (its FLOPs over
the measured bf16 matmul rate), peak memory, and the FPS over the ``base`` row of its window ("before / after" of
each lever).

A row is a *variant*: ``base`` (the plain path) or levers joined by ``+`` (``graphs+fused+buffers``):
  graphs   stream.cuda_graphs      chunk forwards replayed from CUDA graphs (vidforce/models/graphs.py)
  fused    stream.fused_refresh    each chunk's refresh inside the next chunk's first forward
  buffers  codec.decode_buffers    WanVAE stream decoding into preallocated frame buffers
  cl       codec.channels_last     WanVAE decoder convolutions in NDHWC
  taehv    codec.kind=taehv        the light TAEHV decoder instead of the full WanVAE
  fp8      stream.fp8=row          FP8 linears in the DiT blocks, per-row scales (fp8t: per-tensor); the
                                   relative error of a chunk's x0 against the unquantized model is reported
  overlap  stream.overlap_decode   each chunk's decode on a second CUDA stream during the next chunk's DiT
``--compile`` compiles the DiT blocks for every row. ``--generate VARIANTS`` adds rows of the real ``vidforce
generate`` (a subprocess: random weights, a random VAE / TAEHV checkpoint in a temporary directory, the mp4
written) at the first window, its printed throughput beside the bench row of the same variant. ``--serve
VARIANTS`` adds rows of ``vidforce serve --pace max`` (the same subprocess set-up) measured by the headless client
of ``tools/bench_serve.py``: frames per second reaching the client after ``--serve-warmup`` frames, for
``--serve-seconds``, and the prompt-switch latency (request to the first frame of the new prompt on the client)
every ``--switch-every`` seconds.

    python tools/bench_stream.py --out $OUT/stream --compile [--windows 21,12] [--chunks 14] \\
        [--variants VARIANTS] [--generate VARIANTS] [--serve VARIANTS]

``--variants`` (comma-separated) defaults to base, graphs, fused, buffers, buffers+cl, taehv, fp8,
graphs+fused+buffers+cl and graphs+fused+buffers+cl+overlap.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.bench_common import dump_json, env_info, free_memory, markdown_table, short_error  # noqa: E402
from vidforce.config import MODEL_PRESETS, ModelConfig, ScheduleConfig, arch_of  # noqa: E402
from vidforce.models import fp8  # noqa: E402
from vidforce.models.causal import CausalWan  # noqa: E402
from vidforce.models.codecs.taehv import TAEHV  # noqa: E402
from vidforce.models.codecs.wan_vae import WanVAE  # noqa: E402
from vidforce.models.graphs import GraphedChunks  # noqa: E402
from vidforce.sampling import Sampler, denoise_chunk  # noqa: E402
from vidforce.streaming import Streamer, filling_outputs  # noqa: E402

CHUNK = 3                                  # latent frames per chunk (12 pixel frames)
LEVERS = ("graphs", "fused", "buffers", "cl", "taehv", "fp8", "fp8t", "overlap")
FP8_MODE = {"fp8": "row", "fp8t": "tensor"}
OVERRIDES = {"graphs": ["stream.cuda_graphs=true"], "fused": ["stream.fused_refresh=true"],
             "buffers": ["codec.decode_buffers=true"], "cl": ["codec.channels_last=true"],
             "fp8": ["stream.fp8=row"], "fp8t": ["stream.fp8=tensor"], "overlap": ["stream.overlap_decode=true"]}
DEFAULT_VARIANTS = ("base,graphs,fused,buffers,buffers+cl,taehv,fp8,graphs+fused+buffers+cl,"
                    "graphs+fused+buffers+cl+overlap")


def parse_variant(name: str) -> frozenset[str]:
    """``base`` -> no lever; ``a+b`` -> {a, b}; unknown levers and fp8 with fp8t raise ``SystemExit``."""
    levers = frozenset() if name == "base" else frozenset(name.split("+"))
    unknown = sorted(levers - set(LEVERS))
    if unknown or {"fp8", "fp8t"} <= levers or ("taehv" in levers and levers & {"buffers", "cl"}):
        raise SystemExit(f"bad variant {name!r}: levers are {', '.join(LEVERS)} (one fp8 kind; buffers / cl are "
                         "WanVAE levers, not taehv's)")
    return levers


def fp8_mode(levers: frozenset[str]) -> str:
    """``stream.fp8`` of a variant."""
    return next((FP8_MODE[lv] for lv in levers if lv in FP8_MODE), "off")


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


def model_config(preset: str) -> ModelConfig:
    """The preset with WanVAE's 16 latent channels in and out."""
    return ModelConfig(**{**MODEL_PRESETS[preset], "preset": preset, "in_dim": 16, "out_dim": 16})


class Bench:
    """Models (plain and FP8, the same random weights), codecs and graph runners, built once and shared by rows."""

    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.arch = arch_of(model_config(args.preset))
        self.latent = args.latent
        self.text = RandomText(self.arch.text_len, self.arch.text_dim, device)
        self.sampler = Sampler.from_config(ScheduleConfig())
        self.models: dict[str, CausalWan] = {}
        self.runners: dict[str, GraphedChunks] = {}
        self.codecs: dict[tuple, object] = {}

    def model(self, levers: frozenset[str]) -> CausalWan:
        mode = fp8_mode(levers)
        if mode not in self.models:
            torch.manual_seed(0)                   # every model draws the same weights
            with torch.device(self.device):
                model = CausalWan(self.arch, CHUNK, 0, 0, self.args.rope_mode, self.args.attention)
            model = model.to(self.dtype).eval()
            fp8.quantize_linears(model, mode)
            if self.args.compile:
                model.compile_blocks(dynamic=False)
            self.models[mode] = model
            self.runners[mode] = GraphedChunks(model, capture=self.device.type == "cuda")
        return self.models[mode]

    def codec(self, levers: frozenset[str]):
        key = ("taehv",) if "taehv" in levers else ("buffers" in levers, "cl" in levers)
        if key not in self.codecs:
            torch.manual_seed(0)
            if key == ("taehv",):
                codec = TAEHV()
            else:
                codec = WanVAE(dim=self.args.vae_dim)
                codec.set_decode_layout(*key)
            self.codecs[key] = codec.to(self.device, self.dtype).eval()
        return self.codecs[key]

    def stream(self, levers: frozenset[str], window: int, sink: int, chunks: int):
        model = self.model(levers)
        model.window, model.sink = window, sink
        runner = self.runners[fp8_mode(levers)]
        s = Streamer(model, self.codec(levers), self.text, self.sampler, self.latent, 0, self.device, self.dtype,
                     runner=runner if "graphs" in levers else None, fused_refresh="fused" in levers,
                     overlap_decode="overlap" in levers)
        for _ in s.frames(CHUNK * chunks, [(0, "a")]):
            pass
        return s.stats

    @torch.no_grad()
    def fp8_error(self, levers: frozenset[str], window: int, sink: int) -> float:
        """Relative L2 error of the first chunk's x0 (all steps, the same noise) against the unquantized model."""
        lh, lw = self.latent
        noise = torch.randn(1, CHUNK, 16, lh, lw, generator=torch.Generator().manual_seed(1))
        noise = noise.to(self.device, self.dtype)
        outs = []
        for model in (self.model(frozenset()), self.model(levers)):
            model.window, model.sink = window, sink
            cache = model.new_cache(1, lh, lw, CHUNK, self.device, self.dtype)
            kv = model.text_kv(self.text.encode(["a"]).to(self.device, self.dtype))
            rng = torch.Generator(self.device).manual_seed(2)
            outs.append(denoise_chunk(model, noise, cache, 0, kv, self.sampler, self.sampler.last, False, rng).float())
        return ((outs[1] - outs[0]).norm() / outs[0].norm()).item()


def run_row(bench: Bench, name: str, window: int, sink: int, peak_tflops: float) -> dict:
    args, levers = bench.args, parse_variant(name)
    bench.stream(levers, window, sink, window // CHUNK + 2)     # warm-up: fills the window, compiles, captures
    if args.profile:
        profile_chunks(lambda n: bench.stream(levers, window, sink, n), f"{name}_w{window}", window, args.out)
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)
    st = bench.stream(levers, window, sink, args.chunks)
    steady = slice(filling_outputs(window, CHUNK), None)       # chunks with a full window
    chunk_s = st.steady_period(steady.start)
    lh, lw = bench.latent
    tpf = lh * lw // 4
    flops = dit_flops_per_chunk(bench.arch, CHUNK * tpf, window * tpf, len(bench.sampler.sigmas) + 1)
    floor_ms = 1e3 * flops / (peak_tflops * 1e12)
    row = {"window": window, "sink": sink, "variant": name, "fps_end_to_end": st.fps,
           "fps_steady": st.fps_steady(steady.start), "chunk_ms": 1e3 * chunk_s, "first_frame_s": st.first_frame_s,
           "dit_ms": None, "decode_ms": None, "dit_floor_ms": floor_ms, "dit_vs_floor": None,
           "dit_achieved_tflops": None}
    if st.chunk_dit_s:                                         # serial: the DiT and the decode timed apart
        dit_s = statistics.median(st.chunk_dit_s[steady] or st.chunk_dit_s)
        dec_s = statistics.median(st.chunk_decode_s[steady] or st.chunk_decode_s)
        row.update(fps_steady=CHUNK * 4 / (dit_s + dec_s), dit_ms=1e3 * dit_s, decode_ms=1e3 * dec_s,
                   dit_vs_floor=1e3 * dit_s / floor_ms, dit_achieved_tflops=flops / dit_s / 1e12)
    return {**row, "peak_gib": st.peak_memory_bytes / 2 ** 30,
            "fp8_rel_err": bench.fp8_error(levers, window, sink) if levers & set(FP8_MODE) else None,
            "frames": st.frames}


def safe_row(bench: Bench, name: str, window: int, sink: int, peak_tflops: float) -> dict:
    """:func:`run_row`, or the row's error (one line) so that one failing lever does not end the run."""
    try:
        return run_row(bench, name, window, sink, peak_tflops)
    except Exception as err:  # noqa: BLE001 (reported in the table, the other rows still run)
        free_memory(bench.device)
        print(f"row {name} (window {window}) failed: {short_error(err)}", file=sys.stderr)
        return {"window": window, "sink": sink, "variant": name, "error": short_error(err)}


def profile_chunks(stream, name: str, window: int, out: str) -> None:
    """Print the top CUDA kernels of a short steady-state stream (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        stream(window // CHUNK + 2)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"profile_{name}.txt").write_text(table)
    print(table)


def generate_config(args, levers: frozenset[str], window: int, sink: int, codec_path: Path, device) -> list[str]:
    """``key=value`` overrides that make ``vidforce generate`` stream what a bench row streams."""
    lh, lw = args.latent
    out = [f"model.preset={args.preset}", "model.in_dim=16", "model.out_dim=16", f"causal.frames_per_chunk={CHUNK}",
           f"causal.window={window}", f"causal.sink={sink}",
           f"causal.rope_mode={args.rope_mode}", f"causal.attention={args.attention}",
           f"data.latent_height={lh}", f"data.latent_width={lw}", "data.fps=16", "text.encoder=tiny",
           f"codec.kind={'taehv' if 'taehv' in levers else 'wan_vae'}", f"codec.path={codec_path}",
           f"train.device={device.type}", f"train.precision={'bf16' if device.type == 'cuda' else 'fp32'}",
           "logging.wandb=false"]
    return out + [o for lv in sorted(levers) for o in OVERRIDES.get(lv, [])]


GENERATE_RESULT = re.compile(r"latency to first frame ([\d.]+) s \| throughput ([\d.]+) frames/s \| "
                             r"after the first chunk ([\d.]+|nan) frames/s \| steady ([\d.]+|nan) frames/s \| "
                             r"peak memory ([\d.]+) GiB")


def cli_command(args, command: str, name: str, window: int, sink: int, device, tmp: Path) -> list[str]:
    """The ``vidforce COMMAND`` command line (``generate`` or ``serve``, random weights) that streams what the
    bench row ``name`` streams, with a random VAE / TAEHV checkpoint and an empty config written into ``tmp``."""
    levers = parse_variant(name)
    codec_path = tmp / ("taew2_1.safetensors" if "taehv" in levers else "wan_vae.safetensors")
    if not codec_path.exists():
        from safetensors.torch import save_file  # noqa: PLC0415
        codec = TAEHV() if "taehv" in levers else WanVAE()
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        save_file({k: v.to(dtype).contiguous() for k, v in codec.state_dict().items()}, codec_path)
    (tmp / "none.yaml").write_text("{}\n")
    return [sys.executable, "-m", "vidforce.cli", command, "--config", str(tmp / "none.yaml"), "--random-weights",
            *(["--compile"] if args.compile else []), *generate_config(args, levers, window, sink, codec_path, device)]


def bench_fps(bench_rows: list[dict], name: str, window: int) -> float | None:
    """End-to-end FPS of the bench row of variant ``name`` at ``window`` (None when it did not run)."""
    return next((r.get("fps_end_to_end") for r in bench_rows if r["variant"] == name and r["window"] == window), None)


def generate_row(args, name: str, window: int, sink: int, device, tmp: Path, bench_rows: list[dict]) -> dict:
    """Run ``vidforce generate`` (random weights) for ``--generate-seconds`` with the variant's levers."""
    mp4 = tmp / f"generate_{name.replace('+', '_')}_w{window}.mp4"
    cmd = [*cli_command(args, "generate", name, window, sink, device, tmp), "--prompt",
           "a red fox running through fresh snow", "--seconds", str(args.generate_seconds), "--out", str(mp4)]
    row = {"window": window, "sink": sink, "variant": f"generate:{name}"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=args.generate_timeout)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"vidforce generate ran past --generate-timeout {args.generate_timeout} s"}
    row.update(wall_s=time.perf_counter() - t0, returncode=proc.returncode)
    found = GENERATE_RESULT.search(proc.stdout)
    if proc.returncode or not found:
        print(f"vidforce generate failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return {**row, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    written = re.search(r"wrote (\d+) frames", proc.stdout)
    bench = bench_fps(bench_rows, name, window)
    fps = float(found.group(2))
    return {**row, "first_frame_s": float(found.group(1)), "fps_end_to_end": fps,
            "fps_after_first": float(found.group(3)), "fps_steady": float(found.group(4)),
            "peak_gib": float(found.group(5)),
            "frames": int(written.group(1)) if written else None, "mp4_bytes": mp4.stat().st_size,
            "vs_bench": fps / bench if bench else None}


def free_port() -> int:
    """A TCP port free on localhost now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_row(args, name: str, window: int, sink: int, device, tmp: Path, bench_rows: list[dict]) -> dict:
    """Run ``vidforce serve --pace max`` (random weights) with the variant's levers and measure it with
    ``tools/bench_serve.py``'s client; the server is stopped with SIGTERM after the measurement."""
    from tools.bench_serve import measure  # noqa: PLC0415 (aiohttp: only for these rows)
    port = free_port()
    cmd = [*cli_command(args, "serve", name, window, sink, device, tmp), "--pace", "max", "--port", str(port),
           "--prompt", "a red fox running through fresh snow"]
    row = {"window": window, "sink": sink, "variant": f"serve:{name}"}
    log = tmp / f"serve_{name.replace('+', '_')}_w{window}.log"
    client = argparse.Namespace(url=f"http://127.0.0.1:{port}", seconds=args.serve_seconds,
                                warmup_frames=args.serve_warmup, switch_every=args.switch_every,
                                prompts=["a red fox running through fresh snow", "a corgi surfing at sunset",
                                         "a paper boat on a rainy street"], wait=args.generate_timeout)
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            result = asyncio.run(measure(client))
        except (OSError, RuntimeError, asyncio.TimeoutError) as err:
            print(f"vidforce serve row failed: {short_error(err)}\n{log.read_text()[-3000:]}")
            return {**row, "error": short_error(err)}
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    bench = bench_fps(bench_rows, name, window)
    switches = result["switches"]
    server_ms = [s["server_ms"] for s in switches if s.get("server_ms") is not None]
    return {**row, "fps_end_to_end": result["fps_to_client"], "vs_bench": result["fps_to_client"] / bench if bench
            else None, "frames": result["frames"], "switches": len(switches),
            "switch_client_ms": result["switch_client_ms_median"],
            "switch_server_ms": statistics.median(server_ms) if server_ms else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_out")
    p.add_argument("--device", default="cuda")
    p.add_argument("--windows", default="21,12")
    p.add_argument("--sink", type=int, default=3)
    p.add_argument("--chunks", type=int, default=14, help="chunks of every timed stream")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="comma-separated rows: base or levers joined by + ('': none, only --generate / --serve rows)")
    p.add_argument("--generate", default="", help="variants to run through `vidforce generate` (first window)")
    p.add_argument("--generate-seconds", type=float, default=20.0, help="video length of each generate row")
    p.add_argument("--generate-timeout", type=float, default=300.0, help="seconds before a generate row is given up")
    p.add_argument("--serve", default="", help="variants to run through `vidforce serve --pace max` (first window)")
    p.add_argument("--serve-seconds", type=float, default=30.0, help="measured seconds of each serve row")
    p.add_argument("--serve-warmup", type=int, default=120, help="frames a serve row skips before measuring")
    p.add_argument("--switch-every", type=float, default=8.0, help="seconds between a serve row's prompt switches")
    p.add_argument("--attention", default="auto")
    p.add_argument("--rope-mode", default="absolute")
    p.add_argument("--compile", action="store_true", help="torch.compile the pure-tensor halves of each block")
    p.add_argument("--profile", action="store_true", help="print the top CUDA kernels per row")
    p.add_argument("--preset", default="wan2.1-t2v-1.3b", help="tiny: a CPU smoke run of this script")
    p.add_argument("--latent", type=lambda v: tuple(int(x) for x in v.split("x")), default=(60, 104),
                   help="latent HxW (60x104 = 480x832 pixels)")
    p.add_argument("--vae-dim", type=int, default=96, help="WanVAE base dim of the bench rows (96 = the real one)")
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    generated = [v for v in args.generate.split(",") if v]
    served = [v for v in args.serve.split(",") if v]
    for name in variants + generated + served:
        parse_variant(name)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True                  # VAE convolutions: pick the fastest algorithms
    peak = matmul_tflops(device)
    bench = Bench(args, device) if variants else None     # --variants '': only generate / serve rows
    windows = [int(w) for w in args.windows.split(",")]
    rows = [safe_row(bench, name, w, args.sink, peak) for w in windows for name in variants]
    for row in rows:
        base = next((r for r in rows if r["window"] == row["window"] and r["variant"] == "base"), None)
        ok = base is not None and "error" not in base and "error" not in row
        row["vs_base"] = row["fps_end_to_end"] / base["fps_end_to_end"] if ok else None
    del bench                                              # the generate rows run in a process of their own
    free_memory(device)
    with tempfile.TemporaryDirectory() as tmp:
        gen_rows = [generate_row(args, name, windows[0], args.sink, device, Path(tmp), rows) for name in generated]
        serve_rows = [serve_row(args, name, windows[0], args.sink, device, Path(tmp), rows) for name in served]
    dump_json(args.out, "stream", {"env": env_info(device), "matmul_tflops": peak, "compile": args.compile,
                                   "attention": args.attention, "rows": rows, "generate_rows": gen_rows,
                                   "serve_rows": serve_rows})
    print(f"bf16 matmul {peak:.0f} TFLOP/s; compile={args.compile}")
    print(markdown_table(rows, ["window", "variant", "fps_end_to_end", "vs_base", "fps_steady", "chunk_ms",
                                "first_frame_s", "dit_ms", "decode_ms", "dit_floor_ms", "dit_vs_floor", "peak_gib",
                                "fp8_rel_err", "error"]))
    if gen_rows:
        print(markdown_table(gen_rows, ["window", "variant", "fps_end_to_end", "fps_after_first", "fps_steady",
                                        "vs_bench", "first_frame_s", "peak_gib", "frames", "mp4_bytes", "wall_s",
                                        "error"]))
    if serve_rows:
        print(markdown_table(serve_rows, ["window", "variant", "fps_end_to_end", "vs_bench", "frames", "switches",
                                          "switch_client_ms", "switch_server_ms", "error"]))


if __name__ == "__main__":
    main()
