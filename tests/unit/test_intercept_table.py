"""bridged.routing.table: the relay's intercept table, driven by scripts of events.

Each scenario is a playbook: a list of ``(action, args, expected)`` steps run in order against one
fresh :class:`InterceptTable`. Leases last ``TTL`` seconds; time is just a number.

Actions and what they return (so the expected column reads like the table's answer):

- ``claim session claim now`` / ``overwrite session claim now``: ``granted(*displaced)``, where a
  displaced holding reads ``"id@session:port"``; or ``refused(*fragments of the message)``;
- ``release session id``: the released id or None;
- ``renew session [ids] now``: the ids reported lost;
- ``expire now`` / ``drop session``: the ids removed, in order;
- ``route port now``: the id of the holding that gets the port's traffic, or None;
- ``state``: every holding as ``{id: (session, port, expires_at)}``.
"""

import pytest

from bridged.protocol import InterceptClaim, Matcher
from bridged.routing.table import InterceptTable, TableConflict

TTL = 10.0


def tcp(claim_id: str, port: int) -> InterceptClaim:
    """A whole-port (exclusive) claim."""
    return InterceptClaim(claim_id, port)


def http(claim_id: str, port: int) -> InterceptClaim:
    """A per-request claim: it has matchers, so it is not exclusive."""
    return InterceptClaim(claim_id, port, mode="http",
                          matchers=(Matcher("header", "equals", "x-dev", claim_id),))


def granted(*displaced: str) -> tuple[str, tuple[str, ...]]:
    return ("granted", displaced)


class refused:  # lower case: reads as a verb in the scripts
    """Matches a refusal whose message contains every fragment."""

    def __init__(self, *fragments: str) -> None:
        self.fragments = fragments

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, tuple) and other[0] == "refused"
                and all(f in other[1] for f in self.fragments))

    def __repr__(self) -> str:
        return f"refused{self.fragments!r}"


def _claim(table, session, claim, now, *, overwrite=False):
    try:
        _, displaced = table.claim(session, claim, now=now, ttl=TTL, overwrite=overwrite)
    except TableConflict as exc:
        return ("refused", str(exc))
    return granted(*(f"{h.claim.id}@{h.session}:{h.port}" for h in displaced))


def _release(table, session, intercept_id):
    holding = table.release(session, intercept_id)
    return None if holding is None else holding.claim.id


def _route(table, port, now):
    holding = table.route_port(port, now)
    return None if holding is None else holding.claim.id


def _state(table):
    state = {h.claim.id: (h.session, h.port, h.expires_at) for h in table.holdings()}
    assert len(table) == len(state)
    return state


ACTIONS = {
    "claim": _claim,
    "overwrite": lambda table, session, claim, now: _claim(table, session, claim, now,
                                                           overwrite=True),
    "release": _release,
    "renew": lambda table, session, ids, now: table.renew(session, tuple(ids), now=now, ttl=TTL),
    "expire": lambda table, now: [h.claim.id for h in table.expire(now)],
    "drop": lambda table, session: [h.claim.id for h in table.drop_session(session)],
    "route": _route,
    "on_port": lambda table, port: [h.claim.id for h in table.on_port(port)],
    "state": _state,
}


