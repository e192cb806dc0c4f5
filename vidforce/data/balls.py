"""Mini world v2: bouncing balls whose looks live only in the video context.

A scene is 1-3 hard-edged discs of distinct hues moving over a flat grey background. The prompt states
only the count ("2 balls"): colour, size, background and speed are given by the context frames alone,
so a model that forgets them drifts, and ``ball_metrics`` measures by how much against the scene's own
first window.

Coordinates are continuous pixels: pixel ``(row i, col j)`` has its centre at ``(j + 0.5, i + 0.5)``;
positions are disc centres ``(x, y)``. A disc of radius r covers the pixels whose centre lies strictly
inside it, ``(x_j - x)^2 + (y_i - y)^2 < r^2`` (no anti-aliasing), so every disc pixel carries the disc's
exact colour. ``render_numpy`` (ground truth) and ``render_torch`` (batched, any device) evaluate that
same test with the same float64 operations (given float64 positions), so they agree exactly.

Colours: a ball of hue h is ``I (1,1,1) + C (cos h e1 + sin h e2)`` with ``e1 = (2,-1,-1)/sqrt(6)`` and
``e2 = (0,1,-1)/sqrt(2)``, the orthonormal plane around the grey axis: every ball has the same
intensity ``I = (R+G+B)/3`` and chroma ``C`` (distance to the grey axis), hue 0 is red and a hue
rotation is a rotation about the grey axis, which keeps intensity and never leaves the gamut.

Physics, one time unit per frame, ``substeps`` Euler sub-steps of ``1/substeps``: free flight, elastic
reflection at the walls (the centre stays in ``[r, W - r] x [r, H - r]``), and elastic collisions of
**equal-mass** balls: two overlapping, approaching balls are rewound to contact (closed form), swap the
normal components of their velocities, and move on for the rewound time (two passes per sub-step, then
a positional fix of any jam left). Every step conserves the total kinetic energy ``sum_n |v_n|^2 / 2``
(up to float rounding), hence the RMS speed of a scene.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from vidforce.data.mini_world import read_spec, save_spec  # noqa: F401 (save_spec: this world's too)

E1 = np.array([2.0, -1.0, -1.0]) / np.sqrt(6.0)  # hue 0 (red) direction in the plane around the grey axis
E2 = np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)   # hue 90 direction
MAX_TRIES = 1000                                 # rejection-sampling attempts for hues and positions
COLLISION_PASSES = 2                             # collision + wall passes per sub-step (chains of contacts)


@dataclass(frozen=True)
class BallWorldSpec:
    """The world's rules; defaults suit 32x32 RGB frames at 8 fps.

    radius_range: disc radius in pixels (a disc of radius 3 covers ~28 pixels, far above specks).
    speed_range: pixels per frame. min_hue_gap: least circular distance between two balls' hues, degrees.
    colour_intensity / colour_chroma: every ball's (R+G+B)/3 and distance to the grey axis (0-255).
    background_range: inclusive grey levels of the background, with headroom to 0 and 255 for exposure
    drift. substeps: sub-steps per frame of the simulation.
    """

    height: int = 32
    width: int = 32
    fps: int = 8
    min_balls: int = 1
    max_balls: int = 3
    radius_range: tuple[float, float] = (3.0, 5.0)
    speed_range: tuple[float, float] = (0.6, 1.4)
    min_hue_gap: float = 60.0
    colour_intensity: float = 128.0
    colour_chroma: float = 115.0
    background_range: tuple[int, int] = (60, 150)
    substeps: int = 4

    def __post_init__(self):
        if self.height < 8 or self.width < 8:
            raise ValueError(f"BallWorldSpec.height/width: need >= 8, got {self.height}x{self.width}")
        if self.fps <= 0:
            raise ValueError(f"BallWorldSpec.fps: need > 0, got {self.fps}")
        if not 1 <= self.min_balls <= self.max_balls:
            raise ValueError("BallWorldSpec.min_balls/max_balls: need 1 <= min_balls <= max_balls")
        lo, hi = self.radius_range
        if (not 1.0 <= lo <= hi or 2 * hi >= min(self.height, self.width)
                or self.max_balls * (2 * hi) ** 2 > self.height * self.width / 2):
            raise ValueError("BallWorldSpec.radius_range: need 1 <= low <= high, a disc narrower than the "
                             "frame and the discs' bounding squares within half of it")
        if self.substeps < 1:
            raise ValueError(f"BallWorldSpec.substeps: need >= 1, got {self.substeps}")
        if not 0 < self.speed_range[0] <= self.speed_range[1] <= lo * self.substeps:
            raise ValueError("BallWorldSpec.speed_range: need 0 < low <= high <= radius low * substeps "
                             "(no ball may tunnel through another within a sub-step)")
        if not 0 <= self.min_hue_gap < 360 / self.max_balls:
            raise ValueError(f"BallWorldSpec.min_hue_gap: need 0 <= gap < 360 / max_balls, got {self.min_hue_gap}")
        reach = self.colour_chroma * np.sqrt(2 / 3)  # largest channel offset from the intensity
        if self.colour_chroma <= 0 or not 0 <= self.colour_intensity - reach <= self.colour_intensity + reach <= 255:
            raise ValueError("BallWorldSpec.colour_chroma/colour_intensity: ball colours must stay in 0..255")
        if not 0 <= self.background_range[0] <= self.background_range[1] <= 255:
            raise ValueError("BallWorldSpec.background_range: need 0 <= low <= high <= 255")


@dataclass(frozen=True, eq=False)
class BallScene:
    """One scene of N balls (read-only arrays): radii [N] px, hues [N] degrees, colours [N, 3] uint8,
    background [3] uint8 grey, positions [N, 2] (x, y) and velocities [N, 2] px/frame at frame 0."""

    count: int
    radii: np.ndarray
    hues: np.ndarray
    colours: np.ndarray
    background: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray

    def __post_init__(self):
        shapes = {"radii": (self.count,), "hues": (self.count,), "colours": (self.count, 3),
                  "background": (3,), "positions": (self.count, 2), "velocities": (self.count, 2)}
        for name, shape in shapes.items():
            dtype = np.uint8 if name in ("colours", "background") else np.float64
            value = np.array(getattr(self, name), dtype=dtype)
            if value.shape != shape:
                raise ValueError(f"BallScene.{name}: expected shape {shape}, got {value.shape}")
            value.setflags(write=False)
            object.__setattr__(self, name, value)


def hue_to_rgb(hues: np.ndarray, intensity: float, chroma: float) -> np.ndarray:
    """Colours of hues [...] (degrees): ``I + C (cos h e1 + sin h e2)`` -> float [..., 3] (0-255)."""
    h = np.deg2rad(np.asarray(hues, dtype=np.float64))[..., None]
    return intensity + chroma * (np.cos(h) * E1 + np.sin(h) * E2)


def rgb_to_hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of ``hue_to_rgb``: rgb [..., 3] -> intensity (R+G+B)/3, chroma and hue in [0, 360), each [...]."""
    rgb = np.asarray(rgb, dtype=np.float64)
    a, b = rgb @ E1, rgb @ E2
    return rgb.mean(-1), np.hypot(a, b), np.mod(np.degrees(np.arctan2(b, a)), 360.0)


