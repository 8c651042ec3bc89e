"""A small HTTP/1.1 server for a JSON API on asyncio: the control API's, on its unix socket.

aiohttp's server (and yarl, multidict, frozenlist, attrs that come with it) cost every daemon
~12 MiB of RSS for its whole life, for a handful of JSON routes only the CLI calls (issue 14);
the daemon imports aiohttp only once a websocket carrier or a Kubernetes client needs it.

What it does: requests parsed by httptools (already the relay router's parser), bodies with a
Content-Length of at most ``max_body`` (413 above, 411 for any other framing), keep-alive,
pipelined requests answered in order (one at a time per connection: the next is not read before
the previous is answered). What a client cannot do: hold memory or a connection for ever — a
request head is at most ``max_head`` bytes (431), a request has ``request_timeout`` seconds from
its first byte to its last and an answer as long to be read, an idle connection ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

import httptools

log = logging.getLogger(__name__)

JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"


@dataclass(slots=True)
class Request:
    method: str
    path: str
    #: the query's fields (the first value of a repeated one), percent-decoded
    query: dict[str, str]
    #: header names in lower case
    headers: dict[str, str]
    body: bytes = b""
    #: the route pattern's ``{name}`` parts, percent-decoded
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON (ValueError / UnicodeDecodeError if it is not)."""
        return json.loads(self.body.decode())


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, data: Any) -> Response:
    return Response(status, json.dumps(data).encode(), JSON)


