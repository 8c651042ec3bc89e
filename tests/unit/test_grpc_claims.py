"""HTTP/2 and gRPC intercepts on the laptop's side, without processes: --protocol and
--grpc-method become the claim the relay gets (and mean, in the router's rules, what the user
typed), bridged.yaml says the same, and ``bridged traffic`` shows gRPC calls as calls."""

from __future__ import annotations

import json
from pathlib import Path

import asyncssh
import pytest

from bridged import protocol
from bridged.cli.traffic import grpc_call, traffic_line
from bridged.config import InterceptSpec, parse_grpc_method, protocol_of_app_protocol
from bridged.daemon.bridge import Bridge, Intercept
from bridged.errors import ConfigError
from bridged.keys import PinnedHostKeys
from bridged.project import validate
from bridged.routing.rules import RequestHead, compile_matcher


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and info.value.exit_code == 2, text
    return text


# --- --grpc-method ------------------------------------------------------------------------------


def _routed(form: str, path: str) -> bool:
    """Whether the router's rule for ``--grpc-method form`` takes a call to ``path``."""
    test = compile_matcher(parse_grpc_method(form))
    return test(RequestHead("POST", path, (("content-type", "application/grpc"),)))


@pytest.mark.parametrize(("form", "taken", "left"), [
    ("shop.Cart/Add", ["/shop.Cart/Add"], ["/shop.Cart/Remove", "/shop.Cart2/Add",
                                           "/other.Cart/Add", "/shop.Cart/Add/x"]),
    ("shop.Cart", ["/shop.Cart/Add", "/shop.Cart/Remove"], ["/shop.Carts/Add", "/x.Y/Add"]),
    ("shop.Cart/*", ["/shop.Cart/Add", "/shop.Cart/Remove"], ["/shop.Carts/Add"]),
    ("*/Add", ["/shop.Cart/Add", "/x.Y/Add"], ["/shop.Cart/Added", "/Add", "/a/b/Add"]),
    ("Cart/Add", ["/Cart/Add"], ["/shop.Cart/Add"]),
])
def test_each_form_takes_the_calls_it_names_and_no_other(
        form: str, taken: list[str], left: list[str]) -> None:
    assert [p for p in taken if not _routed(form, p)] == []
    assert [p for p in left if _routed(form, p)] == []


@pytest.mark.parametrize("form", [
    "", "*", "*/*", "/", "*/", "shop.Cart/", "/Add", "/shop.Cart/Add", "shop.Cart//Add",
    "a/b/c", "shop..Cart/Add", "shop.Cart/Add ", "shop-cart/Add", "shop.Cart/Ad-d",
    "shop.Cart/Add\nx",
])
def test_bad_forms_are_one_line_errors_naming_the_forms(form: str) -> None:
    text = _error(parse_grpc_method, form)
    assert "expected package.Service/Method, package.Service (all its methods) or */Method" \
        in text


def test_grpc_method_implies_grpc_and_refuses_http() -> None:
    spec = InterceptSpec.parse(local_port="50051", service="cart", grpc_method="shop.Cart/Add",
                               headers=("x-dev=alice",))
    assert spec.protocol == "grpc" and spec.mode == "http"
    assert spec.matchers[-1] == protocol.Matcher("grpc-method", "equals", "shop.Cart", "Add")
    assert "goes without --protocol http" in _error(
        InterceptSpec.parse, local_port="1", service="cart", grpc_method="a.B/C",
        protocol="http")
    assert InterceptSpec.parse(local_port="1", service="cart", grpc_method="a.B/C",
                               protocol="h2c").protocol == "h2c"


def test_protocol_values() -> None:
    assert InterceptSpec.parse(local_port="1", service="cart").protocol == ""  # daemon decides
    # a bare relay port with an HTTP/2 server is routed per stream, not taken whole
    bare = InterceptSpec.parse(local_port="1", remote_port=9000, protocol="h2c")
    assert (bare.protocol, bare.mode) == ("h2c", "http")
    assert "expected http, h2c, grpc" in _error(
        InterceptSpec.parse, local_port="1", service="cart", protocol="h3")
    assert "--tcp takes the whole port" in _error(
        InterceptSpec.parse, local_port="1", service="cart", protocol="grpc", tcp=True)
    assert "--tcp takes the whole port" in _error(
        InterceptSpec.parse, local_port="1", service="cart", grpc_method="a.B", tcp=True)


def test_a_saved_spec_keeps_its_protocol_and_an_old_one_reads() -> None:
    spec = InterceptSpec.parse(local_port="1", service="cart", grpc_method="a.B/C")
    assert InterceptSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "protocol"}
    assert InterceptSpec.from_dict(old).protocol == ""


def test_app_protocols() -> None:
    assert protocol_of_app_protocol("grpc") == "grpc"
    assert protocol_of_app_protocol("kubernetes.io/h2c") == "h2c"
    assert protocol_of_app_protocol("http") == protocol_of_app_protocol("") == ""


