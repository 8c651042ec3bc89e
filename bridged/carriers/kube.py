"""SSH over the Kubernetes API server's pod port-forward (the default carrier against a cluster).

Each :meth:`KubeCarrier.create_connection` picks a Ready relay pod and opens one port-forward
websocket to its SSH port; the ``v4.channel.k8s.io`` framing is
:class:`~bridged.carriers.portforward.PortForwardFraming`. API servers cut long port-forwards
and pods come and go in rolling updates: both are ordinary reconnects for the daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from ..errors import CarrierError
from .base import Carrier
from .portforward import CHANNEL_PREFIX, Data, PortForwardFraming, RemoteError
from .stream import StreamTransport
from .websocket import send_binary


class PortForwardMessages:
    """A :class:`~bridged.carriers.stream.MessageStream` over a port-forward websocket."""

    #: every message we send is on the data channel: StreamTransport puts its byte first
    prefix = CHANNEL_PREFIX

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, port: int, pod: str,
                 on_close: Callable[[], Any]) -> None:
        self.ws = ws
        self.pod = pod
        self.framing = PortForwardFraming(port)
        self._on_close = on_close

    async def recv(self) -> bytes | memoryview | None:
        while True:
            msg = await self.ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.CLOSED):
                return None
            if msg.type == aiohttp.WSMsgType.ERROR:
                raise CarrierError(f"port-forward to pod {self.pod} failed: {self.ws.exception()}")
            if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                continue
            data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            event = self.framing.receive(data)
            if isinstance(event, Data):
                return event.payload
            if isinstance(event, RemoteError):
                raise CarrierError(f"port-forward to pod {self.pod}: {event.message}")

    async def send(self, data: bytes | bytearray) -> None:
        """``data`` starts with the channel byte (:attr:`prefix`)."""
        await send_binary(self.ws, data)

    async def close(self) -> None:
        result = self._on_close()
        if asyncio.iscoroutine(result):
            await result

    def extra_info(self) -> dict[str, Any]:
        return {"peername": (f"pod/{self.pod}", self.framing.port)}


class KubeCarrier(Carrier):
    def __init__(self, kube: Any, selector: str, port: int) -> None:
        self.kube = kube
        self.selector = selector
        self.port = port
        self.description = f"kube://{kube.context}/{kube.namespace}"
        self.pod: str | None = None

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        from ..kube.portforward import close_websocket, open_websocket, ready_pod

        self.pod = None  # the pod of this attempt, if one was Ready: the bridge skips it next
        self.pod = await ready_pod(self.kube, self.selector)
        ws = await open_websocket(self.kube, self.pod, self.port)
        protocol = protocol_factory()
        messages = PortForwardMessages(ws, self.port, self.pod, lambda: close_websocket(ws))
        return StreamTransport(messages, protocol), protocol  # type: ignore[arg-type]
