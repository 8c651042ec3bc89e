"""One client connection of an intercepted port: what it speaks, its requests in order, and
where each goes.

A connection is in one state at a time::

    SNIFFING ─┬─ HTTP/1.x ──► HTTP ◄──────────── a refused upgrade: its held bytes parsed next
              │                │ Upgrade request     │ Upgrade: h2c on an HTTP/2 port
              │                ▼                     ▼
              │               HELD ── 101 ──► SPLICED    H2 (every stream routed: .h2downstream)
              ├─ HTTP/2 preface ─────────────────────────► H2
              └─ TLS, other ─► PASSING ──► SPLICED ── both halves ended, or one lost ──┐
    any ──────────────────────────────────────────────────────────────────────► CLOSING ◄─┘

Reading is paused for reasons (:meth:`Downstream.pause`), and resumed only when none is left:
a request waiting behind another (pipelining), its upstream still connecting, an upstream
whose buffer is full, bytes held for an upgrade's answer, a pass-through connecting, a refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from ...routing.decide import ORIGIN, Route
from ...routing.rules import RequestHead
from ...sockets import reset
from . import sniff
from .framing import (
    MAX_HEAD_BYTES,
    MAX_PIPELINED,
    MAX_PIPELINED_HEAD_BYTES,
    MAX_SNIFF_BYTES,
    PROBE_ANSWER,
    PROBE_HEADER,
    REFUSAL_LINGER_SECONDS,
    Peer,
    Request,
    UpstreamUnavailable,
    error_response,
    origin_form,
    serialize_head,
)
from .upstream import Upstream

if TYPE_CHECKING:
    from .h2downstream import H2Downstream
    from .router import HttpRouter

log = logging.getLogger("bridged.relay.router")

SNIFFING, HTTP, HELD, PASSING, SPLICED, H2, CLOSING = (
    "sniffing", "http", "held", "passing", "spliced", "h2", "closing")
#: hop-by-hop fields of an HTTP/1.1 request that HTTP/2 does not carry (RFC 9113 §8.2.2)
#: the lengths of the request fields the router reads itself
_FRAMING_LENGTHS = frozenset(len(n) for n in (b"content-length", b"transfer-encoding",
                                              PROBE_HEADER))
#: the usual methods' names as text, made once
_METHODS = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH",
                                    b"OPTIONS")}
_HOP_BY_HOP = frozenset((b"connection", b"upgrade", b"http2-settings", b"host", b"keep-alive",
                         b"proxy-connection", b"transfer-encoding"))


class Downstream(asyncio.Protocol):
    def __init__(self, router: HttpRouter) -> None:
        self.router = router
        self.loop = router.loop or asyncio.get_running_loop()
        self.state = SNIFFING
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.peer: Peer = ("", 0)
        self.current: Request | None = None  # being parsed
        self.queue: deque[Request] = deque()  # parsed heads, not yet sent
        self.queued_bytes = 0  # their heads' sizes
        self.active: Request | None = None  # sent (or being sent), not yet answered
        #: upstream connections of this client's, idle between its requests: one per target
        self.idle: dict[str, Upstream] = {}
        #: SNIFFING: the first bytes; HELD: what came after the upgrade request; PASSING:
        #: what came meanwhile
        self.sniffed = bytearray()
        self.held: list[bytes] = []
        #: the upgrade request the held bytes wait for
        self.upgrading: Request | None = None
        #: SPLICED: the other end (an upgrade the upstream took, or a pass-through)
        self.tunnel: Upstream | None = None
        self.admitted = False  # counted in the router's connection budget
        self.eof = False  # the client half-closed
        self.paused_for: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        #: an error answer owed after the requests before it (a bad request, a huge head)
        self.refusal: tuple[int, str] | None = None
        #: bytes fed to the parser since it last produced something (a head, body, the end):
        #: what it may be holding — a head, trailers, a chunk-size line
        self.unparsed = 0
        #: when the connection is closed unless a request arrives (loop time; 0: never), and
        #: what it waits for: "head" (a request's head) or "idle" (keep-alive)
        self.deadline = 0.0
        self.waiting_for = "head"
        #: when the connection is dropped unless the client reads what it was sent (0: never)
        self.send_deadline = 0.0
        #: H2: the connection's HTTP/2 side; an h2c upgrade accepted: (request, settings)
        self.h2: H2Downstream | None = None
        self.h2c: tuple[Request, bytes] | None = None

    @property
    def spliced(self) -> bool:
        return self.state is SPLICED

    @property
    def closing(self) -> bool:
        return self.state is CLOSING

    # --- transport events ---

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1]))
        if not self.router.admit(self):
            self.state = CLOSING
            transport.write(error_response(
                503, f"bridged: the relay serves {self.router.budget.limit} client "
                     "connections at most; try again later"))
            self._close_softly()
            return
        self._wait("head", self.router.settings.header_timeout_seconds)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is HTTP:
            self._feed(data)
        elif state is SPLICED:
            assert self.tunnel is not None
            self.tunnel.transport.write(data)
        elif state is H2:
            assert self.h2 is not None
            self.h2.data_received(data)
        elif state is HELD:
            self._hold(data)
        elif state is SNIFFING:
            self._sniff(data)
        elif state is PASSING:
            self.sniffed += data  # (reading is paused: at most what was read already)

    def _sniff(self, data: bytes) -> None:
        sniffed = self.sniffed
        sniffed += data
        verdict = sniff.classify(sniffed, MAX_SNIFF_BYTES)
        if verdict is None:
            return
        if verdict == sniff.H2C:
            self.state = H2
            self.sniffed = bytearray()
            self.h2 = _h2_downstream()(self)
            self.h2.start(bytes(sniffed))
            return
        if verdict != sniff.HTTP1:
            self._pass_through(verdict)
            return
        self.state = HTTP
        self.sniffed = bytearray()
        self._feed(bytes(sniffed))

    def _feed(self, data: bytes) -> None:
        if self.refusal is not None:
            return  # a bad request came: nothing after it is read
        self.unparsed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.h2c is not None and self.state is HTTP:
                self._upgrade_h2c(data[int(exc.args[0]):])
            elif self.refusal is None and self.state is HTTP:
                # the new protocol's bytes (or garbage, or a smuggled request): they reach
                # nobody until the upstream agreed to switch
                self.state = HELD
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
            self.held.append(data)
        if r is None or not r.body_left:
            self.pause("held")  # one read's worth at most, until the answer
        elif r.upstream is None:
            self.pause("connecting")

    def _too_big(self) -> None:
        if self.refusal is None:
            self._refuse_after(431, "bridged: request head or trailers larger than "
                                    f"{MAX_HEAD_BYTES} bytes")

    def _refuse_after(self, status: int, why: str) -> None:
        """Refuse, but only once the requests before this one are answered (in order)."""
        self.refusal = (status, why)
        self.pause("refused")
        current = self.current
        if current is not None and current in self.queue:
            self.queue.remove(current)  # refused: it never goes upstream
        broken = self.active is not None and (not self.active.complete or
                                              self.active is current)  # its own body is bad
        if broken or (self.active is None and not self.queue):
            self.refuse(status, why)

    def eof_received(self) -> bool:
        state = self.state
        if state is CLOSING:
            return False
        if state is H2:
            assert self.h2 is not None
            return self.h2.eof_received()
        if state is SPLICED:
            assert self.tunnel is not None
            self.eof = True
            with contextlib.suppress(Exception):
                self.tunnel.transport.write_eof()
            if self.tunnel.eof:  # both halves ended: nothing more can flow either way
                self.close_splice()
                return False
            return True
        if state is SNIFFING:
            if not self.sniffed:
                return False
            self.eof = True  # a few bytes and the end: not HTTP, passed on with the end
            self._pass_through(sniff.OTHER)
            return True
        self.eof = True
        if state is PASSING:
            return True  # passed on once spliced
        cut = state is HELD and self.upgrading is not None and self.upgrading.body_left
        if state is HELD and not cut:
            return True  # the upgrade's answer decides: spliced (EOF passed on) or closed
        if self.refusal is not None:
            return True  # the answers before the refused request, then the refusal
        if cut or self.current is not None or \
                (self.active is not None and not self.active.complete):
            # the client stopped in the middle of a request: nothing will complete it
            active = self.active
            if active is not None and active.upstream is not None:
                self._report(active, 0)
            self.state = CLOSING
            if active is not None and active.upstream is not None:
                active.upstream.close()
            return False
        if self.active is None and not self.queue:
            return False
        return True  # answer what was asked, then close

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSING
        self.router.leave(self)
        if self.task is not None:
            self.task.cancel()
        active = self.active
        if active is not None:
            if active.timer is not None:
                active.timer.cancel()
            if active.upstream is not None:
                if self.tunnel is None and active.head is not None and active.route is not None:
                    self._report(active, 0)
                active.upstream.close()
        if self.tunnel is not None:
            self.tunnel.close()
        if self.h2 is not None:
            self.h2.connection_lost()
        for up in list(self.idle.values()):
            up.close()
        self.idle.clear()
        for r in (self.current, active, *self.queue):
            if r is not None and r.mirror is not None:
                r.mirror.client_gone()

    def _upstream(self) -> Upstream | None:
        """The upstream bytes flow to and from now."""
        if self.tunnel is not None:
            return self.tunnel
        return self.active.upstream if self.active is not None else None

    def pause_writing(self) -> None:
        # the client reads slower than we write: the upstream waits, and so does a deadline
        self.send_deadline = self.loop.time() + \
            self.router.settings.send_timeout_seconds
        if self.h2 is not None:
            self.h2.pause_writing()
            return
        up = self._upstream()
        if up is not None:
            up.pause_reading(True)

    def resume_writing(self) -> None:
        self.send_deadline = 0.0
        if self.h2 is not None:
            self.h2.resume_writing()
            return
        up = self._upstream()
        if up is not None:
            up.pause_reading(False)

    def pause(self, reason: str) -> None:
        if not self.paused_for and self.state is not CLOSING:
            self.transport.pause_reading()
        self.paused_for.add(reason)

    def resume(self, *reasons: str) -> None:
        paused = self.paused_for
        if paused and not paused.isdisjoint(reasons):
            paused.difference_update(reasons)
            if not paused and self.state is not CLOSING:
                self.transport.resume_reading()

    def _wait(self, what: str, seconds: float | None) -> None:
        """Close the connection unless a request arrives within ``seconds`` (None: never)."""
        self.waiting_for = what
        self.deadline = 0.0 if seconds is None else \
            self.loop.time() + seconds

    def expired(self, now: float) -> None:
        """A deadline passed (the router's sweep calls this)."""
        if self.state is CLOSING:
            return
        if 0 < self.send_deadline <= now:  # a client that stopped reading: its buffer and
            self.state = CLOSING  # our write queue would never drain — dropped, not closed
            reset(self.transport)
            return
        if not 0 < self.deadline <= now:
            return
        self.deadline = 0.0
        if self.h2 is not None:
            self.h2.expired(self.waiting_for)
            return
        if self.active is not None or self.queue:
            if self.current is not None:  # a head begun behind busy ones: its time runs on
                self._wait("head", self.router.settings.header_timeout_seconds)
            return
        if self.waiting_for == "idle":
            self.state = CLOSING  # an idle keep-alive connection: closed without a word
            self.transport.close()
        else:
            self.refuse(408, "bridged: no complete request head within "
                             f"{self.router.settings.header_timeout_seconds:g} s")

    # --- parser events (requests) ---

    def on_message_begin(self) -> None:
        self.current = Request()
        # (_wait, inlined: this runs for every request)
        seconds = self.router.settings.header_timeout_seconds
        self.waiting_for = "head"
        self.deadline = 0.0 if seconds is None else self.loop.time() + seconds

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
        if self.state is CLOSING or self.refusal is not None:
            return
        lengths = 0
        length = codings = b""
        for name, value in r.headers:
            if len(name) not in _FRAMING_LENGTHS:
                continue  # (most fields: no lower() of their name)
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
        if len(self.queue) >= MAX_PIPELINED or \
                self.queued_bytes + r.size > MAX_PIPELINED_HEAD_BYTES:
            self._refuse_after(503, f"bridged: more than {MAX_PIPELINED} pipelined requests "
                                    "waiting; send the rest again")
            return
        parser = self.parser
        r.keep_alive = parser.should_keep_alive()
        r.upgrade = parser.should_upgrade()
        url = r.url
        r.head = RequestHead(_METHODS.get(method) or method.decode("latin-1"),
                             (url if url[:1] == b"/" else origin_form(url)).decode("latin-1"),
                             [(n.decode("latin-1"), v.decode("latin-1")) for n, v in r.headers])
        if r.upgrade:
            if r.chunked:
                self._refuse_after(501, "bridged: an upgrade request with a chunked body")
                return
            if self._accepts_h2c(r, bool(lengths) and length.strip() != b"0"):
                return
            r.body_left = int(length) if lengths else 0  # (llhttp checked its digits)
            self.upgrading = r
        version = parser.get_http_version()
        r.head_bytes = serialize_head(method, url, version, r.headers)
        r.out.append(r.head_bytes)
        mirror = self.router.mirror
        if mirror is not None and not r.upgrade:
            r.mirror = mirror.begin(r.head, method, r.url, version, r.headers, self.peer)
        self.queue.append(r)
        self.queued_bytes += r.size
        self._next()
        if r is not self.active:
            self.pause("pipelined")  # behind an unanswered one: its body waits in the socket

    def on_body(self, body: bytes) -> None:
        self.unparsed = 0
        r = self.current
        if r is None or self.state is CLOSING or self.refusal is not None:
            return
        r.body_sent = True
        if r.chunked:
            r.send(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            r.send(body)
        if r.mirror is not None:
            r.mirror.body(body)
        if r.upstream is None:
            self.pause("connecting")  # held until its upstream takes it: a read at most

    def on_message_complete(self) -> None:
        self.unparsed = 0
        r = self.current
        if r is None or self.state is CLOSING or self.refusal is not None or \
                (self.h2c is not None and self.h2c[0] is r):  # HTTP/2 from here on
            return
        self.current = None
        r.complete = True
        if r.mirror is not None:
            r.mirror.request_done()
        if r.chunked:
            trailers = b"".join(n + b": " + v + b"\r\n" for n, v in r.trailers or [])
            r.send(b"0\r\n" + trailers + b"\r\n")
            r.body_sent = True
        if r is self.active and r.upstream is not None:
            self._start_timer(r)  # the upstream has it all: now it owes an answer
        if r is not self.active or self.queue:
            self.pause("pipelined")  # read no further until the requests before are answered

    # --- proxying ---

    def _next(self) -> None:
        """Send the next parsed request, if none is waiting for its answer."""
        if self.active is not None or not self.queue or self.state is CLOSING:
            return
        r = self.active = self.queue.popleft()
        self.queued_bytes -= r.size
        assert r.head is not None
        probe = self.router.probe
        if r.probe and probe is not None and probe(r.probe):
            self.state = CLOSING  # the relay's own probe reached it: the redirect works
            self.transport.write(PROBE_ANSWER)
            self.transport.close()
            return
        r.route = self.router.decide(r.head)
        r.started = self.loop.time()
        up = self.idle.pop(r.route.target, None)
        if up is not None and not up.closed and not up.transport.is_closing():
            # (up.usable()) the usual case: no task, no waiting
            up.reused = True
            self._attach(r, up)
            return
        # nothing more is read until the upstream takes this request's bytes
        self.pause("connecting")
        self.task = asyncio.ensure_future(self._connect(r))

    async def _open(self, route: Route) -> Upstream:
        up = Upstream(self, route.target)
        await self.router.open_upstream(route, self.peer, lambda: up)
        if up.transport is None or up.closed:
            raise UpstreamUnavailable(f"{route.target}: the connection closed at once")
        return up

    async def _connect(self, r: Request) -> None:
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
        if self.state is CLOSING or self.active is not r:
            up.close()
            return
        self._attach(r, up)

    def _attach(self, r: Request, up: Upstream) -> None:
        assert r.head is not None
        up.begin(self, r.head.method == "HEAD")
        if up.paused is not (self.send_deadline > 0):
            up.pause_reading(not up.paused)  # the client reads nothing now
        r.upstream = up
        up.transport.write(b"".join(r.out) if len(r.out) > 1 else r.out[0])
        r.out.clear()
        if r.complete:
            self._start_timer(r)
        if self.paused_for:
            self.resume("connecting")  # its body (or the next request) flows on

    def _keep(self, up: Upstream) -> None:
        """Keep an upstream connection for this client's next request to the same place."""
        up.down = None
        if up.paused:
            up.pause_reading(False)
        old = self.idle.get(up.key)
        if old is not None and old is not up:
            old.close()
        if not up.closed and not up.transport.is_closing():  # (up.usable())
            self.idle[up.key] = up
        else:
            up.close()

    def forget(self, up: Upstream) -> None:
        """An idle upstream connection closed (the upstream's keep-alive time-out)."""
        if self.idle.get(up.key) is up:
            del self.idle[up.key]

    def _start_timer(self, r: Request) -> None:
        timeout = self.router.settings.response_timeout_seconds
        if timeout is not None and r.timer is None:
            r.timer = self.loop.call_later(timeout, self._timed_out, r)

    def _timed_out(self, r: Request) -> None:
        if self.active is r and not r.status:
            self._report(r, 504)
            self.refuse(504, f"bridged: no answer from {r.route.target if r.route else '?'} "
                             f"within {self.router.settings.response_timeout_seconds:g} s")

    def response_started(self, up: Upstream, status: int) -> None:
        r = self.active
        if r is not None and r.upstream is up:
            r.status = status
            if r.timer is not None:
                r.timer.cancel()

    def response_done(self, up: Upstream, keep_alive: bool, reuse: bool = True) -> None:
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
        if not (r.complete and r.keep_alive and keep_alive) or (self.eof and not self.queue) \
                or r.body_left:
            # Connection: close either side, an answer before the whole body, or the client
            # is done
            self.state = CLOSING
            self.transport.close()
            return
        if r.upgrade:
            # a refused upgrade: the connection goes on as HTTP/1.1 (RFC 9110 §7.8), and
            # what the client sent after it is parsed as its next request
            held, self.held, self.upgrading = self.held, [], None
            self.state = HTTP
            self.parser = httptools.HttpRequestParser(self)
            self._wait("idle", self.router.settings.idle_timeout_seconds)
            self.resume("held", "pipelined")
            if held:
                self._feed(b"".join(held))
            return
        if self.queue:
            self._next()
        if self.active is None and self.refusal is not None:
            self.refuse(*self.refusal)  # the bad request's turn
        elif self.active is None or not self.active.complete:
            if self.active is None and not self.queue and self.current is None:
                self._wait("idle", self.router.settings.idle_timeout_seconds)
            if self.paused_for:
                self.resume("pipelined")

    def switched(self, up: Upstream, data: bytes) -> None:
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
        held, self.held, self.upgrading = self.held, [], None
        self._splice(up, b"".join(held))

    def _accepts_h2c(self, r: Request, has_body: bool) -> bool:
        """``Upgrade: h2c`` on a port declared HTTP/2, with nothing before it and no body:
        accepted here (every stream is then routed), not by one destination for all."""
        upgrade = settings = b""
        for name, value in r.headers:
            lname = name.lower()
            if lname == b"upgrade":
                upgrade += b"," + value.lower()
            elif lname == b"http2-settings":
                settings = value.strip()
        h2c = self.router.h2c_upgrade
        if b"h2c" not in [t.strip() for t in upgrade.split(b",")] or not settings or \
                has_body or self.active is not None or self.queue or h2c is None or not h2c():
            return False
        self.h2c = (r, settings)
        return True

    def _upgrade_h2c(self, rest: bytes) -> None:
        """101, then HTTP/2: the upgrade request is stream 1."""
        r, settings = self.h2c or (None, b"")
        assert r is not None
        method = self.parser.get_method()
        authority = next((v for n, v in r.headers if n.lower() == b"host"), b"")
        headers = [(b":method", method), (b":scheme", b"http"), (b":authority", authority),
                   (b":path", r.url)]
        for name, value in r.headers:
            lname = name.lower()
            if lname not in _HOP_BY_HOP and (lname != b"te" or value.strip() == b"trailers"):
                headers.append((lname, value))
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                             b"Upgrade: h2c\r\n\r\n")
        self.state = H2
        self.current = None
        self.h2 = _h2_downstream()(self)
        assert r.head is not None
        import h2.exceptions  # (loaded with the HTTP/2 side above)

        try:
            self.h2.start_upgraded(settings, headers, r.head, rest)
        except (h2.exceptions.ProtocolError, ValueError) as exc:  # bad HTTP2-Settings
            log.warning("client %s: h2c upgrade failed: %s", self.peer[0], exc)
            self._end(lost=False)

    def _splice(self, up: Upstream, pending: bytes) -> None:
        """Both ways raw bytes from now on, ``pending`` (read already) first."""
        self.state = SPLICED
        self.tunnel = up
        up.down = self
        self.deadline = 0.0
        if pending:
            up.transport.write(pending)
        if self.eof:
            with contextlib.suppress(Exception):
                up.transport.write_eof()
        # what paused reading for HTTP's sake ends with HTTP; a full upstream still counts
        self.resume("held", "passing", "pipelined", "connecting")

    def close_splice(self) -> None:
        """Both halves of a spliced connection ended: both connections close."""
        self.state = CLOSING
        self.transport.close()
        if self.tunnel is not None:
            self.tunnel.close()

    def _pass_through(self, reason: str) -> None:
        """Not HTTP/1.x: spliced untouched to the original pods."""
        self.state = PASSING
        self.deadline = 0.0
        self.pause("passing")
        self.router.passed_through(reason, self.peer)
        self.task = asyncio.ensure_future(self._open_pass_through(reason))

    async def _open_pass_through(self, reason: str) -> None:
        try:
            up = await self._open(Route(ORIGIN))
        except UpstreamUnavailable as exc:
            log.warning("%s from %s: nowhere to pass it (%s)", reason, self.peer[0], exc)
            self._end(lost=True)  # the client must see an error, not an empty answer
            return
        if self.state is CLOSING:
            up.close()
            return
        pending, self.sniffed = bytes(self.sniffed), bytearray()
        self._splice(up, pending)

    def upstream_broke(self, up: Upstream, why: str, lost: bool = True) -> None:
        """``up`` closed, or sent what cannot be forwarded. ``lost``: it ended without a
        clean close (a reset), so a client that got part of an answer must see an error."""
        if self.state is SPLICED:
            if up is self.tunnel:
                self._end(lost)
            return
        r = self.active
        if r is None or r.upstream is not up:
            return
        up.close()
        if up.reused and not up.received and r.complete and not r.body_sent \
                and not r.retried and self.state is not CLOSING and not r.upgrade:
            # a kept connection the upstream had closed just before we used it: the
            # request never reached it, so it is sent again on a fresh connection
            r.retried, r.upstream, r.out = True, None, [r.head_bytes]
            if r.timer is not None:
                r.timer.cancel()
                r.timer = None
            self.pause("connecting")
            self.task = asyncio.ensure_future(self._connect(r))
            return
        if up.final_sent:  # mid-response (or a body that ends with the connection): pass it on
            self._report(r, r.status)
            self._end(lost)
            return
        self._report(r, 0)
        self.refuse(502, f"bridged: {r.route.target if r.route else '?'} {why}")

    def _end(self, lost: bool) -> None:
        """End the connection here: reset when what it carried was lost, since a clean close
        could pass for a complete answer (a body without a length ends with the close)."""
        self.state = CLOSING
        if lost:
            reset(self.transport)
        else:
            self.transport.close()

    def refuse(self, status: int, why: str) -> None:
        """Answer with an error of our own and end the connection (just end it when a
        response has begun: an answer of ours in its middle would be taken for its bytes)."""
        if self.state is CLOSING:
            return
        self.state = CLOSING
        r = self.active
        began = False
        if r is not None:
            if r.timer is not None:
                r.timer.cancel()
            if r.upstream is not None:
                began = r.upstream.final_sent
                r.upstream.close()
        if not self.transport.is_closing():
            if began:
                reset(self.transport)  # an answer cut short: an error, not its end
                return
            self.transport.write(error_response(status, why))
            self._close_softly()

    def _close_softly(self) -> None:
        """Half-close, drop what the client still sends for a moment, then close: closing
        with its bytes unread would reset the connection, and our answer could be lost with
        it (nginx's lingering close)."""
        with contextlib.suppress(Exception):
            self.transport.write_eof()
        if self.paused_for:
            self.paused_for.clear()
            self.transport.resume_reading()
        self.loop.call_later(REFUSAL_LINGER_SECONDS, self.transport.close)

    def _report(self, r: Request, status: int) -> None:
        if r.head is None or r.route is None or r.reported:
            return
        r.reported = True
        if r.mirror is not None:
            r.mirror.cluster_done(status)
        self.router.report(r.head, r.route, status, r.started, self.peer)


def _h2_downstream() -> type[H2Downstream]:
    """The HTTP/2 side's class, imported with a port's first HTTP/2 connection: h2, hpack and
    hyperframe cost a relay ~1.1 MiB it need not carry while nobody speaks HTTP/2 (issue 14)."""
    from .h2downstream import H2Downstream

    return H2Downstream
