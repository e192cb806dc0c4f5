"""Micro-batch assembly for one rank: prompts, video clips or ODE pairs -> ``objectives.Batch``.

``objective.data`` picks the source:
- ``prompts``: ``data.prompts`` through a seeded, rank-sharded ``PromptSampler``; ``cond`` = their embeddings.
- ``videos``: clips of ``codec.num_frames(rollout.num_frames)`` pixel frames at ``data.fps`` from ``data.videos``
  (a clip starting every ``data.clip_stride`` frames, default the clip length: no overlap; resized to the
  latent size times the codec factor), drawn by a rank-sharded
  ``ClipSampler``, encoded to ``latents`` by the codec; ``cond`` = caption embeddings. With ``data.cache_clips``
  every clip is decoded once, up front, by a thread pool. With ``data.world`` (a ``data.balls`` world spec
  JSON) the clips are instead fresh scenes of that world rendered on the device every micro-batch
  (:class:`WorldStream`: unlimited data, no codec loss, no files; ``data.world_workers`` processes simulate
  the next micro-batches ahead); ``data.videos`` is then not read.
- ``ode_pairs``: ``objective.ode_init.pairs`` from ``tools/make_ode_pairs.py``, read one pair at a time
  (``trajectory [S+1, T, C, H, W]``, ``text [L, D]``).
``uncond`` is the embedding of ``data.negative_prompt``, encoded once. Reading is synchronous, so the
sampler position is exactly what the trainer consumed (checkpointed for exact resume).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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


def _world_arrays(spec, key: tuple[int, int, int], batch: int, frames: int) -> tuple[dict, list[str]]:
    """The host half of one world micro-batch (``balls.simulate_batch`` from ``default_rng(key)``) and its
    prompts; a top-level function so that a worker process can run it."""
    from vidforce.data.balls import prompt_for, simulate_batch  # noqa: PLC0415
    arrays, scenes = simulate_batch(spec, frames, rng=np.random.default_rng(list(key)), batch_size=batch)
    return arrays, [prompt_for(s) for s in scenes]


def _ignore_sigint() -> None:
    """Worker initialiser: Ctrl-C is the trainer's to handle (it saves a checkpoint), not the workers'."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class WorldStream:
    """Fresh scenes of a ``data.balls`` world for one rank: micro-batch ``n`` draws its scenes from
    ``default_rng([seed, rank, n])`` (never the held-out evaluation seeds' streams). ``epoch`` counts the
    micro-batches drawn (the whole state: resume is exact).

    With ``workers`` > 0, that many spawned processes simulate the next ``workers`` micro-batches while the
    trainer runs this one (the simulation is host numpy, ~0.1 s per 256 scenes, as long as a mini step);
    micro-batch ``n`` depends on ``n`` alone, so the batches are bit-identical to ``workers=0``. A batch that
    was not prefetched (after a resume, or if the workers died) is simulated in the loop."""

    def __init__(self, path: str, seed: int, rank: int, workers: int = 0):
        from vidforce.data.balls import load_spec  # noqa: PLC0415
        if not Path(path).is_file():
            raise FileNotFoundError(f"data.world not found: {path}")
        self.spec, self.seed, self.rank, self.workers = load_spec(path), seed, rank, workers
        self.epoch, self.position = 0, 0
        self._pool: ProcessPoolExecutor | None = None
        self._ahead: dict[tuple[int, ...], Future] = {}     # (seed, rank, epoch, batch, frames)

    def _key(self, epoch: int) -> tuple[int, int, int]:
        return (self.seed, self.rank, epoch)

    def _arrays(self, batch: int, frames: int) -> tuple[dict, list[str]]:
        """This epoch's host arrays: the prefetched ones when present, then the next ``workers`` queued."""
        key = self._key(self.epoch)
        if self.workers == 0:
            return _world_arrays(self.spec, key, batch, frames)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_ignore_sigint)
        wanted = [(*self._key(e), batch, frames) for e in range(self.epoch, self.epoch + self.workers + 1)]
        for stale in set(self._ahead) - set(wanted):
            self._ahead.pop(stale).cancel()
        try:
            for job in wanted[1:]:
                if job not in self._ahead:
                    self._ahead[job] = self._pool.submit(_world_arrays, self.spec, job[:3], batch, frames)
            future = self._ahead.pop(wanted[0], None)
            if future is not None:
                return future.result()
        except BrokenProcessPool:
            self.close()
            self.workers = 0
        return _world_arrays(self.spec, key, batch, frames)

    def draw(self, batch: int, frames: int, device) -> tuple[torch.Tensor, list[str]]:
        """Video ``[B, frames, 3, H, W]`` in [-1, 1] on ``device`` and the prompts of the next micro-batch."""
        from vidforce.data.balls import render_batch  # noqa: PLC0415
        arrays, prompts = self._arrays(batch, frames)
        self.epoch += 1
        return render_batch(arrays, self.spec, device), prompts

    def close(self) -> None:
        """Stop the workers (queued batches are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool, self._ahead = None, {}

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
            self.world = WorldStream(cfg.data.world, seed, rank, cfg.data.world_workers)
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

    def close(self) -> None:
        """Release the world stream's worker processes, if any."""
        if self.kind == "videos" and self.cfg.data.world:
            self.world.close()

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)

    def start_epoch(self, epoch: int) -> None:
        """Continue from the start of ``epoch`` (resume on another world size)."""
        self.order.epoch, self.order.position = epoch, 0
