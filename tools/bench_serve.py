"""Headless client of ``vidforce serve``: frames per second to a client, and prompt-switch latency.

Connects to a running server's WebSocket, starts a stream, skips ``--warmup-frames`` frames (kernels, autotune,
the cache filling), then counts the frames that arrive for ``--seconds`` (start the server with ``--pace max``
to measure throughput: with ``--pace video`` frames leave at the playback rate). Every ``--switch-every``
seconds it submits the next of ``--prompts`` and times, on the client, the request to the first frame of the
chunk made under it (the server's own measurement, to the frame leaving it, is reported beside).

    vidforce serve --config C --random-weights --pace max --port 8765 &
    python tools/bench_serve.py --url http://127.0.0.1:8765 --seconds 60 --out $OUT/serve
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from aiohttp import ClientConnectorError, ClientSession, WSMsgType


async def wait_for_server(http: ClientSession, url: str, timeout: float) -> dict:
    """``GET /status`` until the server answers (it binds after building the model)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await (await http.get(f"{url}/status")).json()
        except ClientConnectorError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


async def measure(args) -> dict:
    async with ClientSession() as http:
        status = await wait_for_server(http, args.url, args.wait)
        async with http.ws_connect(f"{args.url}/ws", max_msg_size=0) as ws:
            await ws.send_str(json.dumps({"type": "start", "prompt": args.prompts[0]}))
            return await _count(ws, args, status)


async def _count(ws, args, status: dict) -> dict:
    frames, arrivals, switches = 0, [], []
    pending = None                        # (prompt, sent at) of the submitted switch not yet shown
    chunk_prompt, first_of_chunk = None, False
    prompts = iter(args.prompts[1:] * 1000)
    t_end = next_switch = None
    while t_end is None or time.perf_counter() < t_end:
        message = await ws.receive(timeout=args.wait)
        now = time.perf_counter()
        if message.type == WSMsgType.TEXT:
            data = json.loads(message.data)
            if data["type"] == "chunk":
                chunk_prompt, first_of_chunk = data["prompt"], True
            elif data["type"] == "switched" and switches and "server_ms" not in switches[-1]:
                switches[-1]["server_ms"] = data["latency_ms"]
                switches[-1]["recache_ms"] = data["recache"]["ms"] if data["recache"] else None
            elif data["type"] == "error":
                raise RuntimeError(f"server: {data['message']}")
            elif data["type"] == "status" and data["state"] in ("ended", "failed"):
                raise RuntimeError(f"the stream {data['state']} after {frames} frames (see the server's log)")
            continue
        if message.type != WSMsgType.BINARY:
            raise RuntimeError(f"the connection closed: {message}")
        frames += 1
        if pending and first_of_chunk and chunk_prompt == pending[0]:
            switches.append({"prompt": pending[0], "client_ms": 1e3 * (now - pending[1])})
            pending = None
        first_of_chunk = False
        if frames == args.warmup_frames:
            t_end, next_switch = now + args.seconds, now + args.switch_every
        if t_end is not None and frames > args.warmup_frames:
            arrivals.append(now)
        if next_switch is not None and now >= next_switch and pending is None:
            prompt = next(prompts)
            await ws.send_str(json.dumps({"type": "prompt", "text": prompt}))
            pending, next_switch = (prompt, time.perf_counter()), now + args.switch_every
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    return {"url": args.url, "pace": status["pace"], "frame": [status["height"], status["width"]],
            "warmup_frames": args.warmup_frames, "frames": len(arrivals), "seconds": span,
            "fps_to_client": (len(arrivals) - 1) / span, "switches": switches,
            "switch_client_ms_median": statistics.median([s["client_ms"] for s in switches]) if switches else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    p.add_argument("--seconds", type=float, default=60.0, help="measured seconds after the warm-up (default 60)")
    p.add_argument("--warmup-frames", type=int, default=120, help="frames skipped before measuring (default 120)")
    p.add_argument("--switch-every", type=float, default=8.0, help="seconds between prompt switches (default 8)")
    p.add_argument("--prompts", nargs="+", default=["a red fox trotting through fresh snow",
                                                      "a corgi surfing at sunset", "a paper boat on a rainy street"],
                   help="the first starts the stream; the others are switched to in turn")
    p.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the server and each message")
    p.add_argument("--out", default="", help="directory for serve.json (default: print only)")
    args = p.parse_args()
    result = asyncio.run(measure(args))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "serve.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "switches"}, indent=2))
    for s in result["switches"]:
        print(f"switch to {s['prompt'][:40]!r}: {s['client_ms']:.0f} ms request -> first frame on the client "
              f"(server: {s.get('server_ms', float('nan')):.0f} ms to the wire, re-cache "
              f"{s.get('recache_ms') or float('nan'):.0f} ms)")


if __name__ == "__main__":
    main()