# --- bridged.yaml -------------------------------------------------------------------------------


def _yaml_error(intercept: dict[str, object]) -> str:
    return _error(validate, {"intercept": {"service": "cart", "port": 50051, **intercept}},
                  "bridged.yaml")


def test_bridged_yaml_takes_protocol_and_grpc_method() -> None:
    for ok in ({"protocol": "grpc"}, {"protocol": "h2c", "grpcMethod": "a.B/C"},
               {"grpcMethod": "shop.Cart"}, {"grpcMethod": "*/Add"}, {"protocol": "http"}):
        validate({"intercept": {"service": "cart", "port": 50051, **ok}}, "bridged.yaml")
    assert "intercept.protocol: 'h3' is not one of http, h2c, grpc" in _yaml_error(
        {"protocol": "h3"})
    for bad in ("a/b/c", "*", "/Add", ""):
        assert "intercept.grpcMethod" in _yaml_error({"grpcMethod": bad})
        assert "expected package.Service/Method" in _yaml_error({"grpcMethod": bad})
    assert "intercept.protocol: 'http' is not one of h2c, grpc" in _yaml_error(
        {"protocol": "http", "grpcMethod": "a.B/C"})


# --- traffic ------------------------------------------------------------------------------------


def _entry(**kw: object) -> dict[str, object]:
    return {"time": 0.0, "intercept": "cart", "method": "POST", "path": "/shop.Cart/Add",
            "status": 200, "duration_ms": 3.25, "client": "10.0.0.7:41000", "headers": [],
            "note": "", "http_version": "h2", "grpc_status": None, **kw}


@pytest.mark.parametrize(("code", "shown"), [
    (0, "grpc-status 0 OK"), (5, "grpc-status 5 NOT_FOUND"),
    (14, "grpc-status 14 UNAVAILABLE"), (16, "grpc-status 16 UNAUTHENTICATED"),
    (42, "grpc-status 42"),  # not one gRPC defines: shown as it came
])
def test_a_grpc_call_is_shown_as_a_call_with_its_status(code: int, shown: str) -> None:
    line = traffic_line(_entry(grpc_status=code))
    assert line.endswith(f" cart             gRPC shop.Cart/Add  {shown}  3.2 ms  "
                         "from 10.0.0.7:41000"), line


def test_a_grpc_call_without_a_status_is_told_by_its_content_type() -> None:
    line = traffic_line(_entry(status=0, headers=[["Content-Type", "application/grpc+proto"]]))
    assert "gRPC shop.Cart/Add  no grpc-status (HTTP ERR)" in line
    # the same path without gRPC's content-type is a plain HTTP/2 request
    plain = traffic_line(_entry(headers=[["content-type", "application/json"]]))
    assert grpc_call(_entry()) is None
    assert " 200 POST   /shop.Cart/Add  h2  3.2 ms" in plain


def test_http1_and_passed_through_lines_are_as_before() -> None:
    line = traffic_line(_entry(http_version="", method="GET", path="/x", status=404))
    assert line.endswith(" cart             404 GET    /x  3.2 ms  from 10.0.0.7:41000")
    note = traffic_line(_entry(note="h2c (HTTP/2 cleartext)", method="", path=""))
    assert note.endswith(" cart             --- h2c (HTTP/2 cleartext)  from 10.0.0.7:41000")


async def test_the_daemon_keeps_http_version_and_grpc_status_from_the_wire(
        tmp_path: Path) -> None:
    """A Traffic line as the relay writes it, into a bridge's log and out as JSON (what
    ``bridged traffic --json`` prints) with its HTTP/2 and gRPC fields."""
    bridge = Bridge("b", "tcp://127.0.0.1:1", carrier=None,  # type: ignore[arg-type]
                    client_key=asyncssh.generate_private_key("ssh-ed25519"),
                    pins=PinnedHostKeys(tmp_path / "pins.json"))
    spec = InterceptSpec.parse(local_port="50051", service="cart", grpc_method="shop.Cart")
    claim = protocol.InterceptClaim(id="i1", port=0, mode="http", matchers=spec.matchers,
                                    protocol="grpc")
    bridge.intercepts["cart"] = Intercept(spec, "b", claim)
    sent = protocol.Traffic(intercept_id="i1", method="POST", path="/shop.Cart/Add",
                            status=200, duration_ms=1.5, client="10.0.0.7:1",
                            http_version="h2", grpc_status=7)
    bridge._traffic(protocol.decode(protocol.encode(sent)))
    [entry] = json.loads(json.dumps(list(bridge.traffic_log)))
    assert (entry["intercept"], entry["http_version"], entry["grpc_status"]) == \
        ("cart", "h2", 7)
    assert "gRPC shop.Cart/Add  grpc-status 7 PERMISSION_DENIED" in traffic_line(entry)
    shown = bridge.intercepts["cart"].to_dict()
    assert shown["protocol"] == "grpc" and shown["matchers"] == ["grpc-method shop.Cart/*"]
