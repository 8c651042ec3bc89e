"""Mirror intercepts under the gateway strategy: the HTTPRoute carries Gateway API's
``RequestMirror`` filter, valid against the published CRD, and — played through the API's
rule precedence, as a mesh applies it (one rule per request, the most specific) — every
request still goes where it went without the mirror, and a copy reaches the relay's mirror
port exactly when the mirror's matchers match (or, in the *everything* plan, every request is
copied and the relay keeps exactly the matching ones)."""

from __future__ import annotations

import itertools
import re
from typing import Any

import jsonschema
import pytest

from bridged.protocol import Matcher
from bridged.redirect import RouteRefused, gateway
from bridged.routing.rules import RequestHead, compile_matcher
from tests.crds import HTTPROUTE, load_crd, schema

SERVICE, PORT = "orders", 80
ALICE = ("a1b2c3d4e5f60718", (Matcher("header", "equals", "x-dev", "alice"),))
BOB = ("0f0f0f0f0f0f0f0f", (Matcher("header", "regex", "x-dev", "bob|robert"),
                            Matcher("path", "prefix", "", "/api"),
                            Matcher("method", "equals", "", "POST")))
EVERYTHING = ("e0e0e0e0e0e0e0e0", ())
REGEX_PATH = ("c0ffee00c0ffee00", (Matcher("path", "regex", "", "/v[0-9]+/.*"),))

COPY_HEADER = (Matcher("header", "equals", "x-mirror", "yes"),)
COPY_API_ORDERS = (Matcher("path", "prefix", "", "/api/orders"),
                   Matcher("header", "equals", "x-mirror", "yes"))
COPY_HEALTH = (Matcher("path", "equals", "", "/health"),)
COPY_ALICE = (Matcher("header", "equals", "x-dev", "alice"),)  # the same as an intercept's
COPY_NOT_ALICE = (Matcher("header", "equals", "x-dev", "carol"),)  # never with alice's
COPY_ALL: tuple[Matcher, ...] = ()
COPY_BOB_REGEX = (Matcher("header", "regex", "x-dev", "b.*"),)  # cannot be said with bob's
COPY_V_REGEX = (Matcher("path", "regex", "", "/api/.*"),)

#: (intercepts, mirror matchers, the plan expected)
CASES = [
    ([ALICE, BOB], COPY_HEADER, "exact"),
    ([ALICE, BOB], COPY_API_ORDERS, "exact"),
    ([ALICE, BOB], COPY_HEALTH, "exact"),
    ([ALICE, BOB], COPY_ALICE, "exact"),
    ([ALICE, BOB], COPY_NOT_ALICE, "exact"),
    ([ALICE], COPY_HEADER, "exact"),
    ([], COPY_HEADER, "exact"),
    ([EVERYTHING], COPY_HEADER, "exact"),
    ([ALICE, BOB], COPY_ALL, "everything"),
    ([ALICE, BOB], COPY_BOB_REGEX, "everything"),
    ([ALICE, BOB], COPY_V_REGEX, "everything"),
    ([ALICE], COPY_V_REGEX, "everything"),
    ([ALICE, REGEX_PATH], COPY_HEADER, "everything"),
]

HEADERS = [{}, {"x-dev": "alice"}, {"x-dev": "bob"}, {"x-dev": "carol"}, {"x-mirror": "yes"},
           {"x-dev": "alice", "x-mirror": "yes"}, {"x-dev": "bob", "x-mirror": "yes"}]
PATHS = ["/", "/api/orders/1", "/api/carts", "/health", "/v2/x"]
METHODS = ["GET", "POST"]


# --- the mesh: Gateway API's HTTPRoute matching and precedence ---------------------------------

def _path_matches(path_match: dict[str, Any], path: str) -> bool:
    value = path_match["value"]
    if path_match["type"] == "Exact":
        return path == value
    if path_match["type"] == "PathPrefix":  # by path elements
        prefix = value.rstrip("/")
        return not prefix or path == prefix or path.startswith(prefix + "/")
    return re.fullmatch(value, path) is not None


def _matches(m: dict[str, Any], method: str, path: str, headers: dict[str, str]) -> bool:
    if not _path_matches(m.get("path") or {"type": "PathPrefix", "value": "/"}, path):
        return False
    if "method" in m and m["method"] != method:
        return False
    for h in m.get("headers") or []:
        value = headers.get(h["name"].lower())
        if value is None:
            return False
        if h["type"] == "Exact" and value != h["value"]:
            return False
        if h["type"] == "RegularExpression" and not re.fullmatch(h["value"], value):
            return False
    return True


#: a RegularExpression path's rank is implementation-specific: above every PathPrefix, or
#: below them all (Istio's); the routes are played both ways
REGEX_RANKS = {"regex-above-prefix": 1, "regex-below-prefix": -1}


def _rank(m: dict[str, Any], regex_rank: int) -> tuple[int, int, int, int]:
    """Gateway API's precedence: an Exact path, then the longest PathPrefix, then a method
    match, then the most header matches."""
    path = m.get("path") or {"type": "PathPrefix", "value": "/"}
    ranks = {"Exact": 2, "RegularExpression": regex_rank, "PathPrefix": 0}
    return (ranks[path["type"]],
            len(path["value"]) if path["type"] == "PathPrefix" else 0,
            "method" in m, len(m.get("headers") or []))


def mesh_picks(route: dict[str, Any], method: str, path: str, headers: dict[str, str],
               regex_rank: int = 1) -> dict[str, Any] | None:
    """The one rule a GAMMA mesh applies to the request (ties: the first in the list; a rule
    without matches last, as meshes order their catch-all)."""
    best: tuple[Any, ...] | None = None
    picked = None
    for index, rule in enumerate(route["spec"]["rules"]):
        for m in rule.get("matches") or [{}]:
            if _matches(m, method, path, headers):
                key = ("matches" in rule, *_rank(m, regex_rank), -index)
                if best is None or key > best:
                    best, picked = key, rule
    return picked


