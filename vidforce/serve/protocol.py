"""The messages of ``vidforce serve``: what a page (or any client) may send, checked before anything acts on it.

Client -> server, one JSON object per WebSocket text message (or the body of ``POST /command``):

- ``{"type": "start", "prompt": TEXT}``: start a stream with ``prompt`` (needed when none runs; while paused it
  resumes, and a prompt that differs from the current one is switched to at the next chunk boundary);
- ``{"type": "prompt", "text": TEXT}``: switch to ``text`` at the next chunk boundary (starts a stream when
  none runs);
- ``{"type": "pause"}``: stop at the next chunk boundary; ``{"type": "reset"}``: end the stream, clear the page.

Server -> client: JSON text messages ``{"type": "status" | "chunk" | "switched" | "info" | "error", ...}`` and
binary messages, each one JPEG frame (the frames of a chunk follow its ``chunk`` message). Anything else a
client sends is answered with an ``error`` message naming the problem; nothing else happens.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from vidforce.live_prompts import check_prompt

FIELDS = {"start": {"prompt"}, "prompt": {"text"}, "pause": set(), "reset": set()}
REQUIRED = {"prompt": {"text"}}


@dataclass(frozen=True)
class Command:
    """A checked client message: ``kind`` one of ``FIELDS``, ``prompt`` the checked prompt text or None."""
    kind: str
    prompt: str | None = None


def parse_command(text: str | bytes) -> Command:
    """A client message -> :class:`Command`; ValueError with a message for the client otherwise."""
    if isinstance(text, bytes):
        raise ValueError("binary messages are not commands: send a JSON object as text")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"malformed message: not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError('malformed message: expected a JSON object with a "type" string')
    kind = message["type"]
    if kind not in FIELDS:
        raise ValueError(f"unknown message type {kind!r} (one of {', '.join(FIELDS)})")
    keys = set(message) - {"type"}
    if keys - FIELDS[kind]:
        raise ValueError(f"{kind}: unexpected keys {sorted(keys - FIELDS[kind])}")
    if REQUIRED.get(kind, set()) - keys:
        raise ValueError(f"{kind}: missing {sorted(REQUIRED[kind] - keys)}")
    field = next(iter(FIELDS[kind]), None)
    if field is None or field not in message:
        return Command(kind)
    if not isinstance(message[field], str):
        raise ValueError(f"{kind}: {field!r} must be a string")
    return Command(kind, check_prompt(message[field]))
