"""``vidforce serve`` on CPU with a tiny model: the WebSocket and HTTP protocol, bad input answered while the
stream goes on, prompt switches at the next chunk boundary (one later with stream.overlap_decode), one stream for
every viewer, the saved mp4."""
import asyncio
import json
import queue
import re
import sys
import time
from dataclasses import replace

import imageio.v3 as iio
import numpy as np
import pytest
from aiohttp import ClientSession, WSMsgType
from aiohttp.test_utils import TestServer

from vidforce import config
from vidforce.cli import main
from vidforce.generate import build
from vidforce.live_prompts import MAX_PROMPT_CHARS
from vidforce.serve.app import Server
from vidforce.serve.protocol import Command, parse_command
from vidforce.serve.session import LiveSession
from tests.test_generate import write_cfg

OVERRIDES = ["causal.window=6", "causal.sink=0", "data.latent_height=8", "data.latent_width=8", "train.device=cpu",
             "train.precision=fp32", "schedule.denoising_steps=[1000,500]", "data.fps=8"]


@pytest.fixture(scope="module")
def parts():
    return build(config.load(None, OVERRIDES), False)


@pytest.mark.parametrize("message,error", [
    ("not json", "malformed message: not JSON"),
    ("[1, 2]", 'expected a JSON object with a "type" string'),
    ('{"prompt": "a cat"}', 'expected a JSON object with a "type" string'),
    ('{"type": "jump"}', "unknown message type 'jump'"),
    ('{"type": "prompt"}', "prompt: missing ['text']"),
    ('{"type": "prompt", "text": 3}', "prompt: 'text' must be a string"),
    ('{"type": "prompt", "text": "   "}', "the prompt is empty"),
    (json.dumps({"type": "prompt", "text": "a" * (MAX_PROMPT_CHARS + 1)}), f"at most {MAX_PROMPT_CHARS}"),
    ('{"type": "pause", "now": true}', "pause: unexpected keys ['now']"),
    (b"\x00\x01", "binary messages are not commands"),
])
def test_malformed_messages_are_named(message, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_command(message)


def test_well_formed_messages():
    assert parse_command('{"type": "prompt", "text": "  a cat "}') == Command("prompt", "a cat")
    assert parse_command('{"type": "start"}') == Command("start")
    assert parse_command('{"type": "reset"}') == Command("reset")


class Harness:
    """A server and session on a free port; ``log`` holds the server's log lines."""

    def __init__(self, parts, pace="max", first=None):
        self.log: list[str] = []
        self.server = Server(8.0, pace, (16, 16), {}, self.log.append)
        self.session = LiveSession(parts, 0, 1024, first, 8.0, self.server.chunk_ready, self.server.status_changed,
                                   self.log.append)
        self.server.attach(self.session)
        self.http = TestServer(self.server.app, port=0)

    async def __aenter__(self):
        await self.http.start_server()
        self.client = ClientSession(base_url=str(self.http.make_url("")))
        return self

    async def __aexit__(self, *exc):
        await self.client.close()
        await self.http.close()                 # the app's shutdown closes the session


async def receive(ws, until, timeout=60.0):
    """Messages (dicts; frames as bytes) until ``until(messages)`` holds."""
    got = []
    deadline = time.monotonic() + timeout
    while not until(got):
        message = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        assert message.type in (WSMsgType.TEXT, WSMsgType.BINARY), message
        got.append(message.data if message.type == WSMsgType.BINARY else json.loads(message.data))
    return got


def frames_in(messages):
    return [m for m in messages if isinstance(m, bytes)]


def of_type(messages, kind):
    return [m for m in messages if isinstance(m, dict) and m["type"] == kind]


def test_bad_websocket_and_http_input_is_answered_and_the_stream_goes_on(parts):
    async def scenario():
        async with Harness(parts) as h, h.client.ws_connect("/ws") as ws:
            await ws.send_str('{"type": "start", "prompt": "a red circle"}')
            await receive(ws, lambda got: len(frames_in(got)) >= 3)
            bad = ["not json", '{"type": "jump"}', '{"type": "prompt", "text": ""}',
                   json.dumps({"type": "prompt", "text": "x" * (MAX_PROMPT_CHARS + 5)})]
            for text in bad:
                await ws.send_str(text)
            await ws.send_bytes(b"\xff")
            got = await receive(ws, lambda got: len(of_type(got, "error")) == 5 and len(frames_in(got)) >= 6)
            errors = [m["message"] for m in of_type(got, "error")]
            assert errors[0].startswith("malformed message: not JSON") and "unknown message type" in errors[1]
            assert errors[2] == "the prompt is empty" and f"at most {MAX_PROMPT_CHARS}" in errors[3]
            assert "binary messages" in errors[4]
            response = await h.client.post("/command", data="{not json")
            assert response.status == 400 and "malformed message" in (await response.json())["error"]
            response = await h.client.post("/command", json={"type": "pause", "why": 1})
            assert response.status == 400 and "unexpected keys" in (await response.json())["error"]
            await receive(ws, lambda got: len(frames_in(got)) >= 3)        # still streaming
            status = await (await h.client.get("/status")).json()
            assert status["state"] == "running" and status["prompt"] == "a red circle"
            assert sum("rejected" in line for line in h.log) == 7
    asyncio.run(scenario())


@pytest.mark.parametrize("overlap", [False, True])
def test_a_prompt_switches_at_the_next_chunk_boundary(parts, overlap):
    async def scenario():
        async with Harness(replace(parts, overlap_decode=overlap), pace="video") as h, h.client.ws_connect("/ws") as ws:
            await ws.send_str('{"type": "start", "prompt": "a red circle"}')
            got = await receive(ws, lambda got: len(frames_in(got)) >= 4)
            await ws.send_str('{"type": "prompt", "text": "a blue square"}')
            got += await receive(ws, lambda got: of_type(got, "switched"))
            queued = next(m["message"] for m in of_type(got, "info") if m["message"].startswith("prompt queued"))
            frame = int(re.search(r"latent frame (\d+)", queued).group(1))
            switched = of_type(got, "switched")[0]
            assert frame % 3 == 0 and switched["start"] == frame and switched["recache"]["frame"] == frame
            assert switched["latency_ms"] > 0 and switched["recache"]["recached"] == 3
            chunks = of_type(got, "chunk")
            assert [c["prompt"] for c in chunks if c["start"] < frame] == ["a red circle"] * (frame // 3)
            assert [c["prompt"] for c in chunks if c["start"] == frame] == ["a blue square"]
            assert any(f"prompt switch at the chunk boundary, latent frame {frame}: re-cached 3 frames" in line
                       for line in h.log)
    asyncio.run(scenario())


def start_image(codec):
    from vidforce.image_start import encode_image
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :8] = (250, 20, 20)
    return image, encode_image(codec, image)


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("image,before,landing", [(False, 1, {False: 3, True: 3}), (False, 3, {False: 9, True: 12}),
                                                  (True, 3, {False: 7, True: 10})])
def test_a_live_switch_is_reported_where_the_streamer_applies_it(parts, overlap, image, before, landing):
    """A request after the ``before``-th output (at s) lands at s + F, with overlap_decode at s + 2F (s + F after
    the stream's first output): the queued message, the chunks' prompts, the request time and the re-cache say so,
    and the frames equal a serial stream with that switch scheduled."""
    first = start_image(parts.codec)[1] if image else None
    got, log = queue.Queue(), []
    session = LiveSession(replace(parts, overlap_decode=overlap), 0, 1024, first, 8.0, got.put, lambda: None,
                          log.append)
    try:
        session.start("a red circle")
        chunks = [got.get(timeout=60)]
        while len(chunks) < before:
            session.taken()                     # the consumer plays a chunk: the worker may hand out one more
            chunks.append(got.get(timeout=60))
        asked = time.perf_counter()
        queued = session.request("a blue square")
        frame = int(re.search(r"switches at latent frame (\d+) \(the next chunk boundary\)", queued).group(1))
        assert frame == landing[overlap]
        while chunks[-1].start < frame:
            session.taken()
            chunks.append(got.get(timeout=60))
    finally:
        session.close()
    assert chunks[-1].start == frame and chunks[-1].recache["frame"] == frame
    assert [c.prompt for c in chunks] == ["a red circle"] * (len(chunks) - 1) + ["a blue square"]
    assert [c.requested_at is None for c in chunks[:-1]] == [True] * (len(chunks) - 1)
    assert asked <= chunks[-1].requested_at <= time.perf_counter()
    assert [c.recache for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert sum(f"prompt switch at the chunk boundary, latent frame {frame}:" in line for line in log) == 1
    assert session.status()["prompt"] == "a blue square"
    serial = parts.streamer(0).frames(1024, [(0, "a red circle"), (frame, "a blue square")], first)
    for c in chunks:
        assert np.array_equal(c.frames, next(serial)), c.start


def test_every_viewer_sees_the_one_stream_and_pause_reset_save(parts, tmp_path):
    async def scenario():
        async with Harness(parts) as h, h.client.ws_connect("/ws") as a, h.client.ws_connect("/ws") as b:
            await a.send_str('{"type": "start", "prompt": "a red circle"}')
            got_a = await receive(a, lambda got: len(of_type(got, "chunk")) >= 3)
            got_b = await receive(b, lambda got: len(of_type(got, "chunk")) >= 3)
            starts_a, starts_b = ([c["start"] for c in of_type(got, "chunk")][:3] for got in (got_a, got_b))
            assert starts_a == starts_b == [0, 3, 6]
            assert max(m["viewers"] for m in of_type(got_b, "status")) == 2
            await b.send_str('{"type": "start", "prompt": "a dog"}')
            info = await receive(b, lambda got: of_type(got, "info"))
            assert of_type(info, "info")[0]["message"] == "already streaming"
            await b.send_str('{"type": "pause"}')
            await receive(a, lambda got: any(m.get("state") == "paused" for m in of_type(got, "status")))
            while h.session.busy:                   # the chunk in progress when the pause came still lands
                await asyncio.sleep(0.01)
            response = await h.client.post("/save")
            assert response.status == 200 and response.content_type == "video/mp4"
            (tmp_path / "saved.mp4").write_bytes(await response.read())
            assert iio.imread(tmp_path / "saved.mp4").shape == (int(response.headers["X-Frames"]), 16, 16, 3)
            assert (await h.client.post("/save")).status == 409                 # nothing new since the save
            await a.send_str('{"type": "reset"}')
            await receive(b, lambda got: any(m.get("state") == "idle" for m in of_type(got, "status")))
            await a.send_str('{"type": "pause"}')
            errors = await receive(a, lambda got: of_type(got, "error"))
            assert of_type(errors, "error")[0]["message"] == "nothing to pause: the stream is idle"
    asyncio.run(scenario())


def test_serve_refuses_bad_input_in_one_line(tmp_path, capsys):
    cfg = write_cfg(tmp_path)
    assert main(["serve", "--config", str(cfg), "--random-weights", "causal.window=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vidforce serve: error: serve streams without a fixed end")
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["serve", "--config", str(cfg), "--random-weights", "--image", str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--image {tmp_path / 'bad.png'} is not a readable image" in err[0]
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "no weights: give --checkpoint FILE" in capsys.readouterr().err


def test_the_page_is_served_with_its_controls(parts):
    async def scenario():
        async with Harness(parts) as h:
            page = await (await h.client.get("/")).text()
            for element in ('id="video"', 'id="prompt"', 'id="start"', 'id="pause"', 'id="reset"', 'id="save"',
                            'id="fps"', 'id="switch-latency"'):
                assert element in page
    asyncio.run(scenario())


def test_a_stream_from_an_image_starts_with_it(parts):
    image, first = start_image(parts.codec)

    async def scenario():
        async with Harness(parts, first=first) as h, h.client.ws_connect("/ws") as ws:
            await ws.send_str('{"type": "start", "prompt": "a red circle"}')
            got = await receive(ws, lambda got: len(of_type(got, "chunk")) >= 2 and len(frames_in(got)) >= 4)
            assert [(c["start"], c["frames"]) for c in of_type(got, "chunk")][:2] == [(0, 1), (1, 3)]
            shown = iio.imread(frames_in(got)[0], extension=".jpg")
            assert np.abs(shown.astype(int) - image).mean() < 8                 # JPEG of the image itself
    asyncio.run(scenario())


def test_without_ffmpeg_the_stream_goes_on_and_save_says_why(parts, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)          # the import fails, as on a bare GPU box

    async def scenario():
        async with Harness(parts) as h, h.client.ws_connect("/ws") as ws:
            await ws.send_str('{"type": "start", "prompt": "a red circle"}')
            await receive(ws, lambda got: len(frames_in(got)) >= 9)
            response = await h.client.post("/save")
            assert response.status == 409 and (await response.json())["error"].startswith("recording stopped: ")
            assert sum(line.startswith("recording stopped: ") for line in h.log) == 1
    asyncio.run(scenario())