# --- what bridged's relay means ----------------------------------------------------------------

def relay_matches(matchers: tuple[Matcher, ...], method: str, path: str,
                  headers: dict[str, str]) -> bool:
    head = RequestHead(method, path, list(headers.items()))
    return all(compile_matcher(m)(head) for m in matchers)


def plan_of(route: dict[str, Any]) -> str:
    rules = route["spec"]["rules"]
    return "everything" if all(r.get("filters") for r in rules) and not any(
        r["backendRefs"][0]["name"] == SERVICE and r.get("matches") for r in rules) else "exact"


@pytest.mark.parametrize(("intercepts", "mirror", "plan"), CASES)
def test_the_mirror_route_is_valid_for_the_gateway_api(intercepts, mirror, plan):
    route = gateway.http_route("team-a", SERVICE, PORT, intercepts, [mirror])
    jsonschema.validate(route, schema(load_crd(HTTPROUTE), "v1"))
    assert plan_of(route) == plan
    for rule in route["spec"]["rules"]:
        assert rule.get("filters", []) in ([], [{"type": "RequestMirror", "requestMirror": {
            "backendRef": {"group": "", "kind": "Service", "name": "bridged-orders-80-mirror",
                           "port": PORT}}}])


@pytest.mark.parametrize("regex_rank", REGEX_RANKS.values(), ids=REGEX_RANKS)
@pytest.mark.parametrize(("intercepts", "mirror", "plan"), CASES)
def test_each_request_goes_where_it_went_and_is_copied_when_the_mirror_matches(
        intercepts, mirror, plan, regex_rank):
    seen = _played(intercepts, mirror, plan, regex_rank)
    if intercepts == [ALICE, BOB] and mirror in (COPY_HEADER, COPY_API_ORDERS, COPY_HEALTH):
        # (intercepted, mirrored): the table held mirror only, intercept only, both, neither
        assert seen == {(False, True), (True, False), (True, True), (False, False)}


def _played(intercepts: list[Any], mirror: tuple[Matcher, ...], plan: str,
            regex_rank: int) -> set[Any]:
    """Every request of the table through the route, as a mesh applies it; what it held."""
    without = gateway.http_route("team-a", SERVICE, PORT, intercepts)
    route = gateway.http_route("team-a", SERVICE, PORT, intercepts, [mirror])
    backends = {gateway.backend_name(SERVICE, i): matchers for i, matchers in intercepts}
    seen = set()
    for headers, path, method in itertools.product(HEADERS, PATHS, METHODS):
        rule = mesh_picks(route, method, path, headers, regex_rank)
        assert rule is not None, (method, path, headers)  # GAMMA's 404: never
        went = rule["backendRefs"][0]["name"]
        before = mesh_picks(without, method, path, headers, regex_rank)
        assert before is not None and went == before["backendRefs"][0]["name"]
        # the destination the relay re-decides from: an intercept that matches, else the
        # Service's own pods only when none does
        intercepted = [n for n, ms in backends.items() if relay_matches(ms, method, path,
                                                                       headers)]
        assert (went in intercepted) if intercepted else went == SERVICE, (method, path,
                                                                           headers)
        wanted = relay_matches(mirror, method, path, headers)
        mesh_copies = bool(rule.get("filters"))
        if plan == "exact":
            assert mesh_copies == wanted, (method, path, headers, rule)
        else:  # every request copied; the relay keeps those its mirror matches
            assert mesh_copies
        seen.add((bool(intercepted), wanted))
    return seen


def test_a_mirror_with_many_intercepts_copies_everything_rather_than_pass_16_rules():
    many = [(f"{n:016x}", (Matcher("header", "equals", "x-dev", f"dev{n}"),))
            for n in range(8)]
    route = gateway.http_route("team-a", SERVICE, PORT, many, [COPY_HEADER])
    assert len(route["spec"]["rules"]) == 9
    assert plan_of(route) == "everything"
    seven = gateway.http_route("team-a", SERVICE, PORT, many[:7], [COPY_HEADER])
    assert len(seven["spec"]["rules"]) == 16 and plan_of(seven) == "exact"


def test_two_mirrors_on_a_port_share_one_filter_on_every_rule():
    route = gateway.http_route("team-a", SERVICE, PORT, [ALICE], [COPY_HEADER, COPY_HEALTH])
    assert plan_of(route) == "everything"
    assert len(route["spec"]["rules"]) == 2


def test_the_mirror_backend_selects_the_relay_on_its_own_port_and_is_a_backend():
    svc = gateway.mirror_backend_service("team-a", SERVICE, PORT, 41001,
                                         {"app.kubernetes.io/name": "bridged-relay"})
    assert svc["metadata"]["name"] == "bridged-orders-80-mirror"
    assert svc["metadata"]["labels"][gateway.INTERCEPT_LABEL] == "mirror-80"
    assert svc["spec"]["ports"] == [{"name": "http", "port": PORT, "targetPort": 41001,
                                     "protocol": "TCP"}]


@pytest.mark.parametrize("protocol", ["grpc", "h2c"])
def test_a_mirror_on_an_http2_port_is_refused_not_routed(protocol):
    with pytest.raises(RouteRefused, match=r"HTTP/1\.1 requests only"):
        gateway.route(protocol, "team-a", SERVICE, PORT, [ALICE], [COPY_HEADER])
    assert gateway.route(protocol, "team-a", SERVICE, PORT, [ALICE])  # without: as before
