"""Header matching through a real HttpRouter on loopback, with the bytes a client sends: what
httptools hands the router (it keeps trailing whitespace) must be matched as Envoy matches it
(:mod:`bridged.routing.rules`), or the relay and the mesh send one request to two places."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridged.protocol import Matcher
from bridged.routing.decide import Route, decide
from bridged.routing.rules import RequestHead, Rule

from .test_http_router import _app, _serve
from .test_http_router_edges import connect, guarded, read_response, running_router, who

ALICE = [Rule.compile("alice", [Matcher("header", "equals", "x-dev", "alice")], order=1)]


def by_rules(head: RequestHead) -> Route:
    return decide(head, ALICE)


@pytest.fixture
async def apps() -> AsyncIterator[dict[str, int]]:
    """"origin" (the Service's pods) and "alice" (her laptop): each answers with its name."""
    origin, origin_port = await _serve(_app("origin"))
    alice, alice_port = await _serve(_app("alice"))
    yield {"origin": origin_port, "alice": alice_port}
    await alice.cleanup()
    await origin.cleanup()


# (header lines as sent, who must answer); each request on the same keep-alive connection
CASES = [
    (b"x-dev: alice \r\n", "alice"),  # the example: a trailing space
    (b"x-dev: alice\t\r\n", "alice"),
    (b"x-dev:\t alice \t\r\n", "alice"),
    (b"x-dev:alice\r\n", "alice"),
    (b"X-DEV: alice\r\n", "alice"),
    (b"x-dev: al ice\r\n", "origin"),
    (b"x-dev: Alice\r\n", "origin"),
    (b"x-dev: alice\r\nx-dev: alice\r\n", "origin"),  # Envoy sees "alice,alice"
    (b"x-dev: zed\r\nX-Dev: alice \r\n", "origin"),  # "zed,alice"
    (b"", "origin"),
]


@guarded(20)
async def test_the_router_matches_values_without_surrounding_whitespace_and_joins_repeats(
    apps: dict[str, int],
) -> None:
    async with running_router(apps, by_rules) as relay, connect(relay.port) as (reader, writer):
        for n, (lines, expected) in enumerate(CASES):
            writer.write(b"GET /r%d HTTP/1.1\r\nHost: svc\r\n%b\r\n" % (n, lines))
            await writer.drain()
            status, _, body = await read_response(reader)
            assert status == 200
            assert who(body) == (expected, f"/r{n}"), lines
