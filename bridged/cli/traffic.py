"""How ``bridged traffic`` shows one entry of the daemon's traffic log: a request, an HTTP/2
stream, a gRPC call (``package.Service/Method`` and its grpc-status), or a connection passed
through. Pure: entries in, lines out."""

from __future__ import annotations

import re
import time
from typing import Any

#: gRPC's status codes (grpc/doc/statuscodes.md): what a number in grpc-status means
GRPC_STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)
#: a gRPC call's path: /package.Service/Method
_GRPC_PATH = re.compile(r"/([^/]+)/([^/]+)")


def grpc_status_text(code: int) -> str:
    """``5 NOT_FOUND``; a number gRPC does not define is shown as it came."""
    return f"{code} {GRPC_STATUS_NAMES[code]}" if 0 <= code < len(GRPC_STATUS_NAMES) \
        else str(code)


def grpc_call(entry: dict[str, Any]) -> str | None:
    """``package.Service/Method`` when the entry is a gRPC call: it has a grpc-status, or its
    path has that shape and its content-type is gRPC's (a call that ended without a status)."""
    path = str(entry.get("path") or "")
    m = _GRPC_PATH.fullmatch(path.split("?", 1)[0])
    if m is None:
        return None
    if entry.get("grpc_status") is not None:
        return f"{m[1]}/{m[2]}"
    content_type = next((str(v) for n, v in entry.get("headers") or []
                         if str(n).lower() == "content-type"), "")
    return f"{m[1]}/{m[2]}" if content_type.lower().startswith("application/grpc") else None


def traffic_line(entry: dict[str, Any]) -> str:
    """One entry as one line (local time, intercept, what it was, how long, from whom)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
    head = f"{stamp} {entry['intercept']:<16}"
    client = f"  from {entry['client']}"
    if entry.get("note"):  # a connection passed through, not a request
        return f"{head} --- {entry['note']}{client}"
    took = f"  {entry['duration_ms']:.1f} ms"
    call = grpc_call(entry)
    if call is not None:
        code = entry.get("grpc_status")
        outcome = f"grpc-status {grpc_status_text(code)}" if code is not None else \
            f"no grpc-status (HTTP {entry['status'] or 'ERR'})"
        return f"{head} gRPC {call}  {outcome}{took}{client}"
    version = "  h2" if entry.get("http_version") == "h2" else ""
    return (f"{head} {entry['status'] or 'ERR':>3} {entry['method']:<6} {entry['path']}"
            f"{version}{took}{client}")
