"""Prompt sources: prompt files, a resumable prompt sampler, and prompt schedules for streaming.

- ``load_prompts``: a ``.jsonl`` file (one object with "prompt" per line) or any other text file
  (one prompt per line); blank lines are ignored.
- ``PromptSampler``: prompts in a seeded shuffled order, epoch after epoch, sharded across ranks,
  with ``state_dict`` / ``load_state_dict`` for exact resume.
- ``parse_schedule``: when each prompt of a streamed video starts, from ``"0:a cat;5:a dog"`` or a
  JSON list (``[[0, "a cat"], [5, "a dog"]]`` or ``[{"start": 0, "prompt": "a cat"}, ...]``),
  given inline or as a file path.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from vidforce.data.video import ClipSampler

SCHEDULE_SUFFIXES = (".json", ".txt", ".schedule")


def load_prompts(path: str | Path) -> list[str]:
    """Prompts of a .txt (one per line) or .jsonl ({"prompt": ...} per line) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_prompts: prompt file {path} not found")
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), start=1)]
    lines = [(n, line) for n, line in lines if line]
    if path.suffix == ".jsonl":
        prompts = []
        for n, line in lines:
            try:
                prompt = json.loads(line)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: expected a JSON object with 'prompt' ({err})") from None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{path}:{n}: 'prompt' must be a non-empty string")
            prompts.append(prompt.strip())
    else:
        prompts = [line for _, line in lines]
    if not prompts:
        raise ValueError(f"load_prompts: prompt file {path} holds no prompts")
    return prompts


class PromptSampler:
    """Draws prompts in a seeded shuffled order (a ``ClipSampler`` over the prompt list)."""

    def __init__(self, prompts: Sequence[str], seed: int, rank: int = 0, world_size: int = 1):
        if not prompts:
            raise ValueError("PromptSampler: prompts is empty")
        self.prompts = list(prompts)
        self.order = ClipSampler(len(self.prompts), seed, rank, world_size)

    def sample(self, batch_size: int) -> list[str]:
        """The next ``batch_size`` prompts, continuing into the next epoch when one ends."""
        out: list[str] = []
        while len(out) < batch_size:
            for index in self.order:
                out.append(self.prompts[index])
                if len(out) == batch_size:
                    break
        return out

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


def _schedule_entries(text: str) -> list[tuple[object, object]]:
    """Raw (start, prompt) pairs of inline or JSON schedule text."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"parse_schedule: invalid JSON ({err})") from None
        pairs = []
        for n, item in enumerate(items):
            if isinstance(item, dict) and set(item) == {"start", "prompt"}:
                pairs.append((item["start"], item["prompt"]))
            elif isinstance(item, list) and len(item) == 2:
                pairs.append((item[0], item[1]))
            else:
                raise ValueError(f"parse_schedule: entry {n} must be [start, prompt] or "
                                 f'{{"start": ..., "prompt": ...}}, got {item!r}')
        return pairs
    pairs = []
    for part in (p.strip() for p in text.replace("\n", ";").split(";")):
        if not part:
            continue
        if ":" not in part:
            raise ValueError(f"parse_schedule: entry {part!r} must look like 'SECONDS:prompt'")
        start, prompt = part.split(":", 1)
        pairs.append((start.strip(), prompt))
    return pairs


def parse_schedule(text_or_path: str | Path) -> list[tuple[float, str]]:
    """Prompt switches of a stream: [(start_seconds, prompt)], sorted, first at 0.

    Accepts "0:a cat;5:a dog" (``;`` or newlines between entries), a JSON list, or a path to a
    file holding either. Start times must be finite, non-negative and strictly increasing.
    """
    text = str(text_or_path)
    if isinstance(text_or_path, Path) or Path(text).suffix in SCHEDULE_SUFFIXES:
        if not Path(text).is_file():
            raise FileNotFoundError(f"parse_schedule: schedule file {text} not found")
        text = Path(text).read_text()
    schedule = []
    for start, prompt in _schedule_entries(text):
        try:
            seconds = float(start)
        except (TypeError, ValueError):
            raise ValueError(f"parse_schedule: start time {start!r} is not a number") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"parse_schedule: start time {start!r} must be finite and >= 0")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"parse_schedule: the prompt at {seconds:g}s is empty")
        if schedule and seconds <= schedule[-1][0]:
            raise ValueError(f"parse_schedule: start times must increase, got {seconds:g}s "
                             f"after {schedule[-1][0]:g}s")
        schedule.append((seconds, prompt.strip()))
    if not schedule:
        raise ValueError("parse_schedule: the schedule is empty")
    if schedule[0][0] != 0:
        raise ValueError(f"parse_schedule: the first prompt must start at 0s, not {schedule[0][0]:g}s")
    return schedule
