"""bridged.routing.rules: header matching as the mesh's Envoy does it (whitespace, repeated
headers, case of names), so the relay and the gateway/cilium strategies agree on every request.
No sockets: the router's own parse is in tests/integration/test_router_matching.py."""

from __future__ import annotations

import pytest

from bridged.protocol import Matcher
from bridged.routing.rules import RequestHead, Rule


def head(*headers: tuple[str, str]) -> RequestHead:
    return RequestHead("GET", "/", headers)


def matches(matcher: Matcher, *headers: tuple[str, str]) -> bool:
    return Rule.compile("r", [matcher]).matches(head(*headers))


ALICE = Matcher("header", "equals", "x-dev", "alice")


# --- whitespace around a value (RFC 9110 §5.5) --------------------------------------------------


@pytest.mark.parametrize("sent", [
    "alice ", " alice", " alice ", "alice\t", "\talice", "\t alice \t", "alice   ", "  \talice",
])
def test_whitespace_around_a_value_is_not_part_of_it(sent: str) -> None:
    assert matches(ALICE, ("x-dev", sent))


@pytest.mark.parametrize("sent", ["al ice", "alice x", "alice\x0b", "alice.", "Alice", ""])
def test_whitespace_inside_a_value_and_other_characters_are(sent: str) -> None:
    assert not matches(ALICE, ("x-dev", sent))


def test_a_regex_sees_the_trimmed_value() -> None:
    # "^alice$"-like: a regex must match the whole value, which has no trailing space
    assert matches(Matcher("header", "regex", "x-dev", r"[a-z]+"), ("x-dev", " alice\t"))
    assert not matches(Matcher("header", "regex", "x-dev", r"alice\s"), ("x-dev", "alice "))


def test_an_empty_or_blank_value_is_present_and_empty() -> None:
    anything = Matcher("header", "regex", "x-dev", ".*")
    assert matches(anything, ("x-dev", ""))
    assert matches(anything, ("x-dev", " \t "))
    assert not matches(anything)  # absent: no value to match
    assert head(("x-dev", " \t ")).value("x-dev") == ""


# --- repeated headers: one value, joined by "," (Envoy's HeaderMatcher) ---------------------------


@pytest.mark.parametrize(("sent", "seen"), [
    (["alice"], "alice"),
    (["alice", "bob"], "alice,bob"),
    (["bob", "alice"], "bob,alice"),  # arrival order
    (["alice", "alice"], "alice,alice"),
    ([" alice ", "\tbob "], "alice,bob"),  # each value trimmed, then joined without spaces
    (["alice", ""], "alice,"),
    (["a, b", "c"], "a, b,c"),  # a value's own commas are kept as sent
])
def test_a_repeated_header_is_seen_as_its_values_joined_by_commas(sent: list[str],
                                                                  seen: str) -> None:
    assert head(*[("x-dev", v) for v in sent]).value("x-dev") == seen


@pytest.mark.parametrize("sent", [
    ["alice", "bob"], ["bob", "alice"], ["alice", "alice"], ["alice", ""], ["", "alice"],
])
def test_equals_does_not_match_one_of_several_values(sent: list[str]) -> None:
    # Envoy matches "alice,bob" against "alice": no; the relay must not take such a request
    # the mesh sent to the original pods (or the other way round)
    assert not matches(ALICE, *[("x-dev", v) for v in sent])


def test_equals_can_name_the_joined_value() -> None:
    assert matches(Matcher("header", "equals", "x-dev", "alice,bob"),
                   ("x-dev", "alice"), ("x-dev", " bob"))


def test_a_regex_must_match_all_the_joined_values() -> None:
    one_or_more = Matcher("header", "regex", "x-dev", r"alice(,alice)*")
    assert matches(one_or_more, ("x-dev", "alice"), ("x-dev", "alice "))
    assert not matches(one_or_more, ("x-dev", "alice"), ("x-dev", "bob"))
    assert not matches(Matcher("header", "regex", "x-dev", "alice"),
                       ("x-dev", "alice"), ("x-dev", "alice"))


def test_other_headers_between_repeats_do_not_matter() -> None:
    assert head(("x-dev", "a"), ("host", "h"), ("X-Dev", "b")).value("x-dev") == "a,b"


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent_name", "matcher_name"), [
    ("x-dev", "x-dev"), ("X-Dev", "x-dev"), ("X-DEV", "x-dev"), ("x-dev", "X-Dev"),
    ("x-DeV", "X-dEv"),
])
def test_header_names_are_case_insensitive(sent_name: str, matcher_name: str) -> None:
    assert matches(Matcher("header", "equals", matcher_name, "alice"), (sent_name, "alice"))


def test_repeats_in_different_case_are_one_header() -> None:
    sent = (("X-Dev", "alice"), ("x-dev", "bob"))
    assert head(*sent).value("X-DEV") == "alice,bob"
    assert not matches(ALICE, *sent)


def test_values_are_case_sensitive() -> None:
    assert not matches(ALICE, ("x-dev", "ALICE"))


def test_a_similar_name_is_another_header() -> None:
    assert not matches(ALICE, ("x-dev2", "alice"))
    assert not matches(ALICE, ("x_dev", "alice"))
    assert head(("x-dev2", "alice")).value("x-dev") is None


# --- baggage follows the same value rules ------------------------------------------------------


def test_baggage_in_repeated_headers_with_whitespace() -> None:
    rule = Rule.compile("r", [Matcher("baggage", "equals", "bridged", "carol")])
    assert rule.matches(head(("baggage", "a=1 "), ("Baggage", " bridged=carol\t")))
    assert not rule.matches(head(("baggage", "bridged=carolx")))
