"""Micro-batch assembly for one rank: prompts, video clips or ODE pairs -> ``objectives.Batch``.

``objective.data`` picks the source:
- ``prompts``: ``data.prompts`` through a seeded, rank-sharded ``PromptSampler``; ``cond`` = their embeddings.
- ``videos``: clips of ``codec.num_frames(rollout.num_frames)`` pixel frames at ``data.fps`` from ``data.videos``
  (a clip starting every ``data.clip_stride`` frames, default the clip length: no overlap; resized to the
  latent size times the codec factor), drawn by a rank-sharded
  ``ClipSampler``, encoded to ``latents`` by the codec; ``cond`` = caption embeddings. With ``data.cache_clips``
  every clip is decoded once, up front, by a thread pool. With ``data.world`` (a ``data.balls`` world spec
  JSON) the clips are instead fresh scenes of that world rendered on the device every micro-batch
  (:class:`WorldStream`: unlimited data, no codec loss, no files); ``data.videos`` is then not read.
- ``ode_pairs``: ``objective.ode_init.pairs`` from ``tools/make_ode_pairs.py``, read one pair at a time
  (``trajectory [S+1, T, C, H, W]``, ``text [L, D]``).
``uncond`` is the embedding of ``data.negative_prompt``, encoded once. Reading is synchronous, so the
sampler position is exactly what the trainer consumed (checkpointed for exact resume).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from vidforce.data import ClipSampler, PromptSampler, VideoClipDataset, load_prompts
from vidforce.objectives import Batch


def take(sampler: ClipSampler, n: int) -> list[int]:
    """The next ``n`` indices of a ``ClipSampler``, crossing epochs."""
    out: list[int] = []
    while len(out) < n:
        for index in sampler:
            out.append(index)
            if len(out) == n:
                break
    return out


class ODEPairs:
    """Lazy reader of an ODE-pair safetensors file: ``trajectory [P, S+1, T, C, H, W]``, ``text [P, L, D]``."""

    def __init__(self, path: str):
        if not path:
            raise ValueError("objective.ode_init.pairs is empty: make pairs with tools/make_ode_pairs.py")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"objective.ode_init.pairs not found: {self.path}")
        with safe_open(self.path, "pt") as f:
            missing = {"trajectory", "text"} - set(f.keys())
            if missing:
                raise ValueError(f"objective.ode_init.pairs {self.path} lacks {sorted(missing)}")
            self.shape = tuple(f.get_slice("trajectory").get_shape())
            if f.get_slice("text").get_shape()[0] != self.shape[0]:
                raise ValueError(f"objective.ode_init.pairs {self.path}: trajectory and text disagree on the pair count")

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``trajectory [B, S+1, T, C, H, W]`` and ``text [B, L, D]`` of the given pairs."""
        with safe_open(self.path, "pt") as f:
            traj, text = f.get_slice("trajectory"), f.get_slice("text")
            return (torch.cat([traj[i:i + 1] for i in indices]), torch.cat([text[i:i + 1] for i in indices]))


class WorldStream:
    """Fresh scenes of a ``data.balls`` world for one rank: micro-batch ``n`` draws its scenes from
    ``default_rng([seed, rank, n])`` (never the held-out evaluation seeds' streams). ``epoch`` counts the
    micro-batches drawn (the whole state: resume is exact)."""

    def __init__(self, path: str, seed: int, rank: int):
        from vidforce.data.balls import load_spec  # noqa: PLC0415
        if not Path(path).is_file():
            raise FileNotFoundError(f"data.world not found: {path}")
        self.spec, self.seed, self.rank = load_spec(path), seed, rank
        self.epoch, self.position = 0, 0

    def draw(self, batch: int, frames: int, device) -> tuple[torch.Tensor, list[str]]:
        """Video ``[B, frames, 3, H, W]`` in [-1, 1] on ``device`` and the prompts of the next micro-batch."""
        from vidforce.data.balls import sample_batch  # noqa: PLC0415
        rng = np.random.default_rng([self.seed, self.rank, self.epoch])
        self.epoch += 1
        video, prompts, _ = sample_batch(self.spec, frames, rng=rng, batch_size=batch, device=device)
        return video, prompts

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


class BatchSource:
    """Micro-batches of ``train.batch_size`` samples for this rank, resumable via ``state_dict``."""

    def __init__(self, cfg, kind: str, text_encoder, codec, device: torch.device, rank: int, world: int):
        self.cfg, self.kind, self.text, self.codec, self.device = cfg, kind, text_encoder, codec, device
        seed = cfg.train.seed
        if kind == "prompts":
            if not cfg.data.prompts:
                raise ValueError("data.prompts is empty: this objective rolls out from prompts")
            self.prompts = PromptSampler(load_prompts(cfg.data.prompts), seed, rank, world)
            self.order = self.prompts.order
        elif kind == "videos" and cfg.data.world:
            self.world = WorldStream(cfg.data.world, seed, rank)
            self.order = self.world
        elif kind == "videos":
            if not cfg.data.videos:
                raise ValueError(f"data.videos is empty: objective.name={cfg.objective.name} trains on video clips")
            frames = codec.num_frames(cfg.rollout.num_frames)
            s = codec.spatial_factor
            self.clips = VideoClipDataset(cfg.data.videos, frames, cfg.data.clip_stride or frames, cfg.data.fps,
                                          cfg.data.latent_height * s, cfg.data.latent_width * s,
                                          cache=cfg.data.cache_clips)
            if cfg.data.cache_clips:
                self.clips.fill_cache(workers=min(8, os.cpu_count() or 1))
            self.order = ClipSampler(len(self.clips), seed, rank, world)
        elif kind == "ode_pairs":
            self.pairs = ODEPairs(cfg.objective.ode_init.pairs)
            self.order = ClipSampler(len(self.pairs), seed, rank, world)
        else:
            raise ValueError(f"objective data kind must be prompts, videos or ode_pairs, got {kind!r}")
        self.uncond = self.encode([cfg.data.negative_prompt])

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.text.encode(prompts).to(self.device)

    def next(self) -> Batch:
        """The next micro-batch (on the training device)."""
        b = self.cfg.train.batch_size
        uncond = self.uncond.expand(b, -1, -1)
        if self.kind == "prompts":
            return Batch(cond=self.encode(self.prompts.sample(b)), uncond=uncond)
        if self.kind == "videos" and self.cfg.data.world:
            frames = self.codec.num_frames(self.cfg.rollout.num_frames)
            video, prompts = self.world.draw(b, frames, self.device)
            with torch.no_grad():
                latents = self.codec.encode(video).float()
            return Batch(cond=self.encode(prompts), uncond=uncond, latents=latents)
        if self.kind == "videos":
            items = [self.clips[i] for i in take(self.order, b)]
            video = torch.stack([item["video"] for item in items]).to(self.device)
            with torch.no_grad():
                latents = self.codec.encode(video).float()
            return Batch(cond=self.encode([item["prompt"] for item in items]), uncond=uncond, latents=latents)
        trajectory, text = self.pairs.read(take(self.order, b))
        return Batch(cond=text.to(self.device), uncond=uncond, trajectory=trajectory.float().to(self.device))

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)

    def start_epoch(self, epoch: int) -> None:
        """Continue from the start of ``epoch`` (resume on another world size)."""
        self.order.epoch, self.order.position = epoch, 0
