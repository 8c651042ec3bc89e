"""What a tap keeps of an exchange, and how it is made safe to store: bodies cut at the limit,
secrets redacted (headers by name, JSON bodies by path, form bodies by field) before a record
leaves the tap. Pure: no I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from ..routing.redact import DEFAULT_REDACTED, REDACTED
from .model import Captured, CaptureSettings, Headers, Message


class BodyBuffer:
    """The first ``limit`` bytes of a body, and its whole size: never holds more."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.size = 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    @property
    def truncated(self) -> bool:
        return self.size > len(self.kept)


def redact_header_names(headers: Iterable[Sequence[str]], extra: Iterable[str] = ()) -> Headers:
    """The values of secret headers replaced, by name (the defaults of
    :mod:`bridged.routing.redact` and ``extra``). Unlike the traffic log's
    :func:`~bridged.routing.redact.redact`, nothing else is cut: a capture keeps whole heads."""
    secret = {n.lower() for n in (*DEFAULT_REDACTED, *extra)}
    return tuple((name, REDACTED if name.lower() in secret else value)
                 for name, value in headers)


# --- JSON paths ---------------------------------------------------------------------------------

#: one step of a path: ("key", name), ("any", "") for [*], ("index", "3"), ("deep", name) for ..name
Step = tuple[str, str]
_STEP = re.compile(r"\.\.(?P<deep>[^.\[\]]+)|\.(?P<key>[^.\[\]]+)|\[(?P<index>\*|\d+)\]"
                   r"|\[['\"](?P<quoted>[^'\"]+)['\"]\]")


def parse_path(path: str) -> tuple[Step, ...]:
    """``$.user.token``, ``$.items[*].card``, ``$..secret``, ``$['odd key']``; a path that does
    not parse selects nothing (settings are checked where they are typed)."""
    if not path.startswith("$"):
        return ()
    steps: list[Step] = []
    at = 1
    while at < len(path):
        m = _STEP.match(path, at)
        if m is None:
            return ()
        if m["deep"] is not None:
            steps.append(("deep", m["deep"]))
        elif m["key"] is not None or m["quoted"] is not None:
            steps.append(("key", m["key"] or m["quoted"]))
        elif m["index"] == "*":
            steps.append(("any", ""))
        else:
            steps.append(("index", m["index"]))
        at = m.end()
    return tuple(steps)


def _last_key(steps: tuple[Step, ...]) -> str:
    named = [name for kind, name in steps if kind in ("key", "deep")]
    return named[-1] if named else ""


def _apply(node: object, steps: tuple[Step, ...]) -> object:
    """``node`` with the values ``steps`` select replaced (a new value where anything changed)."""
    if not steps:
        return REDACTED
    (kind, name), rest = steps[0], steps[1:]
    if kind == "deep":  # the key at any depth, here or below
        if isinstance(node, dict):
            return {k: _apply(v, rest) if k == name else _apply(v, steps) for k, v in node.items()}
        if isinstance(node, list):
            return [_apply(v, steps) for v in node]
        return node
    if kind == "key" and isinstance(node, dict) and name in node:
        return {**node, name: _apply(node[name], rest)}
    if kind == "any" and isinstance(node, list):
        return [_apply(v, rest) for v in node]
    if kind == "any" and isinstance(node, dict):
        return {k: _apply(v, rest) for k, v in node.items()}
    if kind == "index" and isinstance(node, list) and int(name) < len(node):
        i = int(name)
        return [*node[:i], _apply(node[i], rest), *node[i + 1:]]
    return node


_WORD = re.compile(rb"-?[0-9][0-9.eE+-]*|true|false|null")


def _value_end(data: bytes, at: int) -> int:
    """Where the JSON value starting at ``at`` ends; the end of ``data`` if it is cut."""
    n = len(data)
    if at >= n:
        return n
    if data[at:at + 1] == b'"':
        i = at + 1
        while i < n:
            c = data[i]
            if c == 0x5C:  # backslash: the next byte is escaped
                i += 2
                continue
            if c == 0x22:
                return i + 1
            i += 1
        return n
    if data[at:at + 1] in (b"{", b"["):
        depth, i, in_string = 0, at, False
        while i < n:
            c = data[i]
            if in_string:
                if c == 0x5C:
                    i += 1
                elif c == 0x22:
                    in_string = False
            elif c == 0x22:
                in_string = True
            elif c in (0x7B, 0x5B):
                depth += 1
            elif c in (0x7D, 0x5D):
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return n
    m = _WORD.match(data, at)
    return m.end() if m else at


