"""Mirror intercepts: a copy of each matching request goes to the developer's laptop, while
the request itself goes where it was routed and its client gets that answer only.

A copy must never slow or change the request it copies, so everything on the request's path is
synchronous and bounded: the body is kept as it streams by (nothing waits for the copy), and
past a mirror's bounds (:class:`~bridged.config.MirrorSettings`: copies held, their bytes, one
body's size) the copy is dropped and counted, never waited for. A few senders per mirror send
the finished copies, one connection each, through the same ``open_upstream`` as the router's
(the laptop's SSH channel), with ``x-bridged-mirror: <id>`` and ``Connection: close``; the
laptop's answer is read to its end and discarded (the daemon records it on the laptop). The
answer the client got is recorded as it is forwarded (status, headers, the body's first
``answer_body_bytes``) and reported with the laptop's outcome once both ended, so the daemon
can show the two side by side.

Only HTTP/1.1 requests are copied; HTTP/2 streams and upgrade requests are not (yet). Under the
gateway strategy the mesh copies the requests itself, to the relay's mirror port
(:mod:`.copies`), and the cluster's answer is not seen: :meth:`Tee.unseen`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httptools

from ...config import MirrorSettings
from ...protocol import MIRROR_HEADER
from ...routing.decide import Route
from ...routing.rules import RequestHead
from .framing import OpenUpstream, Peer, UpstreamUnavailable, serialize_head

log = logging.getLogger("bridged.relay.router")

#: what a copy does not carry of its request's head: its framing (it is sent whole, with a
#: Content-Length), its connection's options (one connection per copy), and Expect (the body
#: is sent at once)
_NOT_COPIED = frozenset((b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                         b"proxy-connection", b"expect", b"upgrade", b"te",
                         MIRROR_HEADER.encode()))

#: the drop reasons, as counted and reported
QUEUE_FULL = "queue full"
TOO_LARGE = "body too large"
UNREACHABLE = "laptop unreachable"
CLIENT_GONE = "client left mid-request"
RATE = "over the copies per second"
#: the longest pause of a mirror whose laptop stays unreachable (its back-off doubles)
MAX_BACKOFF_SECONDS = 8.0


@dataclass(frozen=True)
class MirrorResult:
    """One copy's outcome: the request, the answer its client got, and the laptop's."""

    intercept_id: str
    mirror_id: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # of the cluster's answer, as received (not redacted)
    status: int
    body: bytes
    size: int
    truncated: bool
    duration_ms: float
    laptop_status: int
    laptop_error: str
    request_headers: tuple[tuple[str, str], ...] = ()
    client: Peer = ("", 0)
    note: str = ""


Select = Callable[[RequestHead], Sequence[str]]
OnResult = Callable[[MirrorResult], None]
OnDrop = Callable[[str, str], None]


class Mirrors:
    """The mirrors of one port: which take a copy of a request (``select``: their intercept
    ids), their queues and senders."""

    def __init__(self, select: Select, open_upstream: OpenUpstream, on_result: OnResult,
                 on_drop: OnDrop, settings: MirrorSettings | None = None) -> None:
        self.select = select
        self.open_upstream = open_upstream
        self.on_result = on_result
        self.on_drop = on_drop
        self.settings = settings if settings is not None else MirrorSettings()
        self.queues: dict[str, CopyQueue] = {}

    def begin(self, head: RequestHead, method: bytes, url: bytes, version: str,
              headers: list[tuple[bytes, bytes]], peer: Peer) -> Tee | None:
        """A request's head was parsed: its copies, if any mirror wants one (None: none)."""
        ids = self.select(head)
        if not ids:
            return None
        kept: list[tuple[bytes, bytes]] | None = None
        copies = []
        for intercept_id in ids:
            queue = self.queues.get(intercept_id)
            if queue is None:
                queue = self.queues[intercept_id] = CopyQueue(self, intercept_id)
            refused = queue.admit()
            if refused:  # decided before anything is built: a dropped copy costs ~nothing
                self.drop(intercept_id, refused)
                continue
            if kept is None:
                kept = [(n, v) for n, v in headers if n.lower() not in _NOT_COPIED]
            mirror_id = secrets.token_hex(8)
            head_bytes = serialize_head(method, url, version, [
                *kept, (MIRROR_HEADER.encode(), mirror_id.encode()),
                (b"connection", b"close")])
            copies.append(Copy(queue, mirror_id, head_bytes, peer))
        if not copies:
            return None
        return Tee(self, head, copies, self.settings.answer_body_bytes, peer)

    def drop(self, intercept_id: str, reason: str) -> None:
        try:
            self.on_drop(intercept_id, reason)
        except Exception:  # runs in transport callbacks: must never break the proxying
            log.exception("mirror drop report failed")

    def result(self, result: MirrorResult) -> None:
        try:
            self.on_result(result)
        except Exception:
            log.exception("mirror report failed")

    def forget(self, intercept_id: str) -> None:
        """The mirror is gone: its copies not sent yet are dropped, its senders stop."""
        queue = self.queues.pop(intercept_id, None)
        if queue is not None:
            queue.close()

    def close(self) -> None:
        for intercept_id in list(self.queues):
            self.forget(intercept_id)


