"""Matchers and intercept rules, compiled once from the control protocol's specs.

Semantics follow the Gateway API's HTTPRoute matches as Envoy implements them (the ``gateway``
and ``cilium`` redirect strategies route with Envoy), so that the mesh and the relay's own
router agree on every request:
- ``header``: the name is case-insensitive. A field value is what the client sent without the
  optional whitespace (spaces, tabs) before and after it: it is not part of the value (RFC 9110
  §5.5), Envoy's HTTP/1 codec strips it, and httptools strips only the leading part, so
  ``x-dev: alice `` is ``alice``. A header sent several times is matched as *one* value: its
  values, each trimmed, joined by ``,`` in arrival order (RFC 9110 §5.3; Envoy's HeaderMatcher
  since CVE-2020-25017, which the Gateway API leaves to the implementation): ``x-dev: alice``
  sent twice is ``alice,alice``, which ``equals alice`` does not match (and a regex must match
  all of it). ``equals`` compares that value exactly (case-sensitive); ``regex`` must match the
  whole of it; an absent header matches nothing;
- ``path``: ``equals`` is the exact path, ``prefix`` matches by path elements (``/api`` matches
  ``/api`` and ``/api/v1``, not ``/apiary``; a trailing ``/`` is ignored), ``regex`` must match
  the whole path; the query string is never part of the path;
- ``method``: exact and case-sensitive (RFC 9110 §9.1);
- ``baggage``: a member of the W3C ``baggage`` header (all of them, if sent several times),
  key and value percent-decoded, properties ignored: ``equals`` or ``regex`` on the value;
- ``grpc-method``: GRPCRoute's method match: a gRPC call's path is ``/package.Service/Method``;
  ``name`` is the service, ``value`` the method, either empty meaning any (not both). With
  ``equals`` both compare exactly (case-sensitive); with ``regex`` each must match its whole
  part. As Envoy translates it: service and method is the exact path, service alone the path
  prefix ``/service/``, method alone ``/<anything without a slash>/method``.
A rule matches when all its matchers do (AND); a rule without matchers matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import unquote

from ..protocol import Matcher

Headers = Sequence[tuple[str, str]]  # (name, value) in arrival order; names in any case
#: optional whitespace around a field value (RFC 9110 §5.6.3): not part of it
OWS = " \t"


class BadMatcher(ValueError):
    """A matcher that cannot be compiled: the message says which and why."""


@dataclass(frozen=True)
class RequestHead:
    """What routing may look at: never the body."""

    method: str
    target: str  # the request-target as sent: path and query
    headers: Headers

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0].split("#", 1)[0] or "/"

    def values(self, name: str) -> list[str]:
        """Each value of header ``name`` in arrival order, without the whitespace around it."""
        lname = name.lower()
        return [v.strip(OWS) for n, v in self.headers if n.lower() == lname]

    def value(self, name: str) -> str | None:
        """What a header matcher sees: the values joined by ``,`` (None: not sent)."""
        lname = name.lower()  # (values(), inlined: routing calls this for every request)
        values = [v.strip(OWS) for n, v in self.headers if n.lower() == lname]
        if not values:
            return None
        return values[0] if len(values) == 1 else ",".join(values)


Test = Callable[[RequestHead], bool]


def _value_test(matcher: Matcher) -> Callable[[str], bool]:
    if matcher.op == "equals":
        expected = matcher.value
        return lambda value: value == expected
    if matcher.op == "regex":
        try:
            pattern = re.compile(matcher.value)
        except re.error as exc:
            raise BadMatcher(f"bad regex {matcher.value!r} for {matcher.kind}: {exc}") from None
        return lambda value: pattern.fullmatch(value) is not None
    raise BadMatcher(f"{matcher.kind} matchers take op equals or regex, not {matcher.op!r}")


def _path_test(matcher: Matcher) -> Test:
    if matcher.op == "prefix":
        if not matcher.value.startswith("/"):
            raise BadMatcher(f"path prefix {matcher.value!r} must start with '/'")
        prefix = matcher.value.rstrip("/")
        return lambda head: (not prefix) or head.path == prefix or \
            head.path.startswith(prefix + "/")
    if matcher.op == "equals" and not matcher.value.startswith("/"):
        raise BadMatcher(f"path {matcher.value!r} must start with '/'")
    test = _value_test(matcher)
    return lambda head: test(head.path)


def baggage_members(head: RequestHead) -> dict[str, str]:
    """The members of every ``baggage`` header (W3C Baggage): later ones win."""
    members: dict[str, str] = {}
    for header in head.values("baggage"):
        for member in header.split(","):
            key, sep, rest = member.partition("=")
            if not sep:
                continue
            value = rest.split(";", 1)[0]  # properties are not part of the value
            members[unquote(key.strip())] = unquote(value.strip())
    return members


def compile_matcher(matcher: Matcher) -> Test:
    kind = matcher.kind
    if kind == "header":
        if not matcher.name:
            raise BadMatcher("a header matcher needs a header name")
        test = _value_test(matcher)
        name = matcher.name
        return lambda head: (value := head.value(name)) is not None and test(value)
    if kind == "path":
        return _path_test(matcher)
    if kind == "method":
        if matcher.op != "equals":
            raise BadMatcher("method matchers take op equals")
        method = matcher.value
        return lambda head: head.method == method
    if kind == "baggage":
        if not matcher.name:
            raise BadMatcher("a baggage matcher needs the member's key as name")
        test = _value_test(matcher)
        key = matcher.name
        return lambda head: (value := baggage_members(head).get(key)) is not None and test(value)
    if kind == "grpc-method":
        return _grpc_method_test(matcher)
    raise BadMatcher(f"unknown matcher kind {kind!r}: header, path, method, baggage or "
                     "grpc-method")


def _grpc_method_test(matcher: Matcher) -> Test:
    service, method = matcher.name, matcher.value
    if not service and not method:
        raise BadMatcher("a grpc-method matcher needs a service, a method or both")
    if matcher.op == "equals":
        for part in (service, method):
            if "/" in part:
                raise BadMatcher(f"gRPC service or method {part!r} cannot contain '/'")
        if service and method:
            exact = f"/{service}/{method}"
            return lambda head: head.path == exact
        if service:
            prefix = f"/{service}/"
            return lambda head: head.path.startswith(prefix) and "/" not in \
                head.path[len(prefix):]
        suffix = f"/{method}"
        return lambda head: head.path.endswith(suffix) and head.path.count("/") == 2 and \
            len(head.path) > len(suffix) + 1
    if matcher.op != "regex":
        raise BadMatcher(f"grpc-method matchers take op equals or regex, not {matcher.op!r}")
    try:
        pattern = re.compile(f"/(?:{service or '[^/]+'})/(?:{method or '[^/]+'})")
    except re.error as exc:
        raise BadMatcher(f"bad regex in grpc-method {service!r}/{method!r}: {exc}") from None
    return lambda head: pattern.fullmatch(head.path) is not None


ORIGIN = "origin"


@dataclass(frozen=True)
class Route:
    """Where a request goes: an intercept id, or :data:`ORIGIN` (the Service's own pods)."""

    target: str

    @property
    def to_origin(self) -> bool:
        return self.target == ORIGIN


@dataclass(frozen=True)
class Rule:
    """One intercept's rule, compiled; ``order`` breaks ties (earlier registration wins)."""

    intercept_id: str
    matchers: tuple[Matcher, ...]
    tests: tuple[Test, ...]
    order: int

    @classmethod
    def compile(cls, intercept_id: str, matchers: Iterable[Matcher], order: int = 0) -> Rule:
        ms = tuple(matchers)
        return cls(intercept_id, ms, tuple(compile_matcher(m) for m in ms), order)

    def matches(self, head: RequestHead) -> bool:
        for test in self.tests:  # (a loop: all() of a generator costs a frame per request)
            if not test(head):
                return False
        return True

    @cached_property
    def route(self) -> Route:
        """Where the requests it matches go (made once, not per request)."""
        return Route(self.intercept_id)
