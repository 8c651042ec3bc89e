"""HAR export: the records as HAR 1.2, checked against the spec's required structure."""

from __future__ import annotations

import base64
import json

import jsonschema
import pytest

from bridged.capture.har import to_har
from bridged.capture.model import Captured, Message
from tests.harschema import validate_har

validate = validate_har


def test_the_schema_refuses_what_is_not_har() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate({"log": {"version": "1.2", "creator": {"name": "x", "version": "1"},
                          "entries": [{"startedDateTime": "yesterday"}]}})


def test_records_become_valid_har_with_bodies_intact() -> None:
    binary = bytes(range(256))
    records = [
        Captured(intercept="orders", started=1_700_000_001.25, method="POST",
                 target="/login?next=%2Fhome&x=", authority="orders:8080", status=302,
                 duration_ms=12.5,
                 request=Message(headers=(("Content-Type", "application/x-www-form-urlencoded"),),
                                 body=b"user=alice&note=a+b", size=19),
                 response=Message(headers=(("Location", "/home"),), size=0), id=7),
        Captured(intercept="files", started=1_700_000_000.0, method="PUT", target="/blob",
                 status=200, request=Message(body=binary, size=10_000, truncated=True),
                 response=Message(headers=(("content-type", "application/json"),),
                                  body=b'{"ok": true}', size=12), id=8),
        Captured(intercept="greeter", started=1_700_000_002.0, method="POST",
                 target="/pkg.Greeter/Hello", http_version="2", status=200,
                 grpc_method="pkg.Greeter/Hello", grpc_status=5, kind="replay", replay_of=3,
                 response=Message(trailers=(("grpc-status", "5"),)), id=9),
    ]
    har = to_har(records)
    validate(har)
    login, blob, grpc = sorted(har["log"]["entries"], key=lambda e: e["_bridged"]["id"])
    assert [e["_bridged"]["id"] for e in har["log"]["entries"]] == [8, 7, 9]  # oldest first
    assert login["startedDateTime"] == "2023-11-14T22:13:21.250Z"
    assert login["request"]["url"] == "http://orders:8080/login?next=%2Fhome&x="
    assert login["request"]["queryString"] == [{"name": "next", "value": "/home"},
                                               {"name": "x", "value": ""}]
    assert login["request"]["postData"]["params"] == [{"name": "user", "value": "alice"},
                                                      {"name": "note", "value": "a b"}]
    assert login["response"]["redirectURL"] == "/home"
    assert login["response"]["statusText"] == "Found" and login["time"] == 12.5
    post = blob["request"]["postData"]
    assert post["encoding"] == "base64" and base64.b64decode(post["text"]) == binary
    assert blob["request"]["bodySize"] == 10_000 and blob["_bridged"]["request_truncated"]
    assert json.loads(blob["response"]["content"]["text"]) == {"ok": True}
    assert grpc["request"]["httpVersion"] == "HTTP/2.0"
    assert (grpc["_bridged"]["grpc_method"], grpc["_bridged"]["grpc_status"],
            grpc["_bridged"]["replay_of"]) == ("pkg.Greeter/Hello", 5, 3)
    assert grpc["_bridged"]["trailers"]["response"] == [{"name": "grpc-status", "value": "5"}]


def test_a_mirror_record_carries_the_cluster_answer() -> None:
    har = to_har([Captured(intercept="orders", started=0.0, method="GET", target="/", status=500,
                           kind="mirror", cluster=Message(body=b"theirs", size=6),
                           cluster_status=200)])
    validate(har)
    extra = har["log"]["entries"][0]["_bridged"]
    assert extra["cluster"]["status"] == 200 and extra["cluster"]["content"]["text"] == "theirs"


def test_no_records_is_an_empty_log() -> None:
    har = to_har([])
    validate(har)
    assert har["log"]["entries"] == []
