"""``vidforce serve`` in headless Chromium: a tiny model on CPU, the page opened, frames arriving (the canvas
changes), a prompt typed and submitted through the page, the server's log showing the re-cache at the next chunk
boundary, bad input answered on the page while the stream goes on, a non-blank screenshot.

Chromium is driven through its DevTools protocol over aiohttp's WebSocket client (no browser download, no
driver binary). Without Chromium the test is skipped (``apt-get install chromium``); in CI (``CI`` set), where
``.ci/run`` installs it, a missing Chromium fails the test instead.
"""
import asyncio
import base64
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from aiohttp import ClientSession

from tests.test_generate import write_cfg

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


class Lines:
    """The lines a process writes to a pipe, collected by a thread (the pipe never fills)."""

    def __init__(self, pipe):
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe) -> None:
        for line in pipe:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines[-40:]))


class DevTools:
    """A page target of Chromium's DevTools protocol: commands, script evaluation, real clicks and typing."""

    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method: str, **params):
        number = next(self.ids)
        await self.ws.send_json({"id": number, "method": method, "params": params})
        while True:
            message = json.loads((await self.ws.receive(timeout=60)).data)
            if message.get("id") == number:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := await self.evaluate(expression):
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    async def click(self, selector: str) -> None:
        box = await self.evaluate(f"JSON.stringify(document.querySelector({selector!r}).getBoundingClientRect())")
        box = json.loads(box)
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def type(self, selector: str, text: str) -> None:
        """Click into the field, select what it holds, type ``text`` over it."""
        await self.click(selector)
        await self.evaluate(f"document.querySelector({selector!r}).select()")
        if text:
            await self.call("Input.insertText", text=text)
        else:
            await self.call("Input.dispatchKeyEvent", type="keyDown", key="Backspace", windowsVirtualKeyCode=8)
            await self.call("Input.dispatchKeyEvent", type="keyUp", key="Backspace", windowsVirtualKeyCode=8)


def _frames(page):
    return page.evaluate("+document.getElementById('frames').textContent")


async def _drive(devtools_port: int, url: str, log: Lines, shot: Path) -> None:
    async with ClientSession() as http:
        targets = await (await http.get(f"http://127.0.0.1:{devtools_port}/json/list")).json()
        target = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = DevTools(ws)
            await page.call("Page.navigate", url=url)
            await page.wait_for(f"location.href === {url!r} && document.readyState === 'complete'")
            await page.wait_for("document.getElementById('state').textContent === 'idle'")
            await page.type("#prompt", "a red circle")
            await page.click("#start")
            await page.wait_for("+document.getElementById('frames').textContent >= 3")
            first = await page.evaluate("document.getElementById('video').toDataURL()")
            await page.wait_for(f"document.getElementById('video').toDataURL() !== {first!r}")    # it moves

            await page.type("#prompt", "a blue square")
            await page.click("#switch")
            frame = int(log.wait_for(r"prompt queued: switches at latent frame (\d+) \(the next chunk boundary\): "
                                     r"'a blue square'").group(1))
            log.wait_for(rf"prompt switch at the chunk boundary, latent frame {frame}: re-cached \d+ frames in "
                         r"[\d.]+ ms under 'a blue square'")
            await page.wait_for(f"document.getElementById('log').textContent.includes("
                                f"'switched to \"a blue square\" at latent frame {frame}')")
            assert "ms (request to first frame)" in await page.evaluate(
                "document.getElementById('switch-latency').textContent")

            await page.type("#prompt", "")
            await page.click("#switch")                                       # an empty prompt: refused
            await page.wait_for("document.getElementById('message').className === 'error' && "
                                "document.getElementById('message').textContent === 'the prompt is empty'")
            log.wait_for(r"viewer \d+: rejected: the prompt is empty")
            shown = await _frames(page)
            await page.wait_for(f"+document.getElementById('frames').textContent >= {shown + 3}")   # still streaming

            await page.click("#save")
            await page.wait_for("document.getElementById('message').textContent.startsWith('saved ')")
            png = base64.b64decode((await page.call("Page.captureScreenshot", format="png"))["data"])
            shot.write_bytes(png)


@pytest.mark.slow
def test_the_page_in_headless_chromium(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("headless Chromium is missing in CI: .ci/run installs the Debian package chromium")
        pytest.skip("headless Chromium not found (apt-get install chromium): the browser test of vidforce serve "
                    "did not run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "vidforce.cli", "serve", "--config", str(write_cfg(tmp_path)),
                               "--random-weights", "--port", "0"], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True)
    browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
                                f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=800,1000", "about:blank"],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        log, browser_log = Lines(server.stderr), Lines(browser.stderr)
        url = log.wait_for(r"serving on (http://127\.0\.0\.1:\d+/)").group(1)
        devtools_port = int(browser_log.wait_for(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/").group(1))
        shot = tmp_path / "page.png"
        asyncio.run(_drive(devtools_port, url, log, shot))
    finally:
        browser.terminate()
        server.send_signal(signal.SIGTERM)
        browser.wait(timeout=30)
        server.wait(timeout=60)
    assert server.returncode == 130 and log.lines[-1].endswith(" stopped"), log.lines[-5:]
    from PIL import Image
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"))
    assert pixels.shape[0] > 200 and pixels.std() > 10
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50          # text, buttons and the video, not blank
