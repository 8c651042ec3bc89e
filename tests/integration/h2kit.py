"""Test kit for the relay's HTTP/2 router: upstreams that record every stream they receive, a
well-behaved client on ``h2``, and a raw-frame client (``hyperframe``) for what ``h2`` won't send.

An :class:`H2Recorder` is an HTTP/2 server on 127.0.0.1 (``h2``, not the router's code) that
records each stream it received (:class:`UpStream`: which of its connections, headers, body
hash, trailers, whether it ended, the code it was reset with, how many response bytes it sent)
and answers as the request's headers ask: ``x-size`` response bytes (a pattern seeded by the
request's ``x-req`` tag, so streams mixed up show), ``x-trailers: 1`` response trailers,
``x-reset: CODE`` a reset instead of an answer, ``x-hold: 1`` nothing until the test calls
:meth:`H2Recorder.release`, ``x-partial: 1`` the answer's head and a few bytes, then nothing,
``x-noack: 1`` never gives the router window back for the request's body.
It sends within its flow-control windows only, and says when it is ``stalled`` (bytes owed, no
window): what back-pressure looks like from an upstream.

:func:`world` puts a router (:func:`~.routerkit.router_on`) in front of three of them. All
waits go through a :class:`Pulse` every party notifies on each event: ``until(pred)`` is an
event-driven, bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
from h2.connection import ConnectionState
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from .routerkit import router_on

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
E = h2.errors.ErrorCodes
S = h2.settings.SettingCodes
#: seconds any one awaited event may take before the test fails (the machine is shared)
WAIT = 10.0

Headers = list[tuple[bytes, bytes]]


class Pulse:
    """Wakes every waiter on any event, so a wait is a predicate re-checked on each."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def until(self, pred: Callable[[], Any], what: str, seconds: float = WAIT) -> Any:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not (result := pred()):
            left = end - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)
        return result


def pattern(size: int, tag: str) -> bytes:
    """The response body an upstream sends for ``x-size: size`` and ``x-req: tag``."""
    return _pattern_at(0, size, tag)


def _pattern_at(offset: int, size: int, tag: str) -> bytes:
    seed = (offset + sum(tag.encode()) * 7) % 251
    return _BLOCK[seed:seed + size] if size <= 65536 else b"".join(
        _pattern_at(offset + i, min(65536, size - i), tag) for i in range(0, size, 65536))


_BLOCK = bytes(i % 251 for i in range(251 + 65536))


