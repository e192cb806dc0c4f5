"""Checkpoints: save / resume / export.

Layout of ``run_dir/checkpoints/``::

    step_000100/             one checkpoint, named by completed steps
      generator/ critic/     each engine's own ``save_checkpoint(dir, tag="state")`` (+ DeepSpeed's zero_to_fp32.py)
      trainer.pt             rank 0: step, world size, ZeRO stages, generator EMA
      rank_00000.pt ...      per rank: python / numpy / torch CPU+CUDA RNG states, data-sampler position
      config.yaml            the resolved config
    latest                   text file naming the newest complete checkpoint

Every rank writes into ``step_XXXXXX.tmp``; after a barrier rank 0 renames it to ``step_XXXXXX``, then
replaces ``latest`` (write ``latest.tmp``, ``os.replace``) and prunes to the ``train.keep_last`` newest up to this
step (checkpoints of later steps belong to a run started over or resumed from an earlier step). A run killed
mid-save leaves only a ``.tmp`` directory, which is ignored and overwritten. (Multi-node runs need
``run_dir`` on a shared filesystem.)

Resume restores each engine's module and optimizer state, the EMA, step, RNG states and data positions:
- same ZeRO stages and world size (or all stage 0, whose files are world-size free): the engines' own
  ``load_checkpoint`` -- a killed run continues with exactly the uninterrupted loss sequence;
- another world size, same ZeRO stages 1 / 2: rank 0 converts each engine checkpoint to DeepSpeed's
  *universal* format (``deepspeed.checkpoint.ds_to_universal``, into ``checkpoints/universal_step_XXXXXX/``)
  and the engines load it with ``checkpoint.load_universal``: weights and AdamW moments re-partitioned
  (checked exact: 2 -> 1 ranks continues the loss sequence);
- otherwise (a ZeRO-3 engine on another world size, or a changed stage): the consolidated fp32 module
  weights (DeepSpeed's zero_to_fp32 reading) are loaded before ``deepspeed.initialize`` and the optimizer
  moments restart from zero (DeepSpeed 0.19.8's universal loading gave wrong ZeRO-3 moments here).
After a world-size change the data samplers start the epoch after the saved one (their shards changed).
The per-step noise and plan generators are seeded from ``(train.seed, step, ...)``, so they need no state.

A run directory holds one training: rerunning it (``train.resume`` other than ``none``) with settings that change
what is trained is refused, naming the changed keys (:func:`check_same_run`). Only the keys of
:data:`MAY_CHANGE` -- bookkeeping, logging, evaluation and speed switches -- may differ from ``run_dir/config.yaml``;
``train.batch_size`` and ``train.grad_accum`` may change with the number of ranks when the global batch stays
(:func:`check_global_batch`).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from vidforce.train import dist

TAG = "state"
# Keys (or sections, ending in ".") that may change when a run is continued: they leave the training unchanged.
MAY_CHANGE = ("train.run_dir", "train.steps", "train.checkpoint_every", "train.keep_last", "train.log_every",
              "train.resume", "train.dist_timeout_s", "train.compile", "train.activation_checkpointing",
              "causal.attention", "logging.", "drift.")
BATCH_KEYS = ("train.batch_size", "train.grad_accum")     # may change with the world size (check_global_batch)


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(run_dir: str | Path, step: int, engines, trainer_state: dict, rank_state: dict, config_yaml: str,
         keep_last: int) -> Path:
    """Write checkpoint ``step_{step:06d}`` atomically (collective: every rank calls it)."""
    root = checkpoint_root(run_dir)
    name = f"step_{step:06d}"
    tmp, final = root / f"{name}.tmp", root / name
    if dist.rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    for role, engine in engines.trained().items():
        engine.save_checkpoint(str(tmp / role), tag=TAG)
    torch.save(rank_state, tmp / f"rank_{dist.rank():05d}.pt")
    if dist.rank() == 0:
        torch.save(trainer_state, tmp / "trainer.pt")
        (tmp / "config.yaml").write_text(config_yaml)
    dist.barrier()
    if dist.rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_text_atomic(root / "latest", name + "\n")
        prune(root, keep_last, step)
    dist.barrier()
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint directories, oldest first."""
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def prune(root: Path, keep_last: int, step: int) -> None:
    """Keep the ``keep_last`` newest checkpoints up to ``step``; remove older ones and any of a later step."""
    done = complete_checkpoints(root)
    kept = [p for p in done if int(p.name[len("step_"):]) <= step][-keep_last:]
    for old in done:
        if old not in kept:
            shutil.rmtree(old)


