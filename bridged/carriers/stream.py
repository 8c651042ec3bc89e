"""An asyncio transport over a stream of binary messages (a websocket, a port-forward channel).

The SSH protocol object (asyncssh) wants a transport: ``write`` that never blocks, ``close``,
``abort``, ``get_extra_info``. A websocket offers ``await send(bytes)`` and ``await receive()``.
:class:`StreamTransport` bridges the two with two tasks:
- the writer coalesces everything written since its last send into one message (many small SSH
  packets become one frame) and tells the protocol to pause above a high-water mark;
- the reader delivers each message with ``data_received`` and stops receiving while paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from typing import Any, Protocol

log = logging.getLogger(__name__)


class MessageCounts:
    """Messages and payload bytes each way: what the carrier costs per byte depends on how
    large its messages are (every message is a frame the peer, e.g. an API server and the node's
    container runtime behind it, parses and forwards on its own)."""

    __slots__ = ("bytes_in", "bytes_out", "messages_in", "messages_out")

    def __init__(self) -> None:
        self.messages_out = self.bytes_out = self.messages_in = self.bytes_in = 0

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


#: every transport of this process, summed
TOTALS = MessageCounts()
#: ``BRIDGED_CARRIER_STATS=FILE``: the process's totals are written to FILE (JSON) once messages
#: have stopped for :data:`_QUIET` seconds (for the benchmark, which reads it between transfers;
#: nothing is written while bytes flow, so the figures it takes are not disturbed; off by default)
_STATS_FILE = os.environ.get("BRIDGED_CARRIER_STATS")
_QUIET = 0.05
_dump_at: int | None = None  # the message count a pending check saw; None: no check pending


def _dump_when_quiet() -> None:
    global _dump_at
    seen = TOTALS.messages_in + TOTALS.messages_out
    if seen != _dump_at:  # messages still flow: look again later
        _dump_at = seen
        asyncio.get_running_loop().call_later(_QUIET, _dump_when_quiet)
        return
    _dump_at = None
    assert _STATS_FILE is not None
    tmp = f"{_STATS_FILE}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        with open(tmp, "w") as f:
            json.dump(TOTALS.to_dict(), f)
        os.replace(tmp, _STATS_FILE)


def _counted() -> None:
    global _dump_at
    if _STATS_FILE is not None and _dump_at is None:
        _dump_at = -1
        asyncio.get_running_loop().call_later(_QUIET, _dump_when_quiet)


class MessageStream(Protocol):
    """What a carrier adapts: whole binary messages in and out.

    ``prefix`` (optional attribute, default empty): bytes every message starts with (the
    port-forward channel byte), put in place when the message is assembled, not by a copy later.
    ``send`` owns what it is given: a bytearray may be changed in place (masked)."""

    async def recv(self) -> bytes | memoryview | None:
        """The next message, or None once the peer has closed."""

    async def send(self, data: bytes | bytearray) -> None: ...

    async def close(self) -> None: ...

    def extra_info(self) -> dict[str, Any]: ...


class StreamTransport(asyncio.Transport):
    #: bytes queued for sending above which the protocol is asked to pause writing
    high_water = 4 * 1024 * 1024
    low_water = 1024 * 1024
    #: largest single message we send, bytes: bounds the peer's per-message memory, and keeps
    #: asyncssh's input-buffer slicing (which grows with each delivered chunk) cheap
    max_message = 256 * 1024

    def __init__(self, stream: MessageStream, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._stream = stream
        self._prefix: bytes = getattr(stream, "prefix", b"")
        self._protocol = protocol
        self._extra = stream.extra_info()
        self.counts = MessageCounts()
        self._extra["carrier_counts"] = self.counts
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wake_writer = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing = False
        self._writing_paused = False
        #: resolved once the protocol was told and the stream is closed
        self.closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_loop(), name="carrier-reader")
        self._writer = asyncio.create_task(self._write_loop(), name="carrier-writer")
        self._supervisor = asyncio.create_task(self._supervise(), name="carrier")
        protocol.connection_made(self)

    # --- asyncio.Transport ---

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._queue.append(data if isinstance(data, bytes) else bytes(data))
        self._queued += len(data)
        self._wake_writer.set()
        if not self._writing_paused and self._queued > self.high_water:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._queued

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def close(self) -> None:
        """Send what is queued, then close the stream."""
        if not self._closing:
            self._closing = True
            self._wake_writer.set()

    def abort(self) -> None:
        """Drop what is queued and close now; connection_lost follows, as in asyncio."""
        self._closing = True
        self._queue.clear()
        self._queued = 0
        self._reader.cancel()
        self._writer.cancel()

    # --- the two pumps and their supervisor ---

    async def _read_loop(self) -> None:
        while True:
            await self._reading.wait()
            data = await self._stream.recv()
            if data is None:
                return  # the peer closed
            if data:
                counts = self.counts
                counts.messages_in += 1
                counts.bytes_in += len(data)
                TOTALS.messages_in += 1
                TOTALS.bytes_in += len(data)
                _counted()
                # a memoryview (the port-forward's payload past its channel byte) is read like
                # bytes by asyncssh: no copy to make it one
                self._protocol.data_received(data)  # type: ignore[arg-type]

    async def _write_loop(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            while self._queue:
                message, size = self._take()
                counts = self.counts
                counts.messages_out += 1
                counts.bytes_out += size
                TOTALS.messages_out += 1
                TOTALS.bytes_out += size
                _counted()
                await self._stream.send(message)
                if self._writing_paused and self._queued <= self.low_water:
                    self._writing_paused = False
                    self._protocol.resume_writing()
            if self._closing:
                return  # close(): everything queued was sent

    async def _supervise(self) -> None:
        """The first pump to end ends the transport: the protocol hears of it exactly once,
        then the stream is closed (shielded, so a cancelled pump cannot skip it)."""
        pumps = {self._reader, self._writer}
        done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        self._closing = True
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        exc: BaseException | None = None
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
        log.debug("carrier stream closed: %s", self.counts.to_dict())
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._stream.close())
            if not self.closed.done():
                self.closed.set_result(None)

    def _take(self) -> tuple[bytes | bytearray, int]:
        """Up to ``max_message`` bytes from the queue as one message (after the stream's
        prefix), and how many of the queue's bytes it holds. Copied once at most: a lone part
        without a prefix is sent as it is; else one bytearray is assembled, which a client
        websocket then masks in place."""
        queue, prefix = self._queue, self._prefix
        if not prefix and len(queue) == 1 and len(queue[0]) <= self.max_message:
            message: bytes | bytearray = queue.pop()
            size = len(message)
        else:
            parts, size = [prefix] if prefix else [], 0
            while queue and size < self.max_message:
                part = queue[0]
                room = self.max_message - size
                if len(part) > room:
                    parts.append(part[:room])
                    queue[0] = part[room:]
                    size += room
                    break
                parts.append(queue.popleft())
                size += len(part)
            message = bytearray().join(parts)
        self._queued -= size
        return message, size
