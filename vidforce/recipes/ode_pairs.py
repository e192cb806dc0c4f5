"""Teacher ODE trajectories for ODE-regression init (``objective.name=ode_init``).

For each prompt, integrate the teacher's probability-flow ODE ``dx/ds = v(x, s)`` with classifier-free
guidance ``v = v_u + g (v_c - v_u)`` (``objective.guidance_scale``, Self-Forcing convention) from pure noise
at ``s = 1`` to ``s = 0`` with ``--steps`` Euler steps on the shifted grid ``s' = shift s / (1 + (shift-1) s)``.
The grid is merged with the few-step sampler's (warped) sigmas, so the latent is recorded exactly at each of
them; the endpoint x0 follows. Output safetensors::

    trajectory [P, S + 1, T, C, H, W]   latents at the S step-list sigmas, then x0   (T = rollout.num_frames)
    text       [P, L, D]                prompt embeddings (cond)
    metadata   prompts (JSON list), sigmas (JSON), guidance_scale, steps

Usage: ``python tools/make_ode_pairs.py CONFIG --out pairs.safetensors --num 1000 [key=value ...]`` (the
tool calls :func:`main`; ``vidforce mini`` calls :func:`make_ode_pairs`). Prompts from ``data.prompts``,
teacher from ``teacher.*``, device from ``train.device``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from vidforce import components
from vidforce.config import load
from vidforce.data import load_prompts
from vidforce.diffusion import cfg as guide, shift_sigma
from vidforce.models.build import build_teacher
from vidforce.rollout import Sampler
from vidforce.train.dist import pick_device
from vidforce.train.engines import DTYPES


def ode_grid(step_sigmas: tuple[float, ...], steps: int, shift: float) -> torch.Tensor:
    """Decreasing sigmas from 1 to 0: ``steps`` shifted-uniform Euler steps, with the step-list sigmas in
    place of any grid point within 1e-6 of one."""
    fine = shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
    marks = torch.tensor(step_sigmas, dtype=torch.float64)
    fine = fine[(fine[:, None] - marks[None]).abs().min(dim=1).values > 1e-6]
    return torch.cat([fine, marks]).sort(descending=True).values


@torch.no_grad()
def integrate(teacher, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, grid: torch.Tensor,
              record: tuple[float, ...], scale: float) -> torch.Tensor:
    """Euler along ``grid`` from ``noise [B, T, C, H, W]``; returns ``[B, len(record) + 1, T, C, H, W]``:
    the latent at each ``record`` sigma, then x0."""
    kv_c, kv_u = teacher.text_kv(cond), teacher.text_kv(uncond)
    x, out = noise.float(), []
    for s, s_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        if s in record:
            out.append(x.clone())
        t = torch.full(x.shape[:2], s * 1000.0, device=x.device)
        v = teacher(x, t, text_kv=kv_c).float()
        if scale != 1.0:
            v = guide(teacher(x, t, text_kv=kv_u).float(), v, scale)
        x = x + (s_next - s) * v
    return torch.stack(out + [x], dim=1)


def make_ode_pairs(cfg, out: str | Path, num: int, steps: int, batch: int, seed: int) -> Path:
    """Write ``num`` teacher trajectories for the first ``num`` prompts of ``data.prompts`` (cycled)."""
    prompts = load_prompts(cfg.data.prompts)
    prompts = [prompts[i % len(prompts)] for i in range(num)]
    device = pick_device(cfg.train.device)
    teacher = build_teacher(cfg, device, DTYPES[cfg.train.precision])
    text = components.text_encoder(cfg, device)
    sampler = Sampler.from_config(cfg.schedule)
    grid = ode_grid(sampler.sigmas, steps, cfg.schedule.shift)
    shape = (cfg.rollout.num_frames, cfg.model.in_dim, cfg.data.latent_height, cfg.data.latent_width)
    g = torch.Generator().manual_seed(seed)
    trajectories, embeddings = [], []
    for i in tqdm(range(0, num, batch), desc="ODE pairs"):
        chunk = prompts[i:i + batch]
        cond = text.encode(chunk).to(device)
        uncond = text.encode([cfg.data.negative_prompt]).to(device).expand_as(cond)
        noise = torch.randn((len(chunk), *shape), generator=g).to(device)
        traj = integrate(teacher, noise, cond, uncond, grid, sampler.sigmas, cfg.objective.guidance_scale)
        trajectories.append(traj.cpu())
        embeddings.append(cond.float().cpu())
    meta = {"prompts": json.dumps(prompts), "sigmas": json.dumps(list(sampler.sigmas)), "steps": str(steps),
            "guidance_scale": str(cfg.objective.guidance_scale)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({"trajectory": torch.cat(trajectories).contiguous(), "text": torch.cat(embeddings).contiguous()},
              str(out), metadata=meta)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=1000, help="number of trajectories")
    p.add_argument("--steps", type=int, default=48, help="Euler steps of the ODE (before adding step-list sigmas)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num < 1 or args.steps < 1 or args.batch < 1:
        raise ValueError("--num, --steps and --batch must be >= 1")
    out = make_ode_pairs(load(args.config, args.overrides), args.out, args.num, args.steps, args.batch, args.seed)
    print(f"wrote {args.num} ODE trajectories to {out}")
    return 0
