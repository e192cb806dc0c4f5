"""Video clips for training: a directory of videos + captions, or a manifest, read with decord.

Sources (``root_or_manifest``):
- a directory: every ``*.mp4 / *.avi / *.mov / *.mkv / *.webm`` below it (recursive, sorted),
  each with a same-name ``.txt`` caption next to it;
- a ``.jsonl`` manifest: one {"path", "caption"} object per line, optional "num_frames" and "fps"
  (when both are given the file is not opened at init);
- a ``.csv`` manifest: rows ``path,caption`` (an optional header row ``path,caption``).
Manifest paths are relative to the manifest's directory unless absolute.

Indexing happens at init: each video is probed for its frame count and frame rate (unless the
manifest says them) and cut into clips of ``clip_frames`` frames whose starts are ``stride``
frames apart, both counted at the output frame rate. A file that cannot be opened, has no caption
or is too short is skipped with a warning and recorded in ``dataset.skipped`` as (path, reason).
A file that fails while a clip is read is recorded the same way and the next readable clip is
returned instead, so an epoch never crashes on one bad file. (With DataLoader workers, read-time
skips are recorded in the worker's copy of the dataset.) decord is imported on first use, so the
module (and ``ClipSampler``) works without the optional ``video`` extra.
"""
from __future__ import annotations

import csv
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass(frozen=True)
class VideoEntry:
    """A video to cut into clips; num_frames and fps are None until probed."""

    path: Path
    caption: str
    num_frames: int | None = None
    fps: float | None = None


def clip_source_indices(num_source: int, source_fps: float, target_fps: float | None,
                        clip_frames: int, stride: int) -> np.ndarray:
    """Source frame indices of every clip of a video: [num_clips, clip_frames] int64.

    Output frame k sits at time k / target_fps and takes the nearest source frame
    floor(k * source_fps / target_fps + 0.5); clip c covers output frames [c*stride, c*stride + clip_frames).
    """
    ratio = 1.0 if target_fps is None else source_fps / target_fps
    num_out = int(np.floor((num_source - 1) / ratio + 1e-9)) + 1 if num_source > 0 else 0
    if num_out < clip_frames:
        return np.zeros((0, clip_frames), dtype=np.int64)
    starts = np.arange(0, num_out - clip_frames + 1, stride)
    out_frames = starts[:, None] + np.arange(clip_frames)[None, :]
    nearest = np.floor(out_frames * ratio + 0.5).astype(np.int64)
    return np.minimum(nearest, num_source - 1)


def read_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this file cannot be read" (decord's own error is a plain ``Exception``)."""
    try:
        from decord import DECORDError  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return (RuntimeError, OSError, IndexError)
    return (RuntimeError, OSError, IndexError, DECORDError)


def read_frames(path: str | Path, indices: np.ndarray) -> np.ndarray:
    """Decode the given frame indices with decord: [T] -> uint8 RGB [T, H, W, 3]."""
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    with decord.bridge.use_torch():
        return reader.get_batch([int(i) for i in indices]).numpy()


def probe(path: str | Path) -> tuple[int, float]:
    """Frame count and average frame rate of a video file."""
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    return len(reader), float(reader.get_avg_fps())