def latest(run_dir: str | Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names, or None."""
    pointer = checkpoint_root(run_dir) / "latest"
    if not pointer.is_file():
        return None
    path = checkpoint_root(run_dir) / pointer.read_text().strip()
    if not (path / "trainer.pt").is_file():
        raise FileNotFoundError(f"{pointer} names {path}, which holds no trainer.pt")
    return path


def resolve(path: str | Path, field: str) -> Path:
    """A checkpoint directory itself, or a run directory's latest checkpoint; ``field`` names the input."""
    path = Path(path)
    if (path / "trainer.pt").is_file():
        return path
    found = latest(path) if path.is_dir() else None
    if found is None:
        raise FileNotFoundError(f"{field}: no checkpoint at {path} (expected step_XXXXXX/trainer.pt or a run "
                                "directory with checkpoints/latest)")
    return found


def find_resume(run_dir: str | Path, resume: str) -> Path | None:
    """``train.resume``: ``auto`` (the run's latest checkpoint, if any) | ``none`` | a checkpoint or run dir."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest(run_dir)
    return resolve(resume, "train.resume")


def _flat(tree, prefix: str = "") -> dict[str, object]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def read_settings(path: Path) -> dict[str, object] | None:
    """The config YAML at ``path`` as ``{dotted key: value}``, or None when there is none."""
    from omegaconf import OmegaConf  # noqa: PLC0415
    return _flat(OmegaConf.to_container(OmegaConf.load(path))) if path.is_file() else None


def changed_settings(saved: dict[str, object], new: dict[str, object]) -> list[str]:
    """``key: old -> new`` for every key set in both whose value differs, except :data:`MAY_CHANGE` and
    :data:`BATCH_KEYS`."""
    free = MAY_CHANGE + BATCH_KEYS
    return [f"{k}: {saved[k]!r} -> {new[k]!r}" for k in sorted(saved.keys() & new.keys())
            if saved[k] != new[k] and not any(k == m or (m.endswith(".") and k.startswith(m)) for m in free)]


def _refusal(run_dir, what: str) -> ValueError:
    may = ", ".join(m + "*" if m.endswith(".") else m for m in MAY_CHANGE)
    return ValueError(f"train.run_dir {run_dir} holds a run with other settings ({what}): use a new train.run_dir, "
                      f"or train.resume=none to start this one over (only {may} may change)")


def check_same_run(run_dir: str | Path, config_yaml: str) -> None:
    """Refuse to continue ``run_dir`` with a config (YAML text) that trains something else than its config.yaml."""
    from omegaconf import OmegaConf  # noqa: PLC0415
    saved = read_settings(Path(run_dir) / "config.yaml")
    changed = changed_settings(saved, _flat(OmegaConf.to_container(OmegaConf.create(config_yaml)))) if saved else []
    if changed:
        raise _refusal(run_dir, "; ".join(changed))


def check_global_batch(run_dir: str | Path, ckpt: Path, cfg, saved_world: int, world: int) -> None:
    """Refuse to resume ``ckpt`` (saved by ``saved_world`` ranks) with another global batch
    (``train.batch_size x train.grad_accum x ranks``)."""
    saved = read_settings(ckpt / "config.yaml")
    if saved is None:
        return
    before = (saved["train.batch_size"], saved["train.grad_accum"], saved_world)
    now = (cfg.train.batch_size, cfg.train.grad_accum, world)
    if before[0] * before[1] * before[2] != now[0] * now[1] * now[2]:
        raise _refusal(run_dir, "the global batch train.batch_size x train.grad_accum x ranks: "
                       f"{' x '.join(map(str, before))} -> {' x '.join(map(str, now))}")


def read_trainer_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)


def read_rank_state(ckpt: Path, rank: int) -> dict | None:
    path = ckpt / f"rank_{rank:05d}.pt"
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def resume_mode(state: dict, stages: dict[str, int]) -> str:
    """How to load a checkpoint saved with ``state`` into engines of ``stages``: ``native`` (as saved),
    ``universal`` (converted, re-partitioned) or ``weights`` (consolidated weights, fresh optimizer)."""
    if state["stages"] != stages:
        return "weights"
    if state["world_size"] == dist.world_size() or all(s == 0 for s in stages.values()):
        return "native"
    return "universal" if all(s in (1, 2) for s in stages.values()) else "weights"


def to_universal(ckpt: Path, state: dict) -> Path:
    """Rank 0 converts every engine checkpoint of ``ckpt`` to DeepSpeed's universal format (once; atomic)."""
    from deepspeed.checkpoint import ds_to_universal  # noqa: PLC0415
    out = ckpt.parent / f"universal_{ckpt.name}"
    if dist.rank() == 0 and not out.is_dir():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for role in state["stages"]:
            args = argparse.Namespace(input_folder=str(ckpt / role / TAG), output_folder=str(tmp / role / TAG),
                                      num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                      strict=True, inject_missing_state=True)
            with contextlib.redirect_stdout(io.StringIO()):
                ds_to_universal.main(args)
        os.replace(tmp, out)
    dist.barrier()
    return out


def consolidated_state_dict(engine_dir: Path, stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 module weights of one engine checkpoint (any ZeRO stage, any world size)."""
    if stage == 0:
        states = torch.load(engine_dir / TAG / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return {k: v.float() for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # noqa: PLC0415
    return dict(get_fp32_state_dict_from_zero_checkpoint(str(engine_dir), tag=TAG))


def preload_modules(ckpt: Path, modules: dict, state: dict) -> None:
    """Load consolidated weights into the plain modules before ``deepspeed.initialize`` (layout changed)."""
    for role, stage in state["stages"].items():
        with torch.no_grad():
            modules[role].load_state_dict(consolidated_state_dict(ckpt / role, stage))


def load_engines(ckpt: Path, engines) -> None:
    """Each engine's module and optimizer state from ``ckpt/<role>`` (native or universal checkpoints)."""
    for role, engine in engines.trained().items():
        path, _ = engine.load_checkpoint(str(ckpt / role), tag=TAG, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint for the {role} under {ckpt / role}")


def export_generator(run_dir: str | Path, out: str | Path, ema: bool = True, dtype: torch.dtype | None = None,
                     max_shard_bytes: int = 0) -> Path:
    """Write the generator of a run's latest checkpoint (or of a checkpoint dir) as safetensors: EMA or raw
    (consolidated from any ZeRO stage) weights -- a LoRA run's generator adapter merged into its base
    (``models.build.merged_generator``) --, fp32 or ``dtype``, with the model config JSON in the metadata
    (``models.loading.config_metadata``). With ``max_shard_bytes`` the file may be split into shards plus an
    index; returns the path to load (``out`` or its ``.index.json``), which ``model.checkpoint`` accepts."""
    from vidforce.config import load  # noqa: PLC0415
    from vidforce.models.build import merged_generator  # noqa: PLC0415
    from vidforce.models.loading import config_metadata, save_safetensors  # noqa: PLC0415
    ckpt = resolve(run_dir, "export RUN_DIR")
    state = read_trainer_state(ckpt)
    cfg = load(ckpt / "config.yaml")
    if ema:
        weights = state["ema"]["shadow"]
        if not weights:
            raise ValueError(f"{ckpt} holds no generator EMA (no generator update yet); export with --no-ema")
    else:
        weights = consolidated_state_dict(ckpt / "generator", state["stages"]["generator"])
    if cfg.lora.enabled:
        weights = merged_generator(cfg, weights)
    if dtype is not None:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    return save_safetensors(weights, out, metadata=config_metadata(cfg.model), max_shard_bytes=max_shard_bytes)[-1]
