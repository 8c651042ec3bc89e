"""The daemon's SOCKS5 and HTTP proxies: reach cluster names from the laptop, unprivileged.

Two servers on loopback (ephemeral ports) per bridge, started once by ``POST /v1/proxy``:

- **SOCKS5** (RFC 1928): no authentication, CONNECT only, addresses as a domain name (the
  client lets us resolve: ``socks5h://``), IPv4 or IPv6;
- **HTTP**: ``CONNECT host:port`` (200, then the bytes pass), and absolute-form requests
  (``GET http://host:port/path``) forwarded in origin-form. Each message is copied by its
  framing (Content-Length, chunks, or until the end for an answer without either), so a client
  connection is kept alive while its requests name the same destination; a request to another
  destination gets a connection of its own (the previous one is closed). A 101 answer (a
  websocket) turns the connection into a raw splice.

Where each destination goes is :func:`bridged.workload.names.route_of`; a name it cannot place
is asked of the relay (:class:`bridged.protocol.Resolve`) and the answer cached. Cluster
destinations are a direct-tcpip channel on the bridge's SSH connection, to the name the relay
resolved: the relay resolves it again when it connects and applies its destination policy as
for ``expose``; a refusal comes back as the channel's open error. Direct destinations are a
plain TCP connection from the laptop. Bytes pass with :func:`bridged.splice.pass_streams`
(back-pressure both ways, a reset of one side resets the other).

A bad request (not SOCKS5, a malformed head) closes that connection and nothing else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncssh

from .. import protocol
from ..config import format_host_port, parse_host_port
from ..errors import BridgedError, ConfigError, RefusedError
from ..sockets import reset
from ..splice import pass_streams
from ..workload.names import NameRules, route_of

if TYPE_CHECKING:
    from .bridge import Bridge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxySettings:
    names: NameRules = field(default_factory=NameRules)
    #: where both proxies listen: loopback only, the laptop's own clients
    host: str = "127.0.0.1"
    #: seconds a relay's "the cluster knows this name" stays cached: Services come and go
    #: rarely, and a stale positive answer only costs a failed channel
    positive_seconds: float = 60.0
    #: seconds a "not a cluster name" stays cached: shorter, so a Service just created is
    #: reached within half a minute
    negative_seconds: float = 30.0
    #: names cached at most (least recently used dropped first): a bound on the memory a
    #: client naming random hosts can take
    cache_names: int = 4096
    #: seconds a client has to send its SOCKS greeting or HTTP head: a silent client must not
    #: hold a connection for ever
    request_seconds: float = 30.0
    #: seconds to connect to a destination (direct) or have a channel opened (cluster)
    connect_seconds: float = 15.0
    #: seconds the relay may take to answer a resolve (it tries three names, 5 s each at most)
    resolve_seconds: float = 20.0
    #: bytes of an HTTP request head at most (the request line and headers)
    max_head_bytes: int = 64 * 1024
    #: seconds an HTTP client's kept-alive connection may wait for its next request (as
    #: common servers do; its destination's connection is held meanwhile)
    keepalive_seconds: float = 60.0


class Unreachable(BridgedError):
    """A destination the proxies cannot reach: ``kind`` is "unknown" (no such name),
    "denied" (a policy refused it) or "failed" (it did not accept the connection)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class NameCache:
    """The relay's answers by name: the name to open a channel to (cluster), or None (direct)."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self._answers: collections.OrderedDict[str, tuple[float, str | None]] = \
            collections.OrderedDict()

    def get(self, name: str) -> tuple[bool, str | None]:
        found = self._answers.get(name)
        if found is None or found[0] < time.monotonic():
            self._answers.pop(name, None)
            return False, None
        self._answers.move_to_end(name)
        return True, found[1]

    def put(self, name: str, cluster_name: str | None) -> None:
        ttl = self.settings.positive_seconds if cluster_name else self.settings.negative_seconds
        self._answers[name] = (time.monotonic() + ttl, cluster_name)
        self._answers.move_to_end(name)
        while len(self._answers) > self.settings.cache_names:
            self._answers.popitem(last=False)


class _ChannelStream:
    """An SSH channel's reader and writer as :func:`pass_streams` uses a TCP stream pair: a
    lost channel reads as a reset (an OSError), and resetting it aborts the channel."""

    def __init__(self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]):
        self._reader, self._writer = reader, writer
        self.transport = self  # what pass_streams resets: see get_extra_info and abort

    async def read(self, n: int) -> bytes:
        try:
            return await self._reader.read(n)
        except asyncssh.Error as exc:
            raise ConnectionResetError(str(exc)) from None

    async def readuntil(self, separator: bytes) -> bytes:
        try:  # bounded by the channel's receive buffer: past it, IncompleteReadError
            return await self._reader.readuntil(separator)
        except asyncssh.Error as exc:
            raise ConnectionResetError(str(exc)) from None

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except asyncssh.Error as exc:
            raise ConnectionResetError(str(exc)) from None

    def can_write_eof(self) -> bool:
        return self._writer.can_write_eof()

    def write_eof(self) -> None:
        self._writer.write_eof()

    def close(self) -> None:
        self._writer.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return None  # no socket of ours: the SSH connection's must not be touched

    def abort(self) -> None:
        self._writer.channel.abort()


Streams = tuple[Any, Any]


class Proxies:
    """The SOCKS5 and HTTP proxies of one bridge."""

    def __init__(self, bridge: Bridge, namespace: str = "",
                 settings: ProxySettings | None = None) -> None:
        self.bridge = bridge
        self.namespace = namespace
        self.settings = settings or ProxySettings()
        self.names = NameCache(self.settings)
        self._servers: list[asyncio.Server] = []
        self._clients: set[asyncio.Task[Any]] = set()
        self.socks = ""
        self.http = ""
        self._relay_resolves = True

    async def start(self) -> None:
        for serve in (self._socks, self._http):
            server = await asyncio.start_server(self._tracked(serve), self.settings.host, 0,
                                                limit=self.settings.max_head_bytes)
            self._servers.append(server)
        self.socks, self.http = (format_host_port(self.settings.host,
                                                  s.sockets[0].getsockname()[1])
                                 for s in self._servers)
        log.info("bridge %s: SOCKS5 proxy on %s, HTTP proxy on %s", self.bridge.name,
                 self.socks, self.http)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    def to_dict(self) -> dict[str, Any]:
        return {"bridge": self.bridge.name, "socks": self.socks, "http": self.http,
                "namespace": self.namespace}

    def _tracked(self, serve: Any) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._clients.add(task)
            try:
                await serve(reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError):
                pass  # the client went away or sent too little: nobody else is concerned
            finally:
                self._clients.discard(task)
                writer.close()

        return handle

    # --- where a destination goes ---

    async def _where(self, host: str) -> tuple[str, str]:
        """("cluster", name to open a channel to) or ("direct", host)."""
        route = route_of(host, self.settings.names)
        if route != "ask":
            return route, host
        name = host.lower().rstrip(".")
        known, cluster_name = self.names.get(name)
        if not known:
            cluster_name = await self._ask_relay(name)
            self.names.put(name, cluster_name)
        return ("cluster", cluster_name) if cluster_name else ("direct", host)

    async def _ask_relay(self, name: str) -> str | None:
        if not self._relay_resolves:
            return None
        await self.bridge.wait_connected()
        control = self.bridge.control
        if control is None:
            raise Unreachable("failed", "not connected to the relay")
        try:
            answer = await control.call(protocol.Resolve, name=name,
                                        cluster_domain=self.settings.names.cluster_domain,
                                        wait=self.settings.resolve_seconds)
        except RefusedError as exc:
            if "unsupported" in str(exc):  # a relay older than protocol 1.5
                log.warning("bridge %s: the relay cannot resolve names (update it): cluster "
                            "names with dots go direct", self.bridge.name)
                self._relay_resolves = False
                return None
            raise Unreachable("unknown", f"cannot resolve {name}: {exc}") from None
        return str(answer.get("name") or "") if answer.get("cluster") else None

    async def open(self, host: str, port: int) -> Streams:
        """A connection to ``host:port``, through the relay or direct, or :class:`Unreachable`."""
        where, target = await self._where(host)
        if where == "cluster":
            return await self._through_relay(target, port)
        return await self._direct(host, port)

    async def _through_relay(self, name: str, port: int) -> Streams:
        conn = await self.bridge.wait_connected()
        t = self.bridge.tunnel
        try:
            async with asyncio.timeout(self.settings.connect_seconds):
                reader, writer = await conn.open_connection(
                    name, port, window=t.window_bytes, max_pktsize=t.packet_bytes)
        except asyncssh.ChannelOpenError as exc:
            reason = exc.reason or "refused by the relay"
            if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
                raise Unreachable("denied", reason) from None
            kind = "unknown" if reason.startswith("cannot resolve") else "failed"
            raise Unreachable(kind, f"{reason} (through the relay)") from None
        except (asyncssh.Error, TimeoutError) as exc:
            why = getattr(exc, "reason", "") or \
                f"no channel in {self.settings.connect_seconds:.0f}s"
            raise Unreachable("failed", f"{format_host_port(name, port)}: {why}") from None
        stream = _ChannelStream(reader, writer)
        return stream, stream

    async def _direct(self, host: str, port: int) -> Streams:
        address = format_host_port(host, port)
        try:
            async with asyncio.timeout(self.settings.connect_seconds):
                return await asyncio.open_connection(host, port)
        except socket.gaierror as exc:
            raise Unreachable("unknown", f"cannot resolve {host} (from the laptop: "
                              f"not a cluster name): {exc.strerror or exc}") from None
        except TimeoutError:
            raise Unreachable("failed", f"cannot connect to {address}: no answer in "
                              f"{self.settings.connect_seconds:.0f}s") from None
        except OSError as exc:
            raise Unreachable("failed", f"cannot connect to {address}: "
                              f"{exc.strerror or exc}") from None

    async def _open_logged(self, kind: str, host: str, port: int) -> Streams:
        try:
            return await self.open(host, port)
        except Unreachable as exc:
            log.warning("%s proxy: %s", kind, exc)
            raise
        except BridgedError as exc:  # not connected to the relay, and the like
            log.warning("%s proxy: %s: %s", kind, format_host_port(host, port), exc)
            raise Unreachable("failed", str(exc)) from None

    # --- SOCKS5 ---

    async def _socks(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(self.settings.request_seconds):
            version, count = await reader.readexactly(2)
            if version != 5:
                return  # not SOCKS5: nothing to answer in a protocol it speaks
            methods = await reader.readexactly(count)
            if 0 not in methods:
                writer.write(b"\x05\xff")  # no acceptable method
                return
            writer.write(b"\x05\x00")
            version, command, _, atyp = await reader.readexactly(4)
            if version != 5:
                return
            if atyp == 1:
                host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
            elif atyp == 4:
                host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
            elif atyp == 3:
                raw = await reader.readexactly((await reader.readexactly(1))[0])
                host = raw.decode("ascii", "replace")
                if not _HOST_NAME.fullmatch(host):
                    return  # not a host name: malformed
            else:
                writer.write(_socks_reply(8))
                return
            (port,) = struct.unpack("!H", await reader.readexactly(2))
            if command != 1:
                writer.write(_socks_reply(7))
                return
        try:
            up_reader, up_writer = await self._open_logged("SOCKS", host, port)
        except Unreachable as exc:
            writer.write(_socks_reply(_SOCKS_CODES[exc.kind]))
            return
        writer.write(_socks_reply(0))
        await pass_streams(reader, writer, up_reader, up_writer)

    # --- HTTP ---

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """CONNECT, or absolute-form requests one after the other on one connection: kept to
        the same destination while it stays the same and both sides keep the connection
        alive; a request to another destination gets a new one."""
        upstream: tuple[str, int] | None = None
        up: Streams | None = None
        wait = self.settings.request_seconds
        try:
            while True:
                try:
                    async with asyncio.timeout(wait):
                        head = await reader.readuntil(b"\r\n\r\n")
                    request = _parse_head(head)
                    method, target = request[0], request[1]
                    if method == "CONNECT":
                        host, port = parse_host_port(target)
                        message = _Message(b"", 0, chunked=False, keep=False)
                    else:
                        host, port, message = _origin_form(*request)
                except asyncio.LimitOverrunError:
                    writer.write(_http_answer(431, "the request head is too large"))
                    return
                except ConfigError as exc:
                    writer.write(_http_answer(400, str(exc)))
                    return
                except (asyncio.IncompleteReadError, TimeoutError):
                    return  # the client is done (or silent): the connection ends
                if up is None or upstream != (host, port):
                    if up is not None:
                        up[1].close()
                    up, upstream = None, None
                    try:
                        up = await self._open_logged("HTTP", host, port)
                    except Unreachable as exc:
                        writer.write(_http_answer(_HTTP_CODES[exc.kind], str(exc)))
                        return
                    upstream = (host, port)
                up_reader, up_writer = up
                if method == "CONNECT":
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    up = None  # pass_streams closes both
                    await pass_streams(reader, writer, up_reader, up_writer)
                    return
                if not await self._exchange(method, message, reader, writer, up):
                    return
                wait = self.settings.keepalive_seconds
        finally:
            if up is not None:
                up[1].close()

    async def _exchange(self, method: str, message: _Message, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, up: Streams) -> bool:
        """One request and its answer; whether the connection may carry another. A cut
        answer resets the client: it must not take a part for the whole."""
        up_reader, up_writer = up
        try:
            up_writer.write(message.head)
            await _copy_body(reader, up_writer, message)
            while True:
                try:
                    head = await up_reader.readuntil(b"\r\n\r\n")
                    answer = _parse_answer(head)
                except (asyncio.IncompleteReadError, ConfigError) as exc:
                    if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                        raise ConnectionResetError("the answer's head was cut") from None
                    writer.write(_http_answer(502, f"the destination sent no HTTP answer "
                                                   f"({exc})" if isinstance(exc, ConfigError)
                                              else "the destination closed the connection "
                                                   "without an answer"))
                    return False
                writer.write(head)
                if answer.status == 101:  # switched (a websocket): raw bytes both ways
                    await pass_streams(reader, writer, up_reader, up_writer)
                    return False
                if answer.status >= 200:
                    break
            if method == "HEAD" or answer.status in (204, 304):
                pass
            elif answer.chunked or answer.length is not None:
                await _copy_body(up_reader, writer, answer)
            else:  # delimited by the end of the connection
                while data := await up_reader.read(_PIECE):
                    writer.write(data)
                    await writer.drain()
                return False
            await writer.drain()
            return message.keep and answer.keep
        except (OSError, ConfigError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            reset(writer.transport)
            return False


#: RFC 1928 reply codes: 2 not allowed by ruleset, 4 host unreachable, 5 connection refused
_SOCKS_CODES = {"denied": 2, "unknown": 4, "failed": 5}
_HTTP_CODES = {"denied": 403, "unknown": 502, "failed": 502}
_HTTP_REASONS = {400: "Bad Request", 403: "Forbidden", 431: "Request Header Fields Too Large",
                 502: "Bad Gateway"}
#: bytes read at a time when copying a body
_PIECE = 256 * 1024
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]{1,253}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: headers meant for the proxy (or this hop), not passed on
_HOP_HEADERS = {"proxy-connection", "proxy-authorization", "connection", "keep-alive", "te",
                "upgrade"}


def _socks_reply(code: int) -> bytes:
    return bytes((5, code, 0, 1, 0, 0, 0, 0, 0, 0))


def _http_answer(status: int, message: str) -> bytes:
    body = (message.replace("\r", " ").replace("\n", " ") + "\n").encode()
    return (f"HTTP/1.1 {status} {_HTTP_REASONS[status]}\r\ncontent-type: text/plain\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise ConfigError("the request head is not text") from None
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or \
            parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise ConfigError(f"malformed request line {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise ConfigError(f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return parts[0], parts[1], parts[2], headers


@dataclass(frozen=True)
class _Message:
    """A request or answer head as forwarded, and how its body is framed."""

    head: bytes
    length: int | None  # Content-Length; None: none given
    chunked: bool
    keep: bool  # may the connection carry another exchange after this one
    status: int = 0  # answers only


def _framing(version: str, headers: list[tuple[str, str]]) -> tuple[int | None, bool, bool]:
    """(Content-Length, chunked, keep-alive) of a message's headers."""
    values: dict[str, str] = {}
    for name, value in headers:
        values[name.lower()] = f"{values[name.lower()]}, {value}" if name.lower() in values \
            else value
    chunked = "chunked" in values.get("transfer-encoding", "").lower()
    length = None
    if not chunked and "content-length" in values:
        text = values["content-length"].split(",")[0].strip()
        if not text.isdigit():
            raise ConfigError(f"bad content-length {text[:20]!r}")
        length = int(text)
    tokens = {t.strip().lower() for t in values.get("connection", "").split(",")}
    keep = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    return length, chunked, keep


