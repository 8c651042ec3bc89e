"""The gateway and cilium strategies on a gRPC (HTTP/2) port: a GRPCRoute valid against the
published CRD, the same method semantics as the relay's rule wherever a route says them (a
GRPCRoute's method match, an HTTPRoute's or Envoy's path match), HTTP/2 to the relay, and a
refusal — never a broader route — for what a GRPCRoute cannot say."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest

from bridged.protocol import Matcher
from bridged.redirect import RouteRefused, cilium, gateway
from bridged.routing.rules import RequestHead, compile_matcher
from tests.crds import CILIUM, HTTPROUTE, load_crd, schema

GRPCROUTE = "gateway-api-v1.6.1/gateway.networking.k8s.io_grpcroutes.yaml"
RELAY = {"app.kubernetes.io/name": "bridged-relay", "app.kubernetes.io/managed-by": "bridged"}


def grpc(op: str, service: str, method: str) -> Matcher:
    return Matcher("grpc-method", op, service, method)


ALICE = ("a1b2c3d4e5f60718", (Matcher("header", "equals", "x-dev", "alice"),
                              grpc("equals", "shop.v1.Orders", "Get")))
BOB = ("0f0f0f0f0f0f0f0f", (Matcher("header", "regex", "x-dev", "bob|robert"),
                            grpc("regex", r"shop\.v1\..*", "List.*")))
CAROL = ("c0ffee00c0ffee00", (Matcher("baggage", "equals", "dev", "carol"),
                              grpc("equals", "", "Watch")))
DAVE = ("d0d0d0d0d0d0d0d0", (grpc("equals", "my-pkg.Orders", ""),))  # not a plain name
EVERYTHING = ("e0e0e0e0e0e0e0e0", ())
CASES = [[ALICE], [ALICE, BOB, CAROL, DAVE], [EVERYTHING]]

#: the method-match matchers the relay's rule and the routes must agree on
METHOD_MATCHERS = [
    grpc("equals", "shop.v1.Orders", "Get"),
    grpc("equals", "shop.v1.Orders", ""),
    grpc("equals", "", "Get"),
    grpc("equals", "my-pkg.Orders", "Get"),  # '-' and '.' must be literal in a regex
    grpc("equals", "my-pkg.Orders", ""),
    grpc("regex", r"shop\.v1\..*", "Get|List"),
    grpc("regex", "", "Li.*"),
    grpc("regex", "shop.v1.Orders", ""),
]
PATHS = [
    "/shop.v1.Orders/Get", "/shop.v1.Orders/GetAll", "/shop.v1.Orders/List",
    "/shop.v1.Orders/", "/shop.v1.Orders", "/shop.v1.Orders/Get/more", "/shop.v1.OrdersX/Get",
    "/shopXv1XOrders/Get", "/shop.v1.Carts/Get", "/shop.v1.Carts/List", "/Get", "//Get",
    "/x/shop.v1.Orders/Get", "/shop.v1.Orders/get", "/my-pkg.Orders/Get", "/myXpkgXOrders/Get",
    "/my-pkg.Orders/", "/my-pkg.Orders/Get/x", "/", "/a/b/c",
]


def relay_says(m: Matcher, path: str) -> bool:
    return compile_matcher(m)(RequestHead("POST", path, [("content-type", "application/grpc")]))


def http_route_says(path_match: dict[str, Any], path: str) -> bool:
    """An HTTPRoute path match, as the Gateway API defines it."""
    value = path_match["value"]
    if path_match["type"] == "Exact":
        return path == value
    if path_match["type"] == "PathPrefix":  # by path elements
        prefix = value.rstrip("/")
        return not prefix or path == prefix or path.startswith(prefix + "/")
    return re.fullmatch(value, path) is not None


def envoy_says(route_match: dict[str, Any], path: str) -> bool:
    if "path" in route_match:
        return path == route_match["path"]
    if "safe_regex" in route_match:
        return re.fullmatch(route_match["safe_regex"]["regex"], path) is not None
    if "path_separated_prefix" in route_match:
        prefix = route_match["path_separated_prefix"]
        return path == prefix or path.startswith(prefix + "/")
    return path.startswith(route_match["prefix"])


def grpc_route_says(method_match: dict[str, Any], path: str) -> bool | None:
    """A GRPCRoute method match as the Gateway API defines it, on a gRPC call's path
    ``/service/method`` (None: the path is not one)."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        return None
    exact = method_match.get("type", "Exact") == "Exact"
    for part, key in ((parts[1], "service"), (parts[2], "method")):
        want = method_match.get(key)
        if want is not None and not (part == want if exact else re.fullmatch(want, part)):
            return False
    return True


