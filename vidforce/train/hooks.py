"""Drift hook: every ``drift.every`` steps, stream a long rollout and measure its drift.

For each fixed prompt / seed (``drift.prompts`` x ``drift.seeds``) rank 0 rolls out
``drift.horizon_multiple * rollout.num_frames`` latent frames with the generator's EMA (``drift.ema``) or
raw weights, under ``no_grad`` with the inference cache (``causal.window`` + ``sink``, capacity = window)
and every denoising step, decodes each chunk with the codec's stream decoder as it comes
(``rollout.rollout(..., on_chunk=...)``; only the last chunk's latents are kept), and feeds the frames to a
``diagnostics.DriftMeter``. Writes ``run_dir/drift/step_N/<p>_s<seed>/drift.{json,png}``, an mp4 of the
first pair when imageio can write one (``video_io.Mp4Writer``: playable while it grows), and logs the curves
to wandb. Other ranks wait at a barrier.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from vidforce.config import arch_of
from vidforce.diagnostics import DriftMeter, log_wandb, write_report
from vidforce.models.causal import CausalWan
from vidforce.rollout import rollout
from vidforce.sampling import Sampler
from vidforce.train import dist
from vidforce.train.ema import full_state_dict
from vidforce.video_io import Mp4Writer, to_uint8_frames


def preview(call, *args) -> None:
    """Run a preview writer's ``append`` / ``close``; an ffmpeg failure costs the preview (a warning), never the
    training run."""
    try:
        call(*args)
    except OSError as err:
        warnings.warn(f"drift hook: mp4 preview failed ({err})")


def open_writer(path: Path, fps: float) -> Mp4Writer | None:
    """The preview's mp4 writer, or None (with a warning) when imageio / ffmpeg cannot write here."""
    try:
        return Mp4Writer(path, fps)
    except (ImportError, OSError, RuntimeError, ValueError) as err:
        warnings.warn(f"drift hook: no mp4 ({err})")
        return None


class DriftHook:
    """Long-rollout drift measurement during training (see module doc)."""

    def __init__(self, cfg, codec, text_encoder, run_dir: Path, device: torch.device, dtype: torch.dtype):
        self.cfg, self.codec, self.text, self.run_dir = cfg, codec, text_encoder, run_dir
        self.device, self.dtype = device, dtype
        self.sampler = Sampler.for_generator(cfg)

    def due(self, step: int) -> bool:
        return bool(self.cfg.drift.every) and step % self.cfg.drift.every == 0

    def __call__(self, step: int, generator: torch.nn.Module, ema, logger) -> list[dict]:
        """Run at completed step ``step`` (collective: every rank calls it). Returns rank 0's results.
        (The EMA exists by then: every objective updates the generator at step 0.)"""
        weights = ema.shadow if self.cfg.drift.ema else full_state_dict(generator, keep=dist.rank() == 0)
        results = []
        if dist.rank() == 0:
            model = self.model(generator.merged_state_dict(weights) if self.cfg.lora.enabled else weights)
            for i, prompt in enumerate(self.cfg.drift.prompts):
                for seed in self.cfg.drift.seeds:
                    out = self.run_dir / "drift" / f"step_{step:06d}" / f"p{i}_s{seed}"
                    results.append(self.measure(model, prompt, seed, out, video=not results))
                    if logger.wandb is not None:
                        log_wandb(results[-1], step, prefix=f"drift/p{i}_s{seed}/", run=logger.wandb)
            self.log_video(step, logger)
        dist.barrier()
        return results

    def log_video(self, step: int, logger) -> None:
        """The first pair's mp4 to wandb, when both exist."""
        first = f"p0_s{self.cfg.drift.seeds[0]}"
        video = self.run_dir / "drift" / f"step_{step:06d}" / first / "rollout.mp4"
        if logger.wandb is not None and video.is_file():
            import wandb  # noqa: PLC0415
            logger.wandb.log({"drift/video": wandb.Video(str(video), format="mp4")}, step=step)

    def model(self, weights: dict) -> CausalWan:
        c = self.cfg.causal
        with torch.device(self.device):
            model = CausalWan(arch_of(self.cfg.model), c.frames_per_chunk, c.window, c.sink, c.rope_mode,
                              c.attention, c.full_sequence)
        model.load_state_dict(weights)
        return model.to(self.dtype).eval()

    @torch.no_grad()
    def measure(self, model: CausalWan, prompt: str, seed: int, out: Path, video: bool) -> dict:
        """Roll out one prompt / seed, stream its frames into a DriftMeter (and an mp4); write the report."""
        cfg, chunk = self.cfg, model.frames_per_chunk
        n = cfg.drift.horizon_multiple * cfg.rollout.num_frames
        h, w = cfg.data.latent_height, cfg.data.latent_width
        g = torch.Generator(self.device).manual_seed(seed)
        noise = torch.randn((1, n, cfg.model.in_dim, h, w), generator=g, device=self.device)
        meter = DriftMeter(cfg.data.fps, cfg.drift.window_seconds, video=f"{prompt} (seed {seed})")
        out.mkdir(parents=True, exist_ok=True)
        writers = [open_writer(out / "rollout.mp4", cfg.data.fps)] if video else []
        writers = [w for w in writers if w is not None]
        decoder = self.codec.stream_decoder()

        def on_chunk(start: int, x0: torch.Tensor) -> None:
            frames = to_uint8_frames(decoder.decode(x0.float())[0])
            for frame in frames:
                meter.update(frame)
            for writer in writers:
                preview(writer.append, frames)

        cache = model.new_cache(1, h, w, n, self.device, self.dtype)
        text_kv = model.text_kv(self.text.encode([prompt]).to(self.device))
        rollout(model, noise, text_kv, self.sampler, len(self.sampler.sigmas) - 1, grad_from=n - chunk,
                keep_from=n - chunk, generator=g, cache=cache, on_chunk=on_chunk)
        for writer in writers:
            preview(writer.close)
        result = meter.result()
        write_report(result, out)
        return result
