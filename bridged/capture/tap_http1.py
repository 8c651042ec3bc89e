"""HTTP/1.x seen from the side: requests from the cluster and answers from the local service,
paired in order (pipelining included). Pure: bytes in, :class:`~.bodies.Exchange` out.

httptools tells no offsets and cannot be told that an answer belongs to a HEAD (its body is
absent whatever Content-Length says): the answer to a HEAD, and to an Upgrade or CONNECT, is
read here as a head alone, up to its blank line. When such an answer shares a read with the
answer before it (a pipelined HEAD) where it starts is unknown, and the tap stops observing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import httptools

from .bodies import Exchange

#: bytes of one message's head (request line or status line, and headers): past it, stop
MAX_HEAD_BYTES = 256 * 1024
#: requests read ahead of their answers (pipelining): past it, stop
MAX_PENDING = 64
#: methods whose answer is a head alone (HEAD), or ends the HTTP part (CONNECT)
_HEAD_ONLY = {"HEAD", "CONNECT"}


class Stop(Exception):
    """The tap cannot follow this connection further: it stops, forwarding goes on."""


class Http1Tap:
    """Feed it the bytes of each direction; ``emit`` gets each exchange once it is whole, or
    cut by the connection's end (status 0, or the partial answer)."""

    def __init__(self, emit: Callable[[Exchange], None], *, limit: int,
                 clock: Callable[[], float]) -> None:
        self.emit = emit
        self.limit = limit
        self.clock = clock
        self.stopped = False
        self.requests = httptools.HttpRequestParser(_RequestEvents(self))
        self.responses = httptools.HttpResponseParser(_ResponseEvents(self))
        self.reading: Exchange | None = None  # the request being parsed
        self.pending: deque[Exchange] = deque()  # requests whose answer is not whole yet
        self.head_only: bytearray | None = None  # the answer to a HEAD, CONNECT or Upgrade
        self.upgrading = False  # the request asked to switch protocols: the rest is not ours
        self.answering = False  # a response has begun and is not whole
        self.final = False  # the response being read is the final one (not 1xx)

    # --- the two directions ---

    def from_client(self, data: bytes) -> None:
        if self.stopped or self.upgrading:
            return
        try:
            self.requests.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT: the answer is read as a head; what follows is not HTTP/1
            self.upgrading = True
            if self.reading is not None:
                self.reading.request_done = True
        except (httptools.HttpParserError, Stop):
            self.stop()

    def from_server(self, data: bytes) -> None:
        if self.stopped:
            return
        try:
            self._answers(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, Stop):
            self.stop()

    def client_ended(self, lost: bool) -> None:
        if lost:  # nothing more will be answered: what was asked is recorded as it stands
            self.flush()
        # a clean half-close still waits for the answers

    def server_ended(self, lost: bool) -> None:
        ex = self.pending[0] if self.pending else None
        if not lost and ex is not None and self.answering and self.final:
            self._answered(ex)  # an answer without a length ends with the connection
        self.flush()

    def stop(self) -> None:
        """Silently: what is half-parsed cannot be trusted, and is dropped."""
        self.stopped = True
        self.pending.clear()
        self.reading = None

    def flush(self) -> None:
        """The connection ended: every exchange not recorded yet is, as it stands."""
        if self.stopped:
            return
        cut = [*self.pending]
        if self.reading is not None and self.reading not in cut:
            cut.append(self.reading)
        self.stopped = True
        for ex in cut:
            if ex.method:  # (a request cut inside its head is nothing to show)
                self._emit(ex)

    # --- answers ---

    def _answers(self, data: bytes) -> None:
        while data:
            if self.head_only is None and not self.answering and self.pending and \
                    self._ends_with_head(self.pending[0]):
                self.head_only = bytearray()
            if self.head_only is None:
                self.responses.feed_data(data)
                return
            data = self._head_only(data)

    def _ends_with_head(self, ex: Exchange) -> bool:
        return ex.method in _HEAD_ONLY or (self.upgrading and ex is self.pending[-1])

    def _head_only(self, data: bytes) -> bytes:
        """Reads one head (1xx or final) from the held bytes; the bytes after it."""
        held = self.head_only
        assert held is not None
        start = max(0, len(held) - 3)
        held += data
        end = held.find(b"\r\n\r\n", start)
        if end < 0:
            if len(held) > MAX_HEAD_BYTES:
                raise Stop
            return b""
        head, rest = bytes(held[:end + 4]), bytes(held[end + 4:])
        self.responses = httptools.HttpResponseParser(_ResponseEvents(self))
        try:
            self.responses.feed_data(head)  # a head alone: its events, the body never comes
        except (httptools.HttpParserUpgrade, httptools.HttpParserError):
            if not self.final:
                raise
            # a 101's head pauses the parser ("Pause on CONNECT/Upgrade"): its head was whole
        self.head_only = None
        ex = self.pending[0]
        if self.final:
            self._answered(ex)
            self.responses = httptools.HttpResponseParser(_ResponseEvents(self))
            if self.upgrading or ex.method == "CONNECT":
                self.flush()  # switched protocols (or refused the switch): the rest is not ours
                return b""
        else:
            self.answering = False  # a 1xx: the final answer follows
        return rest

    def _answered(self, ex: Exchange) -> None:
        self.answering = False
        self.pending.popleft()
        ex.response_done = True
        ex.ended_at = self.clock()
        if ex.request_done:
            self._emit(ex)

    def _emit(self, ex: Exchange) -> None:
        if not ex.emitted:
            ex.emitted = True
            self.emit(ex)


