"""The Kubernetes pod port-forward websocket protocol (``v4.channel.k8s.io``), as pure framing.

No I/O here (h11-style): :class:`PortForwardFraming` turns the messages an API server sends into
events, and our data into messages. What the API server speaks (kubelet's websocket
port-forward, behind ``GET /api/v1/namespaces/NS/pods/NAME/portforward?ports=P``):

- every binary message starts with one byte, the channel; for the i-th requested port the data
  channel is ``2*i`` and the error channel ``2*i + 1`` (we request one port: 0 and 1);
- the first message the server sends on each channel is the port number as a 2-byte
  little-endian integer, before any data;
- the client sends ``bytes([2*i]) + data`` on the data channel;
- text on the error channel is an error from the kubelet (e.g. nothing listens on the port in
  the pod); the connection is useless after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CarrierError

SUBPROTOCOL = "v4.channel.k8s.io"
DATA, ERROR = 0, 1
#: what every message to the pod starts with: the data channel of the first (only) port
CHANNEL_PREFIX = bytes([DATA])


@dataclass(frozen=True)
class Data:
    #: a view into the server's message (past the channel byte), not a copy of it
    payload: bytes | memoryview


@dataclass(frozen=True)
class RemoteError:
    message: str


Event = Data | RemoteError


class PortForwardFraming:
    """One forwarded port over one websocket."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._pending_port = {DATA: True, ERROR: True}  # the port prefix is still to come
        self._error = bytearray()

    def receive(self, message: bytes) -> Event | None:
        """The event one server message carries (None: nothing for the caller yet)."""
        if not message:
            return None
        channel, body = message[0], memoryview(message)[1:]
        if channel not in (DATA, ERROR):
            raise CarrierError(f"port-forward: message on unexpected channel {channel}")
        if self._pending_port[channel]:
            if len(body) < 2:
                raise CarrierError("port-forward: the first message of a channel had no port")
            announced = int.from_bytes(body[:2], "little")
            if announced != self.port:
                raise CarrierError(
                    f"port-forward: the API server forwarded port {announced}, not {self.port}")
            self._pending_port[channel] = False
            body = body[2:]
            if not body:
                return None
        if channel == ERROR:
            self._error += body
            return RemoteError(self._error.decode(errors="replace").strip())
        return Data(body)