# CEL rules of the CRDs (the stand-in and jsonschema do not evaluate them; a real API server
# does): GRPCMethodMatch's, and HTTPRoute's for an Exact/PathPrefix path
_EXACT_SERVICE = re.compile(r"(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*")
_EXACT_METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_PATH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+")


def assert_cel_rules_hold(method_match: dict[str, Any]) -> None:
    assert method_match.get("service") or method_match.get("method")
    if method_match.get("type", "Exact") == "Exact":
        if "service" in method_match:
            assert _EXACT_SERVICE.fullmatch(method_match["service"])
        if "method" in method_match:
            assert _EXACT_METHOD.fullmatch(method_match["method"])


@pytest.mark.parametrize("intercepts", CASES)
def test_grpc_routes_are_valid_for_the_gateway_api(intercepts):
    route = gateway.grpc_route("team-a", "orders", 50051, intercepts)
    jsonschema.validate(route, schema(load_crd(GRPCROUTE), "v1"))
    for rule in route["spec"]["rules"]:
        for match in rule.get("matches") or []:
            if "method" in match:
                assert_cel_rules_hold(match["method"])


def test_the_grpc_route_sends_each_intercept_s_calls_to_its_backend_and_the_rest_back():
    route = gateway.grpc_route("team-a", "orders", 50051, [ALICE, BOB, CAROL, DAVE])
    assert route["kind"] == "GRPCRoute"
    assert route["metadata"]["name"] == "bridged-orders-50051"
    assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "orders",
                                            "port": 50051}]
    rules = route["spec"]["rules"]
    assert [r["backendRefs"] for r in rules] == [
        [{"group": "", "kind": "Service", "name": name, "port": 50051}] for name in (
            "bridged-orders-a1b2c3d4e5f6", "bridged-orders-0f0f0f0f0f0f",
            "bridged-orders-c0ffee00c0ff", "bridged-orders-d0d0d0d0d0d0", "orders")]
    assert [r.get("matches") for r in rules] == [
        [{"method": {"type": "Exact", "service": "shop.v1.Orders", "method": "Get"},
          "headers": [{"type": "Exact", "name": "x-dev", "value": "alice"}]}],
        [{"method": {"type": "RegularExpression", "service": r"shop\.v1\..*",
                     "method": "List.*"},
          "headers": [{"type": "RegularExpression", "name": "x-dev", "value": "bob|robert"}]}],
        [{"method": {"type": "Exact", "method": "Watch"},  # the empty service omitted: any
          "headers": [{"type": "RegularExpression", "name": "baggage",
                       "value": gateway.baggage_regex("dev", "carol", "equals")}]}],
        [{"method": {"type": "RegularExpression", "service": r"my\-pkg\.Orders"}}],
        None]


def test_an_exclusive_grpc_intercept_takes_every_call():
    rules = gateway.grpc_route("team-a", "orders", 50051, [EVERYTHING])["spec"]["rules"]
    assert rules == [{"backendRefs": [{"group": "", "kind": "Service",
                                       "name": "bridged-orders-e0e0e0e0e0e0", "port": 50051}]}]


@pytest.mark.parametrize(("matcher", "says"), [
    (Matcher("path", "prefix", "", "/api"), "not a path"),
    (Matcher("path", "equals", "", "/shop.v1.Orders/Get"), "not a path"),
    (Matcher("method", "equals", "", "POST"), "every gRPC call is a POST"),
])
def test_what_a_grpc_route_cannot_match_is_refused_not_dropped(matcher, says):
    with pytest.raises(RouteRefused, match=says):
        gateway.grpc_route("team-a", "orders", 50051,
                           [("a1", (Matcher("header", "equals", "x-dev", "a"), matcher))])


@pytest.mark.parametrize("make", [gateway.grpc_route, gateway.http_route])
def test_a_header_matched_twice_is_refused(make):
    # a route's header matches are keyed by name: a second one would be ignored or refused
    twice = (Matcher("header", "equals", "x-dev", "a"), Matcher("header", "regex", "X-Dev", "b"))
    with pytest.raises(RouteRefused, match="x-dev is matched more than once"):
        make("team-a", "orders", 80, [("a1", twice)])


def test_a_path_and_a_grpc_method_cannot_share_one_path_match():
    both = (Matcher("path", "prefix", "", "/api"), grpc("equals", "shop.v1.Orders", "Get"))
    with pytest.raises(RouteRefused, match="one path"):
        gateway.http_route("team-a", "orders", 80, [("a1", both)])
    with pytest.raises(RouteRefused, match="one path"):
        cilium.route_match(both)


