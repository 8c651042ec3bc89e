"""Carriers: the byte streams the SSH connection to the relay travels over.

- ``tcp``: plain TCP (local runs, tests, the demo, a LoadBalancer);
- ``ws``/``wss``: a websocket to the relay's own HTTP endpoint, with a bearer token;
- ``kube``: the Kubernetes API server's pod port-forward (the default against a cluster).

Every carrier implements asyncssh's tunnel interface (``create_connection(factory, host, port)``),
so SSH runs over it in-process, with no extra local socket. Message-based carriers (websockets)
share :class:`~bridged.carriers.stream.StreamTransport`, which turns a stream of binary messages
into the asyncio transport the SSH protocol expects.
"""

from __future__ import annotations

from ..config import CarrierSpec
from .base import Carrier


def carrier_for(spec: CarrierSpec, *, token: str | None = None) -> Carrier:
    if spec.scheme == "tcp":
        from .tcp import TcpCarrier

        return TcpCarrier(spec)
    from .websocket import WebSocketCarrier

    return WebSocketCarrier(spec, token=token)


__all__ = ["Carrier", "carrier_for"]
