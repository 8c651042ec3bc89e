"""Upstreams that record what the router sends them, for the router's differential test.

Each :class:`RecordingUpstream` is a raw asyncio server on 127.0.0.1 that parses what it
receives with a real HTTP/1.1 parser (httptools, llhttp) and keeps, per connection, every byte
received (``raw``) and every request parsed from them (:class:`Received`). It answers each
request as its ``x-answer`` header asks (so the test draws the upstream's behaviour along with
the request): ``chunked`` (else Content-Length), ``close`` (Connection: close, then it closes),
``continue`` (a 100 Continue first, when the request expects one), and for an upgrade request
``101`` (switch: from then on it only records, as ``tunnel``) or else a refusal, ``refuse400``
(400) or 200, after which it goes on parsing HTTP on the same connection as a server that
ignores Upgrade does. A CONNECT gets 405 the same way. The answer's body names the upstream and
echoes the request's ``x-req`` tag and the sha256 of the body it received.

A connection whose first bytes are not HTTP/1.1 is recorded as ``opaque`` (what a router passes
through untouched); bytes that stop parsing later are recorded as ``error`` and the connection is
closed, as a server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools


@dataclass
class Received:
    """One request an upstream parsed (``complete``: its body ended too)."""

    upstream: str
    conn: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False
    close: bool = False  # it asked for the connection to close after its answer

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]

    @property
    def tag(self) -> str | None:
        tags = self.values("x-req")
        return tags[0] if len(tags) == 1 else None

    def describe(self) -> str:
        return (f"{self.method} {self.target} x-req={self.values('x-req')} "
                f"x-dev={self.values('x-dev')} body={len(self.body)} B"
                f"{'' if self.complete else ' (incomplete)'}")


def sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


class UpstreamConnection(asyncio.Protocol):
    """One connection to a recording upstream."""

    def __init__(self, upstream: RecordingUpstream, index: int) -> None:
        self.upstream = upstream
        self.index = index
        self.transport: Any = None
        self.raw = bytearray()  # every byte received, as received
        self.requests: list[Received] = []
        self.tunnel: bytearray | None = None  # after a 101: the bytes of the new protocol
        self.opaque = False  # its first bytes were not HTTP/1.1
        self.error = ""  # why the bytes stopped parsing as HTTP/1.1 later
        self.ended = False  # it closed (after Connection: close, or on error)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.parser = httptools.HttpRequestParser(self)
        self.current: Received | None = None
        self.upgrading: Received | None = None  # an upgrade request whose body is awaited
        self.body_left = 0

    # transport events
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.raw += data
        if self.upstream.on_data is not None:
            self.upstream.on_data()
        if self.upgrading is not None:
            self._upgrade_body(data)
        elif self.tunnel is not None:
            self.tunnel += data
        elif not (self.opaque or self.error or self.ended):
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # an upgrade request, or a CONNECT: llhttp stops at the end of its head, before
            # the body its length announces
            self.upgrading = self.requests[-1]
            lengths = self.upgrading.values("content-length")
            self.body_left = int(lengths[0]) if lengths and lengths[0].isdigit() else 0
            self._upgrade_body(data[int(exc.args[0]):])
        except httptools.HttpParserError as exc:
            if not self.requests:  # no head parsed: not HTTP/1.1 from its first byte on
                self.opaque = True
            else:
                self.error = f"{type(exc).__name__}: {exc}"
                self.transport.close()

    def _upgrade_body(self, data: bytes) -> None:
        """The upgrade request's body; then what follows is the new protocol only if we
        switch, else it is parsed as HTTP again."""
        request = self.upgrading
        assert request is not None
        body = data[:self.body_left]
        request.body += body
        self.body_left -= len(body)
        if self.body_left:
            return
        self.upgrading = None
        request.complete = True
        rest = data[len(body):]
        if self._switches(request):
            self.tunnel = bytearray(rest)
            return
        self.parser = httptools.HttpRequestParser(self)
        if rest and not self.ended:
            self._feed(rest)

    def eof_received(self) -> bool:
        return False  # then closes: every peer of ours half-closes only at its end

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        if not self.lost.done():
            self.lost.set_result(None)

    # parser events
    def on_message_begin(self) -> None:
        self.current = Received(self.upstream.name, self.index, "", "", [])

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        request.method = self.parser.get_method().decode("latin-1")
        self.requests.append(request)  # recorded from its head on: a swallowing body shows
        if "continue" in self._tokens(request) and \
                "100-continue" in [v.lower() for v in request.values("expect")]:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        request = self.current
        assert request is not None
        self.current = None
        if self.parser.should_upgrade():  # whole once its body came: see _upgrade_body
            return
        request.complete = True
        request.close = not self.parser.should_keep_alive()  # it said close: we must close
        self._answer(request, 200)

    # answers
    @staticmethod
    def _tokens(request: Received) -> set[str]:
        return {t.strip() for v in request.values("x-answer") for t in v.split(",")}

    def _switches(self, request: Received) -> bool:
        tokens = self._tokens(request)
        if request.method != "CONNECT" and "101" in tokens:
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\nx-upstream: %b\r\nx-req: %b\r\n\r\n"
                % (self.upstream.name.encode(), (request.tag or "").encode("latin-1")))
            return True
        self._answer(request, 405 if request.method == "CONNECT"
                     else 400 if "refuse400" in tokens else 200)
        return False

    def _answer(self, request: Received, status: int) -> None:
        if self.ended:
            return
        tokens = self._tokens(request)
        if request.close:
            tokens.add("close")
        body = json.dumps({"upstream": self.upstream.name, "conn": self.index,
                           "tag": request.tag, "sha256": sha256(request.body)}).encode()
        head = [b"HTTP/1.1 %d %b" % (status, b"OK" if status == 200 else b"Refused"),
                b"x-upstream: " + self.upstream.name.encode(),
                b"x-req: " + (request.tag or "").encode("latin-1")]
        if "close" in tokens:
            head.append(b"Connection: close")
        if "chunked" in tokens:
            half = len(body) // 2
            head.append(b"Transfer-Encoding: chunked")
            payload = b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (half, body[:half],
                                                             len(body) - half, body[half:])
        else:
            head.append(b"Content-Length: %d" % len(body))
            payload = body
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + payload)
        if "close" in tokens:
            self.ended = True
            self.transport.close()


class RecordingUpstream:
    """One named upstream (a developer's service, or the original pods)."""

    def __init__(self, name: str, on_data: Callable[[], None] | None = None) -> None:
        self.name = name
        self.on_data = on_data
        self.connections: list[UpstreamConnection] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    def _protocol(self) -> UpstreamConnection:
        conn = UpstreamConnection(self, len(self.connections))
        self.connections.append(conn)
        return conn

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            self._protocol, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()
        if self.server is not None:
            await asyncio.wait_for(self.server.wait_closed(), 5.0)


@contextlib.asynccontextmanager
async def recording_upstreams(names: list[str], on_data: Callable[[], None] | None = None,
                              ) -> AsyncIterator[dict[str, RecordingUpstream]]:
    """Started upstreams by name; all stopped (every connection closed) on exit."""
    upstreams = {name: RecordingUpstream(name, on_data) for name in names}
    try:
        for upstream in upstreams.values():
            await upstream.start()
        yield upstreams
    finally:
        for upstream in upstreams.values():
            await upstream.stop()
