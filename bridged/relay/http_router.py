"""The relay's HTTP/1.1 router: decides per request where it goes, and proxies it there.

Built on asyncio protocols and httptools (llhttp, the parser of Node.js) because the router
sits in the path of every request of an intercepted Service, matched or not: each downstream
connection's requests are parsed as they arrive; a request's head is decided by
:func:`bridged.routing.decide.decide` alone, then sent to an upstream (a developer's session,
or the original pods) taken from a per-destination pool. Responses are forwarded *verbatim*,
byte for byte, the upstream's parser only finding where each ends. Requests are re-framed from
the parser's events: the head with its headers in order and case as sent, the body as is, or
re-chunked (with its trailers) when it came chunked.

- Order: requests are answered one after the other, so pipelined requests keep their order
  (the next is read only once the current has been answered); a keep-alive connection may
  send each request somewhere else.
- Back-pressure both ways: a full downstream buffer pauses reading the upstream and the other
  way round; a request waiting for its upstream connection pauses its downstream.
- ``Expect: 100-continue`` works by itself (the upstream's 100 is forwarded; the client then
  sends the body); ``Upgrade`` (websockets) routes by the upgrade request, then splices raw
  bytes once the upstream answered 101; a HEAD's response ends with its head.
- Defences: a malformed request gets 400 and the connection closes; a request with both
  ``Content-Length`` and ``Transfer-Encoding``, or two lengths, is refused with 400 (RFC 9112
  §6.3; a proxy that accepts it is how request smuggling starts); a transfer coding other than
  ``chunked`` gets 501; an upstream that cannot be reached gets 502 with a body that says so;
  with a response timeout set, a response head late by that much gets 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

from ..routing.decide import Route
from ..routing.rules import RequestHead

log = logging.getLogger(__name__)

Peer = tuple[str, int]
#: connects to a route's destination with the given protocol; returns its transport (an
#: asyncio transport, or anything with write/write_eof/close/pause_reading/resume_reading)
OpenUpstream = Callable[[Route, Peer, Callable[[], Any]], Awaitable[Any]]
Decide = Callable[[RequestHead], Route]
OnRequest = Callable[[RequestHead, Route, int, float, Peer], None]

#: the most a request's head (request line and headers) may take: beyond, 431
MAX_HEAD_BYTES = 64 * 1024
#: the most an upstream's response head may take before it is given up as broken
MAX_RESPONSE_HEAD_BYTES = 256 * 1024

#: bytes read at a time by the stream splice; with drain() after each write this bounds what
#: a connection buffers
READ_SIZE = 64 * 1024


class UpstreamUnavailable(Exception):
    """The chosen destination cannot be reached; the message is the 502's body."""


async def tcp_upstream(host: str, port: int, factory: Callable[[], Any], what: str) -> Any:
    """An :data:`OpenUpstream` helper for TCP destinations."""
    try:
        transport, _ = await asyncio.get_running_loop().create_connection(factory, host, port)
    except OSError as exc:
        raise UpstreamUnavailable(f"{what}: {exc.strerror or exc}") from None
    return transport


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


