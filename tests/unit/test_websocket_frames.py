"""send_binary: a client's masked frames, written without aiohttp's copies, read back by an aiohttp
server (which unmasks and checks them) for each of the three length encodings of RFC 6455."""

from __future__ import annotations

import os

import aiohttp
from aiohttp import web

from bridged.carriers.websocket import send_binary

#: lengths at the edges of the 7-bit, 16-bit and 64-bit encodings, and of the one-write cutoff
SIZES = [0, 1, 125, 126, 16383, 16384, 65535, 65536, 256 * 1024 + 1]


async def test_masked_frames_arrive_whole() -> None:
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.BINARY
            received.append(msg.data)
            await ws.send_bytes(msg.data[:8])  # an answer: the frame was read as a whole
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sent: list[bytes] = []
    try:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(f"http://127.0.0.1:{port}/", max_msg_size=0) as ws:
            for size in SIZES:
                for kind in (bytes, bytearray):
                    payload = os.urandom(size)
                    sent.append(payload)
                    await send_binary(ws, kind(payload))
                    answer = await ws.receive()
                    assert answer.data == payload[:8]
    finally:
        await runner.cleanup()
    assert received == sent
