"""The inspector's web app, served by the daemon on 127.0.0.1 only.

Who may use it (the daemon's socket is this user's; a browser tab is anybody's page):

- an unguessable token (``secrets.token_urlsafe(32)``) in the URL ``bridged inspect`` prints,
  as Jupyter does. The first visit trades it for a cookie (HttpOnly, SameSite=Strict, named
  after the port: cookies do not tell ports apart) and is redirected to a URL without it, so
  it leaves no trace in the history. Every request needs the cookie or the token, compared in
  constant time;
- the Host header must be 127.0.0.1:PORT or localhost:PORT: a DNS-rebinding page (evil.com
  resolving to 127.0.0.1) sends its own name;
- calls that change something (replay, clear) are POSTs with the header
  ``X-Bridged-Inspector: 1`` (a cross-site page cannot send it without a CORS preflight this
  server never approves) and, when the browser says where they come from (Origin,
  Sec-Fetch-Site), from this very origin;
- every page says: scripts and styles from here only, no frames, no referrer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..capture.har import to_har
from ..capture.model import Captured
from ..capture.store import CaptureStore, to_json
from ..control.models import error_body, status_for
from ..errors import BridgedError, ConfigError, NotFound
from .replay import Edit, ReplayFailed, replay

log = logging.getLogger(__name__)

#: the header every state-changing call carries (see the module's docstring)
CSRF_HEADER = "X-Bridged-Inspector"
#: seconds between SSE comments: they keep proxies and the browser from closing an idle stream
SSE_HEARTBEAT = 15.0
#: records one list or HAR answer holds at most
MAX_LIST = 10_000
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: an intercept's name → where its local service listens, or None when it is gone
LocalOf = Callable[[str], tuple[str, int] | None]
#: each mirror intercept's name → its copies the relay did not send, by reason (running totals)
MirrorDropped = Callable[[], dict[str, dict[str, int]]]


class Inspector:
    def __init__(self, store: CaptureStore, local_of: LocalOf,
                 mirror_dropped: MirrorDropped | None = None) -> None:
        self.store = store
        self.local_of = local_of
        self.mirror_dropped = mirror_dropped
        self.token = secrets.token_urlsafe(32)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        self._closing.clear()
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)  # loopback only, an ephemeral port
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner
        log.info("inspector on http://127.0.0.1:%d/", self.port)

    async def close(self) -> None:
        self._closing.set()  # live streams end now rather than at the shutdown timeout
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the app ---

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard, _errors], client_max_size=8 << 20)
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/api/records", self.records)
        app.router.add_get("/api/records/{id:\\d+}", self.record)
        app.router.add_post("/api/records/{id:\\d+}/replay", self.replay)
        app.router.add_post("/api/clear", self.clear)
        app.router.add_get("/api/stats", self.stats)
        app.router.add_get("/api/events", self.events)
        app.router.add_get("/har", self.har)
        return app

    @property
    def cookie(self) -> str:
        return f"bridged-inspector-{self.port}"

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.host not in (f"127.0.0.1:{self.port}", f"localhost:{self.port}"):
            return _refuse(f"wrong Host {request.host!r}: open the URL bridged inspect prints")
        given = request.query.get("token", "")
        by_token = secrets.compare_digest(given.encode(), self.token.encode())
        by_cookie = secrets.compare_digest(request.cookies.get(self.cookie, "").encode(),
                                           self.token.encode())
        if not (by_token or by_cookie):
            return _refuse("no valid token: open the URL bridged inspect prints")
        if request.method not in ("GET", "HEAD"):
            problem = self._cross_site(request)
            if problem:
                return _refuse(problem)
        if by_token and request.method == "GET" and request.path == "/":
            # trade the token for the cookie, and drop it from the address bar and history
            rest = {k: v for k, v in request.query.items() if k != "token"}
            response: web.StreamResponse = web.HTTPSeeOther(
                "/" + (f"?{urlencode(rest)}" if rest else ""))
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict",
                                path="/")
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = exc
        response.headers.update(_SECURITY_HEADERS)
        if isinstance(response, web.HTTPException):
            raise response
        return response

    def _cross_site(self, request: web.Request) -> str:
        if request.headers.get(CSRF_HEADER) != "1":
            return f"a state-changing call needs the header {CSRF_HEADER}: 1"
        origin = request.headers.get("Origin")
        if origin is not None and origin not in (f"http://127.0.0.1:{self.port}",
                                                 f"http://localhost:{self.port}"):
            return f"cross-site call from {origin!r} refused"
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return "cross-site call refused"
        return ""

    # --- pages ---

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=_read("index.html"), content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(text=_read(name), content_type=_STATIC[name])

    # --- the API the page calls ---

    async def records(self, request: web.Request) -> web.Response:
        found = self.store.list(**_filters(request), before=_int(request, "before"),
                                limit=_int(request, "limit") or 200)
        return web.json_response({"records": [to_json(c, bodies=False) for c in found],
                                  "stats": self._stats()})

    async def record(self, request: web.Request) -> web.Response:
        c = self._get(request)
        replays = self.store.list(replay_of=c.id, limit=20)
        return web.json_response({**to_json(c), "replays": [to_json(r) for r in replays],
                                  "local": self._local(c)})

    async def replay(self, request: web.Request) -> web.Response:
        original = self._get(request)
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            raise ConfigError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ConfigError("the request body must be a JSON object")
        edit = Edit.parse(body)
        where = self.local_of(original.intercept)
        if where is None:
            raise NotFound(f"intercept {original.intercept!r} is gone: nothing to replay to",
                           hint="intercept the Service again")
        made, notes = await replay(original, edit, *where,
                                   max_body_bytes=self.store.settings.max_body_bytes)
        stored = self.store.add(made)
        return web.json_response({"record": to_json(stored), "notes": notes}, status=201)

    async def clear(self, request: web.Request) -> web.Response:
        return web.json_response({"cleared": self.store.clear()})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self._stats())

    def _stats(self) -> dict[str, Any]:
        """The store's counts, and the mirrors' drops (the page shows them beside the list)."""
        drops = self.mirror_dropped() if self.mirror_dropped is not None else {}
        return {**self.store.stats(), "mirror_dropped": drops}

    async def har(self, request: web.Request) -> web.Response:
        found = self.store.list(**_filters(request), limit=MAX_LIST)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return web.Response(
            body=json.dumps(to_har(found), indent=1).encode(), content_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="bridged-{stamp}.har"'})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: each record as it is stored (added or updated)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               **_SECURITY_HEADERS})
        await response.prepare(request)
        queue = self.store.subscribe()
        closing = asyncio.ensure_future(self._closing.wait())
        lost = 0
        try:
            await response.write(b": live\n\n")
            while not closing.done():
                getting = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getting, closing}, timeout=SSE_HEARTBEAT,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getting not in done:
                    getting.cancel()
                    await response.write(b": ping\n\n")
                    continue
                if self.store.lost(queue) > lost:  # the page reloads its list
                    lost = self.store.lost(queue)
                    await response.write(b"event: lost\ndata: {}\n\n")
                data = json.dumps(to_json(getting.result(), bodies=False))
                await response.write(f"event: record\ndata: {data}\n\n".encode())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            closing.cancel()
            self.store.unsubscribe(queue)
        return response

    def _get(self, request: web.Request) -> Captured:
        c = self.store.get(int(request.match_info["id"]))
        if c is None:
            raise NotFound(f"no record {request.match_info['id']}",
                           hint="it may have been dropped or cleared")
        return c

    def _local(self, c: Captured) -> str:
        where = self.local_of(c.intercept)
        return f"{where[0]}:{where[1]}" if where else ""


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BridgedError as exc:
        status = 502 if isinstance(exc, ReplayFailed) else status_for(exc)
        return web.json_response(error_body(exc), status=status)


def _refuse(message: str) -> web.Response:
    return web.json_response({"error": {"code": "forbidden", "message": message,
                                        "hint": None}}, status=403, headers=_SECURITY_HEADERS)


def _filters(request: web.Request) -> dict[str, Any]:
    q = request.query
    status = q.get("status", "").strip()
    if status and not status.isdigit():
        raise ConfigError("status must be a number")
    return {"intercept": q.get("intercept", ""), "method": q.get("method", ""),
            "status": int(status) if status else None, "path": q.get("path", ""),
            "text": q.get("text", "")}


def _int(request: web.Request, name: str) -> int:
    value = request.query.get(name, "0") or "0"
    if not value.isdigit():
        raise ConfigError(f"{name} must be a number")
    return int(value)


def _read(name: str) -> str:
    return (resources.files(__package__) / "static" / name).read_text()

