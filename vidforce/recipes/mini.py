"""``vidforce mini``: the mini-world recipe, from procedural data to the long-rollout results table.

Stages, in order (each writes ``OUT/<dir>/done.json`` last; a rerun skips every stage that has one, and an
interrupted training stage resumes from its run's latest checkpoint):

1. ``data``              mini-world clips (mp4 + captions + ``manifest.jsonl``), ``prompts.txt``, ``world_spec.json``
2. ``teacher``           bidirectional teacher, flow matching with CFG dropout          -> ``model.safetensors``
3. ``ode_pairs``         teacher Euler ODE with CFG, recorded at the few-step sigmas     -> ``pairs.safetensors``
4. ``ode_init``          causal ODE-regression init from the teacher weights            -> ``model.safetensors``
5. ``teacher_forcing``   data baseline from the teacher weights                         -> ``model.safetensors``
6. ``diffusion_forcing`` data baseline from the teacher weights                         -> ``model.safetensors``
7. ``self_forcing``      DMD from the ODE-init export, critic from the teacher          -> ``model.safetensors``
8. ``self_forcing_more`` the control: Self Forcing continued from its export for as many iterations, at the
                         same batch, as ``self_forcing_pp`` gets (K-frame rollouts)    -> ``model.safetensors``
9. ``self_forcing_pp``   extended DMD (rollouts to 4K) from the Self Forcing export     -> ``model.safetensors``
10. ``evaluate``          1x / 4x / 10x K rollouts, world + drift metrics               -> ``OUT/results/``
                         (each model's videos cached in ``OUT/results/videos/<model>.npz``: a rerun
                         regenerates only models whose weights or sampler settings changed)

Settings: ``configs/mini/<stage>.yaml`` (training), ``configs/mini/recipe.yaml`` (data, ODE pairs, evaluation)
and, with ``--smoke``, ``configs/mini/smoke.yaml`` over both. Exports are the generators' EMA weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vidforce import components, config
from vidforce.data.mini_world import WorldSpec, export_mini_world, load_spec, save_spec

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "mini"
STAGES = ("data", "teacher", "ode_pairs", "ode_init", "teacher_forcing", "diffusion_forcing", "self_forcing",
          "self_forcing_more", "self_forcing_pp", "evaluate")
TRAINED = {  # stage -> (config field, stage whose artifact it loads)
    "teacher": (),
    "ode_init": (("model.checkpoint", "teacher"), ("objective.ode_init.pairs", "ode_pairs")),
    "teacher_forcing": (("model.checkpoint", "teacher"),),
    "diffusion_forcing": (("model.checkpoint", "teacher"),),
    "self_forcing": (("model.checkpoint", "ode_init"), ("teacher.checkpoint", "teacher")),
    "self_forcing_more": (("model.checkpoint", "self_forcing"), ("teacher.checkpoint", "teacher")),
    "self_forcing_pp": (("model.checkpoint", "self_forcing"), ("teacher.checkpoint", "teacher")),
}
NEEDS = {"data": (), "ode_pairs": ("teacher",), "evaluate": tuple(TRAINED),
         **{s: ("data",) + tuple(dict.fromkeys(src for _, src in deps)) for s, deps in TRAINED.items()}}
ARTIFACTS = {"data": "manifest.jsonl", "ode_pairs": "pairs.safetensors", "evaluate": "results.json",
             **{s: "model.safetensors" for s in TRAINED}}


@dataclass(frozen=True)
class Mini:
    """One recipe run: output root, training device, recipe knobs and the config overrides of each stage."""
    out: Path
    device: str
    recipe: dict
    common: tuple[str, ...]
    per_stage: dict[str, tuple[str, ...]]

    def dir(self, stage: str) -> Path:
        """The stage's output directory (``evaluate`` writes ``OUT/results``)."""
        return self.out / ("results" if stage == "evaluate" else stage)

    def artifact(self, stage: str) -> Path:
        """The file a stage hands to later stages."""
        return self.dir(stage) / ARTIFACTS[stage]

    def done(self, stage: str) -> bool:
        """Whether the stage finished (its ``done.json`` exists)."""
        return (self.dir(stage) / "done.json").is_file()