def _redact_cut_json(body: bytes, keys: set[str]) -> bytes:
    """A JSON body cut at the limit does not parse: every ``"key": value`` whose key is the last
    name of a redacted path has its value replaced, wherever it is (stricter than the paths:
    the structure around a key cannot be known; a value cut at the end is replaced too)."""
    if not keys:
        return body
    names = b"|".join(re.escape(json.dumps(k).encode()) for k in sorted(keys))
    pattern = re.compile(rb"(?:" + names + rb")\s*:\s*")
    out, at = bytearray(), 0
    for m in pattern.finditer(body):
        if m.start() < at:
            continue  # inside a value already replaced
        end = _value_end(body, m.end())
        out += body[at:m.end()] + b'"' + REDACTED.encode() + b'"'
        at = end
    return bytes(out + body[at:])


def _media_type(headers: Headers) -> tuple[str, str]:
    """The content type (lowercase, no parameters) and the content coding."""
    ctype = coding = ""
    for name, value in headers:
        low = name.lower()
        if low == "content-type":
            ctype = value.split(";", 1)[0].strip().lower()
        elif low == "content-encoding":
            coding = value.strip().lower()
    return ctype, coding


def _is_json(ctype: str) -> bool:
    return ctype == "application/json" or ctype.endswith("+json")


def redact_body(body: bytes, headers: Headers, paths: Sequence[str], *, cut: bool) -> bytes:
    """``body`` with the values at ``paths`` replaced: a JSON body by path (re-serialized), a
    form body by field name (the paths' last names); others as they are. A compressed body
    that could hold such values is not kept at all: it cannot be redacted without inflating it."""
    if not paths or not body:
        return body
    ctype, coding = _media_type(headers)
    form = ctype == "application/x-www-form-urlencoded"
    if not (_is_json(ctype) or form):
        return body
    if coding not in ("", "identity"):
        return b""
    parsed = [parse_path(p) for p in paths]
    keys = {_last_key(s) for s in parsed} - {""}
    if form:
        fields = parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        return urlencode([(k, REDACTED if k in keys else v) for k, v in fields],
                         encoding="latin-1").encode("latin-1")
    if not cut:
        try:
            doc = json.loads(body)
        except ValueError:
            return _redact_cut_json(body, keys)
        for steps in parsed:
            if steps:
                doc = _apply(doc, steps)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    return _redact_cut_json(body, keys)


def to_message(headers: Headers, body: BodyBuffer, trailers: Headers,
               settings: CaptureSettings) -> Message:
    """One side of an exchange as it may be stored: every secret replaced."""
    kept = redact_body(bytes(body.kept), headers, settings.redact_json_paths,
                       cut=body.truncated)
    return Message(headers=redact_header_names(headers, settings.redact_headers), body=kept,
                   size=body.size, truncated=body.truncated,
                   trailers=redact_header_names(trailers, settings.redact_headers))


# --- the exchange being recorded ----------------------------------------------------------------


@dataclass
class Exchange:
    """One request and its answer while a tap sees them go by (either parser fills it)."""

    limit: int  # body bytes kept per message
    started: float
    method: str = ""
    target: str = ""
    authority: str = ""
    http_version: str = "1.1"
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    request_trailers: list[tuple[str, str]] = field(default_factory=list)
    status: int = 0
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_trailers: list[tuple[str, str]] = field(default_factory=list)
    request_done: bool = False
    response_done: bool = False
    emitted: bool = False  # handed over once: a record is never made twice
    ended_at: float | None = None
    request_body: BodyBuffer = field(init=False)
    response_body: BodyBuffer = field(init=False)

    def __post_init__(self) -> None:
        self.request_body = BodyBuffer(self.limit)
        self.response_body = BodyBuffer(self.limit)

    def captured(self, intercept: str, settings: CaptureSettings, now: float) -> Captured:
        """The record, redacted; ``now`` ends an exchange cut before its answer was whole."""
        end = self.ended_at if self.ended_at is not None else now
        request_headers = tuple(self.request_headers)
        response_headers = tuple(self.response_headers)
        ctype, _ = _media_type(request_headers)
        grpc_method = grpc_status = None
        if ctype.startswith("application/grpc") and self.target.startswith("/"):
            grpc_method = self.target[1:]
            # trailers, or a trailers-only answer (grpc-status in the head)
            for name, value in (*self.response_trailers, *response_headers):
                if name.lower() == "grpc-status" and value.strip().isdigit():
                    grpc_status = int(value)
                    break
        return Captured(
            intercept=intercept, started=self.started, method=self.method, target=self.target,
            authority=self.authority, http_version=self.http_version, status=self.status,
            duration_ms=round(max(0.0, end - self.started) * 1000, 3),
            request=to_message(request_headers, self.request_body,
                               tuple(self.request_trailers), settings),
            response=to_message(response_headers, self.response_body,
                                tuple(self.response_trailers), settings),
            grpc_method=grpc_method or "", grpc_status=grpc_status,
        )
