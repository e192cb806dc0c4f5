"""The training loop: ``train(cfg) -> summary`` (``vidforce train`` / ``export``: ``vidforce.cli``).

One iteration (``step``, 0-based): draw ``train.grad_accum`` micro-batches; if ``objective.critic_turn(step)``
the critic engine runs backward + step on each of them, then, if ``objective.generator_turn(step)``, the
generator engine does, followed by the EMA update. Each turn draws one ``RolloutPlan`` on rank 0 from a
generator seeded by ``(train.seed, step, role)`` and broadcasts it, so every rank runs the same graph. The
noise generator of micro-batch ``m`` is seeded by ``(train.seed, step, role, m * world + rank)``: a 1-process
run with ``grad_accum = W`` and a W-process run with ``grad_accum = 1`` see the same samples and noise. With
``train.sequence_parallel = P`` world and rank count data shards (``dist.data_world``): the P ranks of a group
draw the same micro-batch and noise and split each DiT forward (``sequence_parallel.py``).
The trainer holds no loss maths: it only calls ``objective.critic_loss`` / ``generator_loss``.

Everything a config can get wrong (input files, data paths, the run directory, a rerun with other settings)
is checked before the process group and DeepSpeed start. SIGINT (Ctrl-C) or SIGTERM stops the loop after the
step in progress (every rank at the same step), saves a checkpoint and returns; a second signal interrupts at
once (``KeyboardInterrupt``).
"""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vidforce import components, objectives
from vidforce.config import to_yaml
from vidforce.models.graphs import GraphedChunks
from vidforce.objectives import StepContext
from vidforce.objectives.base import frozen
from vidforce.rollout import draw_plan
from vidforce.sampling import Sampler
from vidforce.train import checkpoint, dist, sequence_parallel
from vidforce.train.data import BatchSource
from vidforce.train.ema import EMA
from vidforce.train.engines import DTYPES, Engines, base_lr, build_modules, wrap_engines
from vidforce.train.hooks import DriftHook
from vidforce.train.lr import lr_factor
from vidforce.train.logging import MetricLogger
from vidforce.train.watchdog import RankWatchdog, connect

