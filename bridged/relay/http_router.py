"""The relay's HTTP/1.1 router: decides per request where it goes, and proxies it there.

It stands in front of *every* request of an intercepted Service — the whole team's traffic, not
only the developer's — so it is built to do no harm:

- **Decided, or untouched.** Each client connection's first bytes are classified
  (:mod:`.sniff`): HTTP/1.x requests are routed one by one; HTTP/2 prior knowledge (gRPC,
  h2c), TLS or any other protocol is spliced untouched to the original pods, and reported.
  Every request an upstream receives is one this router parsed and decided: bytes after an
  ``Upgrade`` request are held until the upstream answers (101: spliced; anything else: parsed
  as the next request, or the connection closes); ``CONNECT`` is refused (a reverse proxy does
  not tunnel); requests with both ``Content-Length`` and ``Transfer-Encoding``, two lengths, or
  a coding other than ``chunked`` are refused (RFC 9112 §6.3: how smuggling starts).
- **No connection shared between clients.** A client connection's requests use upstream
  connections of its own, one per destination, kept while it lives: nothing one client sends
  can reach another's connection, and the original pods are balanced per client connection,
  as kube-proxy balances them without bridged (a shared pool sent ~all requests to one pod).
- **Bounded per client.** A request head (and its trailers) may take :data:`MAX_HEAD_BYTES`;
  a head must arrive within ``header_timeout_seconds``, an idle keep-alive connection is closed
  after ``idle_timeout_seconds``; past ``max_connections`` client connections a new one gets
  503. The wait for a *response* has no limit unless ``response_timeout_seconds`` is set (504),
  because a request held at a developer's breakpoint must complete.

How: asyncio protocols and httptools (llhttp). A request's head is decided by
:func:`bridged.routing.decide.decide` alone; requests are re-framed from the parser's events
(the head with its headers in order and case as sent, the body as is, or re-chunked with its
trailers); responses are forwarded *verbatim*, parsed only to find where each ends, so a
malformed or cut head is a clean 502 and a second response to one request never reaches the
client. Requests are answered in order (pipelining); back-pressure works both ways.
``Expect: 100-continue`` works by itself; a HEAD's response ends with its head.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

from ..config import RouterSettings
from ..routing.decide import ORIGIN, Route
from ..routing.rules import RequestHead
from . import sniff

log = logging.getLogger(__name__)

Peer = tuple[str, int]
#: connects to a route's destination with the given protocol; returns its transport (an
#: asyncio transport, or anything with write/write_eof/close/pause_reading/resume_reading)
OpenUpstream = Callable[[Route, Peer, Callable[[], Any]], Awaitable[Any]]
Decide = Callable[[RequestHead], Route]
OnRequest = Callable[[RequestHead, Route, int, float, Peer], None]
#: a connection passed through untouched: (reason, client)
OnPassThrough = Callable[[str, Peer], None]
#: the relay's readiness probe: True when the nonce is one it sent (the router answers 204)
Probe = Callable[[str], bool]

#: the most a request's head — or its trailers, or whatever the parser must hold without
#: producing anything — may take: beyond, 431. nginx's large_client_header_buffers is 4 x 8 KiB.
MAX_HEAD_BYTES = 64 * 1024
#: the most an upstream's response head may take before it is given up as broken
MAX_RESPONSE_HEAD_BYTES = 256 * 1024
#: the request header naming a readiness probe of the relay's own (see bridged.relay.probe)
PROBE_HEADER = b"x-bridged-probe"

#: seconds a refused connection stays half-closed, its bytes dropped, so that our answer is
#: read before the close (nginx lingers up to 30 s; a refusal is short)
REFUSAL_LINGER_SECONDS = 1.0

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


class ConnectionBudget:
    """Client connections the relay's routers hold at once, all ports together: past the limit
    a new one is answered 503, instead of the relay running out of descriptors or memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class _Request:
    """One request as parsed: its head, and the bytes for the upstream not sent yet."""

    __slots__ = ("url", "headers", "trailers", "head", "chunked", "complete", "out",  # noqa: RUF023
                 "upstream", "route", "status", "started", "keep_alive", "upgrade", "timer",
                 "head_bytes", "body_sent", "retried", "body_left", "probe", "size")

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
        self.body_left = 0  # of an upgrade request's body: llhttp does not read it
        self.probe = ""  # the x-bridged-probe nonce, if any
        self.size = 0  # bytes of its target, headers and trailers: bounded

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


