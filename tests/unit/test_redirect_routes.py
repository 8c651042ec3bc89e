"""The gateway and cilium strategies' objects: valid against the published CRD schemas, and
saying what the relay's router means."""

from __future__ import annotations

import re

import jsonschema
import pytest

from bridged.protocol import Matcher
from bridged.redirect import cilium, gateway
from tests.crds import CILIUM, HTTPROUTE, load_crd, schema

RELAY = {"app.kubernetes.io/name": "bridged-relay", "app.kubernetes.io/managed-by": "bridged"}
ALICE = ("a1b2c3d4e5f60718", (Matcher("header", "equals", "x-dev", "alice"),))
BOB = ("0f0f0f0f0f0f0f0f", (Matcher("header", "regex", "x-dev", "bob|robert"),
                            Matcher("path", "prefix", "", "/api"),
                            Matcher("method", "equals", "", "POST")))
CAROL = ("c0ffee00c0ffee00", (Matcher("baggage", "equals", "dev", "carol"),))
EVERYTHING = ("e0e0e0e0e0e0e0e0", ())
CASES = [[ALICE], [ALICE, BOB, CAROL], [EVERYTHING]]


@pytest.mark.parametrize("intercepts", CASES)
def test_http_routes_are_valid_for_the_gateway_api(intercepts):
    route = gateway.http_route("team-a", "orders", 80, intercepts)
    jsonschema.validate(route, schema(load_crd(HTTPROUTE), "v1"))


@pytest.mark.parametrize("intercepts", CASES)
def test_envoy_configs_are_valid_for_cilium(intercepts):
    config = cilium.envoy_config("team-a", "orders", {80: intercepts})
    jsonschema.validate(config, schema(load_crd(CILIUM), "v2"))
    # the CRD leaves resources to Envoy: every cluster a route names is defined, by EDS
    resources = config["spec"]["resources"]
    types = [r["@type"].rsplit(".", 2)[-2:] for r in resources]
    assert types[:2] == [["v3", "Listener"], ["v3", "RouteConfiguration"]]
    defined = {r["name"] for r in resources if r["@type"].endswith("cluster.v3.Cluster")}
    routes = resources[1]["virtual_hosts"][0]["routes"]
    assert {r["route"]["cluster"] for r in routes} == defined
    assert routes[-1] == {"match": {"prefix": "/"},
                          "route": {"cluster": "team-a/orders:80", "timeout": "0s"}}


def test_one_envoy_config_per_service_redirects_only_the_intercepted_ports():
    config = cilium.envoy_config("team-a", "orders", {80: [ALICE], 9090: [BOB]})
    spec = config["spec"]
    assert config["metadata"]["name"] == "bridged-orders"
    assert spec["services"] == [
        {"name": "orders", "namespace": "team-a", "listener": "bridged-orders-80-listener",
         "ports": [80]},
        {"name": "orders", "namespace": "team-a", "listener": "bridged-orders-9090-listener",
         "ports": [9090]}]
    # the Service too, with its ports: Cilium then publishes the "ns/orders:PORT" clusters
    assert spec["backendServices"][0] == {"name": "orders", "namespace": "team-a",
                                          "number": ["80", "9090"]}
    listeners = [r["name"] for r in spec["resources"] if r["@type"].endswith("Listener")]
    assert listeners == ["bridged-orders-80-listener", "bridged-orders-9090-listener"]


def test_the_route_sends_matches_to_each_backend_and_the_rest_to_the_service():
    route = gateway.http_route("team-a", "orders", 80, [ALICE, BOB])
    assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "orders",
                                            "port": 80}]
    rules = route["spec"]["rules"]
    assert [r["backendRefs"][0]["name"] for r in rules] == [
        "bridged-orders-a1b2c3d4e5f6", "bridged-orders-0f0f0f0f0f0f", "orders"]
    assert rules[0]["matches"] == [{"headers": [
        {"type": "Exact", "name": "x-dev", "value": "alice"}]}]
    assert rules[1]["matches"] == [{
        "path": {"type": "PathPrefix", "value": "/api"}, "method": "POST",
        "headers": [{"type": "RegularExpression", "name": "x-dev", "value": "bob|robert"}]}]
    assert "matches" not in rules[2]


def test_an_exclusive_intercept_takes_every_request():
    rules = gateway.http_route("team-a", "orders", 80, [EVERYTHING])["spec"]["rules"]
    assert rules == [{"backendRefs": [{"group": "", "kind": "Service",
                                       "name": "bridged-orders-e0e0e0e0e0e0", "port": 80}]}]


def test_a_backend_service_selects_the_relay_on_the_relay_port():
    svc = gateway.backend_service("team-a", "orders", ALICE[0], 80, 41000, RELAY)
    assert svc["spec"]["selector"] == RELAY
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 41000,
                                     "protocol": "TCP"}]
    assert svc["metadata"]["labels"]["bridged.dev/intercept"] == ALICE[0]


@pytest.mark.parametrize(
    ("header", "member_matches"),
    [
        ("dev=carol", True),
        ("other=1, dev=carol", True),
        ("dev=carol;ttl=5,other=1", True),
        ("  dev = carol  ", True),
        ("dev=carolyn", False),
        ("xdev=carol", False),
        ("other=dev=carol", False),
        ("dev=bob", False),
    ],
)
def test_the_baggage_regex_finds_one_member(header, member_matches):
    pattern = gateway.baggage_regex("dev", "carol", "equals")
    assert bool(re.fullmatch(pattern, header)) is member_matches


@pytest.mark.parametrize(
    ("matchers", "expected"),
    [
        ((), {"prefix": "/"}),
        ((Matcher("path", "prefix", "", "/api/"),), {"path_separated_prefix": "/api"}),
        ((Matcher("path", "prefix", "", "/"),), {"prefix": "/"}),
        ((Matcher("path", "equals", "", "/x"),), {"path": "/x"}),
        ((Matcher("path", "regex", "", "/v[0-9]+/.*"),), {"safe_regex": {"regex": "/v[0-9]+/.*"}}),
        ((Matcher("method", "equals", "", "GET"), Matcher("header", "equals", "x-a", "1")),
         {"prefix": "/", "headers": [{"name": ":method", "string_match": {"exact": "GET"}},
                                     {"name": "x-a", "string_match": {"exact": "1"}}]}),
    ],
)
def test_envoy_route_matches(matchers, expected):
    assert cilium.route_match(matchers) == expected