ROLE_IDS = {"critic": 1, "generator": 2}


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from a tuple of ints (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def data_input(cfg, kind: str) -> tuple[str, str]:
    """The config field and path of the data an objective reads (``objective.data``)."""
    if kind == "prompts":
        return "data.prompts", cfg.data.prompts
    elif kind == "videos":
        return ("data.world", cfg.data.world) if cfg.data.world else ("data.videos", cfg.data.videos)
    elif kind == "ode_pairs":
        return "objective.ode_init.pairs", cfg.objective.ode_init.pairs
    else:
        raise ValueError(f"objective data kind must be prompts, videos or ode_pairs, got {kind!r}")


def check_inputs(cfg, objective) -> None:
    """Fail before any heavy work, naming the config field of a missing file or an unusable run directory."""
    data, path = data_input(cfg, objective.data)
    if not path:
        raise ValueError(f"{data} is empty: objective.name={cfg.objective.name} reads {objective.data}")
    paths = [("model.checkpoint", cfg.model.checkpoint), (data, path)]
    if {"teacher", "critic"} & set(objective.networks):
        paths.append(("teacher.checkpoint", cfg.teacher.checkpoint))
    if cfg.text.encoder != "tiny":
        paths.append(("text.path", cfg.text.path))
    if cfg.codec.kind == "wan_vae":
        paths.append(("codec.path", cfg.codec.path))
    for name, path in paths:
        if path and not Path(path).exists():
            raise FileNotFoundError(f"{name} not found: {path}")
    if cfg.drift.every and not cfg.drift.prompts:
        raise ValueError("drift.every > 0 needs drift.prompts (the fixed prompts of the drift rollouts)")
    run_dir = Path(cfg.train.run_dir)
    existing = next(d for d in [run_dir.absolute(), *run_dir.absolute().parents] if d.exists())
    if not existing.is_dir():
        raise ValueError(f"train.run_dir {run_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"train.run_dir {run_dir}: cannot write in {existing}")


@dataclass
class Run:
    """Everything the loop needs."""
    cfg: object
    objective: objectives.Objective
    engines: Engines
    ema: EMA
    source: BatchSource
    logger: MetricLogger
    hook: DriftHook
    device: torch.device
    run_dir: Path
    start: int
    updates: dict[str, list[int]]
    watchdog: RankWatchdog | None = None
    runner: GraphedChunks | None = None     # rollout.cuda_graphs: the generator's graph runner, kept for the run

    def mark(self, where: str) -> None:
        """Tell the watchdog (multi-rank runs) that the loop reached ``where``."""
        if self.watchdog is not None:
            self.watchdog.progress(where)


def zero_stages(cfg, networks: tuple[str, ...]) -> dict[str, int]:
    """ZeRO stage of each engine with an optimizer."""
    out = {"generator": cfg.train.generator_zero_stage}
    if "critic" in networks:
        out["critic"] = cfg.train.critic_zero_stage
    return out


def build_engines(cfg, objective, device: torch.device, ckpt: Path | None, state: dict | None) -> Engines:
    """Modules -> engines, restoring a checkpoint as ``checkpoint.resume_mode`` says; every DiT runs
    sequence-parallel with ``train.sequence_parallel > 1``."""
    modules = build_modules(cfg, objective, device)
    sequence_parallel.attach(modules.values(), sequence_parallel.setup(cfg.train.sequence_parallel))
    mode = "fresh" if state is None else checkpoint.resume_mode(state, zero_stages(cfg, objective.networks))
    if mode == "weights":
        checkpoint.preload_modules(ckpt, modules, state)
    source = checkpoint.to_universal(ckpt, state) if mode == "universal" else ckpt
    engines = wrap_engines(cfg, modules, universal=mode == "universal")
    if mode in ("native", "universal"):
        checkpoint.load_engines(source, engines)
    return engines


def restore(ckpt: Path, state: dict, ema: EMA, source: BatchSource, device: torch.device) -> int:
    """EMA, RNG states and data position from a checkpoint; returns the completed step count."""
    ema.load_state_dict(state["ema"], device)
    mine = checkpoint.read_rank_state(ckpt, dist.rank())
    if mine is not None:
        checkpoint.set_rng_state(mine["rng"])
    if mine is not None and state["world_size"] == dist.world_size():
        source.load_state_dict(mine["data"])
    else:
        source.start_epoch(checkpoint.read_rank_state(ckpt, 0)["data"]["epoch"] + 1)
    return state["step"]


def quiet(message: str) -> None:
    """The default receiver of :func:`train`'s messages for the user: drops them."""


def setup(cfg, say: Callable[[str], None] = quiet) -> Run:
    """Validate inputs, join the process group, build data, engines, EMA, logger and hook; resume (told to
    ``say`` on rank 0)."""
    objective = objectives.build(cfg)
    check_inputs(cfg, objective)
    run_dir = Path(cfg.train.run_dir)
    ckpt = checkpoint.find_resume(run_dir, cfg.train.resume)
    continued = cfg.train.resume != "none" and (run_dir / "config.yaml").is_file()   # before rank 0 rewrites it
    if continued:
        checkpoint.check_same_run(run_dir, to_yaml(cfg))
    device = dist.pick_device(cfg.train.device)
    dist.init(device, cfg.train.dist_timeout_s)
    main = dist.rank() == 0
    state = checkpoint.read_trainer_state(ckpt) if ckpt is not None else None
    if state is not None and continued:
        checkpoint.check_global_batch(run_dir, ckpt, cfg, state["world_size"], dist.world_size())
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    dtype = DTYPES[cfg.train.precision]
    text = components.text_encoder(cfg, device)
    needs_codec = objective.data == "videos" or cfg.drift.every > 0
    codec = components.codec(cfg, device, dtype) if needs_codec else None
    sp = cfg.train.sequence_parallel
    source = BatchSource(cfg, objective.data, text, codec, device, dist.data_rank(sp), dist.data_world(sp))
    engines = build_engines(cfg, objective, device, ckpt, state)
    ema = EMA(cfg.optim.ema_decay, cfg.optim.ema_start, keep=main, warmup=cfg.optim.ema_warmup)
    start = restore(ckpt, state, ema, source, device) if state is not None else 0
    if state is not None and main:
        say(f"resumed from step {start} ({ckpt})")
    logger = MetricLogger(cfg, run_dir, start, main)
    hook = DriftHook(cfg, codec, text, run_dir, device, dtype)
    runner = GraphedChunks(engines.generator.module, capture=device.type == "cuda") if cfg.rollout.cuda_graphs else None
    return Run(cfg, objective, engines, ema, source, logger, hook, device, run_dir, start,
               update_counts(objective, cfg.train.steps), watch(cfg, run_dir), runner)


def watch(cfg, run_dir: Path) -> RankWatchdog | None:
    """A started ``RankWatchdog`` in a world of several ranks, else None."""
    if dist.world_size() == 1:
        return None
    timeout = cfg.train.dist_timeout_s
    latest = lambda: str(checkpoint.latest(run_dir) or "none")  # noqa: E731
    return RankWatchdog(connect(timeout), dist.rank(), dist.world_size(), timeout, checkpoint=latest).start()


@contextlib.contextmanager
def training_only(engines: Engines, role: str):
    """Parameters of the other trained engines stop requiring grad for the whole turn (forward *and*
    backward), so gradients that flow through their inputs (SiD, GAN) never reach them and activation
    checkpointing recomputes the same graph it saved."""
    with contextlib.ExitStack() as stack:
        for other, engine in engines.trained().items():
            if other != role:
                stack.enter_context(frozen(engine.module))
        yield


def run_turn(run: Run, role: str, step: int, batches: list) -> dict[str, float]:
    """One engine's turn: forward, backward and step on every micro-batch; mean logs and the grad norm."""
    with training_only(run.engines, role):
        return _turn(run, role, step, batches)


def set_lr(run: Run, role: str, step: int) -> float:
    """Set the engine's learning rate for its update at ``step`` (``lr.lr_factor`` of its base LR)."""
    o, counts = run.cfg.optim, run.updates[role]
    lr = base_lr(o, role) * lr_factor(counts[step], counts[-1], o.warmup_steps, o.lr_schedule, o.min_lr_ratio)
    for group in run.engines.trained()[role].optimizer.param_groups:
        group["lr"] = lr
    return lr


def _turn(run: Run, role: str, step: int, batches: list) -> dict[str, float]:
    cfg, engine = run.cfg, run.engines.trained()[role]
    logs: dict[str, float] = {f"lr/{role}": set_lr(run, role, step)}
    sampler = Sampler.for_generator(cfg)
    plan_rng = torch.Generator().manual_seed(derive_seed(cfg.train.seed, step, ROLE_IDS[role]))
    plan = draw_plan(cfg.rollout, len(sampler.sigmas), cfg.causal.frames_per_chunk, plan_rng,
                     broadcast=dist.broadcast_ints)
    loss_fn = run.objective.critic_loss if role == "critic" else run.objective.generator_loss
    shape = (cfg.model.in_dim, cfg.data.latent_height, cfg.data.latent_width)
    for m, batch in enumerate(batches):
        run.mark(f"step {step + 1}, {role} turn, micro-batch {m}")
        slot = m * dist.data_world(cfg.train.sequence_parallel) + dist.data_rank(cfg.train.sequence_parallel)
        rng = torch.Generator(run.device).manual_seed(derive_seed(cfg.train.seed, step, ROLE_IDS[role], slot))
        ctx = StepContext(run.engines.nets(), batch, plan, sampler, cfg, rng, shape, runner=run.runner)
        loss, extra = loss_fn(ctx)
        engine.backward(loss)
        engine.step()
        for k, v in {f"loss/{role}": loss.item(), **extra}.items():
            logs[k] = logs.get(k, 0.0) + v / len(batches)
    logs[f"grad_norm/{role}"] = float(engine.get_global_grad_norm() or 0.0)
    return logs


def peak_memory_gb(device: torch.device) -> float:
    """Peak device memory (CUDA) or peak resident set size (CPU), in GB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def turns_due(objective, step: int) -> list[str]:
    """The engines that update at ``step``, in order (critic first)."""
    return [r for r, due in (("critic", objective.critic_turn(step)), ("generator", objective.generator_turn(step)))
            if due]


def update_counts(objective, steps: int) -> dict[str, list[int]]:
    """Per role, ``counts[s]`` = its optimizer updates before step ``s`` (``counts[steps]``: the run's total)."""
    counts = {"critic": [0], "generator": [0]}
    for step in range(steps):
        due = turns_due(objective, step)
        for role, row in counts.items():
            row.append(row[-1] + (role in due))
    return counts


def train_step(run: Run, step: int) -> dict[str, float]:
    """One iteration; metrics reduced across ranks (means; max for time and memory)."""
    cfg = run.cfg
    t0 = time.perf_counter()
    batches = [run.source.next() for _ in range(cfg.train.grad_accum)]
    turns = turns_due(run.objective, step)
    logs: dict[str, float] = {}
    for role in turns:
        logs.update(run_turn(run, role, step, batches))
    if "generator" in turns:
        run.ema.update(run.engines.generator.module, step)
    metrics = dist.reduce_mean(logs)
    metrics.update(dist.reduce_max({"step_time_s": time.perf_counter() - t0,
                                    "peak_memory_gb": peak_memory_gb(run.device)}))
    pt, ph, pw = cfg.model.patch_size
    tokens = cfg.rollout.num_frames // pt * (cfg.data.latent_height // ph) * (cfg.data.latent_width // pw)
    samples = cfg.train.batch_size * cfg.train.grad_accum * dist.data_world(cfg.train.sequence_parallel) * len(turns)
    metrics["tokens_per_s"] = samples * tokens / metrics["step_time_s"]
    return metrics


def save_checkpoint(run: Run, done: int) -> Path:
    stages = zero_stages(run.cfg, run.objective.networks)
    state = {"step": done, "world_size": dist.world_size(), "stages": stages, "ema": run.ema.state_dict()}
    mine = {"rng": checkpoint.rng_state(), "data": run.source.state_dict()}
    return checkpoint.save(run.run_dir, done, run.engines, state, mine, to_yaml(run.cfg), run.cfg.train.keep_last)


class StopRequest:
    """While active (``with``, main thread only): the first SIGINT / SIGTERM asks the loop to stop after the
    step in progress, a second one raises ``KeyboardInterrupt`` at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self._previous = 0, {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def agreed(self) -> bool:
        """Whether any rank was asked to stop (a collective in a world of several ranks)."""
        return dist.reduce_max({"stop": float(self.signum)})["stop"] > 0


def train(cfg, say: Callable[[str], None] = quiet) -> dict:
    """Train ``cfg.train.steps`` iterations (resuming per ``train.resume``); returns a run summary, whose
    ``interrupted`` is the completed step count when a signal stopped the run (None otherwise). ``say`` receives
    the messages for the user (rank 0: the resumed checkpoint)."""
    run = setup(cfg, say)
    metrics: dict[str, float] = {}
    stopped = None
    try:
        with StopRequest() as stop:
            for step in range(run.start, cfg.train.steps):
                run.mark(f"step {step + 1}")
                metrics = train_step(run, step)
                done = step + 1
                run.logger.log(done, metrics)
                saved = done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps
                if saved:
                    run.mark(f"the checkpoint of step {done}")
                    save_checkpoint(run, done)
                if run.hook.due(done):
                    run.mark(f"the drift hook of step {done}")
                    run.hook(done, run.engines.generator.module, run.ema, run.logger)
                if stop.agreed():
                    if not saved:
                        run.mark(f"the checkpoint of step {done} (stopping)")
                        save_checkpoint(run, done)
                    stopped = done
                    break
    except Exception as err:
        failure = err if run.watchdog is None else run.watchdog.failure(err)
        if failure is err:
            raise
        raise failure from err
    finally:
        run.logger.close()
        run.source.close()
        if run.watchdog is not None:
            run.watchdog.close()
    latest = checkpoint.latest(run.run_dir)
    return {"run_dir": str(run.run_dir), "objective": cfg.objective.name, "start_step": run.start,
            "steps": cfg.train.steps, "world_size": dist.world_size(), "metrics": metrics,
            "checkpoint": str(latest) if latest else None, "interrupted": stopped}
