"""``vidforce generate``: stream a long video to an mp4 while it is generated.

Everything that can be wrong with the input (config keys, weights, output path, prompt schedule) is checked
before the model is built. The weights are ``--checkpoint`` or the config's ``model.checkpoint``; without either
only ``--random-weights`` (benchmarks) generates, from untrained weights. Ctrl-C or SIGTERM stops generation and
still finalises a playable mp4 of every frame handed to the writer so far; a failure of the mp4 writer is an error.
The last line gives the latency to the first frame, the throughput (frames over the time to the last chunk), the
throughput after the first chunk (the frames after it over the time after it was handed out: without the start-up
of the first chunk in a fresh process, its compiles and first graph captures) and the peak memory.

``--image`` starts the video from an image (``vidforce.image_start``: fitted, encoded, committed to the cache at
frame 0; the chunks then start at frame 1). ``--prompts-live FILE`` follows FILE (``-``: stdin) while streaming:
each line appended switches the prompt at the next chunk boundary (``vidforce.live_prompts``). Every prompt
switch prints one line naming its latent frame and the re-cache. ``load_config``, ``describe_weights`` and
``build`` are shared with ``vidforce serve``.
"""
from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from vidforce import components, config
from vidforce.data.prompts import load_prompts, parse_schedule
from vidforce.image_start import read_image, start_latent
from vidforce.live_prompts import LiveLines, check_prompt
from vidforce.models import fp8
from vidforce.models.causal import CausalWan
from vidforce.models.codecs.base import Codec
from vidforce.models.graphs import GraphedChunks
from vidforce.models.text import TextEncoder
from vidforce.sampling import Sampler
from vidforce.streaming import Streamer, filling_outputs, switch_frames
from vidforce.video_io import Mp4Writer, check_writable, ffmpeg_exe


def _schedule(args) -> list[tuple[float, str]]:
    given = [a for a in (args.prompt, args.prompts_file, args.schedule) if a]
    if len(given) != 1:
        raise ValueError("give exactly one of --prompt, --prompts-file, --schedule")
    if args.prompt:
        return [(0.0, args.prompt)]
    if args.prompts_file:
        prompts = load_prompts(args.prompts_file)
        if len(prompts) == 1:
            return [(0.0, prompts[0])]
        step = args.seconds / len(prompts)
        return [(i * step, p) for i, p in enumerate(prompts)]
    return parse_schedule(args.schedule)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def describe_weights(args, cfg) -> str:
    """Which weights generate, for the user; refuses to generate from random weights unasked."""
    if args.random_weights:
        return "random (--random-weights: an untrained model)"
    if not cfg.model.checkpoint:
        raise ValueError(f"no weights: give --checkpoint FILE or set model.checkpoint in {args.config} "
                         "(--random-weights generates from untrained weights, for benchmarks)")
    from vidforce.models.build import check_checkpoint  # noqa: PLC0415
    check_checkpoint(cfg.model.checkpoint, cfg.model, "model")
    where = "--checkpoint" if args.checkpoint else f"model.checkpoint of {args.config}"
    return f"{cfg.model.checkpoint} ({where})"


def load_config(args):
    """``--config`` with the ``key=value`` overrides, ``--checkpoint`` and ``--random-weights`` applied."""
    overrides = list(args.overrides)
    if args.checkpoint and args.random_weights:
        raise ValueError("--checkpoint and --random-weights exclude each other")
    if args.checkpoint:
        if not Path(args.checkpoint).exists():
            raise FileNotFoundError(f"--checkpoint not found: {args.checkpoint}")
        overrides.append(f"model.checkpoint={args.checkpoint}")
    if args.random_weights:
        overrides.append("model.checkpoint=''")
    return config.load(args.config, overrides)


def prepare(args):
    """Validate everything cheap: returns (cfg, schedule, out path, fps, pixel frames, weights description)."""
    cfg = load_config(args)
    fps = cfg.data.fps if args.fps is None else args.fps
    schedule = _schedule(args)
    weights = describe_weights(args, cfg)
    out = check_writable(args.out)
    ffmpeg_exe()                                   # before any model is built: a run that cannot write stops here
    pixel = max(1, int(round(args.seconds * fps)))
    return cfg, schedule, out, fps, pixel, weights


@dataclass
class Parts:
    """What every Streamer of one config is made of (``serve`` makes a fresh Streamer per stream)."""
    model: CausalWan
    codec: Codec
    text: TextEncoder
    sampler: Sampler
    latent_hw: tuple[int, int]
    device: torch.device
    dtype: torch.dtype
    runner: GraphedChunks | None        # stream.cuda_graphs: replays the chunk forwards (one stream at a time)
    fused_refresh: bool                 # stream.fused_refresh
    overlap_decode: bool                # stream.overlap_decode

    def streamer(self, seed: int) -> Streamer:
        return Streamer(self.model, self.codec, self.text, self.sampler, self.latent_hw, seed, self.device,
                        self.dtype, runner=self.runner, fused_refresh=self.fused_refresh,
                        overlap_decode=self.overlap_decode)


