"""The relay's HTTP/1.1 router: decides per request where it goes, and proxies it there.

Each downstream connection is parsed with h11 (server side); each request is decided by
:func:`bridged.routing.decide.decide` on its head alone and sent to an upstream (a developer's
session, or the original pods) through an h11 client connection taken from a per-destination
pool. Requests are handled one after the other, so pipelined requests keep their order; a
keep-alive connection may send each request somewhere else.

What passes through: chunked bodies and trailers (h11 re-frames them), ``Expect:
100-continue`` (the upstream's 100 is relayed, so the client sends its body only then), large
bodies streamed with back-pressure (one read at a time, drained before the next), and
``Upgrade`` (the connection is routed by its upgrade request, then spliced as raw bytes).
Defences: malformed requests get 400 and the connection closes; a request with both
``Content-Length`` and ``Transfer-Encoding`` is refused with 400 (RFC 9112 §6.3 allows a
server to reject it, and a proxy that accepts it is how request smuggling starts); an upstream
that cannot be reached gets 502 with a body that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import h11

from ..routing.decide import Route
from ..routing.rules import RequestHead

log = logging.getLogger(__name__)

Stream = tuple[Any, Any]  # (reader, writer), asyncio or asyncssh streams
OpenUpstream = Callable[[Route, tuple[str, int]], Awaitable[Stream]]
Decide = Callable[[RequestHead], Route]

#: bytes read at a time; with drain() after each write this bounds what a connection buffers
READ_SIZE = 64 * 1024


async def splice_streams(reader: Any, writer: Any, other_reader: Any, other_writer: Any) -> None:
    """Copy raw bytes both ways until both directions ended, EOF passed on as EOF; one read
    at a time, drained before the next (back-pressure). Closes nothing itself."""

    async def copy(src: Any, dst: Any) -> None:
        try:
            while data := await src.read(READ_SIZE):
                dst.write(data)
                await dst.drain()
        finally:
            with contextlib.suppress(Exception):
                dst.write_eof()

    await asyncio.gather(copy(reader, other_writer), copy(other_reader, writer),
                         return_exceptions=True)


class UpstreamUnavailable(Exception):
    """The chosen destination cannot be reached; the message is the 502's body."""


@dataclass
class _Upstream:
    reader: Any
    writer: Any
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))

    def usable(self) -> bool:
        """Idle and still open both ways: a pooled connection the other side closed meanwhile
        (its service restarted, its keep-alive timed out) must not get the next request."""
        return (not self.writer.is_closing() and not self.reader.at_eof()
                and self.conn.our_state is h11.IDLE)


class UpstreamPool:
    """Idle keep-alive connections per destination, reused by later requests."""

    #: idle connections kept per destination: as many as the concurrency it sees, or every
    #: request beyond them pays a new upstream connection
    def __init__(self, open_upstream: OpenUpstream, per_target: int = 128) -> None:
        self.open_upstream = open_upstream
        self.per_target = per_target
        self._idle: dict[str, list[_Upstream]] = {}

    async def acquire(self, route: Route, peer: tuple[str, int]) -> _Upstream:
        idle = self._idle.get(route.target, [])
        while idle:
            upstream = idle.pop()
            if upstream.usable():
                return upstream
        try:
            reader, writer = await self.open_upstream(route, peer)
        except UpstreamUnavailable:
            raise
        except Exception as exc:  # asyncssh / OS errors: the reason goes in the 502
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
            raise UpstreamUnavailable(f"{route.target}: {reason}") from None
        return _Upstream(reader, writer)

    def release(self, route: Route, upstream: _Upstream) -> None:
        if upstream.conn.our_state is h11.DONE and upstream.conn.their_state is h11.DONE:
            upstream.conn.start_next_cycle()
            idle = self._idle.setdefault(route.target, [])
            if len(idle) < self.per_target:
                idle.append(upstream)
                return
        upstream.writer.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for upstream in idle:
                upstream.writer.close()
        self._idle.clear()


async def _next_event(conn: h11.Connection, reader: Any,
                      before_read: Callable[[], Awaitable[None]] | None = None) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if before_read is not None:
            await before_read()  # send what is pending before waiting for more
        data = await reader.read(READ_SIZE)
        conn.receive_data(data or b"")


async def _send(writer: Any, conn: h11.Connection, event: Any) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()


