"""The seam between the SSH protocol and whatever carries its bytes."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable


class Carrier(abc.ABC):
    """Opens one byte stream to the relay per call; asyncssh's ``tunnel=`` interface."""

    #: shown to users in status and errors: where the bytes go
    description: str

    @abc.abstractmethod
    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """Open the stream and attach a protocol; raise :class:`~bridged.errors.CarrierError`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Nothing to release by default: each stream belongs to its SSH connection."""

    async def wait_closed(self) -> None:
        return None

    def __str__(self) -> str:
        return self.description