def build(cfg, compile_blocks: bool) -> Parts:
    """The generator (FP8 linears with ``stream.fp8``, ``torch.compile``d blocks if asked), codec, text encoder and
    sampler of ``cfg``, and the CUDA-graph runner of ``stream.cuda_graphs`` (eager static buffers off CUDA). On CUDA
    it sets ``cudnn.benchmark``: one frame size for the whole run, so the codec's convolutions get the fastest
    algorithms (the streaming bench always ran so; ``vidforce generate`` did not until 2026-12-02)."""
    device = _device(cfg.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16 if (cfg.train.precision == "bf16" and device.type == "cuda") else torch.float32
    from vidforce.models.build import build_generator  # noqa: PLC0415
    model = build_generator(cfg, device, dtype).eval()
    if cfg.stream.fp8 != "off":
        reason = fp8.supported(device.type, cfg.stream.fp8)
        if reason:
            raise ValueError(f"stream.fp8={cfg.stream.fp8}: {reason}")
        fp8.quantize_linears(model, cfg.stream.fp8)
    if compile_blocks:
        model.compile_blocks(dynamic=False)
    codec = components.codec(cfg, device, dtype)
    runner = GraphedChunks(model, capture=device.type == "cuda") if cfg.stream.cuda_graphs else None
    return Parts(model, codec, components.text_encoder(cfg, device), Sampler.for_generator(cfg),
                 (cfg.data.latent_height, cfg.data.latent_width), device, dtype, runner, cfg.stream.fused_refresh,
                 cfg.stream.overlap_decode)


def run(args) -> int:
    cfg, schedule, out, fps, pixel, weights = prepare(args)
    image = read_image(args.image) if args.image else None
    live = LiveLines(args.prompts_live) if args.prompts_live else None
    print(f"weights: {weights}", flush=True)
    parts = build(cfg, args.compile)
    codec, first = parts.codec, None
    if image is not None:
        first, note = start_latent(codec, image, parts.latent_hw, parts.device, parts.dtype)
        print(f"start image: {args.image} ({note})", flush=True)
    chunk, offset = cfg.causal.frames_per_chunk, 0 if first is None else first.shape[1]
    latent = codec.num_latent_frames(1 + (pixel - 1) // codec.temporal_factor * codec.temporal_factor)
    latent = offset + -(-max(latent - offset, 1) // chunk) * chunk
    switches = switch_frames(schedule, fps, codec, chunk, offset)
    _warn_late(schedule, switches, latent, codec.num_frames(latent) / fps)
    streamer = parts.streamer(args.seed)
    stopped, written = _stream(streamer, latent, switches, out, fps, cfg.logging.progress, first, live)
    s = streamer.stats
    if s.frames == 0:
        print(f"stopped before the first frame: {out} not written")
        return 130
    print(f"{'stopped early: ' if stopped else ''}wrote {written} frames to {out}")
    print(f"latency to first frame {s.first_frame_s:.3f} s | throughput {s.fps:.2f} frames/s | "
          f"after the first chunk {s.fps_after_first:.2f} frames/s | "
          f"steady {s.fps_steady(filling_outputs(cfg.causal.window, chunk)):.2f} frames/s | "
          f"peak memory {s.peak_memory_bytes / 2**30:.2f} GiB | prompt switches {s.recaches}")
    return 130 if stopped else 0


def _warn_late(schedule: list[tuple[float, str]], switches: list[tuple[int, str]], latent: int, end_s: float) -> None:
    """One line on stderr for the schedule entries that start at or after the video's end (never shown)."""
    late = [f"{sec:g} s ({prompt[:40]!r})" for (sec, prompt), (frame, _) in zip(schedule, switches) if frame >= latent]
    if late:
        print(f"vidforce generate: warning: prompt schedule entries after the video's end ({end_s:g} s) are never "
              f"shown: {', '.join(late)}", file=sys.stderr)


def _stream(streamer: Streamer, latent: int, schedule, out: Path, fps: float, progress: bool,
            first: torch.Tensor | None = None, live: LiveLines | None = None) -> tuple[bool, int]:
    """Write frames as they come (``Mp4Writer`` encodes them on its own thread while the next chunks are
    generated); returns whether it was interrupted and the frames written: every frame appended before an
    interrupt (the mp4 is finalised either way). The progress bar (``logging.progress``) shows when stderr is a
    terminal. Between chunks: one line per prompt switch, and the lines that arrived on ``live`` become the next
    chunk's prompt."""
    from tqdm import tqdm  # noqa: PLC0415
    writer = Mp4Writer(out, fps)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    total = streamer.codec.num_frames(latent)
    bar = tqdm(total=total, unit="frame", disable=None if progress else True, file=sys.stderr)
    reported = 0
    try:
        with writer:
            for frames in streamer.frames(latent, schedule, first):
                writer.append(frames)
                bar.update(len(frames))
                bar.set_postfix(fps=f"{streamer.stats.fps:.1f}")
                _between_chunks(streamer, live, bar, fps, reported)
                reported = len(streamer.stats.switches)
        return False, writer.frames
    except KeyboardInterrupt:
        return True, writer.frames
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)


def _between_chunks(streamer: Streamer, live: LiveLines | None, bar, fps: float, reported: int) -> None:
    """Report the switches after the first ``reported`` ones; hand the live prompts to the next chunk (the last
    one read wins)."""
    for switch in streamer.stats.switches[reported:]:
        seconds = streamer.codec.num_frames(switch.frame) / fps
        bar.write(f"prompt switch at latent frame {switch.frame} ({seconds:.3f} s): "
                  f"re-cached {switch.recached} frames in {switch.seconds:.3f} s: {switch.prompt!r}", file=sys.stdout)
    if live is None:
        return
    for line in live.poll():
        try:
            streamer.request(check_prompt(line))
            bar.write(f"live prompt from {live.name}: {line!r} (switches at the next chunk boundary)",
                      file=sys.stdout)
        except ValueError as err:
            bar.write(f"vidforce generate: warning: live prompt from {live.name} skipped: {err}", file=sys.stderr)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