SCENARIOS = {
    "second exclusive claim on a held port is refused, naming the holder": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s2", tcp("b", 80), 1.0), refused(
            "port 80 is already intercepted (the whole port, intercept 'a'); "
            "leave it first, or use --overwrite to take it over")),
        ("state", (), {"a": ("s1", 80, 10.0)}),
        ("route", (80, 5.0), "a"),
    ],
    "the holder's own session is refused too when it uses another id": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s1", tcp("b", 80), 0.0), refused("intercept 'a'", "--overwrite")),
        ("state", (), {"a": ("s1", 80, 10.0)}),
    ],
    "overwrite displaces the exclusive holder": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("overwrite", ("s2", tcp("b", 80), 1.0), granted("a@s1:80")),
        ("state", (), {"b": ("s2", 80, 11.0)}),
        ("route", (80, 2.0), "b"),
        ("release", ("s1", "a"), None),
        ("renew", ("s1", ["a"], 3.0), ["a"]),
    ],
    "overwrite on a free port displaces nothing": [
        ("overwrite", ("s1", tcp("a", 80), 0.0), granted()),
        ("state", (), {"a": ("s1", 80, 10.0)}),
    ],
    "same id from another session replaces the holding (reconnect)": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s2", tcp("a", 80), 5.0), granted()),
        ("state", (), {"a": ("s2", 80, 15.0)}),
        ("release", ("s1", "a"), None),
        ("renew", ("s1", ["a"], 6.0), ["a"]),
        ("drop", ("s1",), []),
        ("route", (80, 14.0), "a"),
        ("renew", ("s2", ["a"], 6.0), []),
        ("state", (), {"a": ("s2", 80, 16.0)}),
    ],
    "same id re-registered by its own session renews it": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s1", tcp("a", 80), 7.0), granted()),
        ("state", (), {"a": ("s1", 80, 17.0)}),
    ],
    "claims with matchers share a port and are not routed as whole-port": [
        ("claim", ("s1", http("h1", 80), 0.0), granted()),
        ("claim", ("s2", http("h2", 80), 0.0), granted()),
        ("state", (), {"h1": ("s1", 80, 10.0), "h2": ("s2", 80, 10.0)}),
        ("on_port", (80,), ["h1", "h2"]),
        ("route", (80, 1.0), None),
    ],
    "an exclusive claim is refused by matcher claims, and overwrite displaces all of them": [
        ("claim", ("s1", http("h1", 80), 0.0), granted()),
        ("claim", ("s2", http("h2", 80), 0.0), granted()),
        ("claim", ("s3", tcp("t", 80), 1.0), refused(
            "port 80 is already intercepted (per-request matchers, intercept 'h1')",
            "--overwrite")),
        ("state", (), {"h1": ("s1", 80, 10.0), "h2": ("s2", 80, 10.0)}),
        ("overwrite", ("s3", tcp("t", 80), 1.0), granted("h1@s1:80", "h2@s2:80")),
        ("state", (), {"t": ("s3", 80, 11.0)}),
        ("route", (80, 2.0), "t"),
    ],
    "a matcher claim is refused by an exclusive holder, and overwrite displaces it": [
        ("claim", ("s1", tcp("t", 80), 0.0), granted()),
        ("claim", ("s2", http("h", 80), 1.0), refused("(the whole port, intercept 't')",
                                                      "--overwrite")),
        ("overwrite", ("s2", http("h", 80), 1.0), granted("t@s1:80")),
        ("route", (80, 2.0), None),
        ("claim", ("s3", http("h2", 80), 2.0), granted()),
        ("state", (), {"h": ("s2", 80, 11.0), "h2": ("s3", 80, 12.0)}),
    ],
    "overwrite by a matcher claim leaves other matcher claims alone": [
        ("claim", ("s1", http("h1", 80), 0.0), granted()),
        ("overwrite", ("s2", http("h2", 80), 0.0), granted()),
        ("state", (), {"h1": ("s1", 80, 10.0), "h2": ("s2", 80, 10.0)}),
    ],
    "claims on different ports do not interact": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s2", tcp("b", 81), 0.0), granted()),
        ("route", (80, 1.0), "a"),
        ("route", (81, 1.0), "b"),
        ("route", (82, 1.0), None),
    ],
    "release only by the owning session": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("release", ("s2", "a"), None),
        ("state", (), {"a": ("s1", 80, 10.0)}),
        ("release", ("s1", "nope"), None),
        ("release", ("s1", "a"), "a"),
        ("state", (), {}),
        ("release", ("s1", "a"), None),
        ("claim", ("s2", tcp("b", 80), 1.0), granted()),
    ],
    "renew extends held leases and reports the ids the session does not hold": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s1", tcp("b", 81), 0.0), granted()),
        ("claim", ("s2", tcp("c", 82), 0.0), granted()),
        ("renew", ("s1", ["a", "b", "c", "zz"], 4.0), ["c", "zz"]),
        ("state", (), {"a": ("s1", 80, 14.0), "b": ("s1", 81, 14.0), "c": ("s2", 82, 10.0)}),
        ("renew", ("s1", [], 5.0), []),
        ("renew", ("s2", ["c"], 9.5), []),
        ("state", (), {"a": ("s1", 80, 14.0), "b": ("s1", 81, 14.0), "c": ("s2", 82, 19.5)}),
    ],
    "a renewed lease keeps routing past the first expiry": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("renew", ("s1", ["a"], 9.0), []),
        ("expire", (12.0,), []),
        ("route", (80, 18.9), "a"),
        ("route", (80, 19.0), None),
    ],
    "expire removes exactly the expired holdings (expires_at == now is expired)": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s1", tcp("b", 81), 5.0), granted()),
        ("claim", ("s2", http("c", 82), 9.0), granted()),
        ("expire", (9.999,), []),
        ("state", (), {"a": ("s1", 80, 10.0), "b": ("s1", 81, 15.0), "c": ("s2", 82, 19.0)}),
        ("expire", (10.0,), ["a"]),
        ("state", (), {"b": ("s1", 81, 15.0), "c": ("s2", 82, 19.0)}),
        ("expire", (10.0,), []),
        ("expire", (100.0,), ["b", "c"]),
        ("state", (), {}),
    ],
    "an expired holding blocks no claim, swept or not": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s2", tcp("b", 80), 10.0), granted()),
        ("state", (), {"b": ("s2", 80, 20.0)}),
    ],
    "route ignores a holding whose lease ran out, before expire() sweeps it": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("route", (80, 9.999), "a"),
        ("route", (80, 10.0), None),
        ("route", (80, 50.0), None),
        ("state", (), {"a": ("s1", 80, 10.0)}),
    ],
    "drop_session removes only that session's holdings": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s1", http("b", 81), 0.0), granted()),
        ("claim", ("s2", tcp("c", 82), 0.0), granted()),
        ("claim", ("s2", http("d", 81), 0.0), granted()),
        ("drop", ("s1",), ["a", "b"]),
        ("state", (), {"c": ("s2", 82, 10.0), "d": ("s2", 81, 10.0)}),
        ("drop", ("s1",), []),
        ("drop", ("s9",), []),
        ("claim", ("s3", tcp("x", 80), 1.0), granted()),
    ],
    "moving an id to another port reports the old holding as displaced": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s1", tcp("a", 81), 1.0), granted("a@s1:80")),
        ("state", (), {"a": ("s1", 81, 11.0)}),
        ("on_port", (80,), []),
        ("route", (80, 2.0), None),
        ("route", (81, 2.0), "a"),
    ],
    "moving an id onto a held port is refused and keeps the old holding": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s2", tcp("b", 81), 0.0), granted()),
        ("claim", ("s1", tcp("a", 81), 1.0), refused("port 81", "intercept 'b'")),
        ("state", (), {"a": ("s1", 80, 10.0), "b": ("s2", 81, 10.0)}),
    ],
    "overwrite while moving an id displaces both the blocker and the old holding": [
        ("claim", ("s1", tcp("a", 80), 0.0), granted()),
        ("claim", ("s2", tcp("b", 81), 0.0), granted()),
        ("overwrite", ("s1", tcp("a", 81), 1.0), granted("b@s2:81", "a@s1:80")),
        ("state", (), {"a": ("s1", 81, 11.0)}),
    ],
}


