"""One socket operation every side needs: ending a TCP connection with a reset.

A stream that was lost (its far end vanished, its tunnel dropped, its answer cut) must reach
the application as an error, never as a clean end of stream it could take for a complete
answer. asyncio's and uvloop's ``abort()`` alone only close the descriptor, which sends an
orderly FIN unless unread bytes happen to be queued; with SO_LINGER set to 0 s the close sends
an RST.
"""

from __future__ import annotations

import asyncio
import socket
import struct

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


def reset(transport: asyncio.BaseTransport) -> None:
    """Close ``transport`` with a TCP reset, discarding what is unsent."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except (OSError, ValueError):  # the descriptor is gone already: nothing to send
            pass
    transport.abort()  # type: ignore[attr-defined]