def pattern_sha(size: int, tag: str) -> str:
    h = hashlib.sha256()
    for i in range(0, size, 65536):
        h.update(_pattern_at(i, min(65536, size - i), tag))
    return h.hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raw_frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    """A frame's bytes as given, for frames ``hyperframe`` refuses to build (DATA on stream 0,
    a WINDOW_UPDATE of 0)."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + \
        payload


def header(headers: Headers | None, name: str) -> str | None:
    for n, v in headers or ():
        if n.decode("latin-1").lower() == name:
            return v.decode("latin-1")
    return None


# --- the recording upstream ---


@dataclass
class UpStream:
    """One stream an upstream received."""

    upstream: str
    conn: int
    sid: int
    headers: Headers
    body_len: int = 0
    body_hash: Any = field(default_factory=hashlib.sha256)
    trailers: Headers | None = None
    ended: bool = False  # END_STREAM came: the request is whole
    reset: int | None = None  # the code the router reset it with
    sent: int = 0  # response body bytes sent
    answered: bool = False

    def h(self, name: str) -> str | None:
        return header(self.headers, name)

    @property
    def body_sha(self) -> str:
        return self.body_hash.hexdigest()

    @property
    def complete(self) -> bool:
        return self.ended and self.reset is None

    def describe(self) -> str:
        return (f"{self.upstream}#{self.conn}/{self.sid} x-client={self.h('x-client')} "
                f"x-req={self.h('x-req')} body={self.body_len} ended={self.ended} "
                f"reset={self.reset} sent={self.sent}")


class _UpConn(asyncio.Protocol):
    def __init__(self, rec: H2Recorder, n: int) -> None:
        self.rec = rec
        self.n = n
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.transport: Any = None
        self.streams: dict[int, UpStream] = {}
        self.out: dict[int, list[Any]] = {}  # sid → [bytes left, offset, tag, trailers]
        self.paused = False
        self.stalled = False
        self.goaway: int | None = None  # code of the router's GOAWAY, if one came
        self.lost = False
        self.pings = 0  # PINGs sent to the router
        self.acks = 0  # its PING ACKs: all it sent before them has come

    async def round_trip(self) -> None:
        """A PING answered: the router has said all it had to say before it."""
        self.pings += 1
        self.conn.ping(b"%08d" % self.pings)
        self.flush()
        await self.rec.pulse.until(lambda: self.acks >= self.pings or self.lost,
                                   f"{self.rec.name}#{self.n}: PING ACK")

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        window = self.rec.window
        if window > 65535:
            self.conn.local_settings = h2.settings.Settings(
                client=False, initial_values={S.INITIAL_WINDOW_SIZE: window,
                                              S.MAX_CONCURRENT_STREAMS: 100})
        self.conn.initiate_connection()
        if window > 65535:
            self.conn.increment_flow_control_window(window - 65535)
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.rec.errors.append(f"{self.rec.name}#{self.n}: {exc}")
            self.flush()
            self.transport.close()
            return
        for event in events:
            self._event(event)
        self.pump()
        self.flush()
        self.rec.pulse.notify()

    def _event(self, ev: Any) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            st = UpStream(self.rec.name, self.n, ev.stream_id, list(ev.headers))
            self.streams[ev.stream_id] = st
            self.rec.streams.append(st)
            if st.h("x-reset"):
                self.conn.reset_stream(ev.stream_id, int(st.h("x-reset") or 0))
            elif st.h("x-partial"):
                self.conn.send_headers(ev.stream_id, [(b":status", b"200")])
                self.conn.send_data(ev.stream_id, b"partial")
                st.sent = 7
            if ev.stream_ended is not None:
                self._ended(st)
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams[ev.stream_id]
            st.body_len += len(ev.data)
            st.body_hash.update(ev.data)
            if not st.h("x-noack"):  # else its windows close: the router must stop sending
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            self.streams[ev.stream_id].trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            self._ended(self.streams[ev.stream_id])
        elif isinstance(ev, h2.events.StreamReset):
            reset = self.streams.get(ev.stream_id)
            if reset is not None:
                reset.reset = ev.error_code
            self.out.pop(ev.stream_id, None)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev.error_code
        elif isinstance(ev, h2.events.PingAckReceived):
            self.acks += 1

    def _ended(self, st: UpStream) -> None:
        st.ended = True
        if not (st.h("x-hold") or st.h("x-reset") or st.h("x-partial")):
            self.answer(st)

    def answer(self, st: UpStream) -> None:
        if st.answered or st.reset is not None:
            return
        st.answered = True
        tag = st.h("x-req") or ""
        size = int(st.h("x-size") or 0)
        self.conn.send_headers(st.sid, [
            (b":status", b"200"), (b"x-who", self.rec.name.encode()),
            (b"x-conn", str(self.n).encode()), (b"x-req", tag.encode()),
            (b"x-body-sha", st.body_sha.encode()), (b"x-body-len", str(st.body_len).encode()),
            (b"x-trailers-seen", b"; ".join(b"%s=%s" % nv for nv in st.trailers or ()))],
            end_stream=size == 0 and not st.h("x-trailers"))
        if size or st.h("x-trailers"):
            trailers = [(b"x-who-trailer", self.rec.name.encode()), (b"grpc-status", b"0")] \
                if st.h("x-trailers") else None
            self.out[st.sid] = [size, 0, tag, trailers]

    def pump(self) -> None:
        conn = self.conn
        blocked = False
        for sid, job in list(self.out.items()):
            left, offset, tag, trailers = job
            while left and not self.paused:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size,
                           left)
                if room <= 0:
                    blocked = True
                    break
                conn.send_data(sid, _pattern_at(offset, room, tag))
                self.streams[sid].sent += room
                left -= room
                offset += room
                self.flush()
            job[0], job[1] = left, offset
            if not left:
                del self.out[sid]
                if trailers:
                    conn.send_headers(sid, trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
        self.stalled = blocked
        self.flush()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()
        self.rec.pulse.notify()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.rec.pulse.notify()


class H2Recorder:
    """An HTTP/2 upstream on 127.0.0.1 that records each stream; see the module's doc."""

    def __init__(self, name: str, pulse: Pulse) -> None:
        self.name = name
        self.pulse = pulse
        self.port = 0
        self.conns: list[_UpConn] = []
        self.streams: list[UpStream] = []
        self.errors: list[str] = []
        #: the windows it gives the router, stream and connection (set before it connects)
        self.window = 65535

    def protocol(self) -> _UpConn:
        c = _UpConn(self, len(self.conns))
        self.conns.append(c)
        return c

    def of(self, client: str) -> list[UpStream]:
        return [s for s in self.streams if s.h("x-client") == client]

    def release(self, pred: Callable[[UpStream], bool] = lambda s: True) -> None:
        """Answer the held streams ``pred`` picks (those whose request is whole)."""
        for c in self.conns:
            for st in c.streams.values():
                if st.h("x-hold") and st.ended and pred(st):
                    c.answer(st)
            if not c.lost:
                c.pump()

    def stop_reading(self) -> None:
        """Every connection of this upstream stops reading: the router's writes back up."""
        for c in self.conns:
            if not c.lost:
                c.transport.pause_reading()

    def goaway(self, conn: int, last_stream_id: int) -> None:
        """A graceful GOAWAY (NO_ERROR): streams up to ``last_stream_id`` still answered."""
        c = self.conns[conn]
        c.conn.close_connection(0, last_stream_id=last_stream_id)
        c.conn.state_machine.state = ConnectionState.SERVER_OPEN  # h2 sends nothing after GOAWAY
        c.flush()

    def garble(self, data: bytes = b"") -> None:
        """Every connection of this upstream breaks HTTP/2: writes ``data``, by default a DATA
        frame on stream 0 and bytes that are no frame."""
        for c in self.conns:
            if not c.lost:
                c.transport.write(data or raw_frame(0x0, 0, 0, b"garbage") + b"no frame")