def dotlist(tree: dict, prefix: str = "") -> list[str]:
    """Nested mapping -> ``key.sub=value`` overrides (lists as JSON, e.g. ``a.b=[1, 2]``)."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += dotlist(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value) if isinstance(value, list) else value}")
    return out


def load_mini(smoke: bool, device: str, out: str | Path) -> Mini:
    """Recipe knobs and per-stage overrides (``recipe.yaml``, with ``smoke.yaml`` over it when ``smoke``)."""
    recipe = OmegaConf.load(CONFIG_DIR / "recipe.yaml")
    common, per_stage = [], {}
    if smoke:
        over = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "smoke.yaml"))
        unknown = (set(over) - {"recipe", "config", "stages"}) | (set(over.get("stages", {})) - set(TRAINED))
        if unknown:
            raise ValueError(f"{CONFIG_DIR / 'smoke.yaml'}: unknown sections or stages {sorted(unknown)}")
        OmegaConf.set_struct(recipe, True)          # a smoke key that recipe.yaml lacks is an error
        try:
            recipe = OmegaConf.merge(recipe, over.get("recipe", {}))
        except OmegaConfBaseException as err:
            raise ValueError(f"{CONFIG_DIR / 'smoke.yaml'}: {str(err).splitlines()[0]}") from None
        common = dotlist(over.get("config", {}))
        per_stage = {s: tuple(dotlist(v)) for s, v in over.get("stages", {}).items()}
    return Mini(Path(out), device, OmegaConf.to_container(recipe), tuple(common), per_stage)


def world_spec(mini: Mini) -> WorldSpec:
    """The world of ``recipe.world`` (tuples where WorldSpec has tuples)."""
    w = mini.recipe["world"]
    return WorldSpec(height=w["height"], width=w["width"], fps=w["fps"], size_range=tuple(w["size_range"]),
                     speed_range=tuple(w["speed_range"]))


def stage_config(mini: Mini, stage: str, extra: tuple[str, ...] = ()):
    """The validated training config of ``stage`` with the recipe's paths, device and smoke overrides."""
    paths = [f"{field}={mini.artifact(src)}" for field, src in TRAINED[stage]]
    overrides = [*mini.common, *mini.per_stage.get(stage, ()), f"train.run_dir={mini.dir(stage) / 'run'}",
                 f"train.device={mini.device}", f"data.videos={mini.artifact('data')}",
                 f"data.prompts={mini.dir('data') / 'prompts.txt'}", *paths, *extra]
    return config.load(CONFIG_DIR / f"{stage}.yaml", overrides)


