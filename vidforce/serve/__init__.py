"""``vidforce serve``: one live stream of the model to web pages, with prompt switches at chunk boundaries.

- ``session.py``  the stream: a worker thread runs one ``Streamer`` at a time (start / pause / reset / prompt),
                  and the recording of what was streamed (``Mp4Writer``)
- ``protocol.py`` the client messages and their checks
- ``app.py``      the aiohttp application: the page, the WebSocket, pacing, fan-out to every viewer
- ``command.py``  the command line: validate, build the model, bind, serve until Ctrl-C / SIGTERM
- ``page.html``   the page (no build step, no external assets)

Choices. **aiohttp** is the web library: one well-kept package that serves HTTP and WebSockets on asyncio and
also has the WebSocket client that the tests, the DevTools driver of the browser test and the headless
benchmark client use, so the feature adds one dependency (Starlette would need uvicorn, a WebSocket package
and an HTTP client besides). **JPEG frames over one WebSocket** is the transport: a frame is sent the moment it
is decoded, in one binary message, on the same connection that carries the prompt box's commands and the
server's status, so the page needs no polling and no second channel; JPEG encoding (Pillow, off the event loop)
costs a few milliseconds a frame even at 832x480 and any browser decodes it (``createImageBitmap``). Multipart
MJPEG would need a second channel for commands; WebRTC or MSE video would add an encoder pipeline and a chunk
of latency for a gain in bandwidth that does not matter on localhost.
"""