_REASONS = {204: "No Content", 400: "Bad Request", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}


def _error_response(status: int, why: str) -> bytes:
    body = f"{why}\n".encode()
    return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: text/plain\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def _head_keeps_alive(parser: Any, connection: bytes) -> bool:
    """Whether a HEAD's answer keeps the connection: the parser cannot tell when it has no
    length (it expects a body until the close)."""
    if parser.get_http_version() == "1.1":
        return b"close" not in connection
    return b"keep-alive" in connection


class _EndFinder:
    """Parser events of a response read again from its start, to find where it ends."""

    def __init__(self, head_request: bool) -> None:
        self.head_request = head_request
        self.parser = httptools.HttpResponseParser(self)
        self.informational = False
        self.keep_alive: bool | None = None  # set once the final response is whole
        self.connection = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection":
            self.connection += value.lower()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.informational = 100 <= status < 200 and status != 101
        if self.head_request and not self.informational:
            self.keep_alive = _head_keeps_alive(self.parser, self.connection)

    def on_message_complete(self) -> None:
        if not self.informational and self.keep_alive is None:
            self.keep_alive = self.parser.should_keep_alive()

    def whole_within(self, data: bytes) -> bool:
        with contextlib.suppress(httptools.HttpParserError):
            self.parser.feed_data(data)
        return self.keep_alive is not None


def _response_end(data: bytes, head_request: bool) -> tuple[int, bool] | None:
    """How many bytes of ``data`` (the start of an answer) make the whole answer, and whether
    it keeps the connection; None if it is not whole. httptools tells no offsets, so it is
    found by bisection over fresh parsers: only ever for an upstream that misbehaves, or
    after a HEAD."""
    if not _EndFinder(head_request).whole_within(data):
        return None
    low, high = 1, len(data)
    while low < high:
        middle = (low + high) // 2
        if _EndFinder(head_request).whole_within(data[:middle]):
            high = middle
        else:
            low = middle + 1
    finder = _EndFinder(head_request)
    finder.whole_within(data[:low])
    assert finder.keep_alive is not None
    return low, finder.keep_alive


_PROBE_ANSWER = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"


