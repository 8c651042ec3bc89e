"""Settings and specs: frozen dataclasses, parsed from what users type.

Every ``parse_*`` function raises :class:`~bridged.errors.ConfigError` with a one-line message that
says what was expected; nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .protocol import PROTOCOLS, Matcher

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class TunnelSettings:
    """How the SSH connection between daemon and relay is tuned. Both ends use the same values."""

    #: per-channel flow-control window, bytes. 2 MiB covers the bandwidth-delay product of a
    #: laptop-to-cluster path; a larger window only costs memory per stream.
    window_bytes: int = 2 * MiB
    #: bytes all of the relay's channels together may be sent ahead of what their sockets took
    #: (a new channel's receive window is a quarter of what is free, between
    #: ``smallest_window_bytes`` and ``window_bytes``): 200 streams into slow destinations at
    #: 2 MiB each buffered 344 MiB, past the relay pod's 256 MiB (bench/relay_memory.py)
    relay_window_budget_bytes: int = 48 * MiB
    #: the least window a relay channel gets however many are open: 32 KiB still moves ~3 MB/s
    #: per stream over a 10 ms round trip
    smallest_window_bytes: int = 32 * KiB
    #: streams (SSH channels) the relay carries at once; past it a new one is refused, with the
    #: reason, rather than the pod running out of memory: 2048 x 32 KiB is 64 MiB more at most
    max_streams: int = 2048
    #: largest SSH data packet, bytes. The cost of SSH in Python is per packet (framing, copies,
    #: a read that ends mid-packet), so bigger packets move more bytes per CPU second: measured
    #: with bench/tunnel.py, 256 KiB costs 0.55x the CPU per GB of 32 KiB and 0.75x that of
    #: 128 KiB (uvloop reads 256,000 bytes at a time); 512 KiB gains nothing more.
    packet_bytes: int = 256 * KiB
    #: seconds between SSH keepalives; with ``keepalive_count_max`` missed answers a dead peer is
    #: noticed within 15 s, well before TCP would, and a sleeping laptop reconnects on wake-up.
    keepalive_seconds: float = 5.0
    keepalive_count_max: int = 3
    #: ciphers in order of preference: AES-GCM is the cheapest in asyncssh (AES-NI), chacha20 next.
    encryption_algs: tuple[str, ...] = (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
    )
    #: seconds an SSH handshake may take before the attempt counts as failed
    connect_timeout_seconds: float = 15.0
    #: listen backlog of forward and intercept ports: asyncio's default (100) drops a burst of
    #: connections (a test suite, a load test), which the kernel retries only after 1 s, 3 s, ...
    listen_backlog: int = 4096


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter, for reconnecting a dropped carrier."""

    #: first delay, seconds: short, since most drops are an API server closing a port-forward
    first_seconds: float = 0.2
    #: cap, seconds: a relay that is gone for long is retried twice a minute at most
    max_seconds: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, rand: float) -> float:
        """Delay before retry ``attempt`` (0-based); ``rand`` in [0, 1) supplies the jitter."""
        # the exponent is bounded: a relay away for days must not overflow a float
        ceiling = min(self.max_seconds, self.first_seconds * self.factor ** min(attempt, 64))
        # "equal jitter": at least half the ceiling, so retries never stampede at ~0 s
        return ceiling / 2 + ceiling / 2 * rand


@dataclass(frozen=True)
class LeaseSettings:
    """How long an intercept stays routed without news from its daemon."""

    #: seconds between renewals sent by the daemon
    renew_seconds: float = 2.0
    #: seconds after the last renewal at which the relay stops routing to the session; three
    #: renewals may be lost before a live laptop loses its traffic
    ttl_seconds: float = 8.0
    #: seconds an intercept whose daemon went away stays reserved for it (not routed): a
    #: laptop that sleeps over lunch gets its intercept back instead of finding it taken by
    #: someone else; others may take it over only with --overwrite
    resume_seconds: float = 4 * 3600.0


