"""bridged.protocol: JSON lines between daemon and relay; decode is strict, encode is exact."""

import json

import pytest

from bridged import protocol
from bridged.errors import ProtocolError
from bridged.protocol import (
    MAX_LINE_BYTES,
    MESSAGES,
    VERSION,
    Error,
    GetStats,
    Hello,
    InterceptClaim,
    Matcher,
    MirrorAnswer,
    MirrorDrops,
    Ok,
    Register,
    Release,
    Renew,
    Resolve,
    Traffic,
    UnknownType,
    compatible,
    decode,
    encode,
)

HEADER = Matcher("header", "equals", "x-dev", "alice")
PATH = Matcher("path", "prefix", value="/api")

MESSAGES_TO_ROUND_TRIP = [
    Hello(id=1),
    Hello(id=2, version=(1, 3), agent="bridged/0.1.0"),
    Register(id=3, claim=InterceptClaim("abc-123", 8080)),
    Register(id=4, claim=InterceptClaim("web_1", 80, mode="http", matchers=(HEADER, PATH)),
             overwrite=True),
    Register(id=5, claim=InterceptClaim("a" * 63, 65535), overwrite=False),
    Release(id=6, intercept_id="abc-123"),
    Renew(id=7, intercept_ids=("a", "b")),
    Renew(id=8),
    GetStats(id=9),
    Ok(re=1),
    Ok(re=3, body={"intercept_id": "abc-123", "port": 8080, "lease_seconds": 8.0}),
    Error(re=4, code="refused", message="port 80 is already intercepted"),
    Error(re=0, code="protocol"),
]


@pytest.mark.parametrize("message", MESSAGES_TO_ROUND_TRIP, ids=repr)
def test_encode_decode_round_trip(message):
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    decoded = decode(line)
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", MESSAGES_TO_ROUND_TRIP, ids=repr)
def test_decode_accepts_str_lines_too(message):
    assert decode(encode(message).decode()) == message


def test_every_message_type_is_registered_by_its_type_name():
    assert MESSAGES == {
        "hello": Hello, "register": Register, "release": Release, "renew": Renew,
        "stats": GetStats, "ok": Ok, "error": Error, "traffic": Traffic,
        "mirror": MirrorAnswer, "mirror-drops": MirrorDrops, "resolve": Resolve,
    }


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (Hello(id=1, agent="x"), b'{"type":"hello","id":1,"version":[1,4],"agent":"x"}\n'),
        (Release(id=5, intercept_id="abc"), b'{"type":"release","id":5,"intercept_id":"abc"}\n'),
        (Renew(id=2, intercept_ids=("a",)), b'{"type":"renew","id":2,"intercept_ids":["a"]}\n'),
        (GetStats(id=3), b'{"type":"stats","id":3}\n'),
        (Ok(re=5), b'{"type":"ok","re":5,"body":{}}\n'),
        (Error(re=5, code="conflict", message="m"),
         b'{"type":"error","re":5,"code":"conflict","message":"m"}\n'),
        (Register(id=1, claim=InterceptClaim("i", 80)),
         b'{"type":"register","id":1,"claim":{"id":"i","port":80,"mode":"tcp","matchers":[],"origin":"","fallback":"error",'
         b'"service":"","service_port":0,"via":"","protocol":"http","mirror":false},"overwrite":false}\n'),
    ],
)
def test_encode_wire_format(message, wire):
    assert encode(message) == wire


def test_register_matchers_are_sent_as_objects():
    line = encode(Register(id=1, claim=InterceptClaim("i", 80, matchers=(HEADER,))))
    assert json.loads(line)["claim"]["matchers"] == [
        {"kind": "header", "op": "equals", "name": "x-dev", "value": "alice"}
    ]


# --- tolerant of what a newer peer adds ----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"type":"release","id":5,"intercept_id":"x","future":{"a":1}}',
         Release(id=5, intercept_id="x")),
        (b'{"type":"hello","id":1,"version":[1,7],"agent":"new","caps":["h2"]}',
         Hello(id=1, version=(1, 7), agent="new")),
        (b'{"type":"ok","re":2,"body":{},"trace":"abc"}', Ok(re=2)),
        (b'{"type":"stats","id":3,"re":9}', GetStats(id=3)),
        (b'{"type":"register","id":1,"claim":{"id":"a","port":80,"ttl":5}}',
         Register(id=1, claim=InterceptClaim("a", 80))),
        (b'{"type":"register","id":1,"claim":{"id":"a","port":80,"matchers":'
         b'[{"kind":"path","value":"/x","case":"fold"}]}}',
         Register(id=1, claim=InterceptClaim("a", 80, matchers=(Matcher("path", value="/x"),)))),
    ],
)
def test_unknown_fields_are_ignored(line, message):
    assert decode(line) == message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"type":"hello","id":1}', Hello(id=1, version=VERSION, agent="")),
        (b'{"type":"hello","id":1,"version":["1","2"]}', Hello(id=1, version=(1, 2))),
        (b'{"type":"register","id":1,"claim":{"id":"a","port":80}}',
         Register(id=1, claim=InterceptClaim("a", 80))),
        (b'{"type":"renew","id":1}', Renew(id=1, intercept_ids=())),
        (b'{"type":"release","id":1}', Release(id=1, intercept_id="")),
        (b'{"type":"error","re":1,"code":"x"}', Error(re=1, code="x", message="")),
        (b'  {"type":"ok","re":1}\n', Ok(re=1, body={})),
    ],
)
def test_decode_fills_defaults_and_normalises(line, message):
    assert decode(line) == message


