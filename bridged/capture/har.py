"""Captured records as HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/): what browser
devtools, Charles, Insomnia and har-to-k6 read. Pure: records in, a JSON-ready dict out.

A body that is not UTF-8 is given base64 with ``encoding: "base64"`` (the spec's way for a
response's content; the same key on postData, as Firefox writes it). What HAR has no field for
goes under ``_bridged`` (custom fields start with an underscore, says the spec).
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .. import __version__
from .model import Captured, Headers, Message

_HTTP_VERSION = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2.0"}


def to_har(records: Iterable[Captured]) -> dict[str, Any]:
    """One HAR log; its entries oldest first, as HAR viewers expect."""
    entries = sorted(records, key=lambda c: (c.started, c.id))
    return {"log": {"version": "1.2", "creator": {"name": "bridged", "version": __version__},
                    "entries": [_entry(c) for c in entries]}}


def _entry(c: Captured) -> dict[str, Any]:
    total = max(0.0, c.duration_ms or 0.0)
    extra: dict[str, Any] = {"id": c.id, "intercept": c.intercept, "kind": c.kind,
                             "request_truncated": c.request.truncated,
                             "response_truncated": c.response.truncated}
    if c.replay_of:
        extra["replay_of"] = c.replay_of
    if c.grpc_method:
        extra |= {"grpc_method": c.grpc_method, "grpc_status": c.grpc_status}
    if c.client:
        extra["client"] = c.client
    if c.cluster is not None:  # mirror: what the cluster answered the client
        extra["cluster"] = {"status": c.cluster_status, "headers": _headers(c.cluster.headers),
                            "content": _content(c.cluster)}
    if c.request.trailers or c.response.trailers:
        extra["trailers"] = {"request": _headers(c.request.trailers),
                             "response": _headers(c.response.trailers)}
    return {
        "startedDateTime": datetime.datetime.fromtimestamp(
            c.started, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "time": total,
        "request": _request(c),
        "response": _response(c),
        "cache": {},
        # the tap sees the whole exchange, not its phases: all of it is waiting for the answer
        "timings": {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1, "send": 0,
                    "wait": total, "receive": 0},
        "_bridged": extra,
    }


def _request(c: Captured) -> dict[str, Any]:
    host = c.authority or c.intercept or "localhost"
    url = c.target if "://" in c.target else f"http://{host}{c.target}"
    out: dict[str, Any] = {
        "method": c.method, "url": url,
        "httpVersion": _HTTP_VERSION.get(c.http_version, f"HTTP/{c.http_version}"),
        "cookies": [], "headers": _headers(c.request.headers),
        "queryString": [{"name": n, "value": v}
                        for n, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)],
        "headersSize": -1, "bodySize": c.request.size,
    }
    if c.request.body or c.request.size:
        mime = _header(c.request.headers, "content-type")
        post: dict[str, Any] = {"mimeType": mime, **_text(c.request.body)}
        if mime.split(";")[0].strip().lower() == "application/x-www-form-urlencoded" \
                and "encoding" not in post:
            post["params"] = [{"name": n, "value": v}
                              for n, v in parse_qsl(post["text"], keep_blank_values=True)]
        out["postData"] = post
    return out


def _response(c: Captured) -> dict[str, Any]:
    try:
        reason = HTTPStatus(c.status).phrase
    except ValueError:
        reason = ""
    return {
        "status": c.status, "statusText": reason,
        "httpVersion": _HTTP_VERSION.get(c.http_version, f"HTTP/{c.http_version}"),
        "cookies": [], "headers": _headers(c.response.headers), "content": _content(c.response),
        "redirectURL": _header(c.response.headers, "location"), "headersSize": -1,
        "bodySize": c.response.size,
    }


def _content(m: Message) -> dict[str, Any]:
    return {"size": m.size, "mimeType": _header(m.headers, "content-type"), **_text(m.body)}


def _text(body: bytes) -> dict[str, str]:
    try:
        return {"text": body.decode()}
    except UnicodeDecodeError:
        return {"text": base64.b64encode(body).decode(), "encoding": "base64"}


def _headers(headers: Headers) -> list[dict[str, str]]:
    return [{"name": n, "value": v} for n, v in headers]


def _header(headers: Headers, name: str) -> str:
    return next((v for n, v in headers if n.lower() == name), "")