class _RequestEvents:
    """httptools' callbacks for the requests."""

    def __init__(self, tap: Http1Tap) -> None:
        self.tap = tap
        self.url = bytearray()
        self.head_bytes = 0
        self.in_head = False

    def on_message_begin(self) -> None:
        tap = self.tap
        if len(tap.pending) >= MAX_PENDING:
            raise Stop
        ex = Exchange(limit=tap.limit, started=tap.clock())
        tap.reading = ex
        tap.pending.append(ex)
        self.url.clear()
        self.head_bytes = 0
        self.in_head = True

    def on_url(self, piece: bytes) -> None:
        self._count(len(piece))
        self.url += piece

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        ex = self.tap.reading
        assert ex is not None
        pair = (name.decode("latin-1"), value.decode("latin-1"))
        (ex.request_headers if self.in_head else ex.request_trailers).append(pair)

    def on_headers_complete(self) -> None:
        self.in_head = False
        ex = self.tap.reading
        assert ex is not None
        parser = self.tap.requests
        ex.method = parser.get_method().decode("latin-1")
        ex.http_version = parser.get_http_version()
        ex.target = self.url.decode("latin-1")
        ex.authority = next((v for n, v in ex.request_headers if n.lower() == "host"), "")

    def on_body(self, body: bytes) -> None:
        ex = self.tap.reading
        assert ex is not None
        ex.request_body.add(body)

    def on_message_complete(self) -> None:
        ex = self.tap.reading
        assert ex is not None
        ex.request_done = True
        self.tap.reading = None
        if ex.response_done:  # answered before the request was whole (an early error)
            self.tap._emit(ex)

    def _count(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:
            raise Stop


class _ResponseEvents:
    """httptools' callbacks for the answers; each belongs to the oldest request pending."""

    def __init__(self, tap: Http1Tap) -> None:
        self.tap = tap
        self.headers: list[tuple[str, str]] = []
        self.head_bytes = 0
        self.in_head = False

    def _exchange(self) -> Exchange:
        if not self.tap.pending:
            raise Stop  # an answer to nothing: not HTTP/1 as we know it
        return self.tap.pending[0]

    def on_message_begin(self) -> None:
        tap = self.tap
        ex = self._exchange()
        if tap.head_only is None and tap._ends_with_head(ex):
            raise Stop  # a HEAD's answer inside a read that began with another: where is it?
        tap.answering = True
        tap.final = False
        self.headers = []
        self.head_bytes = 0
        self.in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise Stop
        pair = (name.decode("latin-1"), value.decode("latin-1"))
        if self.in_head:
            self.headers.append(pair)
        else:
            self._exchange().response_trailers.append(pair)

    def on_headers_complete(self) -> None:
        self.in_head = False
        status = self.tap.responses.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # 100 Continue and friends: the final answer follows
        ex = self._exchange()
        self.tap.final = True
        ex.status = status
        ex.response_headers = self.headers

    def on_body(self, body: bytes) -> None:
        if self.tap.final:
            self._exchange().response_body.add(body)

    def on_message_complete(self) -> None:
        tap = self.tap
        if tap.head_only is not None:
            return  # (a head fed alone: _head_only decides)
        if not tap.final:
            tap.answering = False
            return
        tap._answered(self._exchange())