class _Request:
    """One request as parsed: its head, and the bytes for the upstream not sent yet."""

    __slots__ = ("url", "headers", "trailers", "head", "chunked", "complete", "out",  # noqa: RUF023
                 "upstream", "route", "status", "started", "keep_alive", "upgrade", "timer",
                 "head_bytes", "body_sent", "retried")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] | None = None  # set once the head ended
        self.head: RequestHead | None = None
        self.chunked = False
        self.complete = False
        self.out: list[bytes] = []
        self.upstream: _Upstream | None = None
        self.route: Route | None = None
        self.status = 0
        self.started = 0.0
        self.keep_alive = True
        self.upgrade = False
        self.timer: asyncio.TimerHandle | None = None
        self.head_bytes = b""  # as sent upstream: for a retry on a fresh connection
        self.body_sent = False
        self.retried = False

    def send(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.transport.write(data)
        else:
            self.out.append(data)


def _serialize_head(method: bytes, url: bytes, version: str,
                    headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [method, b" ", url, b" HTTP/", version.encode(), b"\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def _origin_form(url: bytes) -> bytes:
    """``http://host/path?q`` → ``/path?q``: what routing looks at (the request line is sent
    upstream as it came)."""
    if url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
        rest = url.split(b"://", 1)[1]
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=-1)
        return b"/" if cut < 0 else (rest[cut:] if rest[cut:cut + 1] == b"/"
                                      else b"/" + rest[cut:])
    return url


def _error_response(status: int, why: str) -> bytes:
    reason = {400: "Bad Request", 431: "Request Header Fields Too Large", 501: "Not Implemented",
              502: "Bad Gateway", 504: "Gateway Timeout"}.get(status, "Error")
    body = f"{why}\n".encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class _Upstream(asyncio.Protocol):
    """One connection to a destination; carries one request/response at a time."""

    def __init__(self, pool: UpstreamPool, key: str) -> None:
        self.pool = pool
        self.key = key
        self.transport: Any = None
        self.down: _Downstream | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.informational = False
        self.head_request = False
        self.done = False
        self.keep_alive = False
        self.paused = False
        self.in_head = False  # between a response's first byte and the end of its head
        self.held: list[bytes] = []  # its bytes so far, forwarded once the head is whole
        self.extra = False  # bytes after the end of the response
        self.connection = b""  # the response's Connection header
        self.received = 0  # bytes from the upstream, in all
        self.reused = False  # taken from the pool (it may have closed meanwhile)

    # transport events
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        down = self.down
        if down is None:  # an idle pooled connection must not talk: drop it
            self.transport.close()
            return
        self.received += len(data)
        if down.spliced:
            down.transport.write(data)
            return
        # parsed before it is forwarded: a malformed or cut head becomes a clean 502, and a
        # second response to one request never reaches the client
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._forward(down, data)
            down.spliced_by(self)
            return
        except httptools.HttpParserError as exc:
            down.upstream_broke(self, f"sent a malformed response ({exc})")
            return
        if self.extra:
            down.upstream_broke(self, "sent more than one response to one request")
            return
        if self.in_head:
            self.held.append(data)
            if sum(map(len, self.held)) > MAX_RESPONSE_HEAD_BYTES:
                down.upstream_broke(self, "sent a response head larger than "
                                          f"{MAX_RESPONSE_HEAD_BYTES} bytes")
            return
        self._forward(down, data)
        if self.done:
            self.done = False
            if self.head_request:  # its parser still waits for the body it announced
                self.parser = httptools.HttpResponseParser(self)
            down.response_done(self, self.keep_alive)

    def _forward(self, down: _Downstream, data: bytes) -> None:
        if self.held:
            self.held.append(data)
            data = b"".join(self.held)
            self.held.clear()
        down.transport.write(data)

    def eof_received(self) -> bool:
        down = self.down
        if down is not None and down.spliced:
            with contextlib.suppress(Exception):
                down.transport.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.down is not None:
            self.down.upstream_broke(self, "closed the connection before answering")
        else:
            self.pool.discard(self)

    def pause_writing(self) -> None:
        if self.down is not None:
            self.down._pause()

    def resume_writing(self) -> None:
        if self.down is not None:
            self.down._resume()

    # parser events
    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True
        self.in_head = True
        self.connection = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection":
            self.connection += value.lower()

    def on_headers_complete(self) -> None:
        self.in_head = False
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.informational = True  # 100 Continue and friends: the real answer follows
            return
        if self.down is not None:
            self.down.response_started(self, status)
        if self.head_request:
            # a HEAD's response has no body, whatever its headers say; the parser does not
            # know it was a HEAD, so this one is replaced before the next response; nor can
            # it tell whether a HEAD's answer without a length keeps the connection
            version = self.parser.get_http_version()
            self.keep_alive = b"close" not in self.connection if version == "1.1" \
                else b"keep-alive" in self.connection
            self.done = True

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
        elif not self.head_request:
            self.keep_alive = self.parser.should_keep_alive()  # (reset once it returns)
            self.done = True

    def usable(self) -> bool:
        return not self.closed and not self.transport.is_closing()

    def pause_reading(self, paused: bool) -> None:
        """Back-pressure from the downstream; a pooled connection is never left paused."""
        if paused != self.paused and not self.closed:
            self.paused = paused
            (self.transport.pause_reading if paused else self.transport.resume_reading)()

    def close(self) -> None:
        self.down = None
        self.closed = True
        self.transport.close()


class UpstreamPool:
    """Idle upstream connections, per destination."""

    def __init__(self, open_upstream: OpenUpstream, per_target: int = 128) -> None:
        self.open_upstream = open_upstream
        self.per_target = per_target
        self.idle: dict[str, list[_Upstream]] = {}

    def idle_one(self, route: Route) -> _Upstream | None:
        idle = self.idle.get(route.target)
        while idle:
            up = idle.pop()
            if up.usable():
                up.reused = True
                return up
        return None

    async def acquire(self, route: Route, peer: Peer, fresh: bool = False) -> _Upstream:
        up = None if fresh else self.idle_one(route)
        if up is not None:
            return up
        up = _Upstream(self, route.target)
        await self.open_upstream(route, peer, lambda: up)
        if up.transport is None or up.closed:
            raise UpstreamUnavailable(f"{route.target}: the connection closed at once")
        return up

    def release(self, up: _Upstream) -> None:
        idle = self.idle.setdefault(up.key, [])
        up.pause_reading(False)
        if up.usable() and len(idle) < self.per_target:
            idle.append(up)
        else:
            up.close()

    def discard(self, up: _Upstream) -> None:
        with contextlib.suppress(ValueError):
            self.idle.get(up.key, []).remove(up)

    def close(self) -> None:
        for idle in self.idle.values():
            for up in idle:
                up.close()
        self.idle.clear()


class _Downstream(asyncio.Protocol):
    """One client connection: parses its requests and answers them in order."""

    def __init__(self, router: HttpRouter) -> None:
        self.router = router
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.peer: Peer = ("", 0)
        self.current: _Request | None = None  # being parsed
        self.queue: deque[_Request] = deque()  # parsed heads, not yet sent
        self.active: _Request | None = None  # sent (or being sent), not yet answered
        self.spliced = False
        self.upgrading = False
        self.closing = False
        self.eof = False
        self.writing_paused = False  # our transport's buffer is full
        self.reading_paused = False
        self.task: asyncio.Task[None] | None = None
        #: an error answer owed after the requests before it (a bad request, a huge head)
        self.refusal: tuple[int, str] | None = None
        self.head_seen = 0  # bytes read since the current request began, until its head ended

    # --- transport events ---

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1]))

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.spliced:
            assert self.active is not None and self.active.upstream is not None
            self.active.upstream.transport.write(data)
            return
        if self.upgrading:  # bytes of the new protocol: sent once the upstream agreed
            if self.active is not None:
                self.active.send(data)
            return
        if self.refusal is not None:
            return  # a bad request came: nothing after it is read
        r = self.current
        if r is not None and r.trailers is None:  # inside a head: bounded
            self.head_seen += len(data)
            if self.head_seen > MAX_HEAD_BYTES:
                self._refuse_after(431, f"bridged: request head larger than {MAX_HEAD_BYTES} "
                                        "bytes")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrading = True
            rest = data[int(exc.args[0]):]
            if rest and self.active is not None:
                self.active.send(rest)
        except httptools.HttpParserError as exc:
            self._refuse_after(400, f"bridged: bad request ({exc})")

    def _refuse_after(self, status: int, why: str) -> None:
        """Refuse, but only once the requests before this one are answered (in order)."""
        self.refusal = (status, why)
        self._pause()
        broken = self.active is not None and not self.active.complete  # its own body is bad
        if broken or (self.active is None and not self.queue):
            self.refuse(status, why)

    def eof_received(self) -> bool:
        if self.spliced and self.active is not None and self.active.upstream is not None:
            with contextlib.suppress(Exception):
                self.active.upstream.transport.write_eof()
            return True
        self.eof = True
        if self.current is not None or (self.active is not None and not self.active.complete):
            # the client stopped in the middle of a request: nothing will complete it
            active = self.active
            if active is not None and active.upstream is not None:
                self._report(active, 0)
            self.closing = True
            if active is not None and active.upstream is not None:
                active.upstream.close()
            return False
        if self.active is None and not self.queue:
            return False
        return True  # answer what was asked, then close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.task is not None:
            self.task.cancel()
        active = self.active
        if active is not None:
            if active.timer is not None:
                active.timer.cancel()
            if active.upstream is not None:
                if not self.spliced and active.head is not None and active.route is not None:
                    self._report(active, 0)
                active.upstream.close()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.active is not None and self.active.upstream is not None:
            self.active.upstream.pause_reading(True)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.active is not None and self.active.upstream is not None:
            self.active.upstream.pause_reading(False)

    def _pause(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.reading_paused and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()

    # --- parser events (requests) ---

    def on_message_begin(self) -> None:
        self.current = _Request()
        self.head_seen = 0

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.current
        assert r is not None
        if r.trailers is None:
            r.headers.append((name, value))
        else:
            r.trailers.append((name, value))

    def on_headers_complete(self) -> None:
        r = self.current
        assert r is not None
        r.trailers = []
        if self.closing or self.refusal is not None:
            return
        lengths = [v for n, v in r.headers if n.lower() == b"content-length"]
        codings = [v for n, v in r.headers if n.lower() == b"transfer-encoding"]
        if (codings and lengths) or len(lengths) > 1:
            self._refuse_after(400, "bridged: conflicting Content-Length / Transfer-Encoding")
            return
        if codings:
            if len(codings) > 1 or codings[0].strip().lower() != b"chunked":
                self._refuse_after(501, "bridged: transfer codings other than chunked")
                return
            r.chunked = True
        method = self.parser.get_method()
        r.keep_alive = self.parser.should_keep_alive()
        r.upgrade = self.parser.should_upgrade()
        r.head = RequestHead(method.decode("latin-1"), _origin_form(r.url).decode("latin-1"),
                             [(n.decode("latin-1"), v.decode("latin-1")) for n, v in r.headers])
        r.head_bytes = _serialize_head(method, r.url, self.parser.get_http_version(), r.headers)
        r.out.append(r.head_bytes)
        self.queue.append(r)
        self._next()
        if r is not self.active:
            self._pause()  # pipelined behind an unanswered one: its body waits in the socket

    def on_body(self, body: bytes) -> None:
        r = self.current
        if r is None or self.closing or self.refusal is not None:
            return
        r.body_sent = True
        if r.chunked:
            r.send(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            r.send(body)

    def on_message_complete(self) -> None:
        r = self.current
        if r is None or self.closing or self.refusal is not None:
            return
        self.current = None
        r.complete = True
        if r.chunked:
            trailers = b"".join(n + b": " + v + b"\r\n" for n, v in r.trailers or [])
            r.send(b"0\r\n" + trailers + b"\r\n")
            r.body_sent = True
        if r is self.active and r.upstream is not None:
            self._start_timer(r)  # the upstream has it all: now it owes an answer
        if r is not self.active or self.queue:
            # pipelined: read no further until the requests before are answered
            self._pause()

    # --- proxying ---

    def _next(self) -> None:
        """Send the next parsed request, if none is waiting for its answer."""
        if self.active is not None or not self.queue or self.closing:
            return
        r = self.active = self.queue.popleft()
        assert r.head is not None
        r.route = self.router.decide(r.head)
        r.started = asyncio.get_running_loop().time()
        up = self.router.pool.idle_one(r.route)
        if up is not None:  # the usual case: no task, no waiting
            self._attach(r, up)
            return
        # nothing more is read until the upstream takes this request's bytes
        self._pause()
        self.task = asyncio.ensure_future(self._connect(r))

    async def _connect(self, r: _Request, fresh: bool = False) -> None:
        assert r.route is not None
        while True:
            try:
                up = await self.router.pool.acquire(r.route, self.peer, fresh=fresh)
                break
            except UpstreamUnavailable as exc:
                other = self.router.fallback(r.route) if self.router.fallback else None
                if other is None or other == r.route:
                    self._report(r, 502)
                    self.refuse(502, f"bridged: no answer from {exc}")
                    return
                log.info("%s; falling back to %s", exc, other.target)
                r.route = other
        if self.closing or self.active is not r:
            up.close()
            return
        self._attach(r, up)

    def _attach(self, r: _Request, up: _Upstream) -> None:
        assert r.head is not None
        up.down = self
        up.received = 0
        up.head_request = r.head.method == "HEAD"
        up.pause_reading(self.writing_paused)
        r.upstream = up
        up.transport.write(b"".join(r.out) if len(r.out) > 1 else r.out[0])
        r.out.clear()
        if r.complete:
            self._start_timer(r)
        if not r.complete or self.upgrading:
            self._resume()  # the body (or the new protocol) flows on

    def _start_timer(self, r: _Request) -> None:
        timeout = self.router.response_timeout
        if timeout is not None and r.timer is None:
            r.timer = asyncio.get_running_loop().call_later(timeout, self._timed_out, r)

    def _timed_out(self, r: _Request) -> None:
        if self.active is r and not r.status:
            self._report(r, 504)
            self.refuse(504, f"bridged: no answer from {r.route.target if r.route else '?'} "
                             f"within {self.router.response_timeout:g} s")

    def response_started(self, up: _Upstream, status: int) -> None:
        r = self.active
        if r is not None and r.upstream is up:
            r.status = status
            if r.timer is not None:
                r.timer.cancel()

    def response_done(self, up: _Upstream, keep_alive: bool) -> None:
        r = self.active
        if r is None or r.upstream is not up:
            return
        self._report(r, r.status)
        self.active = None
        up.down = None
        if keep_alive and r.complete:
            self.router.pool.release(up)
        else:
            up.close()
        if not (r.complete and r.keep_alive and keep_alive) or r.upgrade or (self.eof \
                and not self.queue):
            # Connection: close either side, an answer before the whole body, a refused
            # upgrade, or the client is done: the connection ends with this response
            self.closing = True
            self.transport.close()
            return
        self._next()
        if self.active is None and self.refusal is not None:
            self.refuse(*self.refusal)  # the bad request's turn
        elif self.active is None or not self.active.complete:
            self._resume()

    def spliced_by(self, up: _Upstream) -> None:
        """The upstream answered 101: from now on both ways are raw bytes."""
        r = self.active
        if r is None or r.upstream is not up:
            return
        self._report(r, 101)
        self.spliced = True
        self._resume()

    def upstream_broke(self, up: _Upstream, why: str) -> None:
        r = self.active
        if r is None or r.upstream is not up:
            return
        up.down = None
        up.close()
        if up.reused and not up.received and r.complete and not r.body_sent \
                and not r.retried and not self.closing:
            # a pooled connection the upstream had closed just before we used it: the
            # request never reached it, so it is sent again on a fresh connection
            r.retried, r.upstream, r.out = True, None, [r.head_bytes]
            if r.timer is not None:
                r.timer.cancel()
                r.timer = None
            self.task = asyncio.ensure_future(self._connect(r, fresh=True))
            return
        if self.spliced:
            self.closing = True
            self.transport.close()
            return
        if r.status:  # mid-response (or a body that ends with the connection): pass it on
            self._report(r, r.status)
            self.closing = True
            self.transport.close()
            return
        self._report(r, 0)
        self.refuse(502, f"bridged: {r.route.target if r.route else '?'} {why}")

    def refuse(self, status: int, why: str) -> None:
        """Answer with an error of our own and end the connection."""
        if self.closing:
            return
        self.closing = True
        r = self.active
        if r is not None:
            if r.timer is not None:
                r.timer.cancel()
            if r.upstream is not None:
                r.upstream.close()
        if not self.transport.is_closing():
            self.transport.write(_error_response(status, why))
            self.transport.close()

    def _report(self, r: _Request, status: int) -> None:
        if self.router.on_request is not None and r.head is not None and r.route is not None:
            elapsed = asyncio.get_running_loop().time() - r.started if r.started else 0.0
            try:
                self.router.on_request(r.head, r.route, status, elapsed, self.peer)
            except Exception:  # runs in transport callbacks: must never break the proxying
                log.exception("traffic report for %s failed", r.route.target)
            r.head = None  # once


class HttpRouter:
    """Serves one intercepted port's downstream connections (``protocol`` is the factory to
    give ``loop.create_server``)."""

    def __init__(self, decide: Decide, open_upstream: OpenUpstream,
                 on_request: OnRequest | None = None,
                 fallback: Callable[[Route], Route | None] | None = None,
                 response_timeout: float | None = None) -> None:
        self.decide = decide
        self.pool = UpstreamPool(open_upstream)
        self.on_request = on_request
        #: where a request goes when its destination cannot be reached (None: a 502)
        self.fallback = fallback
        #: seconds to wait for a response's head (then 504); None: as long as it takes
        self.response_timeout = response_timeout

    def protocol(self) -> asyncio.Protocol:
        return _Downstream(self)

    def close(self) -> None:
        self.pool.close()
