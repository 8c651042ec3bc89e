"""Issue 12, mirror mode: what a mirror intercept is on the wire and in a request.

A mirror claim is never exclusive (it takes nothing from anyone), copies HTTP/1.1 only, and
its two events (the cluster's answer to a copied request, the copies dropped) round-trip.
"""

from __future__ import annotations

import json

import pytest

from bridged.config import InterceptSpec
from bridged.control.models import InterceptRequest
from bridged.errors import ConfigError, ProtocolError
from bridged.protocol import (
    InterceptClaim,
    Matcher,
    MirrorAnswer,
    MirrorDrops,
    Register,
    decode,
    encode,
)
from bridged.routing.table import InterceptTable, TableConflict


@pytest.mark.parametrize("message", [
    MirrorAnswer(intercept_id="m1", mirror_id="0123abcd", method="POST", path="/pay",
                 status=201, headers=(("content-type", "application/json"),),
                 body_b64="e30=", size=2, truncated=False, duration_ms=3.5,
                 laptop_status=500, laptop_error=""),
    MirrorAnswer(intercept_id="m1", mirror_id="x", note="the mesh answered"),
    MirrorDrops(intercept_id="m1", dropped={"queue full": 3, "body too large": 1}),
    Register(id=1, claim=InterceptClaim("m1", 80, mode="http", mirror=True)),
], ids=repr)
def test_mirror_messages_round_trip(message):
    assert decode(encode(message)) == message


def test_a_mirror_claim_is_never_exclusive_and_coexists_with_a_header_intercept():
    mirror = InterceptClaim("m1", 80, mode="http", mirror=True)
    assert not mirror.exclusive
    assert InterceptClaim("whole", 80, mode="http").exclusive  # (a whole-port one is)
    table = InterceptTable()
    table.claim("s1", mirror, now=0, ttl=10)
    table.claim("s2", InterceptClaim("bob", 80, mode="http",
                                     matchers=(Matcher("header", "equals", "x-dev", "bob"),)),
                now=0, ttl=10)
    table.claim("s3", InterceptClaim("m2", 80, mode="http", mirror=True), now=0, ttl=10)
    assert {h.claim.id for h in table.on_port(80)} == {"m1", "bob", "m2"}
    with pytest.raises(TableConflict):  # a whole port taken is taken from the mirrors too
        table.claim("s4", InterceptClaim("tcp", 80), now=0, ttl=10)


@pytest.mark.parametrize(("claim", "why"), [
    ({"id": "m", "port": 80, "mirror": True}, "mode is http"),
    ({"id": "m", "port": 80, "mode": "http", "mirror": "yes"}, "true or false"),
])
def test_a_bad_mirror_claim_is_one_clear_error(claim, why):
    with pytest.raises(ProtocolError, match=why):
        decode(json.dumps({"type": "register", "id": 1, "claim": claim}))


def test_an_old_claim_without_mirror_is_not_one():
    msg = decode(json.dumps({"type": "register", "id": 1,
                             "claim": {"id": "a", "port": 80, "mode": "http"}}))
    assert isinstance(msg, Register) and msg.claim.mirror is False


def test_the_intercept_request_says_mirror_and_the_spec_keeps_it():
    request = InterceptRequest.parse({"local_port": 8080, "service": "shop", "mirror": True,
                                      "headers": ["x-dev=alice"]})
    assert request.spec.mirror and request.spec.mode == "http"
    assert InterceptSpec.from_dict(request.spec.to_dict()) == request.spec
    # a whole-Service mirror is still per request
    assert InterceptSpec.parse(local_port=1, remote_port=80, mirror=True).mode == "http"


@pytest.mark.parametrize(("body", "why"), [
    ({"mirror": "true"}, "'mirror' must be a bool"),
    ({"mirror": True, "tcp": True}, "--mirror copies HTTP requests: it goes without --tcp"),
    ({"mirror": True, "protocol": "grpc"}, "HTTP/1.1 requests only for now"),
    ({"mirror": True, "grpc_method": "shop.Cart/Add"}, "--protocol grpc and --grpc-method"),
    ({"mirror": True, "fallback": "origin"}, "--fallback has nothing to do"),
])
def test_a_mirror_that_cannot_be_is_one_clear_error(body, why):
    with pytest.raises(ConfigError) as caught:
        InterceptRequest.parse({"local_port": 8080, "service": "shop", **body})
    assert why in str(caught.value)