@contextlib.asynccontextmanager
async def h2_upstreams(pulse: Pulse, *names: str,
                       rcvbuf: int | None = None) -> AsyncIterator[dict[str, H2Recorder]]:
    """``rcvbuf``: the upstreams' socket receive buffer (small: the router's writes back up
    soon once one stops reading)."""
    loop = asyncio.get_running_loop()
    recs = {name: H2Recorder(name, pulse) for name in names}
    servers = []
    try:
        for rec in recs.values():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind(("127.0.0.1", 0))
            server = await loop.create_server(rec.protocol, sock=sock)
            rec.port = server.sockets[0].getsockname()[1]
            servers.append(server)
        yield recs
    finally:
        for server in servers:
            server.close()
        for rec in recs.values():
            for c in rec.conns:
                if c.transport is not None:
                    c.transport.close()
        for server in servers:
            await server.wait_closed()


# --- the router between them ---


def upstream_name(dev: str | None) -> str:
    """The upstream a stream with ``x-dev: dev`` (None: without one) must reach."""
    return dev or "origin"


@contextlib.asynccontextmanager
async def world(rcvbuf: int | None = None,
                **router_kwargs: Any) -> AsyncIterator[SimpleNamespace]:
    """Three recording HTTP/2 upstreams (origin, alice, bob) and a router on 127.0.0.1 in
    front of them, routing by ``x-dev``; ``all()`` lists every stream they received."""
    pulse = Pulse()
    async with h2_upstreams(pulse, "origin", "alice", "bob", rcvbuf=rcvbuf) as ups, \
            router_on({n: u.port for n, u in ups.items()}, **router_kwargs) as r:
        yield SimpleNamespace(pulse=pulse, ups=ups, port=r.port, router=r,
                              all=lambda: [s for u in ups.values() for s in u.streams])