class _Upstream(asyncio.Protocol):
    """One connection to a destination, owned by one client connection; carries one
    request/response at a time."""

    def __init__(self, owner: _Downstream, key: str) -> None:
        self.owner = owner
        self.key = key
        self.transport: Any = None
        self.down: _Downstream | None = None  # the owner while it carries a request
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
        self.reused = False  # kept from an earlier request (it may have closed meanwhile)
        self.reads = 0  # data_received calls, in all
        self.final_at = -1  # the read in which the final response's head ended

    # transport events
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        down = self.down
        if down is None:  # an idle connection must not talk: drop it
            self.close()
            return
        self.received += len(data)
        self.reads += 1
        if down.spliced:
            down.transport.write(data)
            return
        # parsed before it is forwarded: a malformed or cut head becomes a clean 502, and a
        # second response to one request never reaches the client
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            down.switched(self, data)
            return
        except httptools.HttpParserError as exc:
            down.upstream_broke(self, f"sent a malformed response ({exc})")
            return
        if self.extra or (self.done and self.head_request):
            # the answer ended inside this read and more bytes follow it (a HEAD's answer
            # ends with its head, whatever its length says): the answer is the client's,
            # the rest belongs to no request and the connection is not used again
            self._end_within(down, data)
            return
        if self.in_head:
            self.held.append(data)
            if sum(map(len, self.held)) > MAX_RESPONSE_HEAD_BYTES:
                down.upstream_broke(self, "sent a response head larger than "
                                          f"{MAX_RESPONSE_HEAD_BYTES} bytes")
            return
        self.forward(down, data)
        if self.done:
            self.done = False
            down.response_done(self, self.keep_alive)

    def _end_within(self, down: _Downstream, data: bytes) -> None:
        pending = b"".join(self.held) + data
        self.held.clear()
        end = _response_end(pending, self.head_request) if self.final_at == self.reads \
            else None
        if end is None:  # (its beginning was forwarded already: where it ends is unknown)
            down.upstream_broke(self, "sent more than one response to one request")
            return
        length, keep_alive = end
        down.transport.write(pending[:length])
        self.done = False
        down.response_done(self, keep_alive, reuse=length == len(pending))

    def forward(self, down: _Downstream, data: bytes) -> None:
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
            self.owner.forget(self)

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
        self.final_at = self.reads
        if self.down is not None:
            self.down.response_started(self, status)
        if self.head_request:
            # a HEAD's response has no body, whatever its headers say; the parser does not
            # know it was a HEAD, so it is replaced before the next response
            self.keep_alive = _head_keeps_alive(self.parser, self.connection)
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
        """Back-pressure from the downstream; a kept connection is never left paused."""
        if paused != self.paused and not self.closed:
            self.paused = paused
            (self.transport.pause_reading if paused else self.transport.resume_reading)()

    def close(self) -> None:
        self.down = None
        self.closed = True
        if self.transport is not None:
            self.transport.close()


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
        #: upstream connections of this client's, idle between its requests: one per target
        self.idle: dict[str, _Upstream] = {}
        #: the first bytes, until they tell what the connection speaks (None: decided)
        self.sniffed: bytes | None = b""
        #: bytes after an upgrade request, held until the upstream answers it (None: none)
        self.held: list[bytes] | None = None
        #: the upgrade request whose answer the held bytes wait for
        self.upgrading: _Request | None = None
        #: once spliced (an upgrade the upstream took, or a pass-through): the other end
        self.tunnel: _Upstream | None = None
        self.spliced = False
        self.passing = False  # a pass-through's upstream is being connected
        self.closing = False
        self.admitted = False  # counted in the router's connection budget
        self.eof = False
        self.writing_paused = False  # our transport's buffer is full
        self.reading_paused = False
        self.task: asyncio.Task[None] | None = None
        #: an error answer owed after the requests before it (a bad request, a huge head)
        self.refusal: tuple[int, str] | None = None
        #: bytes fed to the parser since it last produced something (a head, body, the end):
        #: what it may be holding — a head, trailers, a chunk-size line
        self.unparsed = 0
        #: when the connection is closed unless something happens (loop time; 0: never), and
        #: what it is waiting for: "head" (a request to arrive) or "idle" (keep-alive)
        self.deadline = 0.0
        self.waiting_for = "head"

    # --- transport events ---

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1]))
        if not self.router.admit(self):
            self.closing = True
            transport.write(_error_response(
                503, f"bridged: the relay serves {self.router.budget.limit} client "
                     "connections at most; try again later"))
            self._close_softly()
            return
        self._wait("head", self.router.settings.header_timeout_seconds)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.spliced:
            assert self.tunnel is not None
            self.tunnel.transport.write(data)
            return
        if self.held is not None:  # after an upgrade request: see switched()/response_done()
            self._hold(data)
            return
        if self.sniffed is not None:
            data = self.sniffed + data
            verdict = sniff.classify(data, MAX_HEAD_BYTES)
            if verdict is None:
                self.sniffed = data
                return
            self.sniffed = None
            if verdict != sniff.HTTP1:
                self._pass_through(verdict, data)
                return
        if self.refusal is not None:
            return  # a bad request came: nothing after it is read
        self.unparsed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.refusal is None and not self.closing:
                # the new protocol's bytes (or garbage, or a smuggled request): they reach
                # nobody until the upstream agreed to switch
                self.held = []
                self._hold(data[int(exc.args[0]):])
        except httptools.HttpParserError as exc:
            self._refuse_after(400, f"bridged: bad request ({exc})")
        else:
            if self.unparsed > MAX_HEAD_BYTES:  # the parser holds a head, trailers or a
                self._too_big()  # chunk line that grew past the limit, unfinished

    def _hold(self, data: bytes) -> None:
        """Bytes after an upgrade request: its body first (llhttp leaves it unparsed: it is
        sent on by its length), then what the answer decides about."""
        r = self.upgrading
        if r is not None and r.body_left:
            body = data[:r.body_left]
            r.body_left -= len(body)
            r.body_sent = True
            r.send(body)
            data = data[len(body):]
        if data:
            assert self.held is not None
            self.held.append(data)
        if r is None or not r.body_left or r.upstream is None:
            self._pause()  # one read's worth at most, until the answer (or the upstream)

    def _too_big(self) -> None:
        if self.refusal is None:
            self._refuse_after(431, "bridged: request head or trailers larger than "
                                    f"{MAX_HEAD_BYTES} bytes")

    def _refuse_after(self, status: int, why: str) -> None:
        """Refuse, but only once the requests before this one are answered (in order)."""
        self.refusal = (status, why)
        self._pause()
        broken = self.active is not None and not self.active.complete  # its own body is bad
        if broken or (self.active is None and not self.queue):
            self.refuse(status, why)

    def eof_received(self) -> bool:
        if self.spliced:
            assert self.tunnel is not None
            with contextlib.suppress(Exception):
                self.tunnel.transport.write_eof()
            return True
        self.eof = True
        if self.held is not None or self.passing:
            return True  # passed on once spliced (an upgrade's answer may close instead)
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
        self.router.leave(self)
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
        if self.tunnel is not None:
            self.tunnel.close()
        for up in list(self.idle.values()):
            up.close()
        self.idle.clear()

    def _upstream(self) -> _Upstream | None:
        """The upstream bytes flow to and from now."""
        if self.tunnel is not None:
            return self.tunnel
        return self.active.upstream if self.active is not None else None

    def pause_writing(self) -> None:
        self.writing_paused = True
        up = self._upstream()
        if up is not None:
            up.pause_reading(True)

    def resume_writing(self) -> None:
        self.writing_paused = False
        up = self._upstream()
        if up is not None:
            up.pause_reading(False)

    def _pause(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.reading_paused and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()

    def _wait(self, what: str, seconds: float | None) -> None:
        """Close the connection unless something happens within ``seconds`` (None: never)."""
        self.waiting_for = what
        self.deadline = 0.0 if seconds is None else \
            asyncio.get_running_loop().time() + seconds

    def expired(self) -> None:
        """The deadline passed (the router's sweep calls this)."""
        self.deadline = 0.0
        if self.closing:
            return
        if self.active is not None or self.queue:
            if self.current is not None:  # a head begun behind busy ones: its time runs on
                self._wait("head", self.router.settings.header_timeout_seconds)
            return
        if self.waiting_for == "idle":
            self.closing = True  # an idle keep-alive connection: closed without a word
            self.transport.close()
        else:
            self.refuse(408, "bridged: no complete request head within "
                             f"{self.router.settings.header_timeout_seconds:g} s")

    # --- parser events (requests) ---

    def on_message_begin(self) -> None:
        self.current = _Request()
        self._wait("head", self.router.settings.header_timeout_seconds)

    def on_url(self, url: bytes) -> None:
        r = self.current
        assert r is not None
        r.url += url
        r.size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.current
        assert r is not None
        r.size += len(name) + len(value) + 4
        if r.size > MAX_HEAD_BYTES:  # head and trailers together
            self._too_big()
        elif r.trailers is None:
            r.headers.append((name, value))
        else:
            r.trailers.append((name, value))

    def on_headers_complete(self) -> None:
        r = self.current
        assert r is not None
        r.trailers = []
        self.unparsed = 0
        self.deadline = 0.0  # the head is whole: from here on the upstream sets the pace
        if self.closing or self.refusal is not None:
            return
        lengths = 0
        length = codings = b""
        for name, value in r.headers:
            lname = name.lower()
            if lname == b"content-length":
                lengths += 1
                length = value
            elif lname == b"transfer-encoding":
                codings = codings + b"," + value if codings else value
            elif lname == PROBE_HEADER:
                r.probe = value.strip().decode("latin-1")
        if (codings and lengths) or lengths > 1:
            self._refuse_after(400, "bridged: conflicting Content-Length / Transfer-Encoding")
            return
        if codings:
            listed = [c.strip() for c in codings.lower().split(b",")]
            if listed[-1] != b"chunked":  # RFC 9112 §6.3: no length can be known: 400, close
                self._refuse_after(400, "bridged: a request body whose last transfer coding "
                                        "is not chunked has no knowable length")
                return
            if len(listed) > 1:
                self._refuse_after(501, "bridged: transfer codings other than chunked")
                return
            r.chunked = True
        method = self.parser.get_method()
        if method == b"CONNECT":
            self._refuse_after(405, "bridged: CONNECT is not served here (this is a reverse "
                                    "proxy, not a tunnel)")
            return
        r.keep_alive = self.parser.should_keep_alive()
        r.upgrade = self.parser.should_upgrade()
        if r.upgrade:
            if r.chunked:
                self._refuse_after(501, "bridged: an upgrade request with a chunked body")
                return
            r.body_left = int(length) if lengths else 0  # (llhttp checked its digits)
            self.upgrading = r
        r.head = RequestHead(method.decode("latin-1"), _origin_form(r.url).decode("latin-1"),
                             [(n.decode("latin-1"), v.decode("latin-1")) for n, v in r.headers])
        r.head_bytes = _serialize_head(method, r.url, self.parser.get_http_version(), r.headers)
        r.out.append(r.head_bytes)
        self.queue.append(r)
        self._next()
        if r is not self.active:
            self._pause()  # pipelined behind an unanswered one: its body waits in the socket

    def on_body(self, body: bytes) -> None:
        self.unparsed = 0
        r = self.current
        if r is None or self.closing or self.refusal is not None:
            return
        r.body_sent = True
        if r.chunked:
            r.send(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            r.send(body)
        if r.upstream is None:
            self._pause()  # held until its upstream takes it: one read's worth at most

    def on_message_complete(self) -> None:
        self.unparsed = 0
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
        probe = self.router.probe
        if r.probe and probe is not None and probe(r.probe):
            self.closing = True  # the relay's own probe reached it: the redirect works
            self.transport.write(_PROBE_ANSWER)
            self.transport.close()
            return
        r.route = self.router.decide(r.head)
        r.started = asyncio.get_running_loop().time()
        up = self.idle.pop(r.route.target, None)
        if up is not None and up.usable():  # the usual case: no task, no waiting
            up.reused = True
            self._attach(r, up)
            return
        # nothing more is read until the upstream takes this request's bytes
        self._pause()
        self.task = asyncio.ensure_future(self._connect(r))

    async def _open(self, route: Route) -> _Upstream:
        up = _Upstream(self, route.target)
        await self.router.open_upstream(route, self.peer, lambda: up)
        if up.transport is None or up.closed:
            raise UpstreamUnavailable(f"{route.target}: the connection closed at once")
        return up

    async def _connect(self, r: _Request) -> None:
        assert r.route is not None
        while True:
            try:
                up = await self._open(r.route)
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
        if up.head_request:  # its parser waited for the body the HEAD's answer announced
            up.parser = httptools.HttpResponseParser(up)
        up.head_request = r.head.method == "HEAD"
        up.pause_reading(self.writing_paused)
        r.upstream = up
        up.transport.write(b"".join(r.out) if len(r.out) > 1 else r.out[0])
        r.out.clear()
        if r.complete:
            self._start_timer(r)
        if not r.complete or r.body_left:
            self._resume()  # the body flows on

    def _keep(self, up: _Upstream) -> None:
        """Keep an upstream connection for this client's next request to the same place."""
        up.down = None
        up.pause_reading(False)
        old = self.idle.get(up.key)
        if old is not None and old is not up:
            old.close()
        if up.usable():
            self.idle[up.key] = up
        else:
            up.close()

    def forget(self, up: _Upstream) -> None:
        """An idle upstream connection closed (the upstream's keep-alive time-out)."""
        if self.idle.get(up.key) is up:
            del self.idle[up.key]

    def _start_timer(self, r: _Request) -> None:
        timeout = self.router.settings.response_timeout_seconds
        if timeout is not None and r.timer is None:
            r.timer = asyncio.get_running_loop().call_later(timeout, self._timed_out, r)

    def _timed_out(self, r: _Request) -> None:
        if self.active is r and not r.status:
            self._report(r, 504)
            self.refuse(504, f"bridged: no answer from {r.route.target if r.route else '?'} "
                             f"within {self.router.settings.response_timeout_seconds:g} s")

    def response_started(self, up: _Upstream, status: int) -> None:
        r = self.active
        if r is not None and r.upstream is up:
            r.status = status
            if r.timer is not None:
                r.timer.cancel()

    def response_done(self, up: _Upstream, keep_alive: bool, reuse: bool = True) -> None:
        """The answer is whole; ``keep_alive``: it lets the connections go on; ``reuse``:
        False when the upstream misbehaved and its connection must not carry another."""
        r = self.active
        if r is None or r.upstream is not up:
            return
        self._report(r, r.status)
        self.active = None
        up.down = None
        if keep_alive and reuse and r.complete and not r.upgrade:
            self._keep(up)
        else:
            up.close()  # a connection that saw an upgrade attempt is never used again
        held = None
        if r.upgrade:  # refused: what the client sent after it was held for this moment
            held, self.held, self.upgrading = self.held or [], None, None
        if not (r.complete and r.keep_alive and keep_alive) or (self.eof and not self.queue) \
                or r.body_left:
            # Connection: close either side, an answer before the whole body, or the client
            # is done
            self.closing = True
            self.transport.close()
            return
        if held is not None:
            # a refused upgrade: the connection goes on as HTTP/1.1 (RFC 9110 §7.8), and
            # what the client sent after it is parsed as its next request
            self.parser = httptools.HttpRequestParser(self)
            self._wait("idle", self.router.settings.idle_timeout_seconds)
            self._resume()
            rest = b"".join(held)
            if rest:
                self.data_received(rest)
            return
        self._next()
        if self.active is None and self.refusal is not None:
            self.refuse(*self.refusal)  # the bad request's turn
        elif self.active is None or not self.active.complete:
            if self.active is None and not self.queue and self.current is None:
                self._wait("idle", self.router.settings.idle_timeout_seconds)
            self._resume()

    def switched(self, up: _Upstream, data: bytes) -> None:
        """The upstream answered 101: from now on both ways are raw bytes — if the request
        asked for it; a 101 nobody asked for is a broken upstream."""
        r = self.active
        if r is None or r.upstream is not up:
            return
        if not r.upgrade:
            r.status = 0  # nothing of it was forwarded: the client gets a 502
            self.upstream_broke(up, "switched protocols although the request asked for no "
                                    "upgrade")
            return
        up.forward(self, data)
        self._report(r, 101)
        held, self.held, self.upgrading = self.held or [], None, None
        self._splice(up, b"".join(held))

    def _splice(self, up: _Upstream, pending: bytes) -> None:
        """Both ways raw bytes from now on, ``pending`` (read already) first."""
        self.tunnel = up
        up.down = self
        self.spliced = True
        self.deadline = 0.0
        if pending:
            up.transport.write(pending)
        if self.eof:
            with contextlib.suppress(Exception):
                up.transport.write_eof()
        self._resume()

    def _pass_through(self, reason: str, data: bytes) -> None:
        """Not HTTP/1.x: spliced untouched to the original pods."""
        self.deadline = 0.0
        self.passing = True
        self._pause()
        self.router.passed_through(reason, self.peer)
        self.task = asyncio.ensure_future(self._open_pass_through(reason, data))

    async def _open_pass_through(self, reason: str, data: bytes) -> None:
        try:
            up = await self._open(Route(ORIGIN))
        except UpstreamUnavailable as exc:
            log.warning("%s from %s: nowhere to pass it (%s)", reason, self.peer[0], exc)
            self.closing = True
            self.transport.close()
            return
        if self.closing:
            up.close()
            return
        self._splice(up, data)

    def upstream_broke(self, up: _Upstream, why: str) -> None:
        if self.spliced:
            if up is self.tunnel:
                self.closing = True
                self.transport.close()
            return
        r = self.active
        if r is None or r.upstream is not up:
            return
        up.close()
        if up.reused and not up.received and r.complete and not r.body_sent \
                and not r.retried and not self.closing and not r.upgrade:
            # a kept connection the upstream had closed just before we used it: the
            # request never reached it, so it is sent again on a fresh connection
            r.retried, r.upstream, r.out = True, None, [r.head_bytes]
            if r.timer is not None:
                r.timer.cancel()
                r.timer = None
            self.task = asyncio.ensure_future(self._connect(r))
            return
        if r.status:  # mid-response (or a body that ends with the connection): pass it on
            self._report(r, r.status)
            self.closing = True
            self.transport.close()
            return
        self._report(r, 0)
        self.refuse(502, f"bridged: {r.route.target if r.route else '?'} {why}")

    def refuse(self, status: int, why: str) -> None:
        """Answer with an error of our own and end the connection (just end it when a
        response has begun: an answer of ours in its middle would be taken for its bytes)."""
        if self.closing:
            return
        self.closing = True
        r = self.active
        began = r is not None and r.status != 0
        if r is not None:
            if r.timer is not None:
                r.timer.cancel()
            if r.upstream is not None:
                r.upstream.close()
        if not self.transport.is_closing():
            if not began:
                self.transport.write(_error_response(status, why))
            self._close_softly()

    def _close_softly(self) -> None:
        """Half-close, drop what the client still sends for a moment, then close: closing
        with its bytes unread would reset the connection, and our answer could be lost with
        it (nginx's lingering close)."""
        with contextlib.suppress(Exception):
            self.transport.write_eof()
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        asyncio.get_running_loop().call_later(REFUSAL_LINGER_SECONDS, self.transport.close)

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
                 settings: RouterSettings | None = None,
                 budget: ConnectionBudget | None = None,
                 on_pass_through: OnPassThrough | None = None,
                 probe: Probe | None = None) -> None:
        self.decide = decide
        self.open_upstream = open_upstream
        self.on_request = on_request
        #: where a request goes when its destination cannot be reached (None: a 502)
        self.fallback = fallback
        self.settings = settings if settings is not None else RouterSettings()
        #: shared by the relay's routers (the limit is the relay's); one of its own otherwise
        self.budget = budget if budget is not None else \
            ConnectionBudget(self.settings.max_connections)
        self.on_pass_through = on_pass_through
        self.probe = probe
        self.downstreams: set[_Downstream] = set()
        self._sweeping: asyncio.TimerHandle | None = None

    def protocol(self) -> asyncio.Protocol:
        return _Downstream(self)

    def admit(self, down: _Downstream) -> bool:
        if self.budget.used >= self.budget.limit:
            log.warning("client %s refused: %d client connections open", down.peer[0],
                        self.budget.used)
            return False
        self.budget.used += 1
        down.admitted = True
        self.downstreams.add(down)
        if self._sweeping is None:
            self._sweep_later()
        return True

    def leave(self, down: _Downstream) -> None:
        if down.admitted:
            down.admitted = False
            self.budget.used -= 1
            self.downstreams.discard(down)

    def passed_through(self, reason: str, peer: Peer) -> None:
        if self.on_pass_through is not None:
            try:
                self.on_pass_through(reason, peer)
            except Exception:  # runs in transport callbacks: must never break the proxying
                log.exception("pass-through report failed")

    def _sweep_later(self) -> None:
        s = self.settings
        shortest = min(t for t in (s.header_timeout_seconds, s.idle_timeout_seconds, 4.0)
                       if t is not None)
        # a quarter of the shortest time-out: a connection lives at most 25 % past its own
        self._sweeping = asyncio.get_running_loop().call_later(shortest / 4, self._sweep)

    def _sweep(self) -> None:
        """Close the connections whose head or keep-alive time ran out; one timer for all of
        them, so that no request pays for arming and cancelling one of its own."""
        self._sweeping = None
        now = asyncio.get_running_loop().time()
        for down in [d for d in self.downstreams if 0 < d.deadline <= now]:
            down.expired()
        if self.downstreams:
            self._sweep_later()

    def close(self) -> None:
        """Nothing to stop: client connections carry on (a port changing hands lets them
        finish), each closing its own upstream connections; the sweep ends with the last."""
