"""Plain TCP to the relay's SSH port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..config import CarrierSpec, format_host_port
from ..errors import CarrierError
from .base import Carrier


class TcpCarrier(Carrier):
    def __init__(self, spec: CarrierSpec) -> None:
        self.spec = spec
        self.description = f"tcp://{format_host_port(spec.host, spec.port)}"

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.create_connection(protocol_factory, self.spec.host, self.spec.port)
        except OSError as exc:
            raise CarrierError(
                f"cannot reach the relay at {self.description}: {exc.strerror or exc}",
                hint="is the relay running and the address right?",
            ) from exc
