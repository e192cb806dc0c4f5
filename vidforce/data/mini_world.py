"""Mini world: procedural videos of moving sprites with exact ground truth.

A clip is a few coloured sprites (circle / square / triangle) moving at constant speed over a
plain background and bouncing elastically off the frame walls. Everything follows from a seed:
``seed -> Scene -> (prompt, frames, truth)``, so an evaluation that knows the seed knows the truth.

Coordinates are continuous pixels: pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)`` and its
centre is ``(j + 0.5, i + 0.5)``; positions are ``(x, y)`` sprite centres. A sprite of ``size`` s
fills the s x s box around its centre (circle: diameter s; triangle: apex up, base s, height s).
Rasterisation samples pixel centres with hard edges (no anti-aliasing), so every sprite pixel
carries the sprite's exact colour and the truth's colours are exact in the render.

Bounces are closed form: along an axis the centre lives in ``[lo, hi]`` and its position is the
triangle wave ``lo + L - |((p0 - lo + v t) mod 2L) - L|`` with ``L = hi - lo``, so frame 10_000 is
rendered directly without simulating the frames before it. Sprites pass through each other
(drawn in scene order, later on top); ``Truth.visible_area`` tells where that occludes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidforce.video_io import Mp4Writer

RGB = tuple[int, int, int]
DATA_CRF = 4           # x264 quality of the exported clips: near lossless (pixel-exact colours survive decoding)
SHAPES = ("circle", "square", "triangle")
MIN_COLOUR_GAP = 60.0  # least RGB distance between a sprite colour and a background colour


@dataclass(frozen=True)
class WorldSpec:
    """The world's rules. Defaults suit 32x32 frames; for 64x64 double size and speed ranges.

    palette / backgrounds: (name, rgb) pairs; a scene's sprites get distinct palette colours.
    size_range: sprite box side in pixels, inclusive integers. speed_range: pixels per frame.
    """

    height: int = 32
    width: int = 32
    fps: int = 8
    palette: tuple[tuple[str, RGB], ...] = (
        ("red", (220, 40, 40)), ("green", (40, 180, 60)), ("blue", (40, 80, 220)),
        ("yellow", (230, 210, 40)), ("magenta", (200, 50, 200)), ("cyan", (40, 200, 210)),
    )
    shapes: tuple[str, ...] = SHAPES
    min_sprites: int = 1
    max_sprites: int = 3
    size_range: tuple[int, int] = (6, 10)
    speed_range: tuple[float, float] = (0.5, 1.5)
    backgrounds: tuple[tuple[str, RGB], ...] = (
        ("grey", (128, 128, 128)), ("black", (16, 16, 16)), ("white", (240, 240, 240)),
    )

    def __post_init__(self):
        if self.height < 8 or self.width < 8 or self.fps <= 0:
            raise ValueError("WorldSpec: height and width must be >= 8 and fps > 0")
        for shape in self.shapes:
            if shape not in SHAPES:
                raise ValueError(f"WorldSpec.shapes: unknown shape {shape!r}; choose from {SHAPES}")
        if not 1 <= self.min_sprites <= self.max_sprites <= len(self.palette):
            raise ValueError("WorldSpec: need 1 <= min_sprites <= max_sprites <= len(palette)")
        lo, hi = self.size_range
        if not 3 <= lo <= hi < min(self.height, self.width):
            raise ValueError("WorldSpec.size_range: need 3 <= low <= high < min(height, width)")
        if not 0 < self.speed_range[0] <= self.speed_range[1]:
            raise ValueError("WorldSpec.speed_range: need 0 < low <= high")
        for name, rgb in self.palette:
            for bg_name, bg in self.backgrounds:
                if np.linalg.norm(np.subtract(rgb, bg)) < MIN_COLOUR_GAP:
                    raise ValueError(f"WorldSpec.palette: colour {name!r} is too close to "
                                     f"background {bg_name!r} for sprites to be detected")


@dataclass(frozen=True)
class Sprite:
    """One sprite: position ``(x, y)`` at frame 0 and velocity ``(vx, vy)`` in pixels per frame."""

    shape: str
    colour: str
    rgb: RGB
    size: int
    position: tuple[float, float]
    velocity: tuple[float, float]

    @property
    def speed(self) -> float:
        """Speed in pixels per frame (bounces keep it constant)."""
        return float(np.hypot(*self.velocity))

    @property
    def nominal_area(self) -> float:
        """Area of the continuous shape in pixels (a render's pixel count is within a few %)."""
        if self.shape == "circle":
            return float(np.pi * self.size ** 2 / 4)
        if self.shape == "square":
            return float(self.size ** 2)
        if self.shape == "triangle":
            return float(self.size ** 2 / 2)
        raise ValueError(f"Sprite.shape: unknown shape {self.shape!r}")


@dataclass(frozen=True)
class Scene:
    """Sprites in drawing order (later on top) over a background colour."""

    sprites: tuple[Sprite, ...]
    background: str
    background_rgb: RGB


@dataclass(frozen=True)
class Truth:
    """Per-frame ground truth of a render of T frames with N sprites.

    frames: [T] absolute frame indices; positions: [T, N, 2] float (x, y) centres;
    sizes: [N] int; colours: [N, 3] uint8; background: [3] uint8; count: [T] int sprites in scene;
    area: [T, N] int rendered pixels of each sprite alone; visible_area: [T, N] int pixels of
    each sprite left visible after the sprites drawn on top of it.
    """

    frames: np.ndarray
    positions: np.ndarray
    sizes: np.ndarray
    colours: np.ndarray
    background: np.ndarray
    count: np.ndarray
    area: np.ndarray
    visible_area: np.ndarray


@dataclass(frozen=True)
class Clip:
    """A rendered clip: frames [T, H, W, 3] uint8 RGB, its prompt, scene, truth and seed."""

    frames: np.ndarray
    prompt: str
    scene: Scene
    truth: Truth
    seed: int


def sample_scene(spec: WorldSpec, rng: np.random.Generator) -> Scene:
    """Draw a scene: 1..max sprites with distinct colours, random shapes, sizes and velocities."""
    count = int(rng.integers(spec.min_sprites, spec.max_sprites + 1))
    colours = rng.choice(len(spec.palette), size=count, replace=False)
    sprites = []
    for colour in colours:
        name, rgb = spec.palette[int(colour)]
        size = int(rng.integers(spec.size_range[0], spec.size_range[1] + 1))
        half = size / 2
        x = float(rng.uniform(half, spec.width - half))
        y = float(rng.uniform(half, spec.height - half))
        speed = float(rng.uniform(*spec.speed_range))
        angle = float(rng.uniform(0.0, 2 * np.pi))
        shape = spec.shapes[int(rng.integers(len(spec.shapes)))]
        velocity = (speed * float(np.cos(angle)), speed * float(np.sin(angle)))
        sprites.append(Sprite(shape, name, tuple(rgb), size, (x, y), velocity))
    bg_name, bg_rgb = spec.backgrounds[int(rng.integers(len(spec.backgrounds)))]
    return Scene(tuple(sprites), bg_name, tuple(bg_rgb))


def prompt_for(scene: Scene) -> str:
    """Caption of a scene, sprites sorted by (colour, shape): 'a blue square and a red circle on a
    grey background'. Equal sprite sets give equal prompts whatever their drawing order."""
    ordered = sorted(scene.sprites, key=lambda s: (s.colour, s.shape))
    parts = [f"a {s.colour} {s.shape}" for s in ordered]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{listed} on a {scene.background} background"


def _bounce(p0: float, v: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    """Closed-form elastic bounce in [lo, hi]: triangle wave of the free position. t: [T] -> [T]."""
    span = hi - lo
    free = p0 - lo + v * t.astype(np.float64)
    return lo + span - np.abs(np.mod(free, 2 * span) - span)


def trajectory(scene: Scene, spec: WorldSpec, frames: np.ndarray) -> np.ndarray:
    """Sprite centres at the given absolute frame indices. frames: [T] -> [T, N, 2] (x, y)."""
    frames = np.asarray(frames)
    out = np.empty((len(frames), len(scene.sprites), 2), dtype=np.float64)
    for n, s in enumerate(scene.sprites):
        half = s.size / 2
        out[:, n, 0] = _bounce(s.position[0], s.velocity[0], half, spec.width - half, frames)
        out[:, n, 1] = _bounce(s.position[1], s.velocity[1], half, spec.height - half, frames)
    return out


def sprite_masks(shape: str, size: int, centres: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean masks of one sprite at T centres. centres: [T, 2] (x, y) -> [T, H, W]."""
    xs = np.arange(width, dtype=np.float64)[None, None, :] + 0.5
    ys = np.arange(height, dtype=np.float64)[None, :, None] + 0.5
    dx = xs - centres[:, 0, None, None]
    dy = ys - centres[:, 1, None, None]
    half = size / 2
    if shape == "circle":
        return dx ** 2 + dy ** 2 < half ** 2
    if shape == "square":
        return (dx >= -half) & (dx < half) & (dy >= -half) & (dy < half)
    if shape == "triangle":
        depth = dy + half  # 0 at the apex, size at the base
        return (depth >= 0) & (depth < size) & (np.abs(dx) < depth / 2)
    raise ValueError(f"Sprite.shape: unknown shape {shape!r}")


def render(scene: Scene, spec: WorldSpec, num_frames: int, start_frame: int = 0
           ) -> tuple[np.ndarray, Truth]:
    """Render frames [start_frame, start_frame + num_frames) directly (no simulation).

    Returns frames [T, H, W, 3] uint8 RGB and their Truth.
    """
    if num_frames < 1 or start_frame < 0:
        raise ValueError("render: num_frames must be >= 1 and start_frame >= 0")
    frames = np.arange(start_frame, start_frame + num_frames)
    positions = trajectory(scene, spec, frames)
    video = np.empty((num_frames, spec.height, spec.width, 3), dtype=np.uint8)
    video[:] = np.asarray(scene.background_rgb, dtype=np.uint8)
    n = len(scene.sprites)
    masks = [sprite_masks(s.shape, s.size, positions[:, i], spec.height, spec.width)
             for i, s in enumerate(scene.sprites)]
    area = np.zeros((num_frames, n), dtype=np.int64)
    visible = np.zeros((num_frames, n), dtype=np.int64)
    covered = np.zeros((num_frames, spec.height, spec.width), dtype=bool)
    for i in reversed(range(n)):  # top-most first, so `covered` holds everything above sprite i
        area[:, i] = masks[i].sum(axis=(1, 2))
        visible[:, i] = (masks[i] & ~covered).sum(axis=(1, 2))
        covered |= masks[i]
    for i, s in enumerate(scene.sprites):
        video[masks[i]] = np.asarray(s.rgb, dtype=np.uint8)
    truth = Truth(
        frames=frames, positions=positions,
        sizes=np.array([s.size for s in scene.sprites], dtype=np.int64),
        colours=np.array([s.rgb for s in scene.sprites], dtype=np.uint8).reshape(n, 3),
        background=np.asarray(scene.background_rgb, dtype=np.uint8),
        count=np.full(num_frames, n, dtype=np.int64), area=area, visible_area=visible,
    )
    return video, truth


def scene_for_seed(seed: int, spec: WorldSpec) -> Scene:
    """The scene of a seed (what evaluation uses to recover the truth of a prompt + seed)."""
    return sample_scene(spec, np.random.default_rng(seed))


def make_clip(seed: int, spec: WorldSpec, num_frames: int, start_frame: int = 0) -> Clip:
    """Deterministic clip of a seed: scene, prompt, frames [T, H, W, 3] uint8 and truth."""
    scene = scene_for_seed(seed, spec)
    frames, truth = render(scene, spec, num_frames, start_frame)
    return Clip(frames, prompt_for(scene), scene, truth, seed)


def save_spec(spec, path: str | Path) -> None:
    """Write a world spec (``WorldSpec``, ``balls.BallWorldSpec``) as JSON: evaluation needs the exact spec to
    rebuild a seed's scene."""
    Path(path).write_text(json.dumps(asdict(spec), indent=1) + "\n")


def read_spec(path: str | Path, cls) -> dict:
    """The JSON of a spec written by :func:`save_spec` as a dict of ``cls``'s fields; unknown keys raise
    ValueError naming the file."""
    raw = json.loads(Path(path).read_text())
    unknown = set(raw) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{path}: unknown {cls.__name__} fields {sorted(unknown)}")
    return raw


def load_spec(path: str | Path) -> WorldSpec:
    """Read a ``WorldSpec`` written by :func:`save_spec`."""
    raw = read_spec(path, WorldSpec)
    for key in ("palette", "backgrounds"):
        if key in raw:
            raw[key] = tuple((name, tuple(rgb)) for name, rgb in raw[key])
    for key in ("shapes", "size_range", "speed_range"):
        if key in raw:
            raw[key] = tuple(raw[key])
    return WorldSpec(**raw)


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, crf: int = DATA_CRF) -> None:
    """Write a clip [T, H, W, 3] uint8 RGB as the dataset does: a plain H.264 yuv420p mp4 (H, W even)."""
    with Mp4Writer(path, fps, crf, stream=False) as writer:
        writer.append(frames)


def export_mini_world(out_dir: str | Path, num_clips: int, num_frames: int, spec: WorldSpec,
                      seed: int, fps: float | None = None) -> Path:
    """Write ``num_clips`` clips as ``clip_XXXXXX.mp4`` + ``.txt`` captions + ``manifest.jsonl``
    + ``world_spec.json``.

    Clip i uses seed ``seed + i``; the manifest lines are {"path" (relative to out_dir),
    "caption", "seed", "num_frames", "fps"} and load through ``VideoClipDataset``; with
    ``load_spec(out_dir / "world_spec.json")`` a seed gives back its scene and truth.
    Returns the manifest path.
    """
    if num_clips < 1 or num_frames < 1:
        raise ValueError("export_mini_world: num_clips and num_frames must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fps = spec.fps if fps is None else fps
    save_spec(spec, out / "world_spec.json")
    manifest = out / "manifest.jsonl"
    with open(manifest, "w") as f:
        for i in tqdm(range(num_clips), desc="mini world", disable=num_clips < 32):
            clip = make_clip(seed + i, spec, num_frames)
            name = f"clip_{i:06d}"
            write_mp4(out / f"{name}.mp4", clip.frames, fps)
            (out / f"{name}.txt").write_text(clip.prompt + "\n")
            f.write(json.dumps({"path": f"{name}.mp4", "caption": clip.prompt, "seed": seed + i,
                                "num_frames": num_frames, "fps": fps}) + "\n")
    return manifest
