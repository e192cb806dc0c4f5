"""The aiohttp application of ``vidforce serve``: the page, one WebSocket per viewer, pacing and fan-out.

Routes: ``GET /`` the page; ``GET /ws`` the WebSocket (messages: ``protocol.py``); ``GET /status`` the state as
JSON; ``POST /command`` one command as a JSON body (``{"ok": true, "message": ...}``, or status 400 and
``{"error": ...}``); ``POST /save`` the recording as ``video/mp4`` (status 409 and ``{"error": ...}`` when there
is none).

Every viewer sees the one stream: each chunk's ``chunk`` message and JPEG frames go to every WebSocket. With
``pace="video"`` the frames leave at the playback rate (``1 / fps`` apart; a late frame goes at once and the
clock restarts from it), with ``pace="max"`` as soon as they are encoded. A viewer that falls behind by
``MAX_PENDING_FRAMES`` frames skips frames rather than slowing the others. A rejected message is answered with
an ``error`` message to its sender and logged; the stream is not touched.
"""
from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from aiohttp import WSMsgType, web

from vidforce.serve.protocol import Command, parse_command
from vidforce.serve.session import Chunk, LiveSession

PAGE = Path(__file__).with_name("page.html")
MAX_PENDING_FRAMES = 64
MAX_MESSAGE_BYTES = 1 << 20
JPEG_QUALITY = 90
PACES = ("video", "max")


def encode_jpegs(frames: np.ndarray, quality: int = JPEG_QUALITY) -> list[bytes]:
    """uint8 ``[n, H, W, 3]`` -> one JPEG per frame."""
    from PIL import Image  # noqa: PLC0415
    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


@dataclass(eq=False)
class Viewer:
    """One WebSocket; its messages leave in order through its own queue."""
    number: int
    ws: web.WebSocketResponse
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    pending_frames: int = 0
    skipped: int = 0

    def send(self, message: dict | bytes) -> None:
        if isinstance(message, bytes):
            if self.pending_frames >= MAX_PENDING_FRAMES:
                self.skipped += 1
                return
            self.pending_frames += 1
        self.queue.put_nowait(message)

    async def pump(self) -> None:
        """Send the queued messages until the socket closes."""
        while True:
            message = await self.queue.get()
            try:
                if isinstance(message, bytes):
                    self.pending_frames -= 1
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_str(json.dumps(message))
            except (ConnectionError, RuntimeError):
                return


