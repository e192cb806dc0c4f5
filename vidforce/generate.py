"""``vidforce generate``: stream a long video to an mp4 while it is generated.

Everything that can be wrong with the input (config keys, checkpoint path or shape, output path, seconds,
prompt schedule) is checked before the model is built. Ctrl-C or SIGTERM stops generation and still
finalises a playable mp4 of everything generated so far.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import torch

from vidforce import components, config
from vidforce.data.prompts import load_prompts, parse_schedule
from vidforce.sampling import Sampler
from vidforce.streaming import Streamer, switch_frames
from vidforce.video_io import Mp4Writer, check_writable


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


def prepare(args):
    """Validate everything cheap: returns (cfg, schedule, out path, latent frames)."""
    overrides = list(args.overrides)
    if args.checkpoint:
        if not Path(args.checkpoint).exists():
            raise FileNotFoundError(f"--checkpoint not found: {args.checkpoint}")
        overrides.append(f"model.checkpoint={args.checkpoint}")
    cfg = config.load(args.config, overrides)
    if args.seconds <= 0:
        raise ValueError(f"--seconds must be > 0, got {args.seconds}")
    fps = args.fps or cfg.data.fps
    out = check_writable(args.out)
    schedule = _schedule(args)
    if cfg.model.checkpoint:
        from vidforce.models.build import check_checkpoint  # noqa: PLC0415
        check_checkpoint(cfg.model.checkpoint, cfg.model, "model")
    pixel = max(1, int(round(args.seconds * fps)))
    return cfg, schedule, out, fps, pixel


def run(args) -> int:
    cfg, schedule, out, fps, pixel = prepare(args)
    device = _device(cfg.train.device)
    dtype = torch.bfloat16 if (cfg.train.precision == "bf16" and device.type == "cuda") else torch.float32
    from vidforce.models.build import build_generator  # noqa: PLC0415
    model = build_generator(cfg, device, dtype).eval()
    if args.compile:
        model.compile_blocks(dynamic=False)
    codec = components.codec(cfg, device, dtype)
    chunk = cfg.causal.frames_per_chunk
    latent = codec.num_latent_frames(1 + (pixel - 1) // codec.temporal_factor * codec.temporal_factor)
    latent = -(-latent // chunk) * chunk
    streamer = Streamer(model, codec, components.text_encoder(cfg, device), Sampler.from_config(cfg.schedule),
                        (cfg.data.latent_height, cfg.data.latent_width), args.seed, device, dtype)
    stopped = _stream(streamer, latent, switch_frames(schedule, fps, codec, chunk), out, fps, cfg.logging.progress)
    s = streamer.stats
    print(f"{'stopped early: ' if stopped else ''}wrote {s.frames} frames to {out}")
    print(f"latency to first frame {s.first_frame_s:.3f} s | throughput {s.fps:.2f} frames/s | "
          f"peak memory {s.peak_memory_bytes / 2**30:.2f} GiB | prompt switches {s.recaches}")
    return 130 if stopped else 0


def _stream(streamer: Streamer, latent: int, schedule, out: Path, fps: float, progress: bool) -> bool:
    """Write frames as they come; returns True when interrupted (the mp4 is finalised either way)."""
    from tqdm import tqdm  # noqa: PLC0415
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    total = streamer.codec.num_frames(latent)
    bar = tqdm(total=total, unit="frame", disable=not progress, file=sys.stderr)
    try:
        with Mp4Writer(out, fps) as writer:
            for frames in streamer.frames(latent, schedule):
                writer.append(frames)
                bar.update(len(frames))
                bar.set_postfix(fps=f"{streamer.stats.fps:.1f}")
        return False
    except KeyboardInterrupt:
        return True
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
