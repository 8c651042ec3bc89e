"""A property-based test of the relay's HTTP/2 router (issue 11), in the way of
:mod:`.test_router_fuzz`.

Hypothesis draws a few HTTP/2 client connections, run at the same time through one real
:class:`~bridged.relay.router.HttpRouter` routing by ``x-dev`` (alice, bob, or none: the
origin) to three upstreams that record every stream they receive (:mod:`.h2kit`). Each
connection opens a few streams, each with its destination, a request body of a drawn size (0,
a few bytes, more than a frame, more than a stream window), request trailers or not, an answer
of a drawn size with or without trailers, and maybe a reset by the client part-way through its
body; the DATA of a connection's streams is interleaved in a drawn order. Checked after every
run, against what the upstreams actually received:

1. every stream that was not reset reached exactly the destination its ``x-dev`` names, once,
   whole, with the exact body (hash) and trailers it was sent with;
2. its answer reached the client intact: the destination's name, the body hash it computed,
   the trailers it saw, its own response body (hash) and trailers;
3. a reset stream never shows up whole at an upstream: if it reached one it was reset there
   with the client's code;
4. no stream of one client connection was carried on an upstream connection that carried
   another's (each client has its own), and no upstream saw a stream nobody sent;
5. no connection got GOAWAY, and bridged logged no error.

A bounded run by default (500 examples, about 10 s); ``BRIDGED_H2_FUZZ_EXAMPLES=N`` runs N examples.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridged.relay.router.h2peer import STREAM_WINDOW

from .h2kit import E, H2Client, body_for, pattern_sha, sha, upstream_name, world

EXAMPLES = int(os.environ.get("BRIDGED_H2_FUZZ_EXAMPLES", "500"))
#: bytes a client writes per DATA step: two frames and a bit, so steps cross frame bounds
CHUNK = 40_000
#: seconds one example may take before it counts as hung (the machine is shared)
EXAMPLE_WAIT = 60.0


@dataclass(frozen=True)
class StreamPlan:
    dev: str | None
    up: int  # request body bytes
    down: int  # response body bytes
    trailers: bool  # request trailers
    answer_trailers: bool
    reset_after: int | None  # reset after this many DATA steps (None: never)
    code: int

    @property
    def bodiless(self) -> bool:
        return self.up == 0 and not self.trailers and self.reset_after is None

    @property
    def chunks(self) -> int:
        whole = -(-self.up // CHUNK)
        return whole if self.reset_after is None else min(self.reset_after, whole)

    @property
    def steps(self) -> int:
        return 1 if self.bodiless else 2 + self.chunks  # headers, DATA…, end or reset


@dataclass(frozen=True)
class ConnPlan:
    streams: tuple[StreamPlan, ...]
    picks: tuple[int, ...]  # which stream takes each next step: the interleaving


SIZES = st.sampled_from([0, 1, 100, 16_384, 70_000, STREAM_WINDOW + 5_000])


@st.composite
def stream_plans(draw: st.DrawFn) -> StreamPlan:
    up = draw(SIZES)
    reset_after = draw(st.one_of(st.none(), st.integers(0, -(-up // CHUNK))))
    return StreamPlan(draw(st.sampled_from([None, "alice", "bob"])), up,
                      draw(st.sampled_from([0, 10, 70_000])), draw(st.booleans()),
                      draw(st.booleans()), reset_after,
                      draw(st.sampled_from([E.CANCEL, E.INTERNAL_ERROR])))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ConnPlan, ...]:
    conns = []
    for _ in range(draw(st.integers(1, 3))):
        streams = tuple(draw(st.lists(stream_plans(), min_size=1, max_size=4)))
        steps = sum(s.steps for s in streams)
        picks = tuple(draw(st.lists(st.integers(0, 3), min_size=steps, max_size=steps)))
        conns.append(ConnPlan(streams, picks))
    return tuple(conns)


def tag(ci: int, si: int) -> str:
    return f"c{ci}s{si}"


def request_trailers(t: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-sum", sha(t.encode()).encode()), (b"x-tag", t.encode())]


async def run_connection(w: object, ci: int, plan: ConnPlan) -> H2Client:
    c = await H2Client(w.pulse, f"c{ci}").open(w.port)  # type: ignore[attr-defined]
    sids: dict[int, int] = {}
    done = [0] * len(plan.streams)  # steps taken, per stream
    for pick in plan.picks:
        left = [si for si, s in enumerate(plan.streams) if done[si] < s.steps]
        si = left[pick % len(left)]
        s, step, t = plan.streams[si], done[si], tag(ci, si)
        done[si] += 1
        body = body_for(t, s.up)
        if step == 0:
            extra = [(b"x-size", b"%d" % s.down)]
            if s.answer_trailers:
                extra.append((b"x-trailers", b"1"))
            sids[si] = c.start(f"/{t}", s.dev, t, extra, end=s.bodiless)
        elif step <= s.chunks:
            await c.send(sids[si], body[(step - 1) * CHUNK:step * CHUNK], end=False)
        elif s.reset_after is not None:
            c.reset(sids[si], s.code)
        else:
            await c.send(sids[si], b"", request_trailers(t) if s.trailers else None)
    for si, s in enumerate(plan.streams):
        if s.reset_after is None:
            await c.answer(sids[si], f"c{ci}'s answer on {tag(ci, si)}")
    c.sids = sids  # type: ignore[attr-defined]
    return c


def failures(w: object, scenario: tuple[ConnPlan, ...], clients: list[H2Client]) -> list[str]:
    out: list[str] = []
    seen: dict[str, list] = defaultdict(list)
    carried: dict[tuple[str, int], set[str]] = defaultdict(set)
    for st_ in w.all():  # type: ignore[attr-defined]
        seen[st_.h("x-req") or "?"].append(st_)
        carried[(st_.upstream, st_.conn)].add(st_.h("x-client") or "?")
    planned = {tag(ci, si) for ci, p in enumerate(scenario) for si in range(len(p.streams))}
    out += [f"an upstream saw a stream nobody sent: {t}" for t in seen if t not in planned]
    out += [f"{up}#{n} carried streams of {sorted(who)}" for (up, n), who in carried.items()
            if len(who) > 1]
    for ci, (plan, c) in enumerate(zip(scenario, clients, strict=True)):
        if c.goaway is not None:
            out.append(f"c{ci} got GOAWAY {c.goaway}")
        for si, s in enumerate(plan.streams):
            t, where = tag(ci, si), upstream_name(s.dev)
            got = seen.get(t, [])
            if s.reset_after is not None:
                out += [f"{t} (reset) reached {g.describe()} whole" for g in got if g.ended]
                out += [f"{t} (reset {s.code}) was reset there with {g.reset}" for g in got
                        if g.reset is not None and g.reset != s.code]
                continue
            if [g.upstream for g in got] != [where]:
                out.append(f"{t} for {where} reached {[g.describe() for g in got]}")
                continue
            g = got[0]
            trailers = request_trailers(t) if s.trailers else None
            if not g.complete or g.body_sha != sha(body_for(t, s.up)) or g.trailers != trailers:
                out.append(f"{t} reached {where} damaged: {g.describe()} trailers={g.trailers}")
            a = c.answers[c.sids[si]]  # type: ignore[attr-defined]
            want_trailers = [(b"x-who-trailer", where.encode()), (b"grpc-status", b"0")] \
                if s.answer_trailers else None
            seen_trailers = "; ".join(f"{n.decode()}={v.decode()}" for n, v in trailers or ())
            if not (a.ended and a.reset is None and a.status == 200 and a.h("x-who") == where
                    and a.h("x-req") == t and a.h("x-body-sha") == g.body_sha
                    and a.h("x-trailers-seen") == seen_trailers and a.body_len == s.down
                    and a.body_sha == pattern_sha(s.down, t) and a.trailers == want_trailers):
                out.append(f"{t}'s answer came damaged: {a.headers} body={a.body_len} "
                           f"reset={a.reset} trailers={a.trailers}")
    return out


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorLog]:
    log = ErrorLog()
    logging.getLogger("bridged").addHandler(log)
    try:
        yield log
    finally:
        logging.getLogger("bridged").removeHandler(log)


async def run_scenario(scenario: tuple[ConnPlan, ...]) -> list[str]:
    async with world() as w:
        clients = await asyncio.gather(*(run_connection(w, ci, p)
                                         for ci, p in enumerate(scenario)))
        try:
            # the resets reach the upstreams after the answers: wait for those that will
            def resets_arrived() -> bool:
                return all(g.reset is not None or g.ended for g in w.all()
                           if g.h("x-req") in resets)
            resets = {tag(ci, si) for ci, p in enumerate(scenario)
                      for si, s in enumerate(p.streams) if s.reset_after is not None}
            await w.pulse.until(resets_arrived, "the resets at the upstreams")
            return failures(w, scenario, clients)
        finally:
            for c in clients:
                await c.close()


@pytest.mark.timeout(max(300, EXAMPLES * 4))
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          print_blob=True, suppress_health_check=[HealthCheck.too_slow,
                                                  HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_h2_router_fuzz(scenario: tuple[ConnPlan, ...], errors: ErrorLog) -> None:
    found = asyncio.run(asyncio.wait_for(run_scenario(scenario), EXAMPLE_WAIT))
    found += [f"bridged logged an error: {line}" for line in errors.records]
    errors.records.clear()
    assert not found, "\n".join(found)