class CopyQueue:
    """One mirror's copies: held within its bounds, sent by at most ``senders`` tasks."""

    def __init__(self, mirrors: Mirrors, intercept_id: str) -> None:
        self.mirrors = mirrors
        self.intercept_id = intercept_id
        self.held = 0  # copies held (being read, waiting, or being sent)
        self.bytes = 0  # their bodies' bytes
        self.ready: deque[Copy] = deque()
        self.senders: set[asyncio.Task[None]] = set()
        self.closed = False
        settings = mirrors.settings
        #: a token bucket: copies per second, a second's worth of burst
        self.tokens = settings.max_copies_per_second
        self.refilled = asyncio.get_running_loop().time()
        #: the laptop could not be reached: copies dropped until then (loop time)
        self.down_until = 0.0
        self.backoff = 0.0

    def admit(self) -> str:
        """Take one more copy: "" if it may, else why not (a drop reason)."""
        settings = self.mirrors.settings
        now = asyncio.get_running_loop().time()
        if self.closed or self.held >= settings.max_copies:
            return QUEUE_FULL
        if now < self.down_until:
            return UNREACHABLE
        rate = settings.max_copies_per_second
        self.tokens = min(rate, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens < 1:
            return RATE
        self.tokens -= 1
        self.held += 1
        return ""

    def unreachable(self) -> None:
        """The laptop could not be reached: copies are dropped for a while (doubling)."""
        settings = self.mirrors.settings
        self.backoff = min(max(self.backoff * 2, settings.unreachable_backoff_seconds),
                           MAX_BACKOFF_SECONDS)
        self.down_until = asyncio.get_running_loop().time() + self.backoff

    def reserve(self, n: int) -> bool:
        if self.bytes + n > self.mirrors.settings.max_bytes:
            return False
        self.bytes += n
        return True

    def release(self, copy: Copy) -> None:
        self.held -= 1
        self.bytes -= copy.size

    def push(self, copy: Copy) -> None:
        self.ready.append(copy)
        if len(self.senders) < self.mirrors.settings.senders:
            task = asyncio.ensure_future(self._send_all())
            self.senders.add(task)
            task.add_done_callback(self.senders.discard)

    async def _send_all(self) -> None:
        while self.ready:
            copy = self.ready.popleft()
            if asyncio.get_running_loop().time() < self.down_until:
                copy.drop(UNREACHABLE)  # (no channel tried, no report: counted only)
                continue
            try:
                outcome = await self._send(copy)
                if outcome is None:
                    copy.drop(UNREACHABLE)
                else:
                    copy.laptop_done(*outcome)
            except asyncio.CancelledError:
                copy.laptop_done(0, "the mirror ended")
                raise
            except Exception as exc:  # a sender must outlive any one copy
                log.exception("mirror %s: sending a copy failed", self.intercept_id)
                copy.laptop_done(0, f"bridged: {exc}")

    async def _send(self, copy: Copy) -> tuple[int, str] | None:
        """Send ``copy``, read the laptop's answer to its end: (its status, why none); None
        when the laptop could not be reached (the copy is dropped, counted, not reported)."""
        settings = self.mirrors.settings
        answer = LaptopAnswer()
        transport: Any = None
        try:
            transport = await asyncio.wait_for(self.mirrors.open_upstream(
                Route(self.intercept_id), copy.peer, lambda: answer),
                settings.answer_timeout_seconds)
        except (UpstreamUnavailable, TimeoutError) as exc:
            self.unreachable()
            log.info("mirror %s: %s; its copies are dropped for %g s", self.intercept_id,
                     str(exc) or "no connection in time", self.backoff)
            return None
        self.backoff = 0.0
        try:
            transport.write(copy.request())
            copy.body.clear()  # (its bytes stay counted until the copy is released)
            try:
                await asyncio.wait_for(asyncio.shield(answer.done),
                                       settings.answer_timeout_seconds)
            except TimeoutError:
                return answer.status, (f"no whole answer within "
                                       f"{settings.answer_timeout_seconds:g} s")
            return answer.status, answer.error
        finally:
            transport.close()

    def close(self) -> None:
        self.closed = True
        while self.ready:
            self.ready.popleft().laptop_done(0, "the mirror ended")
        for task in list(self.senders):
            task.cancel()


class LaptopAnswer(asyncio.Protocol):
    """Reads the laptop's answer to a copy to its end, and discards it: its status only."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.error = ""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._end(f"a malformed answer ({exc})")

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(httptools.HttpParserError):
            self.parser.feed_data(b"")  # an answer without a length ends with the close
        self._end("" if self.status else "the connection closed before an answer")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not 100 <= status < 200:
            self.status = status

    def on_message_complete(self) -> None:
        if self.status:
            self._end("")

    def _end(self, error: str) -> None:
        if not self.done.done():
            self.error = error
            self.done.set_result(None)


class Copy:
    """A request's copy for one mirror: its head (``x-bridged-mirror`` added), its body as
    it streams by; sent once the request is whole."""

    __slots__ = ("body", "cluster", "head", "laptop", "mirror_id", "peer", "queue", "size",
                 "state", "tee")

    def __init__(self, queue: CopyQueue, mirror_id: str, head: bytes, peer: Peer) -> None:
        self.queue = queue
        self.mirror_id = mirror_id
        self.head = head
        self.peer = peer
        self.body: list[bytes] = []
        self.size = 0
        #: "reading" (the client's body streams by), "ready" (queued or being sent),
        #: "dropped", "sent" (the laptop's outcome known)
        self.state = "reading"
        self.laptop: tuple[int, str] = (0, "")
        self.tee: Tee | None = None

    def add(self, data: bytes) -> None:
        if self.state != "reading":
            return
        settings = self.queue.mirrors.settings
        if self.size + len(data) > settings.max_body_bytes:
            self.drop(TOO_LARGE)
        elif not self.queue.reserve(len(data)):
            self.drop(QUEUE_FULL)
        else:
            self.size += len(data)
            self.body.append(data)

    def request(self) -> bytes:
        length = b"content-length: %d\r\n\r\n" % self.size
        return b"".join((self.head[:-2], length, *self.body))

    def whole(self) -> None:
        if self.state == "reading":
            self.state = "ready"
            self.queue.push(self)

    def drop(self, reason: str) -> None:
        if self.state in ("reading", "ready"):
            self.state = "dropped"
            self.body.clear()
            self.queue.release(self)
            self.queue.mirrors.drop(self.queue.intercept_id, reason)

    def laptop_done(self, status: int, error: str) -> None:
        if self.state != "ready":
            return
        self.state = "sent"
        self.laptop = (status, error)
        self.queue.release(self)
        if self.tee is not None:
            self.tee.copy_sent(self)


class Tee:
    """One request's copies, and the answer its client gets, recorded as it is forwarded.
    The downstream calls: :meth:`body`, :meth:`answer`, :meth:`request_done`,
    :meth:`cluster_done` and, whatever happened, :meth:`client_gone` at its end."""

    __slots__ = ("answered", "copies", "head", "limit", "mirrors", "note", "parser", "peer",
                 "recorder", "started", "status")

    def __init__(self, mirrors: Mirrors, head: RequestHead, copies: list[Copy], limit: int,
                 peer: Peer) -> None:
        self.mirrors = mirrors
        self.head = head
        self.copies = copies
        self.peer = peer
        for copy in copies:
            copy.tee = self
        self.limit = limit
        self.recorder = AnswerRecorder(limit, head_request=head.method == "HEAD")
        self.started = asyncio.get_running_loop().time()
        self.answered = -1.0  # loop time the cluster's answer ended (-1: not yet)
        self.status = 0
        #: why the cluster's answer is not in the report ("": it is)
        self.note = ""

    def body(self, data: bytes) -> None:
        for copy in self.copies:
            copy.add(data)

    def answer(self, data: bytes) -> None:
        self.recorder.feed(data)

    def request_done(self) -> None:
        for copy in self.copies:
            copy.whole()

    def cluster_done(self, status: int) -> None:
        if self.answered >= 0:
            return
        self.answered = asyncio.get_running_loop().time()
        self.status = status
        for copy in self.copies:
            if copy.state == "sent":
                self._report(copy)

    def unseen(self, note: str) -> None:
        """The cluster's answer is not seen here (the mesh mirrored the request to the relay):
        the copies are reported without it, saying why."""
        self.note = note
        self.cluster_done(0)

    def client_gone(self) -> None:
        """The client connection ended: a copy of a request it never finished is dropped."""
        for copy in self.copies:
            if copy.state == "reading":
                copy.drop(CLIENT_GONE)
        self.cluster_done(self.status)

    def copy_sent(self, copy: Copy) -> None:
        if self.answered >= 0:
            self._report(copy)

    def _report(self, copy: Copy) -> None:
        r = self.recorder
        self.mirrors.result(MirrorResult(
            intercept_id=copy.queue.intercept_id, mirror_id=copy.mirror_id,
            method=self.head.method, path=self.head.path, headers=tuple(r.headers),
            status=self.status, body=bytes(r.body), size=r.size, truncated=r.truncated,
            duration_ms=round((self.answered - self.started) * 1000, 2),
            laptop_status=copy.laptop[0], laptop_error=copy.laptop[1],
            request_headers=tuple(self.head.headers), client=self.peer, note=self.note))


class AnswerRecorder:
    """The answer a client got, parsed from the bytes forwarded to it: its final status,
    headers and the body's first ``limit`` bytes (the body's whole size counted)."""

    __slots__ = ("body", "done", "head_request", "headers", "informational", "limit",
                 "parser", "size", "truncated")

    def __init__(self, limit: int, head_request: bool = False) -> None:
        self.limit = limit
        self.head_request = head_request
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.size = 0
        self.truncated = False
        self.informational = False
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.done = True  # the router forwarded it as it was; we keep what we have

    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.informational = 100 <= status < 200
        if self.head_request and not self.informational:
            self.done = True  # a HEAD's answer ends with its head

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        room = self.limit - len(self.body)
        if room > 0:
            self.body += body[:room]
        if len(body) > room:
            self.truncated = True

    def on_message_complete(self) -> None:
        if not self.informational:
            self.done = True
