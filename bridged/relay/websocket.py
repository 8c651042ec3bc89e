"""The relay's HTTP endpoint: ``GET /ssh`` upgrades to the ``ws`` carrier; ``/healthz`` for probes.

The websocket is spliced into the SSH server in-process (no local socket in between): its binary
messages are the SSH byte stream. A bearer token guards it, compared in constant time and read
from a file on every request so it can be rotated without a restart.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..carriers.websocket import SUBPROTOCOL, AiohttpMessages

if TYPE_CHECKING:
    from .server import Relay

log = logging.getLogger(__name__)


def _token(relay: Relay) -> str | None:
    path = relay.settings.token_file
    if path is None:
        return None
    try:
        return path.read_text().strip() or None
    except OSError as exc:
        log.error("cannot read the websocket token file %s: %s", path, exc)
        return None


def make_app(relay: Relay) -> web.Application:
    async def ssh(request: web.Request) -> web.StreamResponse:
        expected = _token(relay)
        if expected is None:
            raise web.HTTPForbidden(text="websocket carrier disabled: the relay has no token\n")
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise web.HTTPUnauthorized(text="bad or missing bearer token\n")
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=0, compress=False,
                                   autoping=True, heartbeat=None)
        await ws.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        transport = relay.acceptor.accept(AiohttpMessages(ws, {"peername": peer}))
        await transport.closed
        return ws

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/ssh", ssh)
    app.router.add_get("/healthz", healthz)
    return app


async def start_http(relay: Relay, host: str, port: int) -> tuple[Any, int]:
    runner = web.AppRunner(make_app(relay), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, int(bound)
