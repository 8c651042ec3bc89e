"""The router's per-request decision, as tables: request in, route out. No sockets."""

from __future__ import annotations

import pytest

from bridged.protocol import Matcher
from bridged.routing.decide import ORIGIN, decide
from bridged.routing.rules import BadMatcher, RequestHead, Rule, baggage_members


def req(method: str = "GET", target: str = "/", **headers: str | list[str]) -> RequestHead:
    pairs: list[tuple[str, str]] = []
    for name, value in headers.items():
        for v in value if isinstance(value, list) else [value]:
            pairs.append((name.replace("_", "-"), v))
    return RequestHead(method, target, tuple(pairs))


def header(name: str, value: str, op: str = "equals") -> Matcher:
    return Matcher("header", op, name, value)


ALICE = Rule.compile("alice", [header("x-bridged-route", "alice")], order=1)
BOB = Rule.compile("bob", [header("x-bridged-route", "bob")], order=2)
BOB_API = Rule.compile("bob-api", [header("x-bridged-route", "bob"),
                                   Matcher("path", "prefix", "", "/api")], order=3)
CAROL_BAGGAGE = Rule.compile("carol", [Matcher("baggage", "equals", "bridged", "carol")], order=4)
TEAM = [ALICE, BOB, BOB_API, CAROL_BAGGAGE]


@pytest.mark.parametrize(("head", "expected"), [
    # no header: the cluster's own pods
    (req(), ORIGIN),
    (req(x_bridged_route="alice"), "alice"),
    (req(X_BRIDGED_ROUTE="alice"), "alice"),  # header names are case-insensitive
    (req(x_bridged_route="Alice"), ORIGIN),  # values are not
    (req(x_bridged_route="alice "), "alice"),  # whitespace around a value is not part of it
    (req(x_bridged_route="alicex"), ORIGIN),  # exact
    (req(x_bridged_route=["zed", "alice"]), ORIGIN),  # repeated: "zed,alice", as Envoy sees it
    (req(x_bridged_route="bob"), "bob"),
    # more matchers win: bob's /api rule is more specific than bob's catch-all
    (req(target="/api", x_bridged_route="bob"), "bob-api"),
    (req(target="/api/orders?x=1", x_bridged_route="bob"), "bob-api"),
    (req(target="/apiary", x_bridged_route="bob"), "bob"),  # by path element
    (req(target="/other/api", x_bridged_route="bob"), "bob"),
    # W3C baggage survives services that propagate OpenTelemetry context
    (req(baggage="userId=7,bridged=carol;ttl=3"), "carol"),
    (req(baggage=["userId=7", "bridged=car%6Fl"]), "carol"),  # percent-decoded, merged
    (req(baggage="bridged=carolyn"), ORIGIN),
    (req(baggage="xbridged=carol"), ORIGIN),
])
def test_team_routing(head: RequestHead, expected: str) -> None:
    assert decide(head, TEAM).target == expected


def test_ties_go_to_the_earlier_registration_whatever_the_order_given() -> None:
    first = Rule.compile("first", [header("x-a", "1")], order=1)
    second = Rule.compile("second", [header("x-b", "1")], order=2)
    head = req(x_a="1", x_b="1")
    assert decide(head, [first, second]).target == "first"
    assert decide(head, [second, first]).target == "first"


@pytest.mark.parametrize(("matcher", "matching", "not_matching"), [
    (Matcher("path", "equals", "", "/healthz"), ["/healthz", "/healthz?x"],
     ["/healthz/", "/health"]),
    (Matcher("path", "prefix", "", "/api/"), ["/api", "/api/", "/api/v1"], ["/apis", "/"]),
    (Matcher("path", "prefix", "", "/"), ["/", "/anything"], []),
    (Matcher("path", "regex", "", r"/orders/\d+"), ["/orders/12"], ["/orders/12/x", "/orders/"]),
    (Matcher("method", "equals", "", "POST"), ["POST"], ["post", "GET"]),
])
def test_single_matchers(matcher: Matcher, matching: list[str], not_matching: list[str]) -> None:
    rule = Rule.compile("r", [matcher])

    def head(value: str) -> RequestHead:
        return req(method=value) if matcher.kind == "method" else req(target=value)

    assert all(decide(head(v), [rule]).target == "r" for v in matching)
    assert all(decide(head(v), [rule]).target == ORIGIN for v in not_matching)


def test_header_regex_must_match_the_whole_value() -> None:
    rule = Rule.compile("r", [header("x-user", "ali.*", op="regex")])
    assert decide(req(x_user="alice"), [rule]).target == "r"
    assert decide(req(x_user="malice"), [rule]).target == ORIGIN


def test_a_rule_without_matchers_takes_everything_but_loses_to_any_specific_rule() -> None:
    everything = Rule.compile("all", [], order=0)
    assert decide(req(), [everything]).target == "all"
    assert decide(req(x_bridged_route="alice"), [everything, ALICE]).target == "alice"


@pytest.mark.parametrize(("matcher", "message"), [
    (Matcher("header", "equals", "", "x"), "needs a header name"),
    (Matcher("header", "regex", "x", "("), "bad regex"),
    (Matcher("header", "prefix", "x", "a"), "op equals or regex"),
    (Matcher("path", "prefix", "", "api"), "must start with '/'"),
    (Matcher("method", "regex", "", "GET"), "op equals"),
    (Matcher("cookie", "equals", "a", "b"), "unknown matcher kind 'cookie'"),
    (Matcher("baggage", "equals", "", "b"), "needs the member's key"),
])
def test_bad_matchers_are_refused_when_compiled(matcher: Matcher, message: str) -> None:
    with pytest.raises(BadMatcher, match=message):
        Rule.compile("r", [matcher])


def test_baggage_members_ignore_properties_and_malformed_members() -> None:
    head = req(baggage=["a=1;p=2, b = %20x ,junk", "a=3"])
    assert baggage_members(head) == {"a": "3", "b": " x"}