@dataclass(frozen=True)
class MirrorSettings:
    """What a mirror intercept may hold of its copies (per intercept): a copy must never slow
    or change the request it copies, so past these it is dropped, and counted."""

    #: copies held at once (being read from the client, waiting, or being sent): a burst a
    #: developer's service may lag behind before copies are dropped
    max_copies: int = 64
    #: bytes those copies' bodies may take, in all: 8 MiB per intercept keeps a few mirrors
    #: well within the relay pod's 256 MiB
    max_bytes: int = 8 * 1024 * 1024
    #: a body larger than this is not copied (an upload), only counted
    max_body_bytes: int = 1024 * 1024
    #: copies sent to the laptop at once: a slow local service (a breakpoint) holds these
    senders: int = 4
    #: copies taken per second at most (the rest dropped and counted): each sent copy costs
    #: the relay ~0.4 ms of CPU on the loop every client shares (an SSH channel, two reports;
    #: bench/mirror.py), so 100/s keeps a busy Service's mirror to ~4 % of that loop
    max_copies_per_second: float = 100.0
    #: seconds copies are dropped (counted, no channel tried) after the laptop could not be
    #: reached, doubling while it stays unreachable up to 8 s: a laptop that is down must cost
    #: the relay nothing (without it, ~1200 failed channel opens a second)
    unreachable_backoff_seconds: float = 1.0
    #: seconds the laptop has to answer a copy (its answer is read and discarded): then the
    #: copy's connection is closed, so a service held at a breakpoint frees its sender
    answer_timeout_seconds: float = 30.0
    #: bytes of the cluster's answer body sent to the daemon beside the laptop's (the
    #: capture's default, bridged.capture.model.CaptureSettings.max_body_bytes)
    answer_body_bytes: int = 256 * 1024


@dataclass(frozen=True)
class RouterSettings:
    """The relay's HTTP router."""

    #: seconds to wait for a response's head before answering 504; None: no limit, because a
    #: request held at a developer's breakpoint must complete however long the pause
    response_timeout_seconds: float | None = None
    #: header names redacted in the traffic log besides the defaults (credentials, cookies)
    redact_headers: tuple[str, ...] = ()
    #: seconds a client has to send a whole request head, from its first byte (or from the
    #: connection's start), before 408: nginx's client_header_timeout. A head is a few hundred
    #: bytes; a client slower than this holds a connection slot for nothing
    header_timeout_seconds: float = 60.0
    #: seconds an idle keep-alive client connection is kept before it is closed: nginx's
    #: keepalive_timeout (Go's and Java's client pools close theirs after 90 s and 60 s idle,
    #: so clients rarely race our close)
    idle_timeout_seconds: float = 75.0
    #: seconds a client may leave what it was sent unread before it is dropped: nginx's
    #: send_timeout. Counted only while the relay's buffer to it is full, so a slow download
    #: that keeps reading is never cut
    send_timeout_seconds: float = 60.0
    #: client connections the relay's routers hold at once, all ports together; past it, 503.
    #: Each may buffer up to ~2 x 64 KiB plus an upstream connection: 1024 of them stay well
    #: within the relay pod's 256 MiB and its descriptor limit
    max_connections: int = 1024
    #: mirror intercepts' copies (their bounds)
    mirror: MirrorSettings = field(default_factory=MirrorSettings)


# --- addresses ---------------------------------------------------------------------------------

