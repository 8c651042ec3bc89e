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
import logging
from collections import deque
from typing import Any, Protocol

log = logging.getLogger(__name__)


class MessageStream(Protocol):
    """What a carrier adapts: whole binary messages in and out."""

    async def recv(self) -> bytes | None:
        """The next message, or None once the peer has closed."""

    async def send(self, data: bytes) -> None: ...

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
        self._protocol = protocol
        self._extra = stream.extra_info()
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
                self._protocol.data_received(data)

    async def _write_loop(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            while self._queue:
                chunk = self._take()
                await self._stream.send(chunk)
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
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._stream.close())
            if not self.closed.done():
                self.closed.set_result(None)

    def _take(self) -> bytes:
        """Up to ``max_message`` bytes from the queue, as one message."""
        queue = self._queue
        if len(queue) == 1 and len(queue[0]) <= self.max_message:
            chunk = queue.pop()
        else:
            parts, size = [], 0
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
            chunk = b"".join(parts)
        self._queued -= len(chunk)
        return chunk