def _sample_hues(count: int, gap: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` hues in [0, 360) pairwise at least ``gap`` degrees apart on the circle (rejection)."""
    for _ in range(MAX_TRIES):
        hues = rng.uniform(0.0, 360.0, size=count)
        ordered = np.sort(hues)
        if np.diff(np.append(ordered, ordered[0] + 360.0)).min() >= gap:
            return hues
    raise ValueError(f"BallWorldSpec.min_hue_gap: no {count} hues {gap} degrees apart in {MAX_TRIES} tries")


def _sample_positions(radii: np.ndarray, spec: BallWorldSpec, rng: np.random.Generator) -> np.ndarray:
    """Centres [N, 2] of non-overlapping discs inside the frame (rejection sampling)."""
    for _ in range(MAX_TRIES):
        x = rng.uniform(radii, spec.width - radii)
        y = rng.uniform(radii, spec.height - radii)
        pos = np.stack([x, y], axis=-1)
        if all(np.hypot(*(pos[i] - pos[j])) > radii[i] + radii[j]
               for i, j in itertools.combinations(range(len(radii)), 2)):
            return pos
    raise ValueError(f"BallWorldSpec.radius_range: could not place {len(radii)} discs in {MAX_TRIES} tries")


def sample_scene(spec: BallWorldSpec, rng: np.random.Generator) -> BallScene:
    """Draw a scene: count, radii, hues >= min_hue_gap apart, non-overlapping positions, velocities
    (uniform speed and direction) and a grey background level."""
    count = int(rng.integers(spec.min_balls, spec.max_balls + 1))
    radii = rng.uniform(*spec.radius_range, size=count)
    hues = _sample_hues(count, spec.min_hue_gap, rng)
    positions = _sample_positions(radii, spec, rng)
    speed = rng.uniform(*spec.speed_range, size=count)
    angle = rng.uniform(0.0, 2 * np.pi, size=count)
    velocities = np.stack([speed * np.cos(angle), speed * np.sin(angle)], axis=-1)
    grey = int(rng.integers(spec.background_range[0], spec.background_range[1] + 1))
    colours = np.round(hue_to_rgb(hues, spec.colour_intensity, spec.colour_chroma)).astype(np.uint8)
    return BallScene(count, radii, hues, colours, np.full(3, grey, dtype=np.uint8), positions, velocities)


def scene_for_seed(seed: int, spec: BallWorldSpec) -> BallScene:
    """The scene of a seed (evaluation rebuilds a prompt + seed's truth from it)."""
    return sample_scene(spec, np.random.default_rng(seed))


def prompt_for(scene: BallScene) -> str:
    """The prompt states only what must persist by instruction, the count: '1 ball', '3 balls'."""
    return f"{scene.count} ball" if scene.count == 1 else f"{scene.count} balls"


def _walls(p: np.ndarray, v: np.ndarray, r: np.ndarray, width: int, height: int) -> None:
    """Reflect centres p [B, N, 2] (and velocities) into ``[r, W - r] x [r, H - r]``, in place."""
    lo = r[..., None]
    hi = np.stack([width - r, height - r], axis=-1)
    below, above = p < lo, p > hi
    p[below] = (2 * lo - p)[below]
    v[below] = np.abs(v[below])
    p[above] = (2 * hi - p)[above]
    v[above] = -np.abs(v[above])


def _collide(p: np.ndarray, v: np.ndarray, r: np.ndarray, active: np.ndarray, i: int, j: int) -> None:
    """Elastic equal-mass collision of balls i, j in every scene where they overlap and approach, in place.

    With relative position d = p_j - p_i and velocity u = v_j - v_i, the time s >= 0 since contact solves
    ``|d - u s| = r_i + r_j``; at contact n = unit(d - u s), the balls swap the normal components of
    their velocities (v_i += (u.n) n, v_j -= (u.n) n) and fly on for s with the new velocities.
    """
    d, u = p[:, j] - p[:, i], v[:, j] - v[:, i]
    reach = r[:, i] + r[:, j]
    dd, du, uu = (d * d).sum(-1), (d * u).sum(-1), (u * u).sum(-1)
    hit = active[:, i] & active[:, j] & (dd < reach ** 2) & (du < 0)
    if not hit.any():
        return
    d, u, dd, du, uu, reach = d[hit], u[hit], dd[hit], du[hit], uu[hit], reach[hit]
    s = (du + np.sqrt(du ** 2 - uu * (dd - reach ** 2))) / uu
    contact = d - u * s[:, None]
    n = contact / np.linalg.norm(contact, axis=-1, keepdims=True)
    dv = (u * n).sum(-1, keepdims=True) * n
    v[hit, i] += dv
    v[hit, j] -= dv
    p[hit, i] += dv * s[:, None]
    p[hit, j] -= dv * s[:, None]


def _separate(p: np.ndarray, r: np.ndarray, active: np.ndarray, pairs: list[tuple[int, int]], width: int,
              height: int) -> None:
    """Positional fix of the rare jam that two collision passes leave (a ball bounced by a wall back into
    another within one sub-step): push overlapping pairs apart along their centre line, half each, and
    clamp into the frame, in place. Velocities are untouched, so energy stays exact."""
    for i, j in pairs:
        d = p[:, j] - p[:, i]
        dist = np.linalg.norm(d, axis=-1)
        overlap = r[:, i] + r[:, j] - dist
        fix = active[:, i] & active[:, j] & (overlap > 0) & (dist > 0)
        if fix.any():
            push = (overlap[fix] / (2 * dist[fix]))[:, None] * d[fix]
            p[fix, i] -= push
            p[fix, j] += push
    np.clip(p, r[..., None], np.stack([width - r, height - r], axis=-1), out=p)


def _simulate(p: np.ndarray, v: np.ndarray, r: np.ndarray, active: np.ndarray, spec: BallWorldSpec,
              num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched simulation of padded scenes: p, v [B, N, 2], r [B, N], active [B, N] bool (inactive balls:
    radius 0, velocity 0). Returns positions and velocities [B, T, N, 2]; frame 0 is the initial state.
    Sub-steps without any overlapping pair (the common case) skip the collision passes."""
    p, v = p.astype(np.float64).copy(), v.astype(np.float64).copy()
    pairs = list(itertools.combinations(range(p.shape[1]), 2))
    first = np.array([i for i, _ in pairs], dtype=np.int64)
    second = np.array([j for _, j in pairs], dtype=np.int64)
    reach2 = (r[:, first] + r[:, second]) ** 2
    paired = active[:, first] & active[:, second]

    def overlapping() -> bool:
        d = p[:, second] - p[:, first]
        return bool(((d * d).sum(-1) < reach2)[paired].any())

    dt = 1.0 / spec.substeps
    positions, velocities = [p.copy()], [v.copy()]
    for _ in range(num_frames - 1):
        for _ in range(spec.substeps):
            p += v * dt
            _walls(p, v, r, spec.width, spec.height)
            for _ in range(COLLISION_PASSES):
                if not overlapping():
                    break
                for i, j in pairs:
                    _collide(p, v, r, active, i, j)
                _walls(p, v, r, spec.width, spec.height)
            if overlapping():
                _separate(p, r, active, pairs, spec.width, spec.height)
        positions.append(p.copy())
        velocities.append(v.copy())
    return np.stack(positions, axis=1), np.stack(velocities, axis=1)


def simulate(scene: BallScene, spec: BallWorldSpec, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic trajectory of a scene: positions [T, N, 2] (x, y) and velocities [T, N, 2], float64."""
    if num_frames < 1:
        raise ValueError(f"simulate: num_frames must be >= 1, got {num_frames}")
    active = np.ones((1, scene.count), dtype=bool)
    pos, vel = _simulate(scene.positions[None], scene.velocities[None], scene.radii[None], active, spec,
                         num_frames)
    return pos[0], vel[0]


def disc_mask(centres: np.ndarray, radius: float, height: int, width: int) -> np.ndarray:
    """Pixels [..., H, W] bool whose centre lies strictly inside the disc of ``radius`` around each of ``centres``
    [..., 2] (x, y): ``(x_j - x)^2 + (y_i - y)^2 < r^2`` in float64 (the module's coverage rule)."""
    dx = np.arange(width, dtype=np.float64) + 0.5 - centres[..., 0, None]    # [..., W]
    dy = np.arange(height, dtype=np.float64) + 0.5 - centres[..., 1, None]   # [..., H]
    return (dx * dx)[..., None, :] + (dy * dy)[..., :, None] < radius * radius


def render_numpy(scene: BallScene, spec: BallWorldSpec, positions: np.ndarray) -> np.ndarray:
    """Ground-truth frames of a trajectory positions [T, N, 2] -> uint8 [T, H, W, 3] (hard-edged discs)."""
    video = np.empty((len(positions), spec.height, spec.width, 3), dtype=np.uint8)
    video[:] = scene.background
    for n in range(scene.count):
        video[disc_mask(positions[:, n], scene.radii[n], spec.height, spec.width)] = scene.colours[n]
    return video


def render_torch(colours: Tensor, radii: Tensor, background: Tensor, positions: Tensor, height: int,
                 width: int) -> Tensor:
    """Batched render: colours [B, N, 3] (0-255), radii [B, N] (0 = no ball), background [B, 3] (0-255),
    positions [B, T, N, 2] -> video [B, T, 3, H, W] float32 in [-1, 1] (``value / 127.5 - 1``).

    The inside test runs in the dtype of ``positions`` (float64 reproduces ``render_numpy`` exactly);
    discs never overlap, so each pixel takes the colour of the one disc covering it, or the background.
    """
    xs = torch.arange(width, dtype=positions.dtype, device=positions.device) + 0.5
    ys = torch.arange(height, dtype=positions.dtype, device=positions.device) + 0.5
    dx = xs - positions[..., 0, None]                                  # [B, T, N, W]
    dy = ys - positions[..., 1, None]                                  # [B, T, N, H]
    r = radii.to(positions.dtype)
    inside = (dx * dx)[..., None, :] + (dy * dy)[..., :, None] < (r * r)[:, None, :, None, None]
    bg = background.to(torch.float32)
    offset = colours.to(torch.float32) - bg[:, None, :]                # [B, N, 3]
    video = bg[:, None, :, None, None] + torch.einsum("btnhw,bnc->btchw", inside.to(torch.float32), offset)
    return video / 127.5 - 1.0


def _padded(scenes: Sequence[BallScene], n: int) -> dict[str, np.ndarray]:
    """Scenes padded to n balls: p, v [B, n, 2], r [B, n] (0 for padding), active [B, n], colours
    [B, n, 3] uint8, background [B, 3] uint8; padding balls rest at the origin with radius 0."""
    b = len(scenes)
    out = {"p": np.zeros((b, n, 2)), "v": np.zeros((b, n, 2)), "r": np.zeros((b, n)),
           "active": np.zeros((b, n), dtype=bool), "colours": np.zeros((b, n, 3), dtype=np.uint8),
           "background": np.stack([s.background for s in scenes])}
    for k, s in enumerate(scenes):
        out["p"][k, :s.count], out["v"][k, :s.count], out["r"][k, :s.count] = s.positions, s.velocities, s.radii
        out["active"][k, :s.count], out["colours"][k, :s.count] = True, s.colours
    return out


def simulate_batch(spec: BallWorldSpec, num_frames: int, *, seeds: Sequence[int] | None = None,
                   rng: np.random.Generator | None = None,
                   batch_size: int | None = None) -> tuple[dict[str, np.ndarray], list[BallScene]]:
    """The numpy half of fresh training data: the scenes of ``seeds``, or ``batch_size`` scenes drawn from
    ``rng``, padded to ``spec.max_balls`` (``_padded``) and simulated. Returns the padded arrays plus
    ``positions`` [B, T, n, 2] float64, and the scenes. Host-only, so it can run ahead of the trainer in
    another process (``train.data.WorldStream``)."""
    if (seeds is None) == (rng is None):
        raise ValueError("sample_batch: pass exactly one of seeds or rng")
    if rng is not None and (batch_size is None or batch_size < 1):
        raise ValueError(f"sample_batch.batch_size: need >= 1 with rng, got {batch_size}")
    if num_frames < 1:
        raise ValueError(f"sample_batch.num_frames: need >= 1, got {num_frames}")
    scenes = ([scene_for_seed(int(s), spec) for s in seeds] if seeds is not None
              else [sample_scene(spec, rng) for _ in range(batch_size)])
    if not scenes:
        raise ValueError("sample_batch.seeds: need at least one seed")
    arrays = _padded(scenes, spec.max_balls)
    arrays["positions"], _ = _simulate(arrays["p"], arrays["v"], arrays["r"], arrays["active"], spec, num_frames)
    return arrays, scenes


def render_batch(arrays: dict[str, np.ndarray], spec: BallWorldSpec, device: str | torch.device) -> Tensor:
    """The torch half: ``simulate_batch``'s arrays -> video [B, T, 3, H, W] float32 in [-1, 1] on ``device``."""
    return render_torch(torch.from_numpy(arrays["colours"]).to(device), torch.from_numpy(arrays["r"]).to(device),
                        torch.from_numpy(arrays["background"]).to(device),
                        torch.from_numpy(arrays["positions"]).to(device), spec.height, spec.width)


def sample_batch(spec: BallWorldSpec, num_frames: int, *, seeds: Sequence[int] | None = None,
                 rng: np.random.Generator | None = None, batch_size: int | None = None,
                 device: str | torch.device = "cpu") -> tuple[Tensor, list[str], list[BallScene]]:
    """Fresh training data: the scenes of ``seeds``, or ``batch_size`` scenes drawn from ``rng``.

    Simulation runs in numpy (batched over scenes, ``simulate_batch``), rendering in torch on ``device``
    (``render_batch``). Returns video [B, T, 3, H, W] float32 in [-1, 1], the prompts and the scenes.
    """
    arrays, scenes = simulate_batch(spec, num_frames, seeds=seeds, rng=rng, batch_size=batch_size)
    return render_batch(arrays, spec, device), [prompt_for(s) for s in scenes], scenes


def load_spec(path: str | Path) -> BallWorldSpec:
    """Read a spec written by :func:`save_spec` (``mini_world.save_spec``, shared by the worlds)."""
    raw = read_spec(path, BallWorldSpec)
    for key in ("radius_range", "speed_range", "background_range"):
        if key in raw:
            raw[key] = tuple(raw[key])
    return BallWorldSpec(**raw)