_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def parse_port(text: str | int, what: str = "port", *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    wrong = ConfigError(f"bad {what} {text!r}: expected a number from {low} to 65535")
    if isinstance(text, bool):
        raise wrong
    if isinstance(text, str):
        # int() would also take "+80", "8_0" and non-ASCII digits
        if not (text.isascii() and text.isdigit()):
            raise wrong
        port = int(text)
    elif isinstance(text, int):
        port = text
    else:
        raise wrong
    if not low <= port <= 65535:
        raise wrong
    return port


def parse_host(text: str) -> str:
    """A host name or an IP address (IPv6 with or without brackets)."""
    bracketed = text.startswith("[") and text.endswith("]")
    host = text[1:-1] if bracketed else text
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and (ip.version == 6 or not bracketed):
        return str(ip)
    last_label = host.rstrip(".").rsplit(".", 1)[-1]
    if bracketed or not _HOSTNAME.fullmatch(host) or last_label.isdigit():
        # brackets hold IPv6 only; an all-digit last label is a mistyped IPv4 address
        raise ConfigError(f"bad host {text!r}: expected a host name or an IP address")
    return host.lower()


def parse_host_port(
    text: str, *, default_host: str | None = None, allow_zero: bool = False
) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, or just ``port`` when ``default_host`` is given."""
    text = text.strip()
    if default_host is not None and text.isdigit():
        return default_host, parse_port(text, allow_zero=allow_zero)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ConfigError(f"bad address {text!r}: expected [IPv6]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            want = "HOST:PORT or PORT" if default_host is not None else "HOST:PORT"
            raise ConfigError(f"bad address {text!r}: expected {want}")
        if ":" in host:
            raise ConfigError(f"bad address {text!r}: write IPv6 addresses as [ADDR]:PORT")
    return parse_host(host), parse_port(port, allow_zero=allow_zero)


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- carrier URLs -------------------------------------------------------------------------------

CARRIER_SCHEMES = ("tcp", "ws", "wss")


@dataclass(frozen=True)
class CarrierSpec:
    """Where the relay is and how the SSH bytes travel there: ``tcp://h:p``, ``ws(s)://h:p/path``."""

    scheme: str
    host: str
    port: int
    path: str = "/"

    @property
    def url(self) -> str:
        path = self.path if self.scheme in ("ws", "wss") else ""
        return f"{self.scheme}://{format_host_port(self.host, self.port)}{path}"

    def __str__(self) -> str:
        return self.url


def parse_carrier(text: str) -> CarrierSpec:
    try:
        parts = urlsplit(text.strip())
        hostname = parts.hostname
    except ValueError:
        raise ConfigError(f"bad relay address {text!r}: not a URL") from None
    if parts.scheme not in CARRIER_SCHEMES:
        raise ConfigError(
            f"bad relay address {text!r}: expected tcp://HOST:PORT, ws://HOST:PORT/PATH "
            "or wss://HOST:PORT/PATH"
        )
    if parts.username or parts.password or parts.query:
        raise ConfigError(
            f"bad relay address {text!r}: put no credentials in the URL (use --token)"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"bad relay address {text!r}: expected a port from 1 to 65535") from None
    if not hostname:
        raise ConfigError(f"bad relay address {text!r}: no host")
    if port is None:
        if parts.scheme == "tcp":
            raise ConfigError(f"bad relay address {text!r}: tcp:// needs a port")
        port = 443 if parts.scheme == "wss" else 80
    host = parse_host(hostname)
    return CarrierSpec(parts.scheme, host, parse_port(port), parts.path or "/")


# --- forwards and intercepts ----------------------------------------------------------------------

_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


def default_name(text: str) -> str:
    """A valid name made from anything (an address, an FQDN): what users get when they give none."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    name = re.sub(r"-{2,}", "-", name)
    if len(name) > 63:  # keep the start (the service) and make the cut unique
        import hashlib

        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-._')}-{digest}"
    return name or "x"


def parse_name(text: str, what: str = "name") -> str:
    if not isinstance(text, str) or not _NAME.fullmatch(text):
        raise ConfigError(
            f"bad {what} {text!r}: use lower-case letters, digits, '.', '_' and '-' (at most 63)"
        )
    return text


@dataclass(frozen=True)
class ForwardSpec:
    """An in-cluster destination made reachable on a local port."""

    name: str
    remote_host: str
    remote_port: int
    local_host: str = "127.0.0.1"
    #: 0 means: the same number as the remote port when free, else any free port
    local_port: int = 0
    #: the Service it was resolved from, if any (for env variables and `bridged services`)
    service: str | None = None
    service_namespace: str = ""
    service_port_name: str = ""
    #: hosts mode: listen on an address of its own (127.x.y.z) at the remote port, and name
    #: it in the hosts file with the Service's cluster names, for clients that ignore proxies
    hosts: bool = False

    @classmethod
    def parse(
        cls, target: str, *, local_port: int = 0, name: str | None = None,
        local_host: str = "127.0.0.1", hosts: bool = False,
    ) -> ForwardSpec:
        host, port = parse_host_port(target)
        if name is None:
            name = default_name(f"{host}-{port}")
        return cls(
            name=parse_name(name, "forward name"),
            remote_host=host,
            remote_port=port,
            local_host=parse_host(local_host),
            local_port=parse_port(local_port, "local port", allow_zero=True),
            hosts=hosts,
        )


@dataclass(frozen=True)
class InterceptSpec:
    """Traffic the cluster sends to a Service port (or to a relay port), delivered to a local
    port instead.

    ``tcp``: the whole port, exclusively. ``http``: per request, those that match all
    ``matchers`` (none: every request); the others go to the original pods — which the relay
    knows for a Service, and ``origin`` names for a bare relay port.
    """

    name: str
    local_port: int
    #: the Service and its port (number or name) whose traffic is redirected ``via`` a
    #: strategy (takeover, gateway, cilium, auto); or, without a service, a bare relay port
    service: str = ""
    service_port: str = ""
    via: str = ""
    remote_port: int = 0
    local_host: str = "127.0.0.1"
    mode: str = "tcp"
    matchers: tuple[Matcher, ...] = field(default=())
    origin: str = ""
    fallback: str = "error"
    #: what the local server speaks (:data:`bridged.protocol.PROTOCOLS`); "" when the user
    #: did not say: the daemon then takes the Service port's ``appProtocol``, else ``http``
    protocol: str = ""
    #: copy the matching requests to the local port while the cluster keeps answering them
    #: (HTTP/1.1; never exclusive: others may intercept the same requests meanwhile)
    mirror: bool = False

    @classmethod
    def parse(
        cls, *, local_port: int | str, service: str | None = None, remote_port: int | None = None,
        via: str | None = None, name: str | None = None, local_host: str = "127.0.0.1",
        headers: tuple[str, ...] = (), path: str | None = None, origin: str | None = None,
        http: bool = False, tcp: bool = False, fallback: str = "error",
        protocol: str | None = None, grpc_method: str | None = None, mirror: bool = False,
    ) -> InterceptSpec:
        """``local_port`` is ``LOCAL[:SERVICE_PORT]`` as typed after ``--port``;
        ``grpc_method`` as typed after ``--grpc-method`` (it implies ``protocol`` grpc)."""
        local, _, service_port = str(local_port).partition(":")
        if service and remote_port is not None:
            raise ConfigError("give a Service or --relay-port, not both")
        if not service and remote_port is None:
            raise ConfigError("say what to intercept: a Service name (or --relay-port N for a "
                              "relay without a cluster)")
        if service:
            service = parse_service_name(service)
            if service_port and not (service_port.isascii() and service_port.isdigit()):
                service_port = parse_name(service_port, "service port name")
            elif service_port:
                service_port = str(parse_port(service_port, "service port"))
        elif service_port:
            raise ConfigError("LOCAL:SERVICE_PORT is for a Service; with --relay-port give "
                              "only the local port")
        via = via or ("auto" if service else "")
        if via and not service:
            raise ConfigError("--via redirects a Service: name one")
        if via and via not in ("auto", "takeover", "gateway", "cilium"):
            raise ConfigError(f"bad --via {via!r}: expected takeover, gateway, cilium or auto")
        rport = parse_port(remote_port, "relay port") if remote_port is not None else 0
        matchers = [parse_header_matcher(h) for h in headers]
        if path is not None:
            if not path.startswith("/"):
                raise ConfigError(f"bad path {path!r}: expected a prefix starting with '/'")
            matchers.append(Matcher("path", "prefix", "", path))
        if origin:
            if service:
                raise ConfigError("--origin is for a bare relay port: for a Service the relay "
                                  "knows its original pods")
            host, port = parse_host_port(origin)
            origin = format_host_port(host, port)
        if fallback not in ("error", "origin"):
            raise ConfigError(f"bad fallback {fallback!r}: expected error or origin")
        if fallback == "origin" and not (origin or service):
            raise ConfigError("--fallback origin needs --origin HOST:PORT")
        protocol = protocol or ""
        if protocol and protocol not in PROTOCOLS:
            raise ConfigError(f"bad --protocol {protocol!r}: expected {', '.join(PROTOCOLS)}")
        if grpc_method is not None:
            if protocol == "http":
                raise ConfigError("--grpc-method matches gRPC calls: it goes without "
                                  "--protocol http")
            protocol = protocol or "grpc"
            matchers.append(parse_grpc_method(grpc_method))
        if tcp and matchers:
            raise ConfigError("--tcp takes the whole port: it goes without --header/--path/"
                              "--grpc-method")
        if tcp and protocol:
            raise ConfigError("--tcp takes the whole port as bytes: it goes without --protocol")
        if tcp and via in ("gateway", "cilium"):
            raise ConfigError(f"--via {via} routes HTTP requests: use --via takeover with --tcp")
        if mirror and tcp:
            raise ConfigError("--mirror copies HTTP requests: it goes without --tcp")
        if mirror and protocol in ("h2c", "grpc"):
            raise ConfigError(f"--mirror copies HTTP/1.1 requests only for now: it goes without "
                              f"--protocol {protocol}" + (" and --grpc-method"
                                                          if grpc_method is not None else ""))
        if mirror and fallback == "origin":
            raise ConfigError("--mirror never takes a request from the cluster: --fallback "
                              "has nothing to do")
        return cls(
            name=parse_name(name or service or f"port-{rport}", "intercept name"),
            local_port=parse_port(local, "local port"),
            service=service or "", service_port=service_port, via=via, remote_port=rport,
            local_host=parse_host(local_host),
            mode="tcp" if tcp else "http" if (http or matchers or origin or service
                                              or protocol or mirror) else "tcp",
            matchers=tuple(matchers),
            origin=origin or "",
            fallback=fallback,
            protocol=protocol,
            mirror=mirror,
        )


    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                "matchers": [dict(kind=m.kind, op=m.op, name=m.name, value=m.value)
                             for m in self.matchers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InterceptSpec:
        """The inverse of :meth:`to_dict` (a saved state)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["matchers"] = tuple(Matcher(**m) for m in values.get("matchers") or ())
        return cls(**values)


_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def parse_service_name(text: str) -> str:
    if not _SERVICE_NAME.fullmatch(text):
        raise ConfigError(f"bad Service name {text!r}: expected a DNS label (a-z, 0-9, '-')")
    return text


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


def parse_header_matcher(text: str) -> Matcher:
    """``NAME=VALUE`` (exact) or ``NAME~REGEX``, as typed after ``--header``."""
    m = re.fullmatch(r"([^=~]+)([=~])(.*)", text)
    if m is None or not _HEADER_NAME.fullmatch(m[1]):
        raise ConfigError(f"bad header {text!r}: expected NAME=VALUE or NAME~REGEX")
    if m[2] == "~":
        try:
            re.compile(m[3])
        except re.error as exc:
            raise ConfigError(f"bad header regex {m[3]!r}: {exc}") from None
    return Matcher("header", "equals" if m[2] == "=" else "regex", m[1].lower(), m[3])


#: GRPCRoute's method match (Gateway API): a protobuf full name for the service, an
#: identifier for the method; ``*`` (or nothing) stands for any
_GRPC_SERVICE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_GRPC_METHOD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
GRPC_METHOD_FORMS = "package.Service/Method, package.Service (all its methods) or */Method"


def parse_grpc_method(text: str) -> Matcher:
    """``package.Service/Method``, ``package.Service`` or ``package.Service/*`` (all its
    methods), ``*/Method`` (that method of any service), as typed after ``--grpc-method``."""
    service, slash, method = text.partition("/")
    method = method if slash else "*"  # "pkg.Svc/" (nothing after the slash) is a typo
    service_ok = service == "*" or _GRPC_SERVICE.fullmatch(service)
    method_ok = method == "*" or _GRPC_METHOD.fullmatch(method)
    if not (service_ok and method_ok) or service == method == "*":
        raise ConfigError(f"bad --grpc-method {text[:80]!r}: expected {GRPC_METHOD_FORMS}")
    service, method = ("" if part == "*" else part for part in (service, method))
    return Matcher("grpc-method", "equals", service, method)


#: a Service port's ``appProtocol`` → what an intercept of it speaks when not told
#: (``kubernetes.io/h2c`` is Kubernetes' own name; ``grpc`` the common one, GRPCRoute's)
APP_PROTOCOLS = {"grpc": "grpc", "kubernetes.io/h2c": "h2c"}


def protocol_of_app_protocol(app_protocol: str) -> str:
    """The intercept protocol a Service port's ``appProtocol`` implies ("" : none)."""
    return APP_PROTOCOLS.get(app_protocol, "")
