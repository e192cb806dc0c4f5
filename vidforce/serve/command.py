"""``vidforce serve``: check the input, build the model once, serve the page until Ctrl-C or SIGTERM.

Everything cheap is checked before the model is built (config, weights, the prompt, the image, a rolling
cache window). The stream's length limit is the RoPE table with ``causal.rope_mode=absolute``; relative RoPE
streams without end. Log lines go to stderr, one per event, each stamped with the wall-clock time.
"""
from __future__ import annotations

import asyncio
import ipaddress
import signal
import sys
import time

from vidforce.generate import build, describe_weights, load_config
from vidforce.image_start import read_image, start_latent
from vidforce.live_prompts import check_prompt

UNBOUNDED = sys.maxsize      # latent frames of a relative-RoPE stream: it ends only when reset


def say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def run(args) -> int:
    from vidforce.serve.app import Server  # noqa: PLC0415 (aiohttp only for serve)
    from vidforce.serve.session import LiveSession  # noqa: PLC0415
    cfg = load_config(args)
    fps = cfg.data.fps if args.fps is None else args.fps
    if not cfg.causal.window:
        raise ValueError("serve streams without a fixed end: set a rolling cache, causal.window > 0 (e.g. "
                         "causal.window=21 causal.sink=3); causal.window=0 would cache the whole stream")
    prompt = check_prompt(args.prompt) if args.prompt else ""
    image = read_image(args.image) if args.image else None
    say(f"weights: {describe_weights(args, cfg)}")
    parts = build(cfg, args.compile)
    first = None
    if image is not None:
        first, note = start_latent(parts.codec, image, parts.latent_hw, parts.device, parts.dtype)
        say(f"start image: {args.image} ({note})")
    limit = UNBOUNDED if parts.model.relative else parts.model.arch.rope_max_len
    s = parts.codec.spatial_factor
    info = {"image": args.image or None, "limit": None if limit == UNBOUNDED else limit}
    server = Server(fps, args.pace, (parts.latent_hw[0] * s, parts.latent_hw[1] * s), info, say)
    session = LiveSession(parts, args.seed, limit, first, fps, server.chunk_ready, server.status_changed, say,
                          prompt)
    server.attach(session)
    asyncio.run(_serve(server, args.host, args.port))      # its shutdown closes the session
    say("stopped")
    return 130


async def _serve(server, host: str, port: int) -> None:
    """Bind, announce the address, wait for SIGINT / SIGTERM, shut down."""
    from aiohttp import web  # noqa: PLC0415
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        say(f"serving on http://{_url_host(host)}:{runner.addresses[0][1]}/ (open it in a browser; Ctrl-C stops)")
        if not _loopback(host):
            say(f"warning: bound to {host}: every machine that reaches this one can watch and drive the model")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
