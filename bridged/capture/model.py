"""The records the capture keeps, and its settings. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = tuple[tuple[str, str], ...]  # (name, value) in arrival order, redacted


@dataclass(frozen=True)
class CaptureSettings:
    #: body bytes kept per request and per response: past it the body is cut and marked
    #: (``truncated``). A few hundred KiB shows any JSON an API answers, not uploads
    max_body_bytes: int = 256 * 1024
    #: records kept: the oldest are dropped first (a day of a developer's debugging)
    max_records: int = 10_000
    #: bytes the database may take (bodies mostly): the oldest records are dropped first
    max_bytes: int = 256 * 1024 * 1024
    #: header names redacted besides the defaults of :mod:`bridged.routing.redact`
    redact_headers: tuple[str, ...] = ()
    #: JSON paths whose values are redacted in JSON bodies (``$.password``,
    #: ``$.user.token``, ``$.items[*].card``) before anything is stored
    redact_json_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Message:
    """One side of an exchange: what was sent, redacted, the body cut at the limit."""

    headers: Headers = ()
    body: bytes = b""
    size: int = 0  # the whole body's size, in bytes (before cutting)
    truncated: bool = False  # body holds only the first max_body_bytes
    trailers: Headers = ()


@dataclass(frozen=True)
class Captured:
    """One request the cluster sent through an intercept, and its answer."""

    intercept: str  # the intercept's name
    started: float  # unix time of the request's first byte
    method: str
    target: str  # the request-target: path and query (HTTP/2: :path)
    authority: str = ""  # Host, or :authority
    http_version: str = "1.1"  # "1.0", "1.1" or "2"
    status: int = 0  # 0: no answer (the connection broke first)
    duration_ms: float | None = None  # first request byte to the answer's end
    request: Message = field(default_factory=Message)
    response: Message = field(default_factory=Message)
    client: str = ""  # who sent it, as the relay saw it, when known
    #: gRPC: ``package.Service/Method`` and the call's status (trailers, or trailers-only)
    grpc_method: str = ""
    grpc_status: int | None = None
    #: "intercept" (the cluster sent it), "replay" (sent again from the inspector) or
    #: "mirror" (a copy: the cluster answered the client; ``cluster`` is that answer)
    kind: str = "intercept"
    cluster: Message | None = None
    cluster_status: int = 0
    #: why the cluster's answer is not there (gateway: the mesh mirrors; the relay never
    #: sees the answer the client got)
    cluster_note: str = ""
    #: the record this one replays (kind "replay")
    replay_of: int = 0
    id: int = 0  # given by the store