def text_response(status: int, text: str | None = None,
                  headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """A plain answer of the server's own (as aiohttp's: ``404: Not Found``)."""
    if text is None:
        text = f"{status}: {HTTPStatus(status).phrase}"
    return Response(status, text.encode(), TEXT, headers)


#: what a route's handler returns: the status and the JSON-able body
Answer = tuple[int, Any]
RouteHandler = Callable[[Request], Awaitable[Answer]]
Handler = Callable[[Request], Awaitable[Response]]


class Routes:
    """Method + path pattern (``/v1/bridges/{name}``: a ``{name}`` is one path segment) →
    ``handler(request)`` returning ``(status, JSON-able data)``."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], RouteHandler]] = []

    def add(self, method: str, pattern: str) -> Callable[[RouteHandler], RouteHandler]:
        parts = re.split(r"\{(\w+)\}", pattern)  # literal, name, literal, name, ..., literal
        regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)"
                        for i, p in enumerate(parts))

        def register(handler: RouteHandler) -> RouteHandler:
            self._routes.append((method, re.compile(regex), handler))
            return handler

        return register

    def get(self, pattern: str) -> Callable[[RouteHandler], RouteHandler]:
        return self.add("GET", pattern)

    def post(self, pattern: str) -> Callable[[RouteHandler], RouteHandler]:
        return self.add("POST", pattern)

    def delete(self, pattern: str) -> Callable[[RouteHandler], RouteHandler]:
        return self.add("DELETE", pattern)

    async def dispatch(self, request: Request) -> Response:
        allowed: list[str] = []
        for method, regex, handler in self._routes:
            match = regex.fullmatch(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            request.params = {k: unquote(v) for k, v in match.groupdict().items()}
            status, data = await handler(request)
            return json_response(status, data)
        if allowed:
            return text_response(405, headers=(("Allow", ", ".join(sorted(allowed))),))
        return text_response(404)


class _Head:
    """httptools' callbacks for one request head."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        # a repeated header is one list (RFC 9110 5.3); Content-Length twice is llhttp's to refuse
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        # now: once a request without a body is complete, the parser is reset for the next
        self.keep_alive = self.parser.should_keep_alive()


class _Refused(Exception):
    """A request answered by the server itself, after which the connection is closed."""

    def __init__(self, response: Response) -> None:
        self.response = response


class HttpServer:
    def __init__(self, handle: Handler, *, max_body: int = 1024 * 1024,
                 max_head: int = 16 * 1024, request_timeout: float = 10.0,
                 idle_timeout: float = 75.0) -> None:
        self.handle = handle
        self.max_body = max_body
        self.max_head = max_head
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self._server: asyncio.AbstractServer | None = None
        self._closing = False
        #: each connection's task, and whether it is handling a request (then close waits)
        self._connections: dict[asyncio.Task[None], bool] = {}

    async def start_unix(self, path: str) -> None:
        # (the reader's limit bounds what readuntil buffers: a head that does not end is refused)
        self._server = await asyncio.start_unix_server(self._serve, path, limit=self.max_head)

    async def close(self, grace: float = 10.0) -> None:
        """Stop accepting; idle connections are closed at once, requests being handled have
        ``grace`` seconds to be answered (and their connections are closed then)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = False
        try:
            while await self._one(reader, writer, task):
                pass
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away, or stalled: drop it
        except asyncio.CancelledError:
            pass  # the server is closing
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   task: asyncio.Task[None]) -> bool:
        """Read one request, answer it; whether the connection stays open."""
        async with asyncio.timeout(self.idle_timeout):
            first = await reader.read(1)
        if not first:
            return False  # closed between requests
        try:
            async with asyncio.timeout(self.request_timeout):
                request, keep_alive = await self._read(reader, writer, first)
        except _Refused as refused:
            await self._send(writer, refused.response, keep_alive=False)
            return False
        self._connections[task] = True
        try:
            response = await self.handle(request)
        except Exception:  # the handler's own errors are its to answer: this is a bug
            log.exception("HTTP %s %s failed", request.method, request.path)
            response = text_response(500)
            keep_alive = False
        self._connections[task] = False
        keep_alive = keep_alive and not self._closing
        await self._send(writer, response, keep_alive=keep_alive)
        return keep_alive

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    first: bytes) -> tuple[Request, bool]:
        try:
            raw = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _Refused(text_response(431)) from None
        if len(raw) > self.max_head:
            raise _Refused(text_response(431))
        head = _Head()
        try:
            head.parser.feed_data(raw)
        except httptools.HttpParserUpgrade:
            raise _Refused(text_response(400, "400: upgrades are not served here")) from None
        except httptools.HttpParserError as exc:
            raise _Refused(text_response(400, f"400: Bad Request ({exc})")) from None
        if "transfer-encoding" in head.headers:
            raise _Refused(text_response(411, "411: a body needs a Content-Length"))
        length_text = head.headers.get("content-length", "0")
        if not length_text.isdigit():  # (llhttp refuses most; this is ours to be sure)
            raise _Refused(text_response(400, "400: bad Content-Length"))
        length = int(length_text)
        expects = head.headers.get("expect", "").lower() == "100-continue"
        if length > self.max_body:  # said before it is read: none of it is kept
            # read and dropped, so that a client that sends it all before reading gets the
            # answer; one that waits for "100 Continue" sends nothing: it gets the 413 at once
            if length <= 16 * self.max_body and not expects:
                await _discard(reader, length)
            raise _Refused(text_response(
                413, f"Maximum request body size {self.max_body} exceeded, "
                     f"actual body size {length}"))
        if length and expects:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(length) if length else b""
        try:
            url = httptools.parse_url(head.url)
        except httptools.HttpParserError:
            raise _Refused(text_response(400, "400: bad request target")) from None
        path = (url.path or b"/").decode("utf-8", "replace")
        query: dict[str, str] = {}
        for name, value in parse_qsl((url.query or b"").decode("utf-8", "replace"),
                                     keep_blank_values=True):
            query.setdefault(name, value)
        method = head.parser.get_method().decode("ascii")
        return Request(method, path, query, head.headers, body), head.keep_alive

    async def _send(self, writer: asyncio.StreamWriter, response: Response, *,
                    keep_alive: bool) -> None:
        lines = [f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
                 f"Content-Type: {response.content_type}",
                 f"Content-Length: {len(response.body)}",
                 *(f"{name}: {value}" for name, value in response.headers)]
        if not keep_alive:
            lines.append("Connection: close")
        writer.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + response.body)
        async with asyncio.timeout(self.request_timeout):  # a client that does not read
            await writer.drain()


async def _discard(reader: asyncio.StreamReader, length: int) -> None:
    while length > 0:
        chunk = await reader.read(min(length, 65536))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", length)
        length -= len(chunk)


__all__ = ["JSON", "Answer", "HttpServer", "Request", "Response", "Routes", "json_response",
           "text_response"]