# --- unknown types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "request_id"),
    [
        (b'{"type":"subscribe","id":9}', 9),
        (b'{"type":"subscribe","id":0}', 0),
        (b'{"type":"subscribe"}', 0),
        (b'{"type":"subscribe","id":"9"}', 0),
        (b'{"type":"subscribe","id":null}', 0),
        (b'{"type":"Hello","id":4}', 4),
    ],
)
def test_unknown_type_carries_the_request_id(line, request_id):
    with pytest.raises(UnknownType) as info:
        decode(line)
    assert isinstance(info.value, ProtocolError)
    assert info.value.request_id == request_id
    assert str(info.value) == f"unsupported control message type {json.loads(line)['type']!r}"


# --- broken lines --------------------------------------------------------------------------------


def protocol_error(line) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(line)
    assert not isinstance(info.value, UnknownType)
    return str(info.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"not json", "control message is not JSON"),
        (b"", "control message is not JSON"),
        (b"\xff\xfe", "control message is not JSON"),
        (b'{"type":"ok"', "control message is not JSON"),
        (b"[]", "control message is not an object with a type"),
        (b"null", "control message is not an object with a type"),
        (b"1", "control message is not an object with a type"),
        (b'"hello"', "control message is not an object with a type"),
        (b'[{"type":"hello","id":1}]', "control message is not an object with a type"),
        (b"{}", "control message is not an object with a type"),
        (b'{"id":1}', "control message is not an object with a type"),
        (b'{"type":5,"id":1}', "control message is not an object with a type"),
        (b'{"type":null,"id":1}', "control message is not an object with a type"),
        (b'{"type":"hello","id":"1"}', "bad hello message: id must be an integer"),
        (b'{"type":"hello","id":1.0}', "bad hello message: id must be an integer"),
        (b'{"type":"hello","id":null}', "bad hello message: id must be an integer"),
        (b'{"type":"ok","re":"1"}', "bad ok message: re must be an integer"),
        (b'{"type":"error","re":[1],"code":"x"}', "bad error message: re must be an integer"),
        (b'{"type":"hello"}', "bad hello message"),
        (b'{"type":"ok"}', "bad ok message"),
        (b'{"type":"error","re":1}', "bad error message"),
        (b'{"type":"hello","id":1,"version":[1]}', "bad hello message"),
        (b'{"type":"hello","id":1,"version":[1,0,0]}', "bad hello message"),
        (b'{"type":"hello","id":1,"version":5}', "bad hello message"),
        (b'{"type":"hello","id":1,"version":["a","b"]}', "bad hello message"),
        (b'{"type":"renew","id":1,"intercept_ids":5}', "bad renew message"),
    ],
)
def test_broken_lines_are_protocol_errors(line, expected):
    assert expected in protocol_error(line)


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        (5, "claim must be an object"),
        ([], "claim must be an object"),
        ("a:80", "claim must be an object"),
        ({"id": "a", "port": 0}, "port 0 is not a number from 1 to 65535"),
        ({"id": "a", "port": 65536}, "port 65536 is not a number from 1 to 65535"),
        ({"id": "a", "port": -1}, "port -1 is not a number from 1 to 65535"),
        ({"id": "a", "port": "http"}, "bad register message"),
        ({"id": "a", "port": "80"}, "port '80' is not a number from 1 to 65535"),
        ({"id": "a", "port": None}, "bad register message"),
        ({"id": "", "port": 80}, "bad intercept id ''"),
        ({"id": "a b", "port": 80}, "bad intercept id 'a b'"),
        ({"id": "a.b", "port": 80}, "bad intercept id 'a.b'"),
        ({"id": "a/b", "port": 80}, "bad intercept id 'a/b'"),
        ({"id": "a\n", "port": 80}, "bad intercept id"),
        ({"id": "a" * 64, "port": 80}, "bad intercept id"),
        ({"id": "a", "port": 80, "matchers": 5}, "bad register message"),
        ({"id": "a", "port": 80, "matchers": [{"op": "equals"}]}, "bad register message"),
    ],
)
def test_bad_claims_are_protocol_errors(claim, expected):
    line = json.dumps({"type": "register", "id": 1, "claim": claim})
    message = protocol_error(line)
    assert message.startswith("bad register message: ")
    assert expected in message


@pytest.mark.parametrize(
    "claim",
    [{"id": "a"}, {"port": 80}, {}, {"id": "a", "port": 80, "matchers": ["header"]},
     {"id": "a", "port": 80, "matchers": "abc"}],
)
def test_incomplete_claims_are_protocol_errors(claim):
    protocol_error(json.dumps({"type": "register", "id": 1, "claim": claim}))


