"""``pods/portforward`` over a websocket, byte for byte as a real cluster serves it.

What the real thing does (read in kubernetes/kubernetes:
``pkg/kubelet/cri/streaming/portforward/websocket.go`` and
``staging/src/k8s.io/apimachinery/pkg/util/httpstream/wsstream/conn.go``; containerd's
``pkg/cri/server/sandbox_portforward_linux.go`` for the pod side). The API server proxies a
``v4.channel.k8s.io`` upgrade to the kubelet unchanged (only the tunnelling
``portforward.k8s.io`` subprotocol is translated, and it is not served here):

- ``GET /api/v1/namespaces/NS/pods/NAME/portforward?ports=P[,P2]`` (``ports`` may repeat) with
  ``Upgrade: websocket``; a plain GET is a 400 ``Upgrade request required``. The API server
  hands the ports to the kubelet as ``port=``, so the kubelet's errors say ``"port"``: no port
  is a 400 ``query parameter "port" is required``, a bad one ``unable to parse "x" as a
  port``/``port "0" must be > 0`` (text/plain, from the kubelet).
- Subprotocols: ``v4.channel.k8s.io`` (binary), ``v4.base64.channel.k8s.io`` (text frames,
  the channel as an ASCII digit, base64 payload) and none at all (binary). Asking only for
  others fails the handshake with a bare 403 (``golang.org/x/net/websocket``'s answer to a
  failed handshake). No permessage-deflate.
- For the i-th requested port: data channel ``2*i`` (read-write) and error channel ``2*i+1``
  (write-only: what a client sends there is dropped). Every message is one frame whose first
  byte is the channel. Right after the upgrade the server writes, for each port in order, the
  port as a little-endian uint16 on the data channel, then the same on the error channel.
- Each port opens one TCP connection to the pod's port at once (not on first data). If it
  cannot connect, the error channel carries the text ``error forwarding port P to pod ID,
  uid : failed to execute portforward in network namespace ...: failed to connect to
  localhost:P inside namespace ...`` (containerd's wording), and that port's streams end.
- Client bytes on the data channel go to the pod as they are (empty messages and unknown
  channels are ignored); pod bytes come back in frames of at most 32 KiB (``io.Copy``).
- There is no half-close: when the pod closes its side, the forward waits at most 1 s for
  the other direction, then ends; when every port has ended the server closes the websocket
  (close code 1000). When the client closes, the pod connection is closed (after the same
  1 s grace for pod-to-client bytes).
- RBAC: ``get`` on ``pods/portforward`` (the verb of a GET) and, since 1.35
  (``AuthorizePodWebsocketUpgradeCreatePermission``), ``create`` too — checked by the server
  before this handler runs. A pod that does not exist is a 404 ``Status``; one with no node a
  400; one the kubelet does not run (yet, or any more) a 500 ``pod not found ("NAME_NS")``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from . import errors as E
from .kubelet import Kubelet

__all__ = ["FRAMES", "SUBPROTOCOLS", "serve_portforward"]

SUBPROTOCOLS = ("v4.channel.k8s.io", "v4.base64.channel.k8s.io")
_CHUNK = 32 * 1024
_GRACE = 1.0

#: data-channel frames and their payload bytes (the channel byte left out) this server took from
#: clients (``in``) and sent them (``out``), all port-forwards summed: what a real API server
#: and the node's container runtime would parse one by one (the benchmark reports them)
FRAMES = {"frames_in": 0, "bytes_in": 0, "frames_out": 0, "bytes_out": 0}


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


def parse_ports(request: web.Request) -> list[int] | web.Response:
    values = request.query.getall("ports", [])
    if not values:
        return _plain(400, 'query parameter "port" is required')
    ports: list[int] = []
    for value in values:
        if not value:
            return _plain(400, 'query parameter "port" cannot be empty')
        for part in value.split(","):
            if not part.isdigit() or int(part) > 65535:
                return _plain(400, f'unable to parse "{value}" as a port: strconv.ParseUint: '
                                   f'parsing "{part}": invalid syntax')
            if int(part) < 1:
                return _plain(400, f'port "{value}" must be > 0')
            ports.append(int(part))
    return ports


def _is_upgrade(request: web.Request) -> bool:
    connection = request.headers.get("Connection", "").lower()
    return (request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in [p.strip() for p in connection.split(",")])


class _Channels:
    """Writes frames for one websocket (binary or base64 codec) one at a time."""

    def __init__(self, ws: web.WebSocketResponse, base64_codec: bool) -> None:
        self.ws = ws
        self.base64 = base64_codec
        self.lock = asyncio.Lock()

    async def send(self, channel: int, data: bytes) -> None:
        async with self.lock:
            if self.ws.closed:
                raise ConnectionResetError("websocket closed")
            if self.base64:
                await self.ws.send_str(chr(ord("0") + channel) + base64.b64encode(data).decode())
            else:
                await self.ws.send_bytes(bytes([channel]) + data)
            if channel % 2 == 0 and data:
                FRAMES["frames_out"] += 1
                FRAMES["bytes_out"] += len(data)


async def serve_portforward(request: web.Request, kubelet: Kubelet, pod: dict[str, Any],
                            *, idle_timeout: float | None = None) -> web.StreamResponse:
    """Serves one port-forward request for ``pod`` (already authorized and found)."""
    if not _is_upgrade(request):
        raise E.bad_request("Upgrade request required")
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    if not pod["spec"].get("nodeName"):
        raise E.bad_request(f"pod {name} does not have a host assigned")
    ports = parse_ports(request)
    if isinstance(ports, web.Response):
        return ports
    sandbox = kubelet.sandboxes.get(pod["metadata"]["uid"])
    if sandbox is None or pod["metadata"].get("deletionTimestamp"):
        return _plain(500, f'pod not found ("{name}_{ns}")')
    asked = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
             if p.strip()]
    if asked and not any(p in SUBPROTOCOLS for p in asked):
        return web.Response(status=403)
    ws = web.WebSocketResponse(protocols=SUBPROTOCOLS if asked else (), compress=False,
                               max_msg_size=32 << 20, autoping=True)
    await ws.prepare(request)
    chosen = ws.ws_protocol or ""
    channels = _Channels(ws, chosen == "v4.base64.channel.k8s.io")
    streams = kubelet.streams.setdefault(sandbox.uid, set())
    streams.add(ws)
    sandbox_id = hashlib.sha256(sandbox.uid.encode()).hexdigest()
    netns = f"/var/run/netns/cni-{uuid.UUID(sandbox.uid) if _is_uuid(sandbox.uid) else sandbox.uid}"
    inboxes: list[asyncio.Queue[bytes | None]] = [asyncio.Queue() for _ in ports]
    try:
        for i, port in enumerate(ports):
            prefix = port.to_bytes(2, "little")
            await channels.send(2 * i, prefix)
            await channels.send(2 * i + 1, prefix)
        forwards = [asyncio.create_task(_forward(channels, i, port, inboxes[i], sandbox,
                                                 sandbox_id, netns))
                    for i, port in enumerate(ports)]
        reader = asyncio.create_task(_read(ws, channels.base64, inboxes, idle_timeout))
        await asyncio.gather(*forwards, return_exceptions=True)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
    finally:
        streams.discard(ws)
        for inbox in inboxes:
            inbox.put_nowait(None)
        with contextlib.suppress(Exception):
            await ws.close()
    return ws


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


async def _read(ws: web.WebSocketResponse, base64_codec: bool,
                inboxes: list[asyncio.Queue[bytes | None]], idle: float | None) -> None:
    """Client frames to the ports' inboxes; the end of the websocket ends every inbox."""
    try:
        while True:
            msg = await ws.receive(timeout=idle)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                            WSMsgType.ERROR):
                break
            if msg.type == WSMsgType.BINARY:
                data = bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                data = msg.data.encode()
            else:
                continue
            if not data:
                continue
            channel = data[0] - ord("0") if base64_codec else data[0]
            body = data[1:]
            if base64_codec:
                try:
                    body = base64.b64decode(body)
                except ValueError:
                    continue
            if channel % 2 == 1 or channel // 2 >= len(inboxes) or channel < 0:
                continue  # error channels are write-only; unknown channels are ignored
            if body:
                FRAMES["frames_in"] += 1
                FRAMES["bytes_in"] += len(body)
                inboxes[channel // 2].put_nowait(body)
    except TimeoutError:
        pass
    finally:
        for inbox in inboxes:
            inbox.put_nowait(None)
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()


async def _forward(channels: _Channels, index: int, port: int,
                   inbox: asyncio.Queue[bytes | None], sandbox: Any, sandbox_id: str,
                   netns: str) -> None:
    target = None
    if sandbox.handle is not None and sandbox.state == "running":
        target = sandbox.handle.ports.get(port)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    if target is not None:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", target)
    if reader is None or writer is None:
        refused = (f"IPv4: dial tcp4 127.0.0.1:{port}: connect: connection refused IPv6 dial "
                   f"tcp6 [::1]:{port}: connect: connection refused ")
        message = (f"error forwarding port {port} to pod {sandbox_id}, uid : failed to execute "
                   f'portforward in network namespace "{netns}": failed to connect to '
                   f'localhost:{port} inside namespace "{sandbox_id}", {refused}')
        with contextlib.suppress(ConnectionError):
            await channels.send(2 * index + 1, message.encode())
        return

    async def to_pod() -> None:
        assert writer is not None
        while (chunk := await inbox.get()) is not None:
            writer.write(chunk)
            await writer.drain()

    async def to_client() -> None:
        assert reader is not None
        while chunk := await reader.read(_CHUNK):
            await channels.send(2 * index, chunk)

    up = asyncio.create_task(to_pod())
    down = asyncio.create_task(to_client())
    try:
        _, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=_GRACE)
    finally:
        for task in (up, down):
            task.cancel()
        for task in (up, down):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
