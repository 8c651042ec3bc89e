"""The control protocol between daemon and relay: JSON lines on the SSH subsystem
``bridged-control``.

Pure: messages are frozen dataclasses, ``encode`` turns one into a line of bytes and ``decode``
turns a line back into a message. No I/O happens here, so both ends and the tests share it.

Compatibility rules (so a newer daemon can talk to an older relay and back):
- every line is one JSON object with a ``type``; requests carry an ``id`` that the answer repeats
  as ``re``;
- the first request is ``hello`` with the sender's protocol ``version``; the relay answers with its
  own; a different *major* version is refused, a newer minor one is fine;
- unknown fields are ignored, unknown request types get an ``error`` answer with code
  ``unsupported`` — never a dropped connection;
- an intercept carries a list of ``matchers`` (``{"kind", "name", "op", "value"}``): empty means
  the whole port; HTTP matchers (header, path, method, baggage) use the same shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from .errors import ProtocolError

SUBSYSTEM = "bridged-control"
#: (major, minor): bump minor for additions old peers may ignore, major for breaking changes
#: 1.1: claims may name a Service and a strategy; 1.2: traffic headers; 1.3: a claim's
#: protocol, gRPC method matchers, HTTP/2 streams in traffic; 1.4: mirror claims, their
#: ``mirror`` and ``mirror-drops`` events. ``resolve`` (the daemon's proxies) needs no bump: a
#: relay without it answers ``unsupported``, which the daemon takes as "dotted names go direct"
VERSION = (1, 4)

#: how the cluster's traffic for a Service reaches the relay (see :mod:`bridged.redirect`)
STRATEGIES = ("takeover", "gateway", "cilium")
#: what the developer's local server speaks (``InterceptClaim.protocol``): ``http`` is
#: HTTP/1.1; ``h2c`` and ``grpc`` are HTTP/2 cleartext (prior knowledge), ``grpc`` also
#: selecting gRPC's routes (GRPCRoute) and reports (method, grpc-status)
PROTOCOLS = ("http", "h2c", "grpc")
#: a line longer than this is a broken or hostile peer, not a message
MAX_LINE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Matcher:
    """One test of a request. ``kind`` is "header", "path", "method", "baggage" or
    "grpc-method"; ``op`` "equals", "prefix" (paths) or "regex". A ``grpc-method`` matcher
    is GRPCRoute's method match: ``name`` the service (``package.Service``), ``value`` the
    method; either may be empty (any), not both; with ``regex`` each is a regex."""

    kind: str
    op: str = "equals"
    name: str = ""
    value: str = ""


@dataclass(frozen=True)
class InterceptClaim:
    """What a daemon asks the relay to route to it."""

    id: str  # stable across reconnects: the daemon persists it
    port: int  # the port the cluster sends the service's traffic to, on the relay
    mode: str = "tcp"  # "tcp": whole port; "http": per request, by matchers
    matchers: tuple[Matcher, ...] = ()
    #: where requests that match no intercept go ("host:port"): the Service's own pods.
    #: Empty: the relay's redirect strategy knows (takeover's shadow Service).
    origin: str = ""
    #: when the developer's local service cannot be reached: "error" (502) or "origin"
    fallback: str = "error"
    #: the Service (in the relay's namespace) whose port ``service_port`` is intercepted, and
    #: how its traffic is redirected to the relay (:data:`STRATEGIES`). With a service, the
    #: relay picks ``port`` (send 0) and knows the origin itself.
    service: str = ""
    service_port: int = 0
    via: str = ""
    #: what the developer's local server speaks (:data:`PROTOCOLS`): the router sends the
    #: intercept's requests as HTTP/1.1 (``http``) or as HTTP/2 streams (``h2c``, ``grpc``)
    protocol: str = "http"
    #: a mirror: the matching requests are *copied* to the developer (HTTP/1.1 only), the
    #: cluster still answers them; it takes nothing from anyone, so it is never exclusive
    mirror: bool = False

    @property
    def exclusive(self) -> bool:
        return not self.matchers and not self.mirror

    @property
    def listen_host(self) -> str:
        """The virtual remote-forward address naming this intercept (the relay binds nothing)."""
        return f"{self.id}.intercept.bridged"


# --- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    type: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class Request(Message):
    id: int


@dataclass(frozen=True)
class Hello(Request):
    type: ClassVar[str] = "hello"
    version: tuple[int, int] = VERSION
    agent: str = ""


@dataclass(frozen=True)
class Register(Request):
    type: ClassVar[str] = "register"
    claim: InterceptClaim = field(default_factory=lambda: InterceptClaim("", 0))
    #: take the intercept over from another session that holds it (same id: always allowed)
    overwrite: bool = False


@dataclass(frozen=True)
class Release(Request):
    type: ClassVar[str] = "release"
    intercept_id: str = ""


@dataclass(frozen=True)
class Renew(Request):
    """Lease renewal for every intercept the session holds."""

    type: ClassVar[str] = "renew"
    intercept_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class GetStats(Request):
    type: ClassVar[str] = "stats"


@dataclass(frozen=True)
class Resolve(Request):
    """Does the cluster know ``name``? The relay tries the names a pod of its namespace would
    (``name.NS.svc.DOMAIN``, ``name.svc.DOMAIN``, ``name.DOMAIN``; outside Kubernetes, ``name``
    alone) and answers ``{"cluster": bool, "name": the one that resolved, or ""}``. Older
    relays answer ``unsupported``."""

    type: ClassVar[str] = "resolve"
    name: str = ""
    #: the cluster's DNS domain, as the daemon's proxy settings have it
    cluster_domain: str = "cluster.local"


@dataclass(frozen=True)
class Ok(Message):
    type: ClassVar[str] = "ok"
    re: int
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Error(Message):
    type: ClassVar[str] = "error"
    re: int
    code: str  # "refused", "conflict", "not-found", "unsupported", "protocol", "version"
    message: str = ""


@dataclass(frozen=True)
class Traffic(Message):
    """Relay → daemon, unasked: one request the router sent to this session (or that failed
    on its way there). Request headers with secrets redacted (:mod:`bridged.routing.redact`),
    never bodies."""

    type: ClassVar[str] = "traffic"
    intercept_id: str
    method: str
    path: str
    status: int  # 0: no response (the connection broke)
    duration_ms: float
    client: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    #: set for a connection the router passed through untouched instead of routing (h2c,
    #: TLS, not HTTP/1.x): why; method and path are then empty (relays before 0.1 never send it)
    note: str = ""
    #: "h2" for an HTTP/2 stream ("" : HTTP/1.x); relays before protocol 1.3 never send it
    http_version: str = ""
    #: a gRPC call's status (its ``grpc-status`` trailer, or a trailers-only answer's header);
    #: None: not gRPC, or it ended without one
    grpc_status: int | None = None


@dataclass(frozen=True)
class MirrorAnswer(Message):
    """Relay → daemon, unasked: a request copied to a mirror intercept, and the *cluster's*
    answer to it (the one its client got), to show beside the laptop's. The copy reached the
    laptop with the header ``x-bridged-mirror: <mirror_id>`` (:data:`MIRROR_HEADER`): that is
    how the two are paired. Headers redacted (:mod:`bridged.routing.redact`), the body cut at
    256 KiB (``truncated``; ``size`` is the whole body's). Sent once both answers ended."""

    type: ClassVar[str] = "mirror"
    intercept_id: str
    mirror_id: str
    method: str = ""
    path: str = ""
    #: the cluster's answer: 0 when it broke before its head; with ``note`` when not seen
    #: (gateway: the mesh answers the client and mirrors the request to the relay)
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body_b64: str = ""
    size: int = 0
    truncated: bool = False
    duration_ms: float = 0.0
    #: the laptop's answer, as the relay read and discarded it: its status (0: none), and
    #: why there was none ("" if there was)
    laptop_status: int = 0
    laptop_error: str = ""
    note: str = ""


@dataclass(frozen=True)
class MirrorDrops(Message):
    """Relay → daemon, unasked: copies of a mirror intercept's requests that were not sent to
    the laptop, by reason, counted since the intercept was granted (totals, not increments:
    a lost message costs nothing). Sent at most twice a second, when they changed."""

    type: ClassVar[str] = "mirror-drops"
    intercept_id: str
    dropped: dict[str, int] = field(default_factory=dict)


#: the header on a copy a mirror intercept sends to the laptop: the copy's ``mirror_id``
MIRROR_HEADER = "x-bridged-mirror"

MESSAGES: dict[str, type[Message]] = {
    cls.type: cls for cls in (Hello, Register, Release, Renew, GetStats, Resolve, Ok, Error,
                              Traffic, MirrorAnswer, MirrorDrops)
}


def encode(message: Message) -> bytes:
    return json.dumps(message.to_dict(), separators=(",", ":")).encode() + b"\n"


def decode(line: bytes | str) -> Message:
    """Parse one line; raises :class:`ProtocolError` (with the request id when known)."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError("control message too long")
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"control message is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("control message is not an object with a type")
    raw_id = data.get("id")
    request_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else 0
    cls = MESSAGES.get(data["type"])
    if cls is None:
        raise UnknownType(data["type"], request_id)
    try:
        return _build(cls, data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        error = BadMessage(f"bad {data['type']} message: {exc!s}")
        error.request_id = request_id  # so the answer reaches the waiting request
        raise error from None


class BadMessage(ProtocolError):
    """A line that parsed as JSON but is not a valid message; carries the request id if any."""

    request_id: int = 0


class UnknownType(BadMessage):
    def __init__(self, type_: str, request_id: int) -> None:
        super().__init__(f"unsupported control message type {type_!r}")
        self.request_id = request_id


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _build(cls: type[Message], data: dict[str, Any]) -> Message:
    known = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in known}  # ignore unknown fields
    if "version" in kwargs:
        major, minor = kwargs["version"]
        kwargs["version"] = (int(major), int(minor))
    if cls is Register:
        kwargs["claim"] = _claim(kwargs.get("claim"))
    if "headers" in kwargs:
        kwargs["headers"] = tuple((str(n), str(v)) for n, v in kwargs["headers"])
    if "dropped" in kwargs:
        kwargs["dropped"] = {str(k): int(v) for k, v in dict(kwargs["dropped"]).items()}
    if "intercept_ids" in kwargs:
        kwargs["intercept_ids"] = tuple(str(i) for i in kwargs["intercept_ids"])
    for name in ("id", "re"):
        if name in kwargs and not _is_int(kwargs[name]):
            raise ValueError(f"{name} must be an integer")
    if cls is Resolve:
        _check_resolve(kwargs)
    return cls(**kwargs)


#: a DNS name: dot-separated labels of letters, digits, ``-`` and ``_`` (SRV-style), 253 at most
_DNS_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([-A-Za-z0-9_]{0,62})"
                       r"(\.[A-Za-z0-9_]([-A-Za-z0-9_]{0,62}))*\.?")


def _check_resolve(kwargs: dict[str, Any]) -> None:
    for name in ("name", "cluster_domain"):
        value = kwargs.get(name, "cluster.local" if name == "cluster_domain" else "")
        if not isinstance(value, str) or not _DNS_NAME.fullmatch(value):
            raise ValueError(f"{name} {value!r} is not a DNS name")


_CLAIM_ID = re.compile(r"[A-Za-z0-9_-]{1,63}")
_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1035 label


def _claim(data: Any) -> InterceptClaim:
    if not isinstance(data, dict):
        raise ValueError("claim must be an object")
    raw_matchers = data.get("matchers", [])
    if not isinstance(raw_matchers, list) or not all(isinstance(m, dict) for m in raw_matchers):
        raise ValueError("matchers must be a list of objects")
    matchers = tuple(
        Matcher(**{k: str(v) for k, v in m.items() if k in ("kind", "op", "name", "value")})
        for m in raw_matchers
    )
    service = str(data.get("service") or "")
    if service and not _SERVICE_NAME.fullmatch(service):
        raise ValueError(f"bad service name {service!r}")
    via = str(data.get("via") or "")
    if bool(service) != bool(via) or (via and via not in STRATEGIES):
        raise ValueError(f"a service needs a redirect strategy ({', '.join(STRATEGIES)}), "
                         f"and only a service has one (got service {service!r}, via {via!r})")
    service_port: int = data.get("service_port", 0)
    port: int = data.get("port")  # type: ignore[assignment]
    for name, value, low in (("port", port, 0 if service else 1),
                             ("service_port", service_port, 1 if service else 0)):
        if not _is_int(value) or not low <= value <= 65535:
            raise ValueError(f"{name} {value!r} is not a number from {low} to 65535")
    claim_id = data.get("id")
    if not isinstance(claim_id, str) or not _CLAIM_ID.fullmatch(claim_id):
        raise ValueError(f"bad intercept id {claim_id!r}")
    mode = str(data.get("mode", "tcp"))
    if mode not in ("tcp", "http"):
        raise ValueError(f"unknown intercept mode {mode!r}")
    fallback = str(data.get("fallback") or "error")
    if fallback not in ("error", "origin"):
        raise ValueError(f"unknown fallback {fallback!r}")
    proto = str(data.get("protocol") or "http")
    if proto not in PROTOCOLS:
        raise ValueError(f"unknown protocol {proto!r} ({', '.join(PROTOCOLS)})")
    mirror = data.get("mirror", False)
    if not isinstance(mirror, bool):
        raise ValueError("mirror must be true or false")
    if mirror and mode != "http":
        raise ValueError("a mirror copies HTTP requests: its mode is http")
    return InterceptClaim(id=claim_id, port=port, mode=mode, matchers=matchers,
                          origin=str(data.get("origin") or ""), fallback=fallback,
                          service=service, service_port=service_port, via=via,
                          protocol=proto, mirror=mirror)


def compatible(theirs: tuple[int, int]) -> bool:
    return theirs[0] == VERSION[0]