def _manifest_entries(manifest: Path) -> list[VideoEntry]:
    """Entries of a .jsonl or .csv manifest; malformed lines raise ValueError naming file:line."""
    base = manifest.parent
    entries = []
    if manifest.suffix == ".jsonl":
        for n, line in enumerate(manifest.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                path, caption = row["path"], row["caption"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{manifest}:{n}: expected a JSON object with 'path' and "
                                 f"'caption' ({err})") from None
            entries.append(VideoEntry(base / path, caption, row.get("num_frames"), row.get("fps")))
    elif manifest.suffix == ".csv":
        with open(manifest, newline="") as f:
            for n, row in enumerate(csv.reader(f), start=1):
                if not row or (n == 1 and [c.strip() for c in row] == ["path", "caption"]):
                    continue
                if len(row) != 2:
                    raise ValueError(f"{manifest}:{n}: expected 2 columns 'path,caption', "
                                     f"got {len(row)}")
                entries.append(VideoEntry(base / row[0].strip(), row[1].strip()))
    else:
        raise ValueError(f"{manifest}: manifest must end in .jsonl or .csv")
    return entries


def _directory_entries(root: Path) -> tuple[list[VideoEntry], list[tuple[str, str]]]:
    """Videos below root with their .txt captions; videos without a caption are returned apart."""
    entries, missing = [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS):
        caption = path.with_suffix(".txt")
        if caption.is_file():
            entries.append(VideoEntry(path, caption.read_text().strip()))
        else:
            missing.append((str(path), f"no caption file {caption.name}"))
    return entries, missing


class VideoClipDataset(Dataset):
    """Clips of ``clip_frames`` frames as {"video": float [T, 3, H, W] in [-1, 1], "prompt": str,
    "path": str, "start": int source index of the first frame}. See the module doc for sources."""

    def __init__(self, root_or_manifest: str | Path, clip_frames: int, stride: int,
                 target_fps: float | None = None, height: int | None = None,
                 width: int | None = None, cache: bool = False):
        """``cache=True`` keeps every decoded clip in memory (uint8) after its first read: for small
        datasets such as the mini world, where decoding would otherwise dominate the step time."""
        if clip_frames < 1 or stride < 1:
            raise ValueError(f"VideoClipDataset: clip_frames and stride must be >= 1, "
                             f"got {clip_frames}, {stride}")
        if (height is None) != (width is None):
            raise ValueError("VideoClipDataset: give both height and width, or neither")
        if target_fps is not None and target_fps <= 0:
            raise ValueError(f"VideoClipDataset.target_fps must be > 0, got {target_fps}")
        source = Path(root_or_manifest)
        if not source.exists():
            raise FileNotFoundError(f"VideoClipDataset: {source} does not exist")
        self.source, self.clip_frames, self.stride = source, clip_frames, stride
        self.target_fps, self.height, self.width = target_fps, height, width
        self.skipped: list[tuple[str, str]] = []
        self._unreadable: set[int] = set()
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        if source.is_dir():
            entries, missing = _directory_entries(source)
            for path, reason in missing:
                self._skip(path, reason)
        else:
            entries = _manifest_entries(source)
        self._index(entries)
        if not self.clips:
            raise ValueError(f"VideoClipDataset: no usable clips of {clip_frames} frames in "
                             f"{source} ({len(self.skipped)} files skipped)")

    def _skip(self, path: str, reason: str) -> None:
        warnings.warn(f"VideoClipDataset: skipping {path}: {reason}", stacklevel=3)
        self.skipped.append((path, reason))

    def _index(self, entries: list[VideoEntry]) -> None:
        """Probe entries and build self.videos and self.clips: (video index, source indices [T])."""
        self.videos: list[VideoEntry] = []
        self.clips: list[tuple[int, np.ndarray]] = []
        for entry in entries:
            num_frames, fps = entry.num_frames, entry.fps
            if num_frames is None or fps is None:
                try:
                    num_frames, fps = probe(entry.path)
                except read_errors() as err:
                    self._skip(str(entry.path), f"cannot open ({str(err).splitlines()[0]})")
                    continue
            indices = clip_source_indices(num_frames, fps, self.target_fps, self.clip_frames,
                                          self.stride)
            if len(indices) == 0:
                self._skip(str(entry.path),
                           f"shorter than {self.clip_frames} frames at the target rate")
                continue
            self.clips.extend((len(self.videos), idx) for idx in indices)
            self.videos.append(entry)

    def __len__(self) -> int:
        return len(self.clips)

    def _load(self, index: int) -> dict:
        video, indices = self.clips[index]
        entry = self.videos[video]
        frames = self._cache.get(index) if self._cache is not None else None
        if frames is None:
            frames = read_frames(entry.path, indices)
            if self.height is not None and frames.shape[1:3] != (self.height, self.width):
                frames = np.stack([cv2.resize(f, (self.width, self.height), interpolation=cv2.INTER_AREA)
                                   for f in frames])
            if self._cache is not None:
                self._cache[index] = frames
        tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        return {"video": tensor.float() / 127.5 - 1.0, "prompt": entry.caption,
                "path": str(entry.path), "start": int(indices[0])}

    def fill_cache(self, workers: int) -> None:
        """Decode every clip into the cache up front, one video per task on ``workers`` threads (decord and
        OpenCV release the GIL), so the first epoch does not read files on the training loop's critical path.
        A video's clips stay on one thread, so an unreadable file is skipped and counted once."""
        if self._cache is None:
            raise ValueError("VideoClipDataset.fill_cache needs cache=True")
        by_video: dict[int, list[int]] = {}
        for i, (video, _) in enumerate(self.clips):
            if i not in self._cache:
                by_video.setdefault(video, []).append(i)
        todo = list(by_video.values())
        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(tqdm(pool.map(lambda indices: [self[i] for i in indices], todo), total=len(todo),
                      desc="decoding videos", leave=False, disable=len(todo) < 64))

    def __getitem__(self, index: int) -> dict:
        """Clip ``index``, or the next readable clip when its file fails to decode."""
        if not -len(self.clips) <= index < len(self.clips):
            raise IndexError(f"VideoClipDataset: index {index} out of range "
                             f"for {len(self.clips)} clips")
        for attempt in range(len(self.clips)):
            i = (index + attempt) % len(self.clips)
            video = self.clips[i][0]
            if video in self._unreadable:
                continue
            try:
                return self._load(i)
            except read_errors() as err:
                self._unreadable.add(video)
                self._skip(str(self.videos[video].path), f"read failed ({str(err).splitlines()[0]})")
        raise RuntimeError(f"VideoClipDataset: no readable clip left in {self.source}")


class ClipSampler(Sampler[int]):
    """Seeded shuffled order per epoch, sharded across ranks, resumable exactly.

    Epoch e's order is a permutation from ``default_rng([seed, e])``, padded by wrapping to a
    multiple of world_size; rank r takes every world_size-th index from r, so all ranks get the
    same count and together cover every item. Iterating yields the rest of the current epoch and
    then moves to the next epoch. ``position`` counts indices handed out in the epoch; a
    DataLoader draws ahead of the trainer, so checkpoint the count the trainer consumed.
    """

    def __init__(self, num_items: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise ValueError(f"ClipSampler: num_items must be >= 1, got {num_items}")
        if not 0 <= rank < world_size:
            raise ValueError(f"ClipSampler: need 0 <= rank < world_size, "
                             f"got rank {rank}, world_size {world_size}")
        self.num_items, self.seed, self.rank, self.world_size = num_items, seed, rank, world_size
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return -(-self.num_items // self.world_size)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's indices of an epoch, in order: [len(self)] int64."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
        padded = np.resize(order, len(self) * self.world_size)
        return padded[self.rank::self.world_size]

    def __iter__(self):
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        order = self.epoch_indices(self.epoch)
        while self.position < len(order):
            self.position += 1
            yield int(order[self.position - 1])
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_items": self.num_items, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Restore epoch and position; seed, num_items and world_size must match."""
        expected = {"seed": self.seed, "num_items": self.num_items, "world_size": self.world_size}
        for key, value in expected.items():
            if state[key] != value:
                raise ValueError(f"ClipSampler.load_state_dict: {key} is {state[key]} in the "
                                 f"checkpoint but {value} here")
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"ClipSampler.load_state_dict: position {state['position']} "
                             f"outside [0, {len(self)}]")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
