"""``vidforce mini``: the mini-world recipe (v2, the ball world), from a world spec to the pre-registered results.

Stages, in order (each writes ``OUT/<dir>/done.json`` last; a rerun skips every stage that has one, and an
interrupted training stage resumes from its run's latest checkpoint):

1. ``world``             ``world_spec.json`` (``data.balls``) and ``prompts.txt`` (the counts: "1 ball" ...);
                         every data-trained stage renders fresh scenes of it on its device (``data.world``)
2. ``teacher``           bidirectional teacher from scratch: flow matching with CFG dropout, sigma ~ U[0, 1];
                         evaluated at 1x K (gate 1)
3. ``ode_pairs``         teacher Euler ODE with CFG, recorded at the few-step sigmas     -> ``pairs.safetensors``
4. ``ode_init``          causal ODE-regression init from the teacher weights
5. ``teacher_forcing``   data baseline from the teacher weights (clean context)
6. ``diffusion_forcing`` data baseline from the teacher weights (noisy context)
7. ``tf_dmd``            DMD from the teacher-forcing export: the equal-NFE baseline of Self Forcing
8. ``df_dmd``            DMD from the diffusion-forcing export: the other equal-NFE baseline
9. ``self_forcing``      DMD on K-frame self-rollouts from the ODE-init export
10. ``self_forcing_pp``  extended DMD on long rollouts from the *same* ODE-init export, as many generator updates
11. ``teacher_forcing_seed1``, ``self_forcing_seed1``, ``self_forcing_pp_seed1``: the same with training seed 1
12. ``evaluate``         1x / 4x / 10x / 20x K rollouts, first-window drift metrics, injection half-lives,
                         the pre-registered decisions                                   -> ``OUT/results/``

Every trained stage exports its EMA generator (``optim.ema_warmup``) as bf16 safetensors shards of at most
16 MiB in ``OUT/<stage>/model/`` (the directory is the next stage's ``model.checkpoint``): each crosses a
device call. Settings: ``configs/mini/<stage>.yaml`` (training), ``configs/mini/recipe.yaml`` (world, ODE
pairs, evaluation, pre-registered comparisons) and, with ``--smoke``, ``configs/mini/smoke.yaml`` over both.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vidforce import components, config
from vidforce.data.balls import BallWorldSpec, load_spec, save_spec

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "mini"
SHARD_BYTES = 16 * 2 ** 20      # the device's return limit per file
_FROM_ODE = (("model.checkpoint", "ode_init"), ("teacher.checkpoint", "teacher"))
TRAINED = {  # stage -> (config field, stage whose artifact it loads)
    "teacher": (),
    "ode_init": (("model.checkpoint", "teacher"), ("objective.ode_init.pairs", "ode_pairs")),
    "teacher_forcing": (("model.checkpoint", "teacher"),),
    "diffusion_forcing": (("model.checkpoint", "teacher"),),
    "tf_dmd": (("model.checkpoint", "teacher_forcing"), ("teacher.checkpoint", "teacher")),
    "df_dmd": (("model.checkpoint", "diffusion_forcing"), ("teacher.checkpoint", "teacher")),
    "self_forcing": _FROM_ODE,
    "self_forcing_pp": _FROM_ODE,
    "teacher_forcing_seed1": (("model.checkpoint", "teacher"),),
    "self_forcing_seed1": _FROM_ODE,
    "self_forcing_pp_seed1": _FROM_ODE,
}
BIDIRECTIONAL = ("teacher",)   # 1x K, the teacher sampler
STAGES = ("world", *BIDIRECTIONAL, "ode_pairs", *[s for s in TRAINED if s not in BIDIRECTIONAL], "evaluate")
EULER_BASELINES = ("teacher_forcing", "diffusion_forcing", "teacher_forcing_seed1")   # not distilled
GUIDED_BASELINES = ("teacher_forcing", "diffusion_forcing")   # also evaluated guided at the students' step count
NEEDS = {"world": (), "ode_pairs": ("teacher",), "evaluate": tuple(TRAINED),
         **{s: ("world",) + tuple(dict.fromkeys(src for _, src in deps)) for s, deps in TRAINED.items()}}
ARTIFACTS = {"world": "world_spec.json", "ode_pairs": "pairs.safetensors", "evaluate": "results.json",
             **{s: "model" for s in TRAINED}}


class StageInterrupted(Exception):
    """A signal stopped a training stage: its checkpoint is saved, its ``done.json`` is not written."""


@dataclass(frozen=True)
class Mini:
    """One recipe run: output root, training device, recipe knobs, the config overrides of each stage, whether
    it is the CPU smoke run (whose models are untrained toys), and the user's ``--set`` overrides (an ablation
    arm: recorded in the stage's ``done.json``)."""
    out: Path
    device: str
    recipe: dict
    common: tuple[str, ...]
    per_stage: dict[str, tuple[str, ...]]
    smoke: bool = False
    sets: dict[str, tuple[str, ...]] = field(default_factory=dict)   # --set STAGE:KEY=VALUE, per stage

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