class Server:
    """The application around a :class:`LiveSession`; build the session with :meth:`chunk_ready` and
    :meth:`status_changed` as its callbacks, then :meth:`attach` it."""

    def __init__(self, fps: float, pace: str, frame_size: tuple[int, int], info: dict, say: Callable[[str], None]):
        if pace not in PACES:
            raise ValueError(f"--pace must be one of {PACES}, got {pace!r}")
        self.fps, self.pace, self.frame_size, self.info, self.say = fps, pace, frame_size, info, say
        self.session: LiveSession | None = None
        self.viewers: set[Viewer] = set()
        self._numbers = itertools.count(1)
        self._chunks: asyncio.Queue[Chunk] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vidforce-serve-jpeg")
        self._due = 0.0
        self.app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
        self.app.router.add_get("/", self._page)
        self.app.router.add_get("/ws", self._websocket)
        self.app.router.add_get("/status", self._status)
        self.app.router.add_post("/command", self._command)
        self.app.router.add_post("/save", self._save)
        self.app.on_startup.append(self._started)
        self.app.on_shutdown.append(self._closing)

    def attach(self, session: LiveSession) -> None:
        self.session = session

    # ---------------------------------------------------------------- called from the session's worker thread

    def chunk_ready(self, chunk: Chunk) -> None:
        self._loop.call_soon_threadsafe(self._chunks.put_nowait, chunk)

    def status_changed(self) -> None:
        self._loop.call_soon_threadsafe(self._broadcast_status)

    # ---------------------------------------------------------------- lifecycle

    async def _started(self, app) -> None:
        self._loop = asyncio.get_running_loop()
        self._chunks = asyncio.Queue()
        self._sender = asyncio.create_task(self._send_chunks())

    async def _closing(self, app) -> None:
        """Stop the stream first (its worker hands chunks to this loop), then the sender and the sockets."""
        await self._loop.run_in_executor(None, self.session.close)
        self._sender.cancel()
        for viewer in list(self.viewers):
            await viewer.ws.close()
        self._encoder.shutdown(wait=False)

    # ---------------------------------------------------------------- routes

    async def _page(self, request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def _status(self, request) -> web.Response:
        return web.json_response(self.status())

    async def _command(self, request) -> web.Response:
        try:
            reply = await self._execute(parse_command(await request.text()), "an HTTP client")
        except ValueError as err:
            self.say(f"an HTTP client: rejected: {err}")
            return web.json_response({"error": str(err)}, status=400)
        return web.json_response({"ok": True, "message": reply})

    async def _save(self, request) -> web.Response:
        try:
            data, frames = await asyncio.get_running_loop().run_in_executor(None, self.session.save)
        except LookupError as err:
            return web.json_response({"error": str(err)}, status=409)
        name = time.strftime("vidforce-%Y%m%d-%H%M%S.mp4")
        return web.Response(body=data, content_type="video/mp4",
                            headers={"Content-Disposition": f'attachment; filename="{name}"',
                                     "X-Frames": str(frames)})

    async def _websocket(self, request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        viewer = Viewer(next(self._numbers), ws)
        self.viewers.add(viewer)
        pump = asyncio.create_task(viewer.pump())
        self.say(f"viewer {viewer.number} connected ({len(self.viewers)} watching)")
        viewer.send({**self.status(), "type": "hello", "viewer": viewer.number})
        self._broadcast_status()
        try:
            async for message in ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._receive(viewer, message.data)
        finally:
            self.viewers.discard(viewer)
            pump.cancel()
            skipped = f"; it fell behind and skipped {viewer.skipped} frames" if viewer.skipped else ""
            self.say(f"viewer {viewer.number} left ({len(self.viewers)} watching{skipped})")
            self._broadcast_status()
        return ws

    # ---------------------------------------------------------------- commands

    async def _receive(self, viewer: Viewer, data: str | bytes) -> None:
        who = f"viewer {viewer.number}"
        try:
            viewer.send({"type": "info", "message": await self._execute(parse_command(data), who)})
        except ValueError as err:
            self.say(f"{who}: rejected: {err}")
            viewer.send({"type": "error", "message": str(err)})

    async def _execute(self, command: Command, who: str) -> str:
        """Run a checked command off the event loop (a new stream closes the last recording's ffmpeg)."""
        self.say(f"{who}: {command.kind}" + (f" {command.prompt!r}" if command.prompt else ""))
        return await self._loop.run_in_executor(None, self.execute, command)

    def execute(self, command: Command) -> str:
        """Run a checked command; returns the reply (ValueError: the command does not apply now)."""
        if command.kind == "start":
            return self.session.start(command.prompt)
        if command.kind == "prompt":
            return self.session.request(command.prompt)
        if command.kind == "pause":
            return self.session.pause()
        if command.kind == "reset":
            return self.session.reset()
        raise ValueError(f"unknown command {command.kind!r}")

    def status(self) -> dict:
        return {"type": "status", **self.session.status(), "viewers": len(self.viewers), "pace": self.pace,
                "height": self.frame_size[0], "width": self.frame_size[1], **self.info}

    def _broadcast_status(self) -> None:
        status = self.status()
        for viewer in self.viewers:
            viewer.send(status)

    # ---------------------------------------------------------------- frames

    async def _send_chunks(self) -> None:
        while True:
            chunk = await self._chunks.get()
            if not self.session.current(chunk.stream):
                continue
            self.session.taken()
            jpegs = await self._loop.run_in_executor(self._encoder, encode_jpegs, chunk.frames)
            meta = {"type": "chunk", "index": chunk.index, "start": chunk.start, "frames": len(jpegs),
                    "prompt": chunk.prompt, "made_ms": 1e3 * chunk.made_s, "recache": chunk.recache}
            for viewer in self.viewers:
                viewer.send(meta)
            for i, jpeg in enumerate(jpegs):
                await self._wait_turn()
                if not self.session.current(chunk.stream):
                    break
                for viewer in self.viewers:
                    viewer.send(jpeg)
                if i == 0 and chunk.requested_at is not None:
                    self._switched(chunk)

    async def _wait_turn(self) -> None:
        """With ``pace="video"``: wait until this frame's playback time."""
        if self.pace == "max":
            return
        now = self._loop.time()
        if self._due < now - 1.0 / self.fps:        # late (or the first frame after a pause): play now
            self._due = now
        await asyncio.sleep(max(0.0, self._due - now))
        self._due += 1.0 / self.fps

    def _switched(self, chunk: Chunk) -> None:
        latency = time.perf_counter() - chunk.requested_at
        self.say(f"first frame under {chunk.prompt!r} (latent frame {chunk.start}) sent {1e3 * latency:.0f} ms "
                 "after the request")
        for viewer in self.viewers:
            viewer.send({"type": "switched", "prompt": chunk.prompt, "start": chunk.start,
                         "latency_ms": 1e3 * latency, "recache": chunk.recache})