def run_data(mini: Mini) -> dict:
    """Export clips in ``workers`` parallel shards (disjoint seeds), then one manifest and the unique captions."""
    d, spec, out = mini.recipe["data"], world_spec(mini), mini.dir("data")
    workers = max(1, min(d["workers"], d["clips"]))
    sizes = [d["clips"] // workers + (i < d["clips"] % workers) for i in range(workers)]
    starts = [d["seed"] + sum(sizes[:i]) for i in range(workers)]
    shards = [out / f"shard_{i:02d}" for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:      # the work is in ffmpeg subprocesses: threads suffice
        list(pool.map(export_mini_world, shards, sizes, [d["frames"]] * workers, [spec] * workers, starts))
    lines, captions = [], set()
    for shard in shards:
        for line in (shard / "manifest.jsonl").read_text().splitlines():
            row = json.loads(line)
            row["path"] = f"{shard.name}/{row['path']}"
            captions.add(row["caption"])
            lines.append(json.dumps(row))
    save_spec(spec, out / "world_spec.json")
    (out / "prompts.txt").write_text("\n".join(sorted(captions)) + "\n")
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return {"clips": len(lines), "prompts": len(captions)}


def run_training(mini: Mini, stage: str) -> dict:
    """Train (resuming), then export the EMA generator."""
    from vidforce.train.checkpoint import export_generator  # noqa: PLC0415
    from vidforce.train.trainer import train  # noqa: PLC0415
    cfg = stage_config(mini, stage)
    summary = train(cfg)
    export_generator(cfg.train.run_dir, mini.artifact(stage), ema=True)
    return {"steps": cfg.train.steps, "batch_size": cfg.train.batch_size, "metrics": summary["metrics"]}


def run_ode_pairs(mini: Mini) -> dict:
    """Teacher trajectories for ODE init, with the ODE-init stage's schedule and horizon."""
    from vidforce.recipes.ode_pairs import make_ode_pairs  # noqa: PLC0415 (builds models: only this stage needs it)
    p = mini.recipe["ode_pairs"]
    cfg = stage_config(mini, "ode_init", (f"teacher.checkpoint={mini.artifact('teacher')}",))
    make_ode_pairs(cfg, mini.artifact("ode_pairs"), p["num"], p["steps"], p["batch"], p["seed"])
    return {"num": p["num"], "euler_steps": p["steps"], "guidance_scale": cfg.objective.guidance.scale}


def fingerprint(path: Path, **settings) -> str:
    """What makes a model's evaluation videos: the sha256 of its file (the weights; for the data reference,
    the world spec) and the ``settings`` that shape its videos, as one JSON line (the video cache key)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return json.dumps({"file": path.name, "sha256": digest, **settings}, sort_keys=True)


def eval_samplers(mini: Mini, cfg, device) -> tuple[dict, dict[str, str]]:
    """Every export loaded in fp32 with its sampler and the horizon multiple it is evaluated to
    (``{name: (sample_fn, multiple)}``), and each one's :func:`fingerprint` (``{name: str}``)."""
    from vidforce.recipes import evaluate as ev  # noqa: PLC0415
    from vidforce.models.build import build_generator, build_teacher  # noqa: PLC0415
    from vidforce.sampling import Guidance, Sampler, euler_grid  # noqa: PLC0415
    e, text = mini.recipe["evaluate"], components.text_encoder(cfg, device)
    sigmas = euler_grid(e["euler_steps"], cfg.schedule.shift)
    teacher = build_teacher(cfg, device, torch.float32)
    teacher_sigmas = euler_grid(e["teacher_euler_steps"], cfg.schedule.shift)
    guidance, negative = Guidance.from_config(cfg.objective.guidance), cfg.data.negative_prompt
    samplers = {"teacher": (ev.teacher_sampler(teacher, text, negative, teacher_sigmas, guidance), 1)}
    prints = {"teacher": fingerprint(mini.artifact("teacher"), euler=teacher_sigmas, guidance=guidance.scale,
                                     negative=negative, multiple=1)}
    for stage in (s for s in TRAINED if s != "teacher"):
        scfg = stage_config(mini, stage, (f"model.checkpoint={mini.artifact(stage)}",))
        model, steps = build_generator(scfg, device, torch.float32).eval(), Sampler.from_config(scfg.schedule)
        if stage in ("teacher_forcing", "diffusion_forcing"):      # not distilled: many-step Euler per chunk
            steps, settings = Sampler(sigmas, steps.context_sigma, "euler"), {"euler": sigmas}
        else:
            settings = {"sigmas": steps.sigmas}
        samplers[stage] = (ev.causal_sampler(model, text, steps), max(e["multiples"]))
        prints[stage] = fingerprint(mini.artifact(stage), **settings, context_sigma=steps.context_sigma,
                                    causal=asdict(scfg.causal), multiple=max(e["multiples"]))
    return samplers, prints


def eval_setup(mini: Mini, cfg, scenes: int):
    """The evaluation's :class:`vidforce.recipes.evaluate.EvalSetup`: ``scenes`` held-out scenes from ``evaluate.seed``,
    the horizon and chunking of ``cfg`` (a causal stage's config)."""
    from vidforce.recipes import evaluate as ev  # noqa: PLC0415
    e = mini.recipe["evaluate"]
    return ev.EvalSetup(load_spec(mini.dir("data") / "world_spec.json"), tuple(e["seed"] + i for i in range(scenes)),
                        cfg.rollout.num_frames, cfg.causal.frames_per_chunk, cfg.data.fps, tuple(e["multiples"]),
                        (cfg.model.in_dim, cfg.data.latent_height, cfg.data.latent_width),
                        e["strip_scenes"], e["strip_frames"])


def run_evaluate(mini: Mini) -> dict:
    """Roll out every export and write the report (:func:`vidforce.recipes.evaluate.evaluate`) into ``OUT/results``;
    each model's videos are cached in ``OUT/results/videos`` under its :func:`fingerprint`."""
    from vidforce.recipes import evaluate as ev  # noqa: PLC0415
    from vidforce.train.dist import pick_device  # noqa: PLC0415
    e, device = mini.recipe["evaluate"], pick_device(mini.device)
    cfg = stage_config(mini, "self_forcing")
    setup = eval_setup(mini, cfg, e["scenes"])
    pairs = tuple(tuple(p) for p in e["comparisons"])
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"evaluate.comparisons: each entry must be [first, second], got {e['comparisons']}")
    samplers, prints = eval_samplers(mini, cfg, device)
    prints["data"] = fingerprint(mini.dir("data") / "world_spec.json", fps=setup.fps, seed=e["seed"],
                                 scenes=e["scenes"])
    models = ev.evaluate(samplers, components.codec(cfg, device), setup, mini.dir("evaluate"), device, pairs,
                         prints)
    return {"models": sorted(models), "table": str(mini.dir("evaluate") / "table.md")}


RUNNERS = {"data": run_data, "ode_pairs": run_ode_pairs, "evaluate": run_evaluate,
           **{s: (lambda mini, s=s: run_training(mini, s)) for s in TRAINED}}


def parse_stages(stages: str) -> list[str]:
    """``all`` or a comma-separated subset of :data:`STAGES` (run in recipe order)."""
    if stages.strip() == "all":
        return list(STAGES)
    wanted = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown or not wanted:
        raise ValueError(f"--stages: unknown stage(s) {unknown or stages!r}; choose from all or {', '.join(STAGES)}")
    return [s for s in STAGES if s in wanted]


def run_stage(mini: Mini, stage: str) -> dict:
    """Run one stage and write its ``done.json`` (atomically) after its artifact."""
    missing = [n for n in NEEDS[stage] if not mini.done(n)]
    if missing:
        raise FileNotFoundError(f"stage {stage} needs finished stage(s) {missing} (no done.json under {mini.out}); "
                                f"run them first (--stages {','.join(missing)})")
    mini.dir(stage).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    info = RUNNERS[stage](mini)
    record = {"stage": stage, "artifact": str(mini.artifact(stage)), "seconds": round(time.time() - t0, 1), **info}
    tmp = mini.dir(stage) / "done.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, mini.dir(stage) / "done.json")
    return record


def main_mini(smoke: bool, device: str, out: str, stages: str) -> int:
    """``vidforce mini [--smoke] [--device auto|cpu|cuda] [--out DIR] [--stages a,b]``."""
    mini = load_mini(smoke, device, out)
    for stage in parse_stages(stages):
        if mini.done(stage):
            print(f"[mini] {stage}: done already ({mini.dir(stage) / 'done.json'}), skipped")
            continue
        print(f"[mini] {stage}: running")
        record = run_stage(mini, stage)
        print(f"[mini] {stage}: finished in {record['seconds']} s -> {record['artifact']}")
    if mini.done("evaluate"):
        print((mini.dir("evaluate") / "table.md").read_text())
    return 0
