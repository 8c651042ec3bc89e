"""Replay: a captured request sent again, as it was or edited, to the intercept's local
service; its answer becomes a record of kind "replay" beside the original."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import aiohttp

from ..capture.model import Captured, Headers, Message
from ..errors import BridgedError, ConfigError
from ..routing.redact import REDACTED

#: seconds a local service has to answer a replayed request (a debugger may hold it a while)
REPLAY_TIMEOUT = 60.0
#: headers that describe one connection's framing, not the request: aiohttp makes its own
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "upgrade",
                         "proxy-connection", "content-length", "trailer"})


class ReplayFailed(BridgedError):
    code = "replay-failed"


@dataclasses.dataclass(frozen=True)
class Edit:
    """What the inspector's form may change; ``None``: as captured."""

    method: str | None = None
    target: str | None = None
    headers: Headers | None = None
    body: bytes | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Edit:
        method, target = data.get("method"), data.get("target")
        if method is not None and (not isinstance(method, str) or not method.isalpha()):
            raise ConfigError("method must be a word such as GET or POST")
        if target is not None and (not isinstance(target, str) or not target.startswith("/")):
            raise ConfigError("path must start with /")
        headers = data.get("headers")
        if headers is not None:
            if not isinstance(headers, list) or not all(
                    isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
                    for h in headers):
                raise ConfigError("headers must be a list of [name, value] pairs")
            headers = tuple((n.strip(), v.strip()) for n, v in headers if n.strip())
        body = data.get("body")
        if body is not None and not isinstance(body, str):
            raise ConfigError("body must be text")
        return cls(method.upper() if method else None, target, headers,
                   body.encode() if body is not None else None)


async def replay(original: Captured, edit: Edit, host: str, port: int,
                 max_body_bytes: int) -> tuple[Captured, list[str]]:
    """Send it; the answer as a record to store, and notes for the user (headers left out)."""
    if original.http_version == "2":
        raise ConfigError("replay of HTTP/2 (gRPC, h2c) requests is not supported yet: only "
                           "HTTP/1.x ones can be sent again")
    if edit.body is None and original.request.truncated:
        raise ConfigError(f"the captured body was cut at {len(original.request.body)} of "
                           f"{original.request.size} bytes: edit it to send it again")
    method = edit.method or original.method
    target = edit.target or original.target
    headers = edit.headers if edit.headers is not None else original.request.headers
    body = edit.body if edit.body is not None else original.request.body
    notes = [f"header {n} was redacted when captured: not sent (add it in the form)"
             for n, v in headers if v == REDACTED]
    sent = tuple((n, v) for n, v in headers if v != REDACTED and n.lower() not in _HOP_BY_HOP)
    started = time.time()
    clock = time.monotonic()
    try:
        async with aiohttp.ClientSession(
                auto_decompress=False, timeout=aiohttp.ClientTimeout(total=REPLAY_TIMEOUT),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        ) as session, session.request(
                method, f"http://{_host(host)}:{port}{target}", headers=list(sent),
                data=body if body or method not in ("GET", "HEAD") else None,
                allow_redirects=False, compress=None) as response:
            kept = bytearray()
            size = 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if len(kept) < max_body_bytes:
                    kept += chunk[:max_body_bytes - len(kept)]
            answer = Message(headers=tuple((n.decode("latin-1"), v.decode("latin-1"))
                                           for n, v in response.raw_headers),
                             body=bytes(kept), size=size, truncated=size > len(kept))
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise ReplayFailed(f"the local service on {host}:{port} did not answer: {reason}",
                           hint="is it running?") from None
    record = Captured(
        intercept=original.intercept, started=started, method=method, target=target,
        authority=original.authority, http_version="1.1", status=status,
        duration_ms=(time.monotonic() - clock) * 1000,
        request=Message(headers=sent, body=body, size=len(body)), response=answer,
        kind="replay", replay_of=original.id)
    return record, notes


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