def test_register_without_claim_is_a_protocol_error():
    protocol_error(b'{"type":"register","id":1}')


@pytest.mark.parametrize("line", [b'{"type":"hello","id":true}', b'{"type":"ok","re":false}'])
def test_boolean_ids_are_protocol_errors(line):
    protocol_error(line)


@pytest.mark.parametrize("claim_id", ["caf\u00e9", "\u00b2"])
def test_non_ascii_intercept_ids_are_refused(claim_id):
    protocol_error(json.dumps({"type": "register", "id": 1, "claim": {"id": claim_id, "port": 80}}))


@pytest.mark.parametrize(
    "line",
    [b'{"type":"register","id":7,"claim":{"id":"a","port":0}}',
     b'{"type":"hello","id":7,"version":5}'],
)
def test_bad_request_error_carries_the_request_id(line):
    with pytest.raises(ProtocolError) as info:
        decode(line)
    assert getattr(info.value, "request_id", None) == 7


# --- line length ---------------------------------------------------------------------------------


def ok_line_of(length: int) -> bytes:
    head, tail = b'{"type":"ok","re":1,"body":{"pad":"', b'"}}'
    return head + b"x" * (length - len(head) - len(tail)) + tail


def test_line_of_max_length_is_accepted():
    line = ok_line_of(MAX_LINE_BYTES)
    assert len(line) == MAX_LINE_BYTES
    assert decode(line) == Ok(re=1, body={"pad": "x" * (MAX_LINE_BYTES - 38)})


@pytest.mark.parametrize("length", [MAX_LINE_BYTES + 1, 2 * MAX_LINE_BYTES])
def test_line_longer_than_max_is_rejected(length):
    assert protocol_error(ok_line_of(length)) == "control message too long"


def test_max_line_is_one_mebibyte():
    assert MAX_LINE_BYTES == 1024 * 1024


# --- versions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("theirs", "ok"),
    [
        (VERSION, True),
        ((1, 0), True),
        ((1, 1), True),
        ((1, 99), True),
        ((2, 0), False),
        ((0, 9), False),
        ((0, 0), False),
        ((3, 1), False),
    ],
)
def test_compatible_means_same_major_any_minor(theirs, ok):
    assert VERSION == (1, 4)
    assert compatible(theirs) is ok


# --- claims --------------------------------------------------------------------------------------


def _register(**claim):
    return json.dumps({"type": "register", "id": 1, "claim": {"id": "a", **claim}})


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ({"port": 0, "service": "orders", "service_port": 80, "via": "takeover", "mode": "http"},
         InterceptClaim("a", 0, mode="http", service="orders", service_port=80, via="takeover")),
        ({"port": 0, "service": "o-1", "service_port": 65535, "via": "gateway"},
         InterceptClaim("a", 0, service="o-1", service_port=65535, via="gateway")),
    ],
)
def test_service_claims_decode(claim, expected):
    assert decode(_register(**claim)).claim == expected


@pytest.mark.parametrize(
    ("claim", "error"),
    [
        ({"port": 0}, "port 0 is not a number from 1"),
        ({"port": 0, "service": "orders", "service_port": 80}, "needs a redirect strategy"),
        ({"port": 80, "via": "takeover"}, "only a service has one"),
        ({"port": 0, "service": "orders", "service_port": 80, "via": "magic"}, "strategy"),
        ({"port": 0, "service": "Orders", "service_port": 80, "via": "takeover"},
         "bad service name 'Orders'"),
        ({"port": 0, "service": "orders", "service_port": 0, "via": "takeover"},
         "service_port 0 is not a number from 1"),
        ({"port": 0, "service": "orders", "service_port": "80", "via": "takeover"},
         "service_port '80'"),
    ],
)
def test_bad_service_claims_are_refused(claim, error):
    with pytest.raises(protocol.BadMessage, match=error):
        decode(_register(**claim))


@pytest.mark.parametrize(
    ("claim", "exclusive"),
    [
        (InterceptClaim("a", 80), True),
        (InterceptClaim("a", 80, mode="http"), True),
        (InterceptClaim("a", 80, matchers=(HEADER,)), False),
        (InterceptClaim("a", 80, mode="http", matchers=(HEADER, PATH)), False),
    ],
)
def test_claim_without_matchers_is_exclusive(claim, exclusive):
    assert claim.exclusive is exclusive


@pytest.mark.parametrize(
    ("claim_id", "host"),
    [("abc-123", "abc-123.intercept.bridged"), ("x", "x.intercept.bridged"),
     ("A_b", "A_b.intercept.bridged")],
)
def test_listen_host_names_the_intercept(claim_id, host):
    assert InterceptClaim(claim_id, 80).listen_host == host


def test_claim_defaults():
    claim = InterceptClaim("a", 80)
    assert (claim.mode, claim.matchers) == ("tcp", ())
    assert Matcher("path") == Matcher(kind="path", op="equals", name="", value="")
