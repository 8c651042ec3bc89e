"""SSH over a websocket to the relay's HTTP endpoint (``ws://`` or ``wss://``), with a bearer token.

:class:`AiohttpMessages` adapts both ends' aiohttp websocket objects (client and server share
``send_bytes``/``receive``) to :class:`~bridged.carriers.stream.MessageStream`; the relay's
endpoint uses it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from ..config import CarrierSpec
from ..errors import CarrierError
from .base import Carrier
from .stream import StreamTransport

#: the websocket subprotocol both ends agree on; a relay that does not speak it refuses
SUBPROTOCOL = "bridged.ssh.v1"


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

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

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