class _Batch:
    """Bytes for one writer, sent in one write when the reader must wait anyway: a response's
    head, body and end become one send instead of three (the router's main cost per request)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.parts: list[bytes] = []
        self.size = 0

    async def add(self, conn: h11.Connection, event: Any) -> None:
        data = conn.send(event)
        if data:
            self.parts.append(data)
            self.size += len(data)
            if self.size >= READ_SIZE:  # large bodies still stream with back-pressure
                await self.flush()

    async def flush(self) -> None:
        if self.parts:
            self.writer.write(b"".join(self.parts))
            self.parts.clear()
            self.size = 0
            await self.writer.drain()


def _head(request: h11.Request) -> RequestHead:
    return RequestHead(request.method.decode("latin-1"), request.target.decode("latin-1"),
                       tuple((n.decode("latin-1"), v.decode("latin-1"))
                             for n, v in request.headers))


def _smuggling_risk(request: h11.Request) -> bool:
    names = {n.lower() for n, _ in request.headers}
    return b"content-length" in names and b"transfer-encoding" in names


class HttpRouter:
    """Serves one intercepted port's downstream connections."""

    def __init__(self, decide: Decide, open_upstream: OpenUpstream,
                 on_request: Callable[[RequestHead, Route, int, float, tuple[str, int]], None]
                 | None = None,
                 fallback: Callable[[Route], Route | None] | None = None,
                 response_timeout: float | None = None) -> None:
        self.decide = decide
        #: seconds to wait for a response's head (then 504); None: as long as it takes
        self.response_timeout = response_timeout
        self.pool = UpstreamPool(open_upstream)
        self.on_request = on_request
        #: where a request goes when its destination cannot be reached (None: a 502)
        self.fallback = fallback

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        down = h11.Connection(h11.SERVER)
        try:
            while True:
                try:
                    event = await _next_event(down, reader)
                except h11.RemoteProtocolError as exc:
                    await self._refuse(writer, down, exc.error_status_hint, str(exc))
                    return
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed, or PAUSED after a refused upgrade
                if _smuggling_risk(event):
                    await self._refuse(writer, down, 400,
                                       "both Content-Length and Transfer-Encoding")
                    return
                head = _head(event)
                route = self.decide(head)
                if not await self._proxy(event, head, route, reader, writer, down,
                                         (str(peer[0]), int(peer[1]))):
                    return
                if down.our_state is not h11.DONE or down.their_state is not h11.DONE:
                    return  # Connection: close, or an early answer before the whole body
                down.start_next_cycle()
        except (ConnectionError, asyncio.IncompleteReadError, asyncssh.Error):
            pass
        finally:
            writer.close()

    async def _refuse(self, writer: Any, down: h11.Connection, status: int, why: str) -> None:
        body = f"{why}\n".encode()
        with contextlib.suppress(h11.LocalProtocolError, ConnectionError):
            await _send(writer, down, h11.Response(status_code=status, headers=[
                ("content-type", "text/plain"), ("content-length", str(len(body))),
                ("connection", "close")]))
            await _send(writer, down, h11.Data(data=body))
            await _send(writer, down, h11.EndOfMessage())

    async def _proxy(self, request: h11.Request, head: RequestHead, route: Route,
                     reader: Any, writer: Any, down: h11.Connection,
                     peer: tuple[str, int]) -> bool:
        """One request/response exchange; False when the downstream connection must end."""
        try:
            up = await self.pool.acquire(route, peer)
        except UpstreamUnavailable as exc:
            other = self.fallback(route) if self.fallback is not None else None
            if other is None or other == route:
                await self._refuse(writer, down, 502, f"bridged: no answer from {exc}")
                return False
            log.info("%s; falling back to %s", exc, other.target)
            return await self._proxy(request, head, other, reader, writer, down, peer)
        status = 0
        started = asyncio.get_running_loop().time()
        try:
            await _send(up.writer, up.conn, request)
            body = asyncio.create_task(self._request_body(reader, down, up))
            try:
                status = await self._response(up, writer, down, reader)
            finally:
                if not body.done():
                    body.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await body
        except TimeoutError:
            up.writer.close()
            await self._refuse(writer, down, 504, f"bridged: no answer from {route.target} "
                                                  f"within {self.response_timeout:g} s")
            status = 504
            return False
        except (h11.ProtocolError, ConnectionError, asyncssh.Error) as exc:
            # asyncssh.Error: a developer's session ended while its channel was in use
            log.info("request to %s failed: %s", route.target, exc)
            up.writer.close()
            if down.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._refuse(writer, down, 502,
                                   f"bridged: {route.target} closed the connection before "
                                   "answering")
            return False
        finally:
            if self.on_request is not None:
                elapsed = asyncio.get_running_loop().time() - started
                self.on_request(head, route, status, elapsed, peer)
        if status == 101:
            return False  # spliced until one side closed
        self.pool.release(route, up)
        return True

    async def _request_body(self, reader: Any, down: h11.Connection, up: _Upstream) -> None:
        while True:
            event = await _next_event(down, reader)
            if isinstance(event, h11.Data | h11.EndOfMessage):
                await _send(up.writer, up.conn, event)
            if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the client closed mid-request")

    async def _response(self, up: _Upstream, writer: Any, down: h11.Connection,
                        reader: Any) -> int:
        status = 0
        out = _Batch(writer)
        loop = asyncio.get_running_loop()
        deadline = None if self.response_timeout is None else \
            loop.time() + self.response_timeout
        while True:
            if deadline is not None and not status:  # until the response's head arrived
                async with asyncio.timeout_at(deadline):
                    event = await _next_event(up.conn, up.reader, out.flush)
            else:
                event = await _next_event(up.conn, up.reader, out.flush)
            if isinstance(event, h11.InformationalResponse):
                await out.add(down, event)
                await out.flush()  # a 100 Continue must go out now: the client waits for it
                if event.status_code == 101:
                    await self._splice(up, writer, down, reader)
                    return 101
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            if isinstance(event, h11.Response | h11.Data | h11.EndOfMessage):
                await out.add(down, event)
            if isinstance(event, h11.EndOfMessage):
                await out.flush()
                return status
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                await out.flush()
                raise ConnectionError("the upstream closed mid-response")

    async def _splice(self, up: _Upstream, writer: Any, down: h11.Connection,
                      reader: Any) -> None:
        """After 101 Switching Protocols both ends speak something else: copy raw bytes."""
        down_rest, _ = down.trailing_data
        up_rest, _ = up.conn.trailing_data
        if down_rest:
            up.writer.write(down_rest)
        if up_rest:
            writer.write(up_rest)

        await splice_streams(reader, writer, up.reader, up.writer)
        up.writer.close()

    def close(self) -> None:
        self.pool.close()