def body_for(tag: str, size: int) -> bytes:
    """The request body a client sends on the stream tagged ``tag``: its own bytes."""
    seed = hashlib.sha256(tag.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


# --- clients ---


@dataclass
class Answer:
    """What a client got on one stream."""

    headers: Headers | None = None
    body_len: int = 0
    body_hash: Any = field(default_factory=hashlib.sha256)
    body: bytearray = field(default_factory=bytearray)  # its first 64 KiB
    trailers: Headers | None = None
    reset: int | None = None
    ended: bool = False

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    @property
    def status(self) -> int:
        return int(header(self.headers, ":status") or 0)

    def h(self, name: str) -> str | None:
        return header(self.headers, name)

    def add(self, data: bytes) -> None:
        self.body_len += len(data)
        self.body_hash.update(data)
        if len(self.body) < 65536:
            self.body += data[:65536 - len(self.body)]

    @property
    def body_sha(self) -> str:
        return self.body_hash.hexdigest()


async def _connect(port: int, rcvbuf: int | None) -> tuple[Any, Any]:
    if rcvbuf is None:
        return await asyncio.open_connection("127.0.0.1", port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


class _Client:
    """What both clients share: a connection read by a task, closed and waited for."""

    writer: Any = None
    task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def _opened(c: Any, port: int, **kwargs: Any) -> AsyncIterator[Any]:
    try:
        yield await c.open(port, **kwargs)
    finally:
        await c.close()


class H2Client(_Client):
    """A well-behaved HTTP/2 client (``h2``) over asyncio streams; ``reading = False`` stops
    it reading its socket (and so giving windows back)."""

    def __init__(self, pulse: Pulse, name: str = "client") -> None:
        self.pulse = pulse
        self.name = name
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.answers: dict[int, Answer] = {}
        self.goaway: tuple[int, int | None] | None = None  # (code, last stream id)
        self.closed = False
        self.reading = asyncio.Event()
        self.reading.set()
        self.reader: Any = None
        self.writer: Any = None
        self.task: asyncio.Task[None] | None = None
        self.pings: list[bytes] = []

    async def open(self, port: int, settings: dict[Any, int] | None = None,
                   rcvbuf: int | None = None, window: int = 0) -> H2Client:
        self.reader, self.writer = await _connect(port, rcvbuf)
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True,
                                                            initial_values=settings)
        self.conn.initiate_connection()
        if window:
            self.conn.increment_flow_control_window(window)
        self.flush()
        self.task = asyncio.ensure_future(self._read())
        return self

    async def open_upgraded(self, port: int, head: bytes) -> bytes:
        """HTTP/1.1 ``head`` (its request line and fields, without the end) with ``Upgrade:
        h2c``: stream 1 is that request. Returns the answer's head; after a 101, HTTP/2."""
        self.reader, self.writer = await _connect(port, None)
        settings = self.conn.initiate_upgrade_connection() or b""
        self.answers[1] = Answer()
        self.writer.write(head + b"\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                          b"HTTP2-Settings: " + settings + b"\r\n\r\n")
        answer = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        if answer.startswith(b"HTTP/1.1 101"):
            self.flush()  # the preface and SETTINGS
            self.task = asyncio.ensure_future(self._read())
        return answer

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            while True:
                await self.reading.wait()
                data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for ev in events:
                    self._event(ev)
                self.flush()
                self.pulse.notify()
        except ConnectionError:
            pass
        finally:
            self.closed = True
            self.pulse.notify()

    def _event(self, ev: Any) -> None:
        sid = getattr(ev, "stream_id", 0)
        a = self.answers.get(sid)
        if isinstance(ev, h2.events.ResponseReceived) and a is not None:
            a.headers = list(ev.headers)
        elif isinstance(ev, h2.events.DataReceived):
            if a is not None:
                a.add(ev.data)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
        elif isinstance(ev, h2.events.TrailersReceived) and a is not None:
            a.trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded) and a is not None:
            a.ended = True
        elif isinstance(ev, h2.events.StreamReset) and a is not None:
            a.reset = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = (int(ev.error_code or 0), ev.last_stream_id)
        elif isinstance(ev, h2.events.PingAckReceived):
            self.pings.append(ev.ping_data)

    def start(self, path: str = "/", dev: str | None = None, req: str = "",
              extra: Headers = (), end: bool = False) -> int:  # type: ignore[assignment]
        sid = self.conn.get_next_available_stream_id()
        headers: Headers = [(b":method", b"POST"), (b":scheme", b"http"),
                            (b":authority", b"svc.test"), (b":path", path.encode()),
                            (b"x-client", self.name.encode()), (b"x-req", req.encode())]
        if dev is not None:
            headers.append((b"x-dev", dev.encode()))
        headers += list(extra)
        self.answers[sid] = Answer()
        self.conn.send_headers(sid, headers, end_stream=end)
        self.flush()
        return sid

    async def send(self, sid: int, body: bytes, trailers: Headers | None = None,
                   end: bool = True, chunk: int = 16384) -> None:
        """``body`` within the stream's windows (waiting for them), then its end."""
        view = memoryview(body)

        def room() -> int | bool:
            return self.closed or self.answers[sid].reset is not None or min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size,
                chunk, len(view))

        while view:
            n = await self.pulse.until(room, f"{self.name}: window on stream {sid}")
            if n is True:
                return  # the stream or connection ended meanwhile
            self.conn.send_data(sid, bytes(view[:n]))
            view = view[n:]
            self.flush()
            self.pulse.notify()  # its windows shrank: someone may wait for that
            await self.writer.drain()
        if end:
            if trailers:
                self.conn.send_headers(sid, trailers, end_stream=True)
            else:
                self.conn.end_stream(sid)
            self.flush()

    def reset(self, sid: int, code: int = E.CANCEL) -> None:
        self.conn.reset_stream(sid, code)
        self.flush()

    def ping(self, data: bytes) -> None:
        self.conn.ping(data)
        self.flush()

    async def answer(self, sid: int, what: str = "") -> Answer:
        a = self.answers[sid]
        await self.pulse.until(lambda: a.done or self.closed,
                               what or f"{self.name}: the answer on stream {sid}")
        return a



