"""Prompts typed while a video streams: the checks every live prompt passes, and the lines appended to a file.

``check_prompt`` is the one rule for a prompt that arrives while streaming (``vidforce serve``'s page and
``vidforce generate --prompts-live``): surrounding whitespace is dropped, and it must be non-empty and at most
``MAX_PROMPT_CHARS`` characters (longer text would only be cut by the text encoder's token limit).

``LiveLines`` follows a text file as ``tail -f`` does, or stdin (``-``): each complete line (newline-terminated)
that arrives after it was opened is one prompt. Lines already in the file when it is opened are the past and
are skipped; a file that does not exist yet is read from its start once it appears; a file that shrinks (was
rewritten, ``echo x > FILE``) is read again from its start. ``poll`` never blocks: it returns the lines that
arrived since the last call, so a streamer that polls between chunks switches at the next chunk boundary.
"""
from __future__ import annotations

import queue
import sys
import threading
from pathlib import Path

MAX_PROMPT_CHARS = 2000


def check_prompt(text: str) -> str:
    """``text`` stripped; ValueError if it is empty or longer than ``MAX_PROMPT_CHARS`` characters."""
    prompt = text.strip()
    if not prompt:
        raise ValueError("the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
    return prompt


class LiveLines:
    """New lines of ``path`` (``"-"``: stdin, read by a daemon thread), as they are appended."""

    def __init__(self, path: str):
        self.path, self.name = path, "stdin" if path == "-" else path
        self._partial = b""
        if path == "-":
            self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
            threading.Thread(target=self._read_stdin, name="prompts-live-stdin", daemon=True).start()
            return
        file = Path(path)
        if file.is_dir():
            raise ValueError(f"--prompts-live {path} is a directory")
        self._offset = file.stat().st_size if file.exists() else 0

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            self._queue.put(line)

    def poll(self) -> list[str]:
        """The complete lines that arrived since the last call (newline and surrounding whitespace dropped,
        blank lines skipped)."""
        if self.path == "-":
            lines = []
            while not self._queue.empty():
                lines.append(self._queue.get())
            return [line.strip() for line in lines if line.strip()]
        return [line.strip() for line in self._read_file() if line.strip()]

    def _read_file(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                if size < self._offset:            # rewritten: start again
                    self._offset, self._partial = 0, b""
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:                  # not there (yet, or any more)
            self._offset, self._partial = 0, b""
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in lines]