@pytest.mark.parametrize("matcher", METHOD_MATCHERS, ids=lambda m: f"{m.op}:{m.name}/{m.value}")
def test_an_http_route_s_path_match_agrees_with_the_relay_s_rule(matcher):
    route = gateway.http_route("team-a", "orders", 80, [("a1", (matcher,))])
    jsonschema.validate(route, schema(load_crd(HTTPROUTE), "v1"))
    path_match = route["spec"]["rules"][0]["matches"][0]["path"]
    if path_match["type"] != "RegularExpression":  # the CRD's CEL rules for a literal path
        assert _PATH_CHARS.fullmatch(path_match["value"]) and "//" not in path_match["value"]
    disagree = [p for p in PATHS if http_route_says(path_match, p) != relay_says(matcher, p)]
    assert not disagree, (path_match, disagree)
    assert any(relay_says(matcher, p) for p in PATHS)  # the table tells them apart


@pytest.mark.parametrize("matcher", METHOD_MATCHERS, ids=lambda m: f"{m.op}:{m.name}/{m.value}")
def test_envoy_s_path_match_agrees_with_the_relay_s_rule(matcher):
    route_match = cilium.route_match((matcher,))
    disagree = [p for p in PATHS if envoy_says(route_match, p) != relay_says(matcher, p)]
    assert not disagree, (route_match, disagree)


@pytest.mark.parametrize("matcher", METHOD_MATCHERS, ids=lambda m: f"{m.op}:{m.name}/{m.value}")
def test_a_grpc_route_s_method_match_agrees_with_the_relay_s_rule_on_grpc_calls(matcher):
    method_match = gateway.grpc_match((matcher,))["method"]
    assert_cel_rules_hold(method_match)
    calls = [p for p in PATHS if grpc_route_says(method_match, p) is not None]
    disagree = [p for p in calls if grpc_route_says(method_match, p) != relay_says(matcher, p)]
    assert not disagree, (method_match, disagree)


@pytest.mark.parametrize(("app_protocol", "claimed", "expected"), [
    ("grpc", ["http"], "grpc"),
    ("kubernetes.io/h2c", [], "grpc"),
    ("GRPC", [], "grpc"),
    (None, ["http", "grpc"], "grpc"),
    ("", ["h2c"], "h2c"),
    ("http", ["http"], "http"),
    (None, [], "http"),
])
def test_which_ports_get_a_grpc_route(app_protocol, claimed, expected):
    assert gateway.port_protocol(app_protocol, claimed) == expected


@pytest.mark.parametrize(("protocol", "app_protocol", "port"), [
    ("grpc", "grpc", {"name": "grpc", "appProtocol": "grpc"}),
    ("grpc", "kubernetes.io/h2c", {"name": "grpc", "appProtocol": "kubernetes.io/h2c"}),
    ("grpc", "", {"name": "grpc", "appProtocol": "kubernetes.io/h2c"}),
    ("h2c", "", {"name": "http2", "appProtocol": "kubernetes.io/h2c"}),
    ("http", "", {"name": "http"}),
])
def test_an_http2_port_s_backend_tells_the_mesh_to_speak_http2(protocol, app_protocol, port):
    svc = gateway.backend_service("team-a", "orders", ALICE[0], 50051, 41000, RELAY,
                                  protocol=protocol, app_protocol=app_protocol)
    assert svc["spec"]["ports"] == [{"port": 50051, "targetPort": 41000, "protocol": "TCP",
                                     **port}]


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in config["spec"]["resources"]
            if r["@type"].endswith("cluster.v3.Cluster")}


def test_the_envoy_config_of_an_http2_port_speaks_http2_upstream_and_takes_h2c():
    config = cilium.envoy_config("team-a", "orders", {80: [BOB], 50051: [ALICE, CAROL]},
                                 h2_ports={50051})
    jsonschema.validate(config, schema(load_crd(CILIUM), "v2"))
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    speaks = {name: c.get("typed_extension_protocol_options") for name, c in
              _clusters(config).items()}
    assert speaks == {
        "team-a/bridged-orders-0f0f0f0f0f0f:80": None, "team-a/orders:80": None,
        "team-a/bridged-orders-a1b2c3d4e5f6:50051": h2,
        "team-a/bridged-orders-c0ffee00c0ff:50051": h2, "team-a/orders:50051": h2}
    hcm = {r["name"]: r["filter_chains"][0]["filters"][0]["typed_config"]
           for r in config["spec"]["resources"] if r["@type"].endswith("Listener")}
    assert hcm["bridged-orders-50051-listener"]["codec_type"] == "AUTO"
    assert "codec_type" not in hcm["bridged-orders-80-listener"]  # as before: HTTP/1.1
    routes = {r["name"]: r["virtual_hosts"][0]["routes"] for r in config["spec"]["resources"]
              if r["@type"].endswith("RouteConfiguration")}
    assert routes["bridged-orders-50051-routes"][0]["match"] == {
        "path": "/shop.v1.Orders/Get",
        "headers": [{"name": "x-dev", "string_match": {"exact": "alice"}}]}
