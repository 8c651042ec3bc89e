"""The daemon's end of the control subsystem: requests out, answers matched by id."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import asyncssh

from .. import protocol
from ..errors import ProtocolError, RefusedError, SessionError

log = logging.getLogger(__name__)


class ControlChannel:
    def __init__(self, writer: asyncssh.SSHWriter, reader: asyncssh.SSHReader) -> None:
        self._writer = writer
        self._reader = reader
        #: called once when the channel ends: a bridge without control cannot renew leases,
        #: so it drops the connection and reconnects
        self.on_closed: Any = None
        #: called with each protocol.Traffic the relay sends
        self.on_traffic: Any = None
        #: called with each protocol.MirrorAnswer and MirrorDrops (mirror intercepts)
        self.on_mirror: Any = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._task = asyncio.create_task(self._read(), name="control-reader")

    @classmethod
    async def open(cls, conn: asyncssh.SSHClientConnection) -> ControlChannel:
        try:
            writer, reader, _ = await conn.open_session(subsystem=protocol.SUBSYSTEM,
                                                        encoding=None)
        except asyncssh.Error as exc:
            raise SessionError(f"the relay has no control subsystem: {exc.reason}") from exc
        return cls(writer, reader)

    async def call(self, make: Any, wait: float = 15.0, **fields: Any) -> dict[str, Any]:
        """Send ``make(id=..., **fields)``; the answer's body, or RefusedError."""
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            try:
                self._writer.write(protocol.encode(make(id=request_id, **fields)))
            except (OSError, asyncssh.Error) as exc:
                raise SessionError(f"the control channel to the relay is closed: {exc}") \
                    from None
            return await asyncio.wait_for(future, wait)
        except TimeoutError:
            raise SessionError("the relay did not answer a control request in time") from None
        finally:
            self._pending.pop(request_id, None)

    async def _read(self) -> None:
        error: Exception = SessionError("the control channel to the relay closed")
        try:
            while line := await self._reader.readline():
                try:
                    msg = protocol.decode(line)
                except ProtocolError as exc:  # e.g. a newer relay's message: not fatal
                    log.warning("ignored a control message from the relay: %s", exc)
                    continue
                if isinstance(msg, protocol.Traffic):
                    if self.on_traffic is not None:
                        self.on_traffic(msg)
                    continue
                if isinstance(msg, (protocol.MirrorAnswer, protocol.MirrorDrops)):
                    if self.on_mirror is not None:
                        self.on_mirror(msg)
                    continue
                future = self._pending.get(getattr(msg, "re", -1))
                if future is None or future.done():
                    continue
                if isinstance(msg, protocol.Ok):
                    future.set_result(msg.body)
                elif isinstance(msg, protocol.Error):
                    future.set_exception(RefusedError(msg.message or msg.code))
        except (asyncssh.Error, ConnectionError) as exc:
            error = SessionError(f"control channel to the relay failed: {exc}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        if self.on_closed is not None:
            self.on_closed()

    def close(self) -> None:
        self._writer.close()
        self._task.cancel()
