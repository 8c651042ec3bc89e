"""SSH over a websocket to the relay's HTTP endpoint (``ws://`` or ``wss://``), with a bearer token.

:class:`AiohttpMessages` adapts both ends' aiohttp websocket objects (client and server share
``send_bytes``/``receive``) to :class:`~bridged.carriers.stream.MessageStream`; the relay's
endpoint uses it too. :func:`send_binary` sends a client's (masked) frames with one copy of the
payload, where aiohttp's ``send_bytes`` makes three.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp._websocket.helpers import websocket_mask

from ..config import CarrierSpec
from ..errors import CarrierError
from .base import Carrier
from .stream import StreamTransport

#: the websocket subprotocol both ends agree on; a relay that does not speak it refuses
SUBPROTOCOL = "bridged.ssh.v1"


_HEAD_SHORT = struct.Struct("!BBL").pack  # FIN+binary, mask bit + length < 126, the mask
_HEAD_MID = struct.Struct("!BBHL").pack
_HEAD_LONG = struct.Struct("!BBQL").pack
#: below this a frame goes out in one write (one TLS record); above, head and payload separately
_ONE_WRITE = 16 * 1024
_random_mask = random.Random().getrandbits  # RFC 6455 masks need not be secret; aiohttp's too


async def send_binary(ws: aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse,
                      data: bytes | bytearray) -> None:
    """One binary message on ``ws``. A client's frames must be masked (RFC 6455 5.3): aiohttp
    copies the payload into a bytearray, masks it, then copies it again after the head; for a
    256 KiB message those copies (and their allocations) cost about 1 s of CPU per GB. Here a
    bytearray (what StreamTransport assembles) is masked in place and written after its head
    (a bytes payload is copied once). Uncompressed frames only; anything else is aiohttp's."""
    writer: Any = getattr(ws, "_writer", None)
    if writer is None or not getattr(writer, "use_mask", False) or writer.compress:
        await ws.send_bytes(data)  # type: ignore[arg-type]  # bytearray is fine at run time
        return
    transport = writer.transport
    if ws.closed or writer._closing or transport.is_closing():
        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
    payload = data if type(data) is bytearray else bytearray(data)
    size, mask = len(payload), _random_mask(32)
    if size < 126:
        head = _HEAD_SHORT(0x82, 0x80 | size, mask)
    elif size < 65536:
        head = _HEAD_MID(0x82, 0x80 | 126, size, mask)
    else:
        head = _HEAD_LONG(0x82, 0x80 | 127, size, mask)
    websocket_mask(head[-4:], payload)
    if size < _ONE_WRITE:
        transport.write(head + payload)
    else:
        transport.writelines((head, payload))
    protocol = writer.protocol
    if protocol._paused:  # the socket's buffer is full: wait, as aiohttp's send would
        await protocol._drain_helper()


class AiohttpMessages:
    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse,
        extra: dict[str, Any], on_close: Callable[[], Any] | None = None,
    ) -> None:
        self.ws = ws
        self._extra = extra
        self._on_close = on_close

    async def recv(self) -> bytes | None:
        msg = await self.ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY:
            return msg.data  # type: ignore[no-any-return]
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.CLOSED):
            return None
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise CarrierError(f"websocket error: {self.ws.exception()}")
        raise CarrierError(f"unexpected websocket message of type {msg.type.name}")

    async def send(self, data: bytes | bytearray) -> None:
        await send_binary(self.ws, data)

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            if self._on_close is not None:
                result = self._on_close()
                if asyncio.iscoroutine(result):
                    await result

    def extra_info(self) -> dict[str, Any]:
        return self._extra


class WebSocketCarrier(Carrier):
    def __init__(self, spec: CarrierSpec, *, token: str | None) -> None:
        self.spec = spec
        self.token = token
        self.description = spec.url

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                self.spec.url, headers=headers, protocols=(SUBPROTOCOL,),
                max_msg_size=0, compress=0, autoping=True, heartbeat=None,
            )
        except aiohttp.WSServerHandshakeError as exc:
            await session.close()
            hint = "check --token" if exc.status in (401, 403) else None
            raise CarrierError(
                f"the relay at {self.description} refused the websocket: "
                f"HTTP {exc.status} {exc.message}", hint=hint,
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            await session.close()
            raise CarrierError(f"cannot reach the relay at {self.description}: {exc}") from exc
        except BaseException:  # cancelled by the SSH connect timeout: release the socket
            await session.close()
            raise
        extra = {"peername": (self.spec.host, self.spec.port)}
        try:
            protocol = protocol_factory()
            transport = StreamTransport(AiohttpMessages(ws, extra, session.close), protocol)  # type: ignore[arg-type]
        except BaseException:
            await ws.close()
            await session.close()
            raise
        return transport, protocol
