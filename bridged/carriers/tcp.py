"""Plain TCP to the relay's SSH port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..config import CarrierSpec, format_host_port
from ..errors import CarrierError
from ..sshtune import buffered
from .base import Carrier


class TcpCarrier(Carrier):
    def __init__(self, spec: CarrierSpec) -> None:
        self.spec = spec
        self.description = f"tcp://{format_host_port(spec.host, spec.port)}"

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        loop = asyncio.get_running_loop()
        made: list[asyncio.BaseProtocol] = []

        def reader() -> asyncio.BaseProtocol:
            made.append(protocol_factory())
            return buffered(made[0])  # (read into buffers of its own: one copy less per byte)

        try:
            transport, _ = await loop.create_connection(reader, self.spec.host, self.spec.port)
            return transport, made[0]
        except OSError as exc:
            raise CarrierError(
                f"cannot reach the relay at {self.description}: {exc.strerror or exc}",
                hint="is the relay running and the address right?",
            ) from exc
