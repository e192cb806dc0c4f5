"""Teacher ODE trajectories for ODE-regression init (``objective.name=ode_init``).

For each prompt, integrate the teacher's probability-flow ODE ``dx/ds = v(x, s)`` with classifier-free
guidance (``objective.guidance``: scale and convention, ``sampling.Guidance``) from pure noise at ``s = 1`` to
``s = 0`` with ``--steps`` Euler steps on the shifted grid ``s' = shift s / (1 + (shift-1) s)``. The grid is
merged with the few-step sampler's (warped) sigmas (``sampling.ode_grid``), so the latent is recorded exactly at
each of them; the endpoint x0 follows. Output safetensors::

    trajectory [P, S + 1, T, C, H, W]   latents at the S step-list sigmas, then x0   (T = rollout.num_frames)
    text       [P, L, D]                prompt embeddings (cond)
    metadata   prompts (JSON list), sigmas (JSON), guidance_scale, guidance_convention, steps

Usage: ``python tools/make_ode_pairs.py CONFIG --out pairs.safetensors --num 1000 [key=value ...]`` (the
tool and ``vidforce mini`` call :func:`make_ode_pairs`). Prompts from ``data.prompts``,
teacher from ``teacher.*``, device from ``train.device``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from vidforce import components
from vidforce.data import load_prompts
from vidforce.models.build import build_teacher
from vidforce.sampling import Denoiser, Guidance, Sampler, euler, ode_grid
from vidforce.train.dist import pick_device
from vidforce.train.engines import DTYPES


@torch.no_grad()
def integrate(teacher, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, grid: tuple[float, ...],
              record: tuple[float, ...], guidance: Guidance) -> torch.Tensor:
    """The guided Euler ODE along ``grid`` from ``noise [B, T, C, H, W]``; returns
    ``[B, len(record) + 1, T, C, H, W]``: the latent at each ``record`` sigma, then x0."""
    denoiser = Denoiser(teacher, teacher.text_kv(cond), teacher.text_kv(uncond), guidance, out_dtype=torch.float32)
    x0, met = euler(denoiser.flow, noise.float(), grid, record)
    return torch.stack(met + [x0], dim=1)


def make_ode_pairs(cfg, out: str | Path, num: int, steps: int, batch: int, seed: int) -> Path:
    """Write ``num`` teacher trajectories for the first ``num`` prompts of ``data.prompts`` (cycled)."""
    prompts = load_prompts(cfg.data.prompts)
    prompts = [prompts[i % len(prompts)] for i in range(num)]
    device = pick_device(cfg.train.device)
    teacher = build_teacher(cfg, device, DTYPES[cfg.train.precision])
    text = components.text_encoder(cfg, device)
    sampler = Sampler.from_config(cfg.schedule)
    grid = ode_grid(sampler.sigmas, steps, cfg.schedule.shift)
    guidance = Guidance.from_config(cfg.objective.guidance)
    shape = (cfg.rollout.num_frames, cfg.model.in_dim, cfg.data.latent_height, cfg.data.latent_width)
    g = torch.Generator().manual_seed(seed)
    trajectories, embeddings = [], []
    for i in tqdm(range(0, num, batch), desc="ODE pairs"):
        chunk = prompts[i:i + batch]
        cond = text.encode(chunk).to(device)
        uncond = text.encode([cfg.data.negative_prompt]).to(device).expand_as(cond)
        noise = torch.randn((len(chunk), *shape), generator=g).to(device)
        traj = integrate(teacher, noise, cond, uncond, grid, sampler.sigmas, guidance)
        trajectories.append(traj.cpu())
        embeddings.append(cond.float().cpu())
    meta = {"prompts": json.dumps(prompts), "sigmas": json.dumps(list(sampler.sigmas)), "steps": str(steps),
            "guidance_scale": str(guidance.scale), "guidance_convention": guidance.convention}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({"trajectory": torch.cat(trajectories).contiguous(), "text": torch.cat(embeddings).contiguous()},
              str(out), metadata=meta)
    return Path(out)