def parse_sets(sets: list[str] | tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """``--set STAGE:KEY=VALUE`` (repeatable) -> ``{stage: (KEY=VALUE, ...)}`` for trained stages only."""
    out: dict[str, list[str]] = {}
    for item in sets:
        stage, sep, override = item.partition(":")
        if not sep or "=" not in override or not override.split("=", 1)[0].strip():
            raise ValueError(f"--set {item!r}: expected STAGE:KEY=VALUE, e.g. teacher:schedule.shift=8")
        if stage not in TRAINED:
            raise ValueError(f"--set {item!r}: {stage!r} is not a training stage; choose from {', '.join(TRAINED)}")
        out.setdefault(stage, []).append(override.strip())
    return {stage: tuple(v) for stage, v in out.items()}


def load_mini(smoke: bool, device: str, out: str | Path, sets: list[str] | tuple[str, ...] = ()) -> Mini:
    """Recipe knobs and per-stage overrides (``recipe.yaml``, with ``smoke.yaml`` over it when ``smoke``; the
    ``--set`` overrides last)."""
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
    return Mini(Path(out), device, OmegaConf.to_container(recipe), tuple(common), per_stage, smoke, parse_sets(sets))


def world_spec(mini: Mini) -> BallWorldSpec:
    """The world of ``recipe.world`` (``BallWorldSpec`` fields; tuples where it has tuples)."""
    w = dict(mini.recipe["world"])
    for key in ("radius_range", "speed_range", "background_range"):
        if key in w:
            w[key] = tuple(w[key])
    return BallWorldSpec(**w)


def stage_config(mini: Mini, stage: str, extra: tuple[str, ...] = ()):
    """The validated training config of ``stage`` with the recipe's paths, device and smoke overrides."""
    paths = [f"{field}={mini.artifact(src)}" for field, src in TRAINED[stage]]
    overrides = [*mini.common, *mini.per_stage.get(stage, ()), *mini.sets.get(stage, ()),
                 f"train.run_dir={mini.dir(stage) / 'run'}",
                 f"train.device={mini.device}", f"data.world={mini.artifact('world')}",
                 f"data.prompts={mini.dir('world') / 'prompts.txt'}", *paths, *extra]
    return config.load(CONFIG_DIR / f"{stage}.yaml", overrides)


def run_world(mini: Mini) -> dict:
    """The world spec and the prompts (one per ball count): no clips, every stage renders its own."""
    spec, out = world_spec(mini), mini.dir("world")
    save_spec(spec, mini.artifact("world"))
    prompts = [f"{n} ball" if n == 1 else f"{n} balls" for n in range(spec.min_balls, spec.max_balls + 1)]
    (out / "prompts.txt").write_text("\n".join(prompts) + "\n")
    return {"prompts": prompts}


def run_training(mini: Mini, stage: str) -> dict:
    """Train (resuming), then export the EMA generator as bf16 shards of at most :data:`SHARD_BYTES`."""
    from vidforce.train.checkpoint import export_generator  # noqa: PLC0415
    from vidforce.train.trainer import train  # noqa: PLC0415
    cfg = stage_config(mini, stage)
    summary = train(cfg)
    if summary["interrupted"] is not None:
        raise StageInterrupted(f"stage {stage} stopped at step {summary['interrupted']} of {cfg.train.steps} "
                               f"(checkpoint {summary['checkpoint']}); rerun the same command to resume it")
    export_generator(cfg.train.run_dir, mini.artifact(stage) / "model.safetensors", ema=True, dtype=torch.bfloat16,
                     max_shard_bytes=SHARD_BYTES)
    return {"steps": cfg.train.steps, "batch_size": cfg.train.batch_size, "metrics": summary["metrics"]}


def run_ode_pairs(mini: Mini) -> dict:
    """Teacher trajectories for ODE init, with the ODE-init stage's schedule and horizon."""
    from vidforce.recipes.ode_pairs import make_ode_pairs  # noqa: PLC0415 (builds models: only this stage needs it)
    p = mini.recipe["ode_pairs"]
    cfg = stage_config(mini, "ode_init", (f"teacher.checkpoint={mini.artifact('teacher')}",))
    make_ode_pairs(cfg, mini.artifact("ode_pairs"), p["num"], p["steps"], p["batch"], p["seed"])
    return {"num": p["num"], "euler_steps": p["steps"], "guidance_scale": cfg.objective.guidance.scale}


def fingerprint(path: Path, **settings) -> str:
    """What makes a model's evaluation videos: the sha256 of its file or of every file of its directory (the
    weights; for the data reference, the world spec) and the ``settings`` that shape its videos, as one JSON
    line (the video cache key)."""
    digest = hashlib.sha256()
    for f in sorted(path.iterdir()) if path.is_dir() else [path]:
        digest.update(f.name.encode() + f.read_bytes())
    return json.dumps({"file": path.name, "sha256": digest.hexdigest(), **settings}, sort_keys=True)


def model_names() -> frozenset[str]:
    """Every model the evaluation reports: the teacher, each causal stage and ``<stage>_cfg`` of each of
    :data:`GUIDED_BASELINES`."""
    return frozenset({*TRAINED, *(f"{s}_cfg" for s in GUIDED_BASELINES)})


def model_stage(name: str) -> str:
    """The stage whose export model ``name`` is (``teacher_forcing_cfg`` -> ``teacher_forcing``)."""
    return name.removesuffix("_cfg") if name.endswith("_cfg") and name.removesuffix("_cfg") in GUIDED_BASELINES \
        else name


def parse_models(models: str) -> frozenset[str]:
    """``--models a,b``: a non-empty subset of :func:`model_names`."""
    wanted = frozenset(m.strip() for m in models.split(",") if m.strip())
    unknown = sorted(wanted - model_names())
    if unknown or not wanted:
        raise ValueError(f"--models: unknown model(s) {unknown or models!r}; choose from "
                         f"{', '.join(sorted(model_names()))}")
    return wanted


def eval_samplers(mini: Mini, cfg, device, names: frozenset[str] | None = None) -> tuple[dict, dict[str, str], dict]:
    """Every export (of the models ``names``, default all: see :func:`model_names`) loaded in fp32 with its
    sampler and the horizon multiple it is evaluated to
    (``{name: (sample_fn, multiple)}``), each one's :func:`fingerprint` and each causal model's injection
    probe (``{name: prompts -> run(noise, edit)}``, ``evaluate.ProbeFn``). The data-trained baselines are not
    distilled: each chunk is an Euler ODE of ``evaluate.euler_steps``, and (``<stage>_cfg``) a guided Euler ODE
    with as many steps as the students' sampler (CFG doubles its network calls); every other causal model runs
    its few-step sampler."""
    from vidforce.models.build import build_generator, build_teacher  # noqa: PLC0415
    from vidforce.recipes import evaluate as ev  # noqa: PLC0415
    from vidforce.recipes.injection import rollout_run  # noqa: PLC0415
    from vidforce.sampling import Guidance, Sampler, euler_grid  # noqa: PLC0415
    e, text = mini.recipe["evaluate"], components.text_encoder(cfg, device)
    sigmas = euler_grid(e["euler_steps"], cfg.schedule.shift)
    names = model_names() if names is None else names
    guidance, negative = Guidance.from_config(cfg.objective.guidance), cfg.data.negative_prompt
    samplers, prints, probes, longest = {}, {}, {}, max(e["multiples"])
    teacher_sigmas = euler_grid(e["teacher_euler_steps"], cfg.schedule.shift)
    for name in (s for s in BIDIRECTIONAL if s in names):
        at = replace(cfg, teacher=replace(cfg.teacher, checkpoint=str(mini.artifact(name))))
        teacher = build_teacher(at, device, torch.float32)
        samplers[name] = (ev.teacher_sampler(teacher, text, negative, teacher_sigmas, guidance), 1)
        prints[name] = fingerprint(mini.artifact(name), euler=teacher_sigmas, guidance=guidance.scale,
                                   convention=guidance.convention, negative=negative, multiple=1)
    for stage in (s for s in TRAINED if s not in BIDIRECTIONAL and {s, f"{s}_cfg"} & names):
        scfg = stage_config(mini, stage, (f"model.checkpoint={mini.artifact(stage)}",))
        model, steps = build_generator(scfg, device, torch.float32).eval(), Sampler.from_config(scfg.schedule)
        if stage in names:
            if stage in EULER_BASELINES:
                steps, settings = Sampler(sigmas, steps.context_sigma, "euler"), {"euler": sigmas}
            else:
                settings = {"sigmas": steps.sigmas}
            samplers[stage] = (ev.causal_sampler(model, text, steps), longest)
            prints[stage] = fingerprint(mini.artifact(stage), **settings, context_sigma=steps.context_sigma,
                                        causal=asdict(scfg.causal), multiple=longest)
            probes[stage] = (lambda prompts, model=model, steps=steps:
                             rollout_run(model, model.text_kv(text.encode(prompts).to(device)), steps, steps.last))
        if f"{stage}_cfg" in names:               # also guided, with as many Euler steps as the students have
            guided = Sampler(euler_grid(len(scfg.schedule.denoising_steps), cfg.schedule.shift),
                             steps.context_sigma, "euler", guidance)
            samplers[f"{stage}_cfg"] = (ev.causal_sampler(model, text, guided, negative), longest)
            prints[f"{stage}_cfg"] = fingerprint(mini.artifact(stage), euler=guided.sigmas, guidance=guidance.scale,
                                                 convention=guidance.convention, negative=negative,
                                                 causal=asdict(scfg.causal), multiple=longest)
    return samplers, prints, probes


def eval_setup(mini: Mini, cfg, scenes: int):
    """The evaluation's :class:`vidforce.recipes.evaluate.EvalSetup`: ``scenes`` held-out scenes from
    ``evaluate.seed`` x ``evaluate.noise_seeds``, the horizon and chunking of ``cfg`` (a causal stage's config)."""
    from vidforce.recipes import evaluate as ev  # noqa: PLC0415
    e = mini.recipe["evaluate"]
    return ev.EvalSetup(load_spec(mini.artifact("world")), tuple(e["seed"] + i for i in range(scenes)),
                        tuple(e["noise_seeds"]), cfg.rollout.num_frames, cfg.causal.frames_per_chunk, cfg.data.fps,
                        tuple(e["multiples"]), (cfg.model.in_dim, cfg.data.latent_height, cfg.data.latent_width),
                        e["strip_scenes"], e["strip_frames"])


def _evaluation(mini: Mini, names: frozenset[str] | None):
    """What both evaluation entry points share: ``(recipe evaluate section, device, config, setup, samplers,
    fingerprints with the data's, probes or None)`` for the models ``names`` (None: all)."""
    from vidforce.train.dist import pick_device  # noqa: PLC0415
    e, device = mini.recipe["evaluate"], pick_device(mini.device)
    cfg = stage_config(mini, "self_forcing")
    setup = eval_setup(mini, cfg, e["scenes"])
    samplers, prints, probes = eval_samplers(mini, cfg, device, names)
    prints["data"] = fingerprint(mini.artifact("world"), fps=setup.fps, seed=e["seed"], scenes=e["scenes"],
                                 noise_seeds=e["noise_seeds"])
    return e, device, cfg, setup, samplers, prints, probes if e["probe"]["enabled"] else None


def run_evaluate(mini: Mini) -> dict:
    """Roll out every export and write the report and the pre-registered decisions
    (:func:`vidforce.recipes.evaluate.evaluate`) into ``OUT/results``; each model's videos are cached in
    ``OUT/results/videos`` (probe results in ``OUT/results/probes``) under its :func:`fingerprint`."""
    from vidforce.recipes import evaluate as ev  # noqa: PLC0415
    e, device, cfg, setup, samplers, prints, probes = _evaluation(mini, None)
    ev.evaluate(samplers, components.codec(cfg, device), setup, mini.dir("evaluate"), device,
                list(mini.recipe["registered"]), prints, probes, e["probe"]["chunk"], e["probe"]["chunks"])
    return {"models": sorted(samplers), "table": str(mini.dir("evaluate") / "table.md"),
            "decisions": str(mini.dir("evaluate") / "decisions.json"), "overview": str(write_overview(mini))}


def prepare_models(mini: Mini, names: frozenset[str]) -> dict[str, dict]:
    """Part of the evaluation (``vidforce mini --stages evaluate --models a,b``): the videos and probe results of
    ``names`` into the caches of ``OUT/results`` (:func:`vidforce.recipes.evaluate.prepare`), no report and no
    ``done.json``; a device run evaluates the exports it holds, the full evaluation later reuses every cache.
    Returns each model's (and the data's) summary."""
    from vidforce.recipes import evaluate as ev  # noqa: PLC0415
    missing = sorted(({model_stage(n) for n in names} | {"world"}) - {s for s in STAGES if mini.done(s)})
    if missing:
        raise FileNotFoundError(f"--models {','.join(sorted(names))} needs finished stage(s) {missing} "
                                f"(no done.json under {mini.out})")
    e, device, cfg, setup, samplers, prints, probes = _evaluation(mini, names)
    return ev.prepare(samplers, components.codec(cfg, device), setup, mini.dir("evaluate"), device, prints,
                      probes, e["probe"]["chunk"], e["probe"]["chunks"])


def summary_lines(summaries: dict[str, dict]) -> list[str]:
    """One line per model and horizon: count accuracy and D (mean ± standard error over scenes)."""
    lines = []
    for name, summary in summaries.items():
        for label, means in summary["horizons"].items():
            se = summary["se"][label]
            lines.append(f"{name} @{label}: count_accuracy {means['count_accuracy']:.3f} ± "
                         f"{se['count_accuracy']:.3f}, D {means['D']:.3f} ± {se['D']:.3f}")
    return lines


SMOKE_LABEL = ("SMOKE RUN: toy models trained for a few steps on a CPU. Every number, verdict and video here is "
               "noise from untrained models; it shows that the recipe runs, not what the methods do.")


def write_overview(mini: Mini, upscale: int = 4) -> Path:
    """What a person opens after a run: ``OUT/results/README.md`` (labelled smoke or full; links to the table,
    the decisions, the curves and strips) and ``OUT/results/mp4/<model>.mp4`` (each model's first evaluation
    video, ``upscale`` x nearest-neighbour so 32 px frames are visible), with the command that streams more."""
    from vidforce.recipes import evaluate as ev  # noqa: PLC0415
    from vidforce.video_io import Mp4Writer  # noqa: PLC0415
    out, fps = mini.dir("evaluate"), mini.recipe["world"]["fps"]
    (out / "mp4").mkdir(exist_ok=True)
    rows = []
    for cache in sorted((out / "videos").glob("*.npz")):
        video = ev.load_videos(cache)[0]
        with Mp4Writer(out / "mp4" / f"{cache.stem}.mp4", fps, stream=False) as writer:
            writer.append(video.repeat(upscale, axis=1).repeat(upscale, axis=2))
        rows.append(f"| {cache.stem} | [mp4/{cache.stem}.mp4](mp4/{cache.stem}.mp4) | "
                    f"[strip](strip_{cache.stem}.png) | {video.shape[0] / fps:.1f} s |")
    label = SMOKE_LABEL if mini.smoke else "Full recipe run (`vidforce mini`); the pre-registered outcomes are in " \
        "`decisions.json` and `comparisons.md`."
    stage = "self_forcing"
    text = "\n".join([
        "# Mini world v2: results of this run", "", f"**{label}**", "",
        "- `table.md`: every model at every horizon (mean ± standard error over scenes), injection half-lives",
        "- `comparisons.md` / `decisions.json`: the pre-registered comparisons and their verdicts",
        "- `per_scene.json`: one value per scene, per model, horizon and metric; `curves.png`: drift vs time", "",
        "| model | first evaluation video | strip | length |", "|---|---|---|---|", *rows, "",
        "Stream a longer video from any trained stage (its run config and its exported weights):", "",
        "```bash", f"vidforce generate --config {mini.dir(stage) / 'run' / 'config.yaml'} "
        f"--checkpoint {mini.artifact(stage)} --prompt \"2 balls\" --seconds 30 --out {stage}.mp4", "```", ""])
    (out / "README.md").write_text(text)
    return out / "README.md"


RUNNERS = {"world": run_world, "ode_pairs": run_ode_pairs, "evaluate": run_evaluate,
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


def check_sets(mini: Mini, stage: str, record: Path) -> None:
    """A stage's ``done.json`` / ``interrupted.json`` (``record``) was made with this command's ``--set`` overrides
    of ``stage``; ``ValueError`` naming both when not (a done stage is never reused, nor a run resumed, under
    other settings)."""
    if not record.is_file():
        return
    made, wanted = json.loads(record.read_text()).get("set", []), list(mini.sets.get(stage, ()))
    if made != wanted:
        raise ValueError(f"stage {stage} in {mini.dir(stage)} was made with --set {made or 'none'}, this command "
                         f"sets {wanted or 'none'}: use another --out for another arm")


def run_stage(mini: Mini, stage: str) -> dict:
    """Run one stage and write its ``done.json`` (atomically) after its artifact. A stage stopped by a signal
    and resumed by later commands records each command's seconds (``command_seconds``, kept in
    ``interrupted.json`` until the stage finishes) and their sum (``seconds``)."""
    missing = [n for n in NEEDS[stage] if not mini.done(n)]
    if missing:
        raise FileNotFoundError(f"stage {stage} needs finished stage(s) {missing} (no done.json under {mini.out}); "
                                f"run them first (--stages {','.join(missing)})")
    mini.dir(stage).mkdir(parents=True, exist_ok=True)
    partial = mini.dir(stage) / "interrupted.json"
    check_sets(mini, stage, partial)
    earlier = json.loads(partial.read_text())["command_seconds"] if partial.is_file() else []
    sets = {"set": list(mini.sets[stage])} if stage in mini.sets else {}
    t0 = time.time()
    try:
        info = RUNNERS[stage](mini)
    except StageInterrupted:
        partial.write_text(json.dumps({"command_seconds": [*earlier, round(time.time() - t0, 1)], **sets}) + "\n")
        raise
    commands = [*earlier, round(time.time() - t0, 1)]
    record = {"stage": stage, "artifact": str(mini.artifact(stage)), "seconds": round(sum(commands), 1),
              "command_seconds": commands, **sets, **info}
    tmp = mini.dir(stage) / "done.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, mini.dir(stage) / "done.json")
    partial.unlink(missing_ok=True)
    return record


def main_mini(smoke: bool, device: str, out: str, stages: str, models: str | None = None,
              sets: list[str] | tuple[str, ...] = ()) -> int:
    """``vidforce mini [--smoke] [--device auto|cpu|cuda] [--out DIR] [--stages a,b] [--models a,b]
    [--set STAGE:KEY=VALUE ...]`` (``--models``: with ``--stages evaluate`` only, :func:`prepare_models`)."""
    mini = load_mini(smoke, device, out, sets)
    if models is not None:
        names = parse_models(models)
        if parse_stages(stages) != ["evaluate"]:
            raise ValueError(f"--models evaluates some models only: use it with --stages evaluate, not {stages!r}")
        print("\n".join(summary_lines(prepare_models(mini, names))))
        print(f"[mini] evaluate: caches of {', '.join(sorted(names))} in {mini.dir('evaluate')}; run --stages "
              f"evaluate without --models for the report")
        return 0
    for stage in parse_stages(stages):
        if mini.done(stage):
            check_sets(mini, stage, mini.dir(stage) / "done.json")
            print(f"[mini] {stage}: done already ({mini.dir(stage) / 'done.json'}), skipped")
            continue
        print(f"[mini] {stage}: running")
        try:
            record = run_stage(mini, stage)
        except StageInterrupted as stop:
            print(f"[mini] {stop}", file=sys.stderr, flush=True)
            return 130
        print(f"[mini] {stage}: finished in {record['seconds']} s -> {record['artifact']}")
    if mini.done("evaluate"):
        print((mini.dir("evaluate") / "table.md").read_text())
        print(f"[mini] open {mini.dir('evaluate') / 'README.md'} (videos in {mini.dir('evaluate') / 'mp4'})"
              + (f"\n[mini] {SMOKE_LABEL}" if mini.smoke else ""))
    return 0