def h2_client(pulse: Pulse, port: int, name: str = "client",
              **kwargs: Any) -> contextlib.AbstractAsyncContextManager[H2Client]:
    return _opened(H2Client(pulse, name), port, **kwargs)


class RawH2(_Client):
    """A client that writes frames as given (``hyperframe``: valid or not) and records every
    frame it receives, answering only SETTINGS with an ACK (and DATA with WINDOW_UPDATE when
    ``auto_window``)."""

    def __init__(self, pulse: Pulse, name: str = "bad") -> None:
        self.pulse = pulse
        self.name = name
        self.frames: list[Frame] = []
        self.headers: dict[int, Headers] = {}  # decoded, by stream
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.closed = False
        self.auto_window = True
        self.reader: Any = None
        self.writer: Any = None
        self.task: asyncio.Task[None] | None = None
        self.reading = asyncio.Event()
        self.reading.set()

    async def open(self, port: int, settings: dict[Any, int] | None = None,
                   rcvbuf: int | None = None) -> RawH2:
        self.reader, self.writer = await _connect(port, rcvbuf)
        sf = SettingsFrame(0)
        sf.settings = dict(settings or {})
        self.writer.write(PREFACE + sf.serialize())
        self.task = asyncio.ensure_future(self._read())
        return self

    def send(self, *frames: Frame | bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(b"".join(f if isinstance(f, bytes) else f.serialize()
                                       for f in frames))

    def block(self, headers: Headers) -> bytes:
        return self.encoder.encode(headers)

    def request_headers(self, sid: int, path: str = "/", dev: str | None = None,
                        extra: Headers = (), end: bool = True) -> HeadersFrame:  # type: ignore[assignment]
        headers: Headers = [(b":method", b"GET"), (b":scheme", b"http"),
                            (b":authority", b"svc.test"), (b":path", path.encode()),
                            (b"x-client", self.name.encode())]
        if dev is not None:
            headers.append((b"x-dev", dev.encode()))
        f = HeadersFrame(sid, self.block(headers + list(extra)))
        f.flags.add("END_HEADERS")
        if end:
            f.flags.add("END_STREAM")
        return f

    async def _read(self) -> None:
        buf = b""
        block: dict[int, bytes] = {}
        try:
            while True:
                await self.reading.wait()
                data = await self.reader.read(65536)
                if not data:
                    break
                buf += data
                while len(buf) >= 9:
                    f, length = Frame.parse_frame_header(memoryview(buf[:9]))
                    if len(buf) < 9 + length:
                        break
                    f.parse_body(memoryview(buf[9:9 + length]))
                    buf = buf[9 + length:]
                    self._frame(f, block)
                self.pulse.notify()
        except ConnectionError:
            pass
        finally:
            self.closed = True
            self.pulse.notify()

    def _frame(self, f: Frame, block: dict[int, bytes]) -> None:
        self.frames.append(f)
        if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
            ack = SettingsFrame(0)
            ack.flags.add("ACK")
            self.send(ack)
        elif isinstance(f, HeadersFrame | ContinuationFrame):
            block[f.stream_id] = block.get(f.stream_id, b"") + f.data
            if "END_HEADERS" in f.flags:
                self.headers[f.stream_id] = [
                    (bytes(n), bytes(v)) for n, v in self.decoder.decode(
                        block.pop(f.stream_id), raw=True)]
        elif isinstance(f, DataFrame) and self.auto_window and f.flow_controlled_length:
            self.send(WindowUpdateFrame(0, window_increment=f.flow_controlled_length),
                      WindowUpdateFrame(f.stream_id,
                                        window_increment=f.flow_controlled_length))

    def goaway(self) -> GoAwayFrame | None:
        return next((f for f in self.frames if isinstance(f, GoAwayFrame)), None)

    def rst(self, sid: int) -> int | None:
        return next((f.error_code for f in self.frames
                     if isinstance(f, RstStreamFrame) and f.stream_id == sid), None)

    def data(self, sid: int) -> bytes:
        return b"".join(f.data for f in self.frames
                        if isinstance(f, DataFrame) and f.stream_id == sid)

    def ended(self, sid: int) -> bool:
        return any("END_STREAM" in f.flags for f in self.frames
                   if isinstance(f, DataFrame | HeadersFrame) and f.stream_id == sid)

    async def until_goaway(self) -> GoAwayFrame:
        return await self.pulse.until(self.goaway, f"{self.name}: a GOAWAY")

    async def until_closed(self) -> None:
        await self.pulse.until(lambda: self.closed, f"{self.name}: the connection to end")



def raw_client(pulse: Pulse, port: int, name: str = "bad",
               **kwargs: Any) -> contextlib.AbstractAsyncContextManager[RawH2]:
    return _opened(RawH2(pulse, name), port, **kwargs)


__all__ = ["PREFACE", "ContinuationFrame", "DataFrame", "GoAwayFrame", "HeadersFrame",
           "PingFrame", "RstStreamFrame", "SettingsFrame", "WindowUpdateFrame"]