@pytest.mark.parametrize("script", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_intercept_table(script):
    table = InterceptTable()
    for number, (action, args, expected) in enumerate(script, 1):
        got = ACTIONS[action](table, *args)
        assert got == expected, f"step {number}: {action} {args}: got {got!r}"
        _ports_agree(table)


def _ports_agree(table: InterceptTable) -> None:
    """What the table keeps per port (read by the router per request) is what it holds."""
    for port in {80, 81, 443, *(h.port for h in table.holdings())}:
        assert table.at_port(port) == tuple(h for h in table.holdings() if h.port == port)
        assert table.mirrors_at(port) == tuple(h for h in table.holdings()
                                               if h.port == port and h.claim.mirror)


def test_claim_returns_the_new_holding():
    table = InterceptTable()
    holding, displaced = table.claim("s1", tcp("a", 80), now=3.0, ttl=TTL)
    assert (holding.claim, holding.session, holding.expires_at, holding.port) == (
        tcp("a", 80), "s1", 13.0, 80)
    assert displaced == []
    assert table.holdings() == [holding]


def test_empty_table():
    table = InterceptTable()
    assert (len(table), table.holdings(), table.on_port(80)) == (0, [], [])
    assert table.route_port(80, 0.0) is None
    assert table.expire(1e9) == []
    assert table.renew("s1", ("a",), now=0.0, ttl=TTL) == ["a"]


def test_an_intercept_id_is_reattached_only_by_its_owner() -> None:
    table = InterceptTable()
    table.claim("s1", tcp("a", 80), now=0.0, ttl=TTL, owner="SHA256:alice")
    # alice's daemon reconnects: new session, same key
    holding, displaced = table.claim("s2", tcp("a", 80), now=1.0, ttl=TTL, owner="SHA256:alice")
    assert (holding.session, displaced) == ("s2", [])
    # mallory learned the id: refused, whatever the flags
    for overwrite in (False, True):
        with pytest.raises(TableConflict, match="belongs to another developer"):
            table.claim("s3", tcp("a", 80), now=2.0, ttl=TTL, owner="SHA256:mallory",
                        overwrite=overwrite)
    assert table.route_port(80, 2.0).session == "s2"  # type: ignore[union-attr]


def test_http_claims_become_rules_for_the_router() -> None:
    from bridged.routing.decide import decide
    from bridged.routing.rules import RequestHead

    table = InterceptTable()
    table.claim("s1", http("alice", 80), now=0.0, ttl=TTL, owner="A")
    table.claim("s2", http("bob", 80), now=0.0, ttl=TTL, owner="B")
    rules = table.rules(80, now=1.0)
    assert [r.intercept_id for r in rules] == ["alice", "bob"]
    # http() matches on x-dev: <claim id>
    assert decide(RequestHead("GET", "/", (("x-dev", "bob"),)), rules).target == "bob"
    assert decide(RequestHead("GET", "/", (("x-dev", "carol"),)), rules).target == "origin"
    # a lapsed lease routes nothing, swept or not
    assert [r.intercept_id for r in table.rules(80, now=TTL + 1)] == []


def test_a_claim_with_a_bad_matcher_is_refused() -> None:
    table = InterceptTable()
    bad = InterceptClaim("x", 80, "http", (Matcher("header", "regex", "x-a", "("),))
    with pytest.raises(TableConflict, match="bad regex"):
        table.claim("s1", bad, now=0.0, ttl=TTL)
    assert len(table) == 0


def test_a_renewal_after_the_lease_lapsed_reports_the_intercept_lost_and_it_is_taken_back(
) -> None:
    """While the lease had lapsed, nothing was routed to it and its Service may have been
    given back: the renewal says lost, so the daemon registers it again (and the relay
    redirects again); its own reservation lets it."""
    table = InterceptTable()
    table.claim("s1", tcp("a", 80), now=0.0, ttl=TTL, owner="SHA256:alice", resume=3600.0)
    assert table.renew("s1", ("a",), now=TTL / 2, ttl=TTL) == []  # in time: extended
    lapsed = TTL / 2 + TTL + 1.0
    assert table.route_port(80, lapsed) is None  # not routed, but reserved
    assert table.renew("s1", ("a",), now=lapsed, ttl=TTL) == ["a"]
    holding, _ = table.claim("s1", tcp("a", 80), now=lapsed, ttl=TTL, owner="SHA256:alice",
                             resume=3600.0)
    assert table.route_port(80, lapsed) is holding


def test_the_ports_lists_follow_every_change():
    """The router reads a port's holdings (and its mirrors) per request from what the table
    keeps; every claim, release, drop and expiry changes them at once."""
    table = InterceptTable()
    assert table.at_port(80) == () and table.mirrors_at(80) == ()
    table.claim("s1", InterceptClaim("m1", 80, mode="http", mirror=True), now=0, ttl=TTL)
    table.claim("s2", http("bob", 80), now=0, ttl=TTL)
    assert [h.claim.id for h in table.at_port(80)] == ["m1", "bob"]
    assert [h.claim.id for h in table.mirrors_at(80)] == ["m1"]
    table.release("s1", "m1")
    assert [h.claim.id for h in table.at_port(80)] == ["bob"] and table.mirrors_at(80) == ()
    table.claim("s3", InterceptClaim("m2", 80, mode="http", mirror=True), now=1, ttl=TTL)
    assert [h.claim.id for h in table.mirrors_at(80)] == ["m2"]
    table.drop_session("s3")
    assert table.mirrors_at(80) == ()
    table.expire(TTL + 1)
    assert table.at_port(80) == ()
    _ports_agree(table)