def _parse_answer(head: bytes) -> _Message:
    text = head.decode("latin-1")
    lines = text[:-4].split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.0", "HTTP/1.1") or not code.isdigit():
        raise ConfigError(f"malformed status line {lines[0][:80]!r}")
    headers = [(n, v.strip()) for n, sep, v in (line.partition(":") for line in lines[1:])
               if sep]
    length, chunked, keep = _framing(version, headers)
    return _Message(head, length, chunked, keep, status=int(code))


async def _copy_exactly(src: Any, dst: Any, n: int) -> None:
    while n:
        data = await src.read(min(n, _PIECE))
        if not data:
            raise ConnectionResetError("the body was cut")
        dst.write(data)
        await dst.drain()
        n -= len(data)


async def _copy_body(src: Any, dst: Any, message: _Message) -> None:
    """The body ``message``'s head announced, copied as it comes (chunks as chunks)."""
    if not message.chunked:
        await _copy_exactly(src, dst, message.length or 0)
        return
    while True:
        line = await src.readuntil(b"\r\n")
        dst.write(line)
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise ConfigError("malformed chunk size") from None
        if size == 0:
            while (trailer := await src.readuntil(b"\r\n")) != b"\r\n":
                dst.write(trailer)
            dst.write(b"\r\n")
            await dst.drain()
            return
        await _copy_exactly(src, dst, size + 2)  # the chunk and its CRLF


def _origin_form(method: str, target: str, version: str,
                 headers: list[tuple[str, str]]) -> tuple[str, int, _Message]:
    """The destination of an absolute-form request and its head in origin-form."""
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ConfigError(f"a proxy request names http://HOST[:PORT]/PATH, or uses CONNECT "
                          f"(got {target[:80]!r})")
    try:
        port = url.port or 80
    except ValueError:
        raise ConfigError(f"bad port in {target[:80]!r}") from None
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    length, chunked, keep = _framing(version, headers)
    tokens = {t.strip().lower() for n, v in headers if n.lower() == "connection"
              for t in v.split(",")}
    upgrade = "upgrade" in tokens
    lines = [f"{method} {path} {version}"]
    if not any(n.lower() == "host" for n, _ in headers):
        lines.append(f"Host: {url.netloc.rpartition('@')[2]}")
    lines += [f"{n}: {v}" for n, v in headers if n.lower() not in _HOP_HEADERS
              or (upgrade and n.lower() == "upgrade")]
    if upgrade:
        lines.append("Connection: upgrade")
    elif not keep:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return url.hostname, port, _Message(head, length, chunked, keep)
