"""One client's HTTP/2 cleartext connection, every stream decided on its own.

A connection that opens with HTTP/2's preface (gRPC, h2c with prior knowledge) — or that asked
to upgrade to h2c on a port declared HTTP/2 — is terminated here: ``h2`` runs the protocol
(SETTINGS, PING, header compression, flow control, the stream states), and each stream's head
(``:method``, ``:path``, ``:authority`` as ``host``, headers) goes to the same pure decision as
an HTTP/1.1 request's. So one client connection's streams may go to different places: each
destination gets an HTTP/2 connection of this client's own (:mod:`.h2upstream`), as an
HTTP/1.1 client's requests do.

What is passed on as it came: headers (in order), bodies, trailers (gRPC's status lives
there), 1xx answers, ``RST_STREAM`` with its code, both ways. A GOAWAY from an upstream ends
its unprocessed streams with ``REFUSED_STREAM`` (the client may retry them) and lets the
others finish; the client's connection goes on, its other streams untouched. A lost upstream
is an error on each of its streams (502 before the answer began, ``INTERNAL_ERROR`` after),
never a clean end.

Bounded: a body is read only as fast as the other end takes it — a stream's window
(:data:`~.h2peer.STREAM_WINDOW`) is given back to the sender only once its bytes went on — so a
connection holds at most :data:`~.h2peer.CONNECTION_WINDOW` per direction and destination;
:data:`~.h2peer.MAX_CONCURRENT_STREAMS` streams; header lists of
:data:`~.h2peer.MAX_HEADER_LIST_BYTES`; a client that resets streams it opened faster than they
are answered (rapid reset) is sent GOAWAY ``ENHANCE_YOUR_CALM``. Protocol errors end the
offending stream, or the offending connection, with h2's error code; nobody else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import h2.errors
import h2.events
import h2.exceptions

from ...routing.decide import Route
from ...routing.rules import RequestHead
from .framing import UpstreamUnavailable
from .h2peer import CONNECTION_WINDOW, PREMATURE_RESETS, Exchange, H2Peer, flow, grpc_status
from .h2upstream import H2Upstream

if TYPE_CHECKING:
    from .downstream import Downstream

log = logging.getLogger("bridged.relay.router")

_E = h2.errors.ErrorCodes
#: why an HTTP/2 stream matching an HTTP/1.1 intercept is answered 502 (and told its developer)
HTTP1_ONLY = ("takes HTTP/1.1, and this call is HTTP/2: intercept with --protocol h2c (or grpc) "
              "to receive it")


class H2Downstream(H2Peer):
    """The server side of a client's HTTP/2 connection; its transport events come through the
    connection's :class:`~.downstream.Downstream`, which stays the asyncio protocol."""

    def __init__(self, owner: Downstream) -> None:
        super().__init__(client_side=False)
        self.owner = owner
        self.router = owner.router
        self.transport = owner.transport
        self.streams: dict[int, Exchange] = {}  # by the client's stream id
        self.upstreams: dict[str, H2Upstream] = {}  # by destination
        self.opened = 0  # streams, in all
        self.premature = 0  # of them reset by the client before their answer ended
        self.eof = False  # the client half-closed: close once its streams are answered
        self.closed = False
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, data: bytes) -> None:
        """Prior knowledge: ``data`` begins with the client's preface."""
        self.begin()
        self.owner._wait("head", self.router.settings.header_timeout_seconds)
        self.data_received(data)

    def start_upgraded(self, settings: bytes, headers: list[tuple[bytes, bytes]],
                       head: RequestHead, data: bytes) -> None:
        """After ``Upgrade: h2c`` (RFC 7540 §3.2): the request that asked is stream 1, whose
        answer comes as HTTP/2; ``data`` (what followed the request) begins with the preface."""
        self.conn.initiate_upgrade_connection(settings)
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        self._open(1, headers, head, ended=True)
        if data:
            self.data_received(data)
        else:
            self.flush_all()

    # --- client transport events (through the Downstream) ---

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 queued a GOAWAY with the error's code: the client learns why, then the
            # connection ends (and with it only this client's upstream streams)
            log.warning("client %s broke HTTP/2: %s", self.owner.peer[0], exc)
            self.flush()
            self.owner._end(lost=False)
            return
        for event in events:
            self._event(event)
        if self.oversized():
            log.warning("client %s sent an HTTP/2 frame larger than its limit",
                        self.owner.peer[0])
            self.goaway(_E.FRAME_SIZE_ERROR)
            return
        self.flush_all()

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):
            ex = self.streams.get(event.stream_id)
            if self.take_data(event, ex.request if ex is not None else None):
                assert ex is not None
                self.pump_request(ex)
        elif isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers, event.stream_ended is not None)
        elif isinstance(event, h2.events.StreamEnded):
            ex = self.streams.get(event.stream_id)
            if ex is not None:
                ex.request.ended = True
                self.pump_request(ex)
        elif isinstance(event, h2.events.TrailersReceived):
            ex = self.streams.get(event.stream_id)
            if ex is not None:
                ex.request.trailers = event.headers
        elif isinstance(event, h2.events.StreamReset):
            self._client_reset(event.stream_id, event.error_code)
        elif isinstance(event, h2.events.WindowUpdated):
            self.pump_responses(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if self.owner.waiting_for == "head" and not self.streams:
                self._idle()  # the preface and SETTINGS came: the client is HTTP/2
            self.pump_responses(0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._client_goaway(int(event.error_code or 0))

    def _request(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        method = path = authority = b""
        fields: list[tuple[str, str]] = []
        for name, value in headers:
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name[:1] != b":":
                fields.append((name.decode("latin-1"), value.decode("latin-1")))
        if authority and not any(n == "host" for n, _ in fields):
            fields.append(("host", authority.decode("latin-1")))  # what HTTP/1.1 would send
        head = RequestHead(method.decode("latin-1"), path.decode("latin-1"), fields)
        if method == b"CONNECT":
            self._answer(sid, 405, "bridged: CONNECT is not served here (this is a reverse "
                                   "proxy, not a tunnel)")
            return
        self._open(sid, headers, head, ended)

    def _open(self, sid: int, headers: list[tuple[bytes, bytes]], head: RequestHead,
              ended: bool) -> None:
        self.opened += 1
        route = self.router.decide(head)
        ex = Exchange(sid, headers, head, route, asyncio.get_running_loop().time())
        ex.request.ended = ended
        self.streams[sid] = ex
        self.owner.deadline = 0.0  # a stream is open: the connection is not idle
        self.route_stream(ex, route)

    def route_stream(self, ex: Exchange, route: Route) -> None:
        """Give ``ex`` to ``route``'s upstream connection (opened if there is none)."""
        ex.route = route
        if not self.router.speaks_h2(route):
            self._fail(ex, 502, f"bridged: intercept {route.target} {HTTP1_ONLY}",
                       note=HTTP1_ONLY)
            return
        up = self.upstreams.get(route.target)
        if up is None or not up.usable:
            up = self.upstreams[route.target] = H2Upstream(self, route)
            task = asyncio.ensure_future(self._connect(up))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        up.start(ex)

    async def _connect(self, up: H2Upstream) -> None:
        try:
            await self.router.open_upstream(up.route, self.owner.peer, lambda: up)
            if up.transport is None or up.closed:
                raise UpstreamUnavailable(f"{up.route.target}: the connection closed at once")
        except UpstreamUnavailable as exc:
            up.closed = True
            self.replace(up)
            waiting, up.waiting = list(up.waiting), up.waiting.__class__()
            fallback = self.router.fallback(up.route) if self.router.fallback else None
            for ex in waiting:
                if fallback is not None and fallback != up.route and not self.closed:
                    log.info("%s; falling back to %s", exc, fallback.target)
                    self.route_stream(ex, fallback)
                else:
                    self._fail(ex, 502, f"bridged: no answer from {exc}")
            self.flush_all()
            return
        if self.closed:
            up.close()

    def replace(self, up: H2Upstream) -> None:
        """``up`` takes no new stream: the next stream for its destination opens another."""
        if self.upstreams.get(up.route.target) is up:
            del self.upstreams[up.route.target]

    # --- moving bodies ---

    def pump_request(self, ex: Exchange) -> None:
        up = ex.up
        if up is None or not ex.up_sid or up.closed:
            return
        try:
            flow(ex.request, self, ex.sid, up, ex.up_sid)
        except h2.exceptions.ProtocolError:  # the upstream stream closed meanwhile
            self._reset(ex, _E.INTERNAL_ERROR)
            return
        self._finish_if_done(ex)

    def pump_response(self, ex: Exchange) -> None:
        up = ex.up
        if up is None:
            return
        try:
            flow(ex.response, up, ex.up_sid, self, ex.sid)
        except h2.exceptions.ProtocolError:
            self._reset(ex, _E.INTERNAL_ERROR)
            return
        self._finish_if_done(ex)

    def pump_responses(self, sid: int) -> None:
        if sid:
            ex = self.streams.get(sid)
            if ex is not None:
                self.pump_response(ex)
            return
        for ex in list(self.streams.values()):
            self.pump_response(ex)

    # --- what upstreams say ---

    def respond(self, ex: Exchange, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        for name, value in headers:
            if name == b":status":
                with contextlib.suppress(ValueError):
                    ex.status = int(value)
        if ended:
            ex.grpc_status = grpc_status(headers)  # a trailers-only answer (gRPC errors)
        try:
            self.conn.send_headers(ex.sid, headers, end_stream=ended)
        except h2.exceptions.ProtocolError as exc:  # headers HTTP/2 does not allow
            ex.status = 0
            self._fail(ex, 502, f"bridged: {ex.route.target} sent an invalid response ({exc})")
            return
        if ended:
            ex.response.ended = ex.response.done = True
            self._finish_if_done(ex)

    def informational(self, ex: Exchange, headers: list[tuple[bytes, bytes]]) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.send_headers(ex.sid, headers)

    def upstream_reset(self, ex: Exchange, code: int) -> None:
        """The upstream reset ``ex``'s stream: so is the client's, with the same code."""
        self._reset(ex, code, upstream_too=False)

    def upstream_lost(self, ex: Exchange, why: str, code: int = 0) -> None:
        """``ex``'s upstream connection ended under it (``code``: the error its GOAWAY gave,
        passed on if the answer had begun)."""
        self._fail(ex, 502, f"bridged: {ex.route.target} {why}", upstream_too=False,
                   code=code or _E.INTERNAL_ERROR)

    # --- ending streams ---

    def _answer(self, sid: int, status: int, why: str) -> None:
        """An answer of our own on a stream that has no exchange."""
        body = f"{why}\n".encode()
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.send_headers(sid, [(b":status", str(status).encode()),
                                         (b"content-type", b"text/plain"),
                                         (b"content-length", str(len(body)).encode())])
            self.conn.send_data(sid, body, end_stream=True)  # (far below any window)

    def _fail(self, ex: Exchange, status: int, why: str, upstream_too: bool = True,
              note: str = "", code: int = _E.INTERNAL_ERROR) -> None:
        """``ex`` cannot be answered: a 502 of ours if its answer has not begun, else a reset
        with ``code`` (an answer cut short must not look complete)."""
        if ex.status:
            self._reset(ex, code, upstream_too)
            return
        self._drop(ex, upstream_too, _E.CANCEL)
        self._answer(ex.sid, status, why)
        with contextlib.suppress(h2.exceptions.ProtocolError):  # stop its upload, if any
            if self.conn.streams.get(ex.sid) is not None and \
                    not self.conn.streams[ex.sid].closed:
                self.conn.reset_stream(ex.sid, _E.NO_ERROR)
        self._report(ex, status, note)

    def _reset(self, ex: Exchange, code: int, upstream_too: bool = True) -> None:
        self._drop(ex, upstream_too, code)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.reset_stream(ex.sid, code)
        self._report(ex, ex.status)

    def _client_reset(self, sid: int, code: int) -> None:
        ex = self.streams.get(sid)
        if ex is None:
            return
        if not ex.response.done:
            self.premature += 1
        self._drop(ex, True, code)
        self._report(ex, ex.status)
        if self.premature >= PREMATURE_RESETS and self.premature * 2 >= self.opened:
            log.warning("client %s reset %d of its %d streams before their answers: "
                        "connection ended (rapid reset)", self.owner.peer[0], self.premature,
                        self.opened)
            self.goaway(_E.ENHANCE_YOUR_CALM)

    def _drop(self, ex: Exchange, upstream_too: bool, code: int) -> None:
        """Forget ``ex`` here and, if ``upstream_too``, on its upstream (reset with ``code``)."""
        self.streams.pop(ex.sid, None)
        up = ex.up
        if up is not None:
            if upstream_too:
                up.reset(ex, code)
            else:
                up.forget(ex)
        ex.request.chunks.clear()
        ex.response.chunks.clear()
        self._maybe_idle()

    def _finish_if_done(self, ex: Exchange) -> None:
        if ex.response.done and ex.request.done and self.streams.get(ex.sid) is ex:
            self._drop(ex, False, 0)
            self._report(ex, ex.status)

    def _maybe_idle(self) -> None:
        if self.streams:
            return
        if self.eof:
            self.owner._end(lost=False)
        elif not self.closed:
            self._idle()

    def _idle(self) -> None:
        self.owner._wait("idle", self.router.settings.idle_timeout_seconds)

    def _report(self, ex: Exchange, status: int, note: str = "") -> None:
        if ex.reported:
            return
        ex.reported = True
        extra = {"note": note} if note else {}
        self.router.report(ex.head, ex.route, status, ex.started, self.owner.peer,
                           http_version="h2", grpc_status=ex.grpc_status, **extra)

    # --- the connection ---

    def goaway(self, code: int) -> None:
        """End the connection: GOAWAY with ``code``, then close."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(code)
        self.flush()
        self.owner._end(lost=False)

    def _client_goaway(self, code: int) -> None:
        """The client opens no more streams; those open finish unless it ended in error."""
        if code != _E.NO_ERROR:
            self.owner._end(lost=False)
            return
        self.keep_sending()
        self.eof = True
        self._maybe_idle()

    def expired(self, waiting_for: str) -> None:
        if waiting_for == "idle":
            self.goaway(_E.NO_ERROR)
        else:  # no preface and SETTINGS in time
            self.goaway(_E.PROTOCOL_ERROR)

    def eof_received(self) -> bool:
        self.eof = True
        if not self.streams:
            return False
        return True  # answer what was asked, then close

    def pause_writing(self) -> None:
        self.write_paused = True
        self.owner.pause("h2-client-full")  # nor read more of what it sends (PINGs, resets)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.owner.resume("h2-client-full")
        self.pump_responses(0)
        self.flush_all()

    def flush_all(self) -> None:
        self.flush()
        for up in list(self.upstreams.values()):
            up.flush()
        for ex in self.streams.values():  # draining ones, no longer in upstreams
            if ex.up is not None and ex.up.draining:
                ex.up.flush()

    def connection_lost(self) -> None:
        self.closed = True
        for task in self.tasks:
            task.cancel()
        ups = set(self.upstreams.values()) | {ex.up for ex in self.streams.values() if ex.up}
        for ex in list(self.streams.values()):
            self._report(ex, ex.status)
        self.streams.clear()
        self.upstreams.clear()
        for up in ups:
            up.down_gone()
