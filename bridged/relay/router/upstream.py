"""One connection to where a request goes (the original pods, or a developer's session),
owned by one client connection: it carries that client's requests one at a time, and forwards
each response *verbatim*, parsed only to find where it ends — so a malformed or cut head is a
clean 502 and a second response to one request never reaches the client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools

from .framing import MAX_RESPONSE_HEAD_BYTES, UpstreamUnavailable

if TYPE_CHECKING:
    from .downstream import Downstream


async def tcp_upstream(host: str, port: int, factory: Callable[[], Any], what: str) -> Any:
    """An :data:`~.framing.OpenUpstream` helper for TCP destinations."""
    try:
        transport, _ = await asyncio.get_running_loop().create_connection(factory, host, port)
    except OSError as exc:
        raise UpstreamUnavailable(f"{what}: {exc.strerror or exc}") from None
    return transport


class Upstream(asyncio.Protocol):
    def __init__(self, owner: Downstream, key: str) -> None:
        self.owner = owner
        self.key = key
        self.transport: Any = None
        self.down: Downstream | None = None  # the owner while it carries a request
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.eof = False  # the upstream half-closed (once spliced)
        self.informational = False
        self.head_request = False
        self.done = False
        self.keep_alive = False
        self.paused = False
        self.in_head = False  # between a response's first byte and the end of its head
        self.held: list[bytes] = []  # its bytes so far, forwarded once the head is whole
        self.held_bytes = 0
        self.extra = False  # bytes after the end of the response
        self.connection = b""  # the response's Connection header
        self.received = 0  # bytes of the current exchange
        self.reused = False  # kept from an earlier request (it may have closed meanwhile)
        self.reads = 0  # data_received calls, in all
        self.final_at = -1  # the read in which the final response's head ended
        self.final_sent = False  # bytes of the final response reached the client

    def begin(self, down: Downstream, head_request: bool) -> None:
        """Carry ``down``'s next request."""
        self.down = down
        self.received = 0
        self.final_at = -1
        self.final_sent = False
        if self.head_request or head_request:
            # after a HEAD its parser waited for the body the answer announced; a HEAD's own
            # parser also reports the header fields (only its answer needs Connection)
            self.parser = httptools.HttpResponseParser(
                _HeadAnswer(self) if head_request else self)
        self.head_request = head_request

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
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            down.switched(self, data)
            return
        except httptools.HttpParserError as exc:
            if self.done or self.final_at == self.reads:
                self._end_within(down, data)  # a whole answer, then garbage
            else:
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
            self.held_bytes += len(data)
            if self.held_bytes > MAX_RESPONSE_HEAD_BYTES:
                down.upstream_broke(self, "sent a response head larger than "
                                          f"{MAX_RESPONSE_HEAD_BYTES} bytes")
            return
        self.forward(down, data)
        if self.done:
            self.done = False
            down.response_done(self, self.keep_alive)

    def _end_within(self, down: Downstream, data: bytes) -> None:
        pending = b"".join(self.held) + data
        self.held.clear()
        self.held_bytes = 0
        end = response_end(pending, self.head_request) if self.final_at == self.reads \
            else None
        if end is None:  # (its beginning was forwarded already: where it ends is unknown)
            down.upstream_broke(self, "sent more than one response to one request, or a "
                                      "malformed one")
            return
        length, keep_alive = end
        down.transport.write(pending[:length])
        active = down.active
        if active is not None and active.mirror is not None:
            active.mirror.answer(pending[:length])
        self.final_sent = True
        self.done = False
        down.response_done(self, keep_alive, reuse=length == len(pending))

    def forward(self, down: Downstream, data: bytes) -> None:
        if self.held:
            self.held.append(data)
            data = b"".join(self.held)
            self.held.clear()
            self.held_bytes = 0
        down.transport.write(data)
        active = down.active
        if active is not None and active.mirror is not None:
            active.mirror.answer(data)  # recorded for the mirror's side-by-side view
        if self.final_at >= 0:
            self.final_sent = True

    def eof_received(self) -> bool:
        down = self.down
        if down is not None and down.spliced:
            self.eof = True
            with contextlib.suppress(Exception):
                down.transport.write_eof()
            if down.eof:  # both halves ended: nothing more can flow either way
                down.close_splice()
                return False
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.down is not None:
            self.down.upstream_broke(self, "closed the connection before answering",
                                     lost=exc is not None)
        else:
            self.owner.forget(self)

    def pause_writing(self) -> None:
        if self.down is not None:
            self.down.pause("upstream")

    def resume_writing(self) -> None:
        if self.down is not None:
            self.down.resume("upstream")

    # parser events
    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True
        self.in_head = True
        self.connection = b""

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
            self.keep_alive = head_keeps_alive(self.parser, self.connection)
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


class _HeadAnswer:
    """Parser events of a HEAD's answer: the upstream's, and its Connection field too. Other
    answers are parsed without ``on_header``: llhttp then calls into Python once per answer,
    not once per field."""

    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.on_message_begin = up.on_message_begin
        self.on_headers_complete = up.on_headers_complete
        self.on_message_complete = up.on_message_complete

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection":
            self.up.connection += value.lower()


def head_keeps_alive(parser: Any, connection: bytes) -> bool:
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
            self.keep_alive = head_keeps_alive(self.parser, self.connection)

    def on_message_complete(self) -> None:
        if not self.informational and self.keep_alive is None:
            self.keep_alive = self.parser.should_keep_alive()

    def whole_within(self, data: bytes) -> bool:
        with contextlib.suppress(httptools.HttpParserError):
            self.parser.feed_data(data)
        return self.keep_alive is not None


def response_end(data: bytes, head_request: bool) -> tuple[int, bool] | None:
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
