"""A property-based, differential test of the relay's HTTP router (issue 9, "How it is checked").

Hypothesis draws a few keep-alive client connections (in waves: the connections of a wave run
concurrently, the next wave starts once they ended), each sending valid and hostile requests
pipelined or one by one (:mod:`.router_fuzz_plans`), through one real
:class:`~bridged.relay.router.HttpRouter` that routes with the real rules (``x-dev: alice``
/ ``bob``, else the origin) and reuses its upstream connections, to three upstreams that record
the exact bytes they receive and answer as each request asks (:mod:`.recording_upstream`).
Checked after every run:

1. every request an upstream received is one the router parsed and decided (a smuggled one is
   not), reached the upstream its x-dev names, at most once, with the body the client sent;
   hostile requests never reach one whole, a CONNECT never; bytes after a 101 are the client's
   own; only a connection that began with non-HTTP bytes may reach the origin as such;
2. every response a client read answers a request of *that* connection, in order (no
   cross-connection leak, no desync), from the right upstream, with its body intact;
3. a connection that got fewer answers than it asked for was ended for a reason the model
   knows (a hostile request, a refused or accepted upgrade, Connection: close), never hung;
4. no crash: nothing logged at ERROR by bridged, nothing reached the loop's exception handler;
5. bounded memory: no downstream connection ever buffered more than ``BUFFER_BOUND`` (looked at
   on every event of the run), and tracemalloc's peak stays under ``MEMORY_BOUND``.

A bounded run by default (CI, about 20 s); ``BRIDGED_FUZZ_EXAMPLES=5000`` runs that many
examples (a long local run, about 10 minutes). On a failure hypothesis prints the falsifying
scenario (every byte each client wrote) and a ``@reproduce_failure`` blob to replay it (and the
seed, ``--hypothesis-seed=N``, when a failure does not replay); the assertion lists what each
upstream received and what each client read. The explicit examples are issue 9's attacks: an
upgrade refused with a request glued behind it (its example verbatim, and one for another
developer), CONNECT, trailers past the head limit, and a head past it in one read.

The buffer bound looks at the router's internals by name (``queue``, ``active``, ``current``,
``held``, a request's ``out``): rename them there, rename them in :func:`buffered`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, example, given, settings

from bridged.protocol import Matcher
from bridged.relay.router import HttpRouter, tcp_upstream
from bridged.routing.decide import Route, decide
from bridged.routing.rules import RequestHead, Rule

from .recording_upstream import RecordingUpstream, recording_upstreams, sha256
from .router_fuzz_plans import (
    LENIENT,
    OPAQUE,
    VALID,
    ConnPlan,
    Item,
    Scenario,
    head,
    hostile,
    scenarios,
    upstream_for,
)

MiB = 1024 * 1024
#: examples per run: well under a minute on a shared 2-core machine; more for a long local run
EXAMPLES = int(os.environ.get("BRIDGED_FUZZ_EXAMPLES", "200"))
#: seconds a client waits for an owed answer, or for the end after its half-close: a router
#: that does neither by then has hung (generous: the machine is shared)
ANSWER_WAIT = 5.0
#: seconds one whole example may take before it counts as hung
EXAMPLE_WAIT = 60.0
#: bytes one downstream connection may hold at any time: a head (64 KiB), a socket read
#: (asyncio reads 256 KiB at a time) both ways, and slack; far below what a leak would reach
BUFFER_BOUND = 1 * MiB
#: tracemalloc peak over one example, and growth over the whole run (what the router and the
#: test keep, not hypothesis's memory of the examples it tried)
MEMORY_BOUND = 64 * MiB
#: examples between two looks at the run's growth (each look takes a snapshot: ~0.1 s)
GROWTH_CHECK_EVERY = 50
NOT_THE_ROUTERS = [tracemalloc.Filter(False, pattern) for pattern in (
    "*/hypothesis/*", "*/_pytest/*", "*/pluggy/*", tracemalloc.__file__)]

RULES = [Rule.compile(dev, [Matcher(kind="header", name="x-dev", op="equals", value=dev)],
                      order=n) for n, dev in enumerate(("alice", "bob"))]
RULE_TARGETS = [rule.intercept_id for rule in RULES]


# --- the router, its decisions and its buffers ---------------------------------------------


def buffered(down: Any) -> int:
    """Bytes one downstream connection holds: its transport's write buffer, the requests it
    keeps (their heads, unsent bytes, trailers), bytes held after an upgrade request, and its
    upstream's held response head. (The router's internals, looked at with getattr.)"""
    total = sum(map(len, getattr(down, "held", None) or ()))  # bytes after an upgrade
    transport = getattr(down, "transport", None)
    if transport is not None and not transport.is_closing():
        total += transport.get_write_buffer_size()
    requests = [*getattr(down, "queue", ()), getattr(down, "active", None),
                getattr(down, "current", None)]
    for r in filter(None, requests):
        total += sum(map(len, getattr(r, "out", None) or ()))
        for pairs in (getattr(r, "headers", None) or (), getattr(r, "trailers", None) or ()):
            total += sum(len(n) + len(v) for n, v in pairs)
        up = getattr(r, "upstream", None)
        if up is not None:
            total += sum(map(len, getattr(up, "held", None) or ()))
            if up.transport is not None and not up.transport.is_closing():
                total += up.transport.get_write_buffer_size()
    return total


@dataclass
class Watch:
    """What the run saw besides the bytes: the router's decisions and buffers, crashes."""

    downstreams: list[Any] = field(default_factory=list)
    decided: Counter[tuple[str, str]] = field(default_factory=Counter)  # (x-req, target)
    most_buffered: int = 0
    crashes: list[str] = field(default_factory=list)

    def sample(self) -> None:
        for down in self.downstreams:
            self.most_buffered = max(self.most_buffered, buffered(down))

    def decide(self, head: RequestHead) -> Route:
        route = decide(head, RULES)
        self.decided[(",".join(head.values("x-req")), route.target)] += 1
        return route


@contextlib.asynccontextmanager
async def running_router(upstreams: dict[str, RecordingUpstream], watch: Watch
                         ) -> AsyncIterator[int]:
    """An HttpRouter on 127.0.0.1 in front of the upstreams; closed with everything it holds."""

    async def open_upstream(route: Route, peer: tuple[str, int], factory: Any) -> Any:
        return await tcp_upstream("127.0.0.1", upstreams[route.target].port, factory,
                                  route.target)

    router = HttpRouter(watch.decide, open_upstream)

    def protocol() -> Any:
        down = router.protocol()
        watch.downstreams.append(down)
        return down

    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        router.close()
        for down in watch.downstreams:
            if down.transport is not None:
                down.transport.close()
        await asyncio.wait_for(server.wait_closed(), ANSWER_WAIT)


# --- clients ---------------------------------------------------------------------------------


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def value(self, name: str) -> str:
        return ",".join(v for n, v in self.headers if n == name)

    @property
    def from_router(self) -> bool:
        return not self.value("x-upstream") and b"bridged" in self.body

    @property
    def closes(self) -> bool:
        return "close" in self.value("connection").lower()

    def describe(self) -> str:
        return f"{self.status} {self.headers} {bytes(self.body[:200])!r}"


class ResponseReader:
    """Splits what a client reads into responses (interim ones dropped), then a tunnel."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.responses: list[Response] = []
        self.current: Response | None = None
        self.tunnel: bytearray | None = None  # what came back after a 101
        self.error = ""

    def feed(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel += data
        elif not self.error:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                self.tunnel = bytearray(data[int(exc.args[0]):])
            except httptools.HttpParserError as exc:
                self.error = f"{exc} in {data[:200]!r}"

    def on_message_begin(self) -> None:
        self.current = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        response, self.current = self.current, None
        assert response is not None
        if not 100 <= response.status < 200 or response.status == 101:
            self.responses.append(response)


@dataclass
class ClientRun:
    plan: ConnPlan
    sent: bytearray = field(default_factory=bytearray)  # handed to the socket, in order
    reader: ResponseReader = field(default_factory=ResponseReader)
    end: str = ""  # "eof", "reset", or "hang"
    unanswered: str = ""  # one by one: the item whose answer never came


async def run_client(port: int, plan: ConnPlan, watch: Watch) -> ClientRun:
    run = ClientRun(plan)
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                            ANSWER_WAIT)
    news = asyncio.Event()

    async def read() -> None:
        try:
            while data := await reader.read(256 * 1024):
                run.reader.feed(data)
                watch.sample()
                news.set()
            run.end = "eof"
        except ConnectionError:
            run.end = "reset"
        news.set()

    reading = asyncio.create_task(read())

    async def answered(count: int) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_WAIT
        while len(run.reader.responses) < count and run.reader.tunnel is None \
                and not reading.done():
            news.clear()
            try:
                await asyncio.wait_for(news.wait(), deadline - loop.time())
            except TimeoutError:
                return False
        return True

    try:
        owed = 0
        for group in plan.writes():
            if reading.done():
                break
            data = b"".join(plan.items[i].data for i in group)
            try:
                writer.write(data)
                run.sent += data
                await asyncio.wait_for(writer.drain(), ANSWER_WAIT)
            except (ConnectionError, TimeoutError):
                break
            watch.sample()
            if not plan.pipelined and plan.owed(group[0]):
                owed += 1
                if not await answered(owed):
                    run.unanswered = plan.items[group[0]].tag
                    break
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        try:
            await asyncio.wait_for(asyncio.shield(reading), ANSWER_WAIT)
        except TimeoutError:
            run.end = "hang"
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), ANSWER_WAIT)
        with contextlib.suppress(BaseException):
            await reading
    return run


@dataclass
class Outcome:
    runs: list[ClientRun]
    upstreams: dict[str, RecordingUpstream]
    watch: Watch
    left_open: list[str]


async def run_scenario(scenario: Scenario) -> Outcome:
    watch = Watch()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(
        lambda _, context: watch.crashes.append(
            f"{context.get('message')}: {context.get('exception')!r}"))
    runs: list[ClientRun] = []
    async with recording_upstreams(["origin", *RULE_TARGETS], watch.sample) as upstreams:
        async with running_router(upstreams, watch) as port:
            for wave in scenario.waves:
                runs += await asyncio.gather(*(run_client(port, plan, watch) for plan in wave))
        # the router is closed: every upstream connection it opened must close too
        conns = [c for u in upstreams.values() for c in u.connections]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.lost for c in conns)), ANSWER_WAIT)
        left_open = [f"{c.upstream.name}#{c.index}" for c in conns if not c.lost.done()]
    return Outcome(runs, upstreams, watch, left_open)


# --- the properties --------------------------------------------------------------------------


def upstream_failures(outcome: Outcome) -> Iterator[str]:
    """Property 1: what reached the upstreams is what the router parsed and decided."""
    items = {item.tag: item for run in outcome.runs for item in run.plan.items if item.tag}
    runs_by_tag = {item.tag: run for run in outcome.runs for item in run.plan.items}
    arrivals: Counter[str] = Counter()
    per_target: Counter[tuple[str, str]] = Counter()
    for upstream in outcome.upstreams.values():
        for conn in upstream.connections:
            where = f"{upstream.name}'s connection #{conn.index}"
            if conn.opaque:
                firsts = [run for run in outcome.runs
                          if run.plan.items[0].role == OPAQUE and run.sent.startswith(conn.raw)]
                if upstream.name != "origin" or not firsts:
                    yield (f"{where} received bytes that are no client's passed-through "
                           f"connection: {bytes(conn.raw[:300])!r}")
                continue
            if conn.error:
                yield (f"{where} received bytes that are not a request ({conn.error}) after "
                       f"{[r.describe() for r in conn.requests]}: {bytes(conn.raw[-300:])!r}")
            for request in conn.requests:
                tag = request.tag
                item = items.get(tag or "")
                if tag is None or item is None:
                    yield f"{where} received a request no client sent: {request.describe()}"
                    continue
                arrivals[tag] += 1
                per_target[(tag, upstream.name)] += 1
                if per_target[(tag, upstream.name)] > outcome.watch.decided[(tag, upstream.name)]:
                    yield (f"{where} received {tag}, which the router never decided to send "
                           f"there (smuggled): {request.describe()}; decided: "
                           f"{[k for k in outcome.watch.decided if k[0] == tag]}")
                if request.method == "CONNECT":
                    yield f"{where} received a CONNECT ({tag}): the router must refuse it"
                elif item.role not in (VALID, LENIENT) and (request.complete
                                                              or not item.head_may_pass):
                    yield (f"{where} received the {item.kind} request {tag}"
                           f"{' whole' if request.complete else ''}: it must be refused")
                if upstream.name != upstream_for(item.dev):
                    yield (f"{where} received {tag} (x-dev {item.dev or 'none'}), which belongs "
                           f"to {upstream_for(item.dev)}")
                if arrivals[tag] == 2:
                    yield f"{tag} reached the upstreams more than once"
                if request.complete and item.body_sha and sha256(request.body) != item.body_sha:
                    yield (f"{where} received {tag} with another body ({len(request.body)} B) "
                           "than the client sent")
            if conn.tunnel is not None and conn.requests:
                tag = conn.requests[-1].tag or ""
                run = runs_by_tag.get(tag)
                after = 0
                for item in run.plan.items if run else ():
                    after += len(item.data)
                    if item.tag == tag:
                        break
                own = bytes(run.sent[after:after + len(conn.tunnel)]) if run else b""
                if own != bytes(conn.tunnel):
                    yield (f"{where} switched protocols for {tag}, then received bytes its "
                           f"client did not send after it: {bytes(conn.tunnel[:300])!r}")


def client_failures(run: ClientRun) -> Iterator[str]:
    """Properties 2 and 3: a connection's answers are its own, in order, and it ended only for
    a reason."""
    who = f"connection c{run.plan.conn}"
    items = run.plan.items
    own = {item.tag for item in items if item.tag}
    if run.reader.error:
        yield f"{who} read something that is not an HTTP response: {run.reader.error}"
    if run.end == "hang":
        yield f"{who} was neither answered nor closed {ANSWER_WAIT:g} s after its last request"
    if run.unanswered:
        yield f"{who} got no answer to {run.unanswered} within {ANSWER_WAIT:g} s"
    ended = ""
    index = 0
    for response in run.reader.responses:
        tag = response.value("x-req")
        if ended:
            yield f"{who} got a response after {ended}: {response.describe()}"
            break
        if index >= len(items):
            yield f"{who} got more responses than it sent requests: {response.describe()}"
            break
        item = items[index]
        if response.from_router:
            if run.plan.owed(index):
                yield f"{who}'s {item.kind} request {item.tag} was refused: {response.describe()}"
            ended = f"the router's own {response.status}"
            index += 1
            continue
        if not response.value("x-upstream"):
            yield f"{who} got a response from nowhere: {response.describe()}"
            break
        if tag not in own:
            yield (f"{who} got the answer to another connection's request {tag or '(untagged)'}"
                   f" where it expected {item.tag or item.kind}: {response.describe()}")
            break
        if tag != item.tag:
            yield (f"{who} is out of step: the answer to {tag} came where the one to "
                   f"{item.tag or item.kind} was due")
            break
        yield from answer_failures(who, item, response)
        if response.status == 101:
            ended = f"the 101 to {tag}"
        elif response.closes:
            ended = f"Connection: close on the answer to {tag}"
        index += 1
    if run.reader.tunnel:
        yield (f"{who} got bytes after its 101 that its upstream never sent: "
               f"{bytes(run.reader.tunnel[:300])!r}")
    rest = items[index:]
    if ended or not any(run.plan.owed(i) for i in range(index, len(items))):
        return
    # fewer answers than owed: the connection must have ended for a reason the model knows;
    # after a reset, answers the router wrote before may be lost, so any later reason counts
    before = items[index - 1:index] if index else ()
    if run.end == "reset":
        may_end = any(i.may_end_after for i in (*before, *rest)) or any(i.may_end_at
                                                                       for i in rest)
    else:
        may_end = any(i.may_end_after for i in before) or rest[0].may_end_at
    if not may_end:
        yield (f"{who} ended ({run.end or 'cut'}) after {index} answers with "
               f"{rest[0].tag} owed and no reason to")


def answer_failures(who: str, item: Item, response: Response) -> Iterator[str]:
    """The answer to a request came from its upstream, which got its body intact."""
    if item.role not in (VALID, LENIENT):
        yield (f"{who}'s {item.kind} request {item.tag} was answered by an upstream: it must "
               "be refused")
        return
    upstream = response.value("x-upstream")
    if upstream != upstream_for(item.dev):
        yield (f"{who}'s {item.tag} (x-dev {item.dev or 'none'}) was answered by {upstream}, "
               f"not {upstream_for(item.dev)}")
    if response.status == 101:
        return
    body = json.loads(bytes(response.body))
    if item.body_sha is not None and body.get("sha256") != item.body_sha:
        yield f"{who}'s {item.tag} reached {upstream} with another body than it sent"


def scenario_failures(outcome: Outcome) -> list[str]:
    failures = list(upstream_failures(outcome))
    for run in outcome.runs:
        failures += client_failures(run)
    failures += [f"the router's loop crashed: {crash}" for crash in outcome.watch.crashes]
    if outcome.watch.most_buffered > BUFFER_BOUND:
        failures.append(f"a downstream connection held {outcome.watch.most_buffered} B "
                        f"(bound {BUFFER_BOUND})")
    if outcome.left_open:
        failures.append(f"upstream connections left open after the router closed: "
                        f"{outcome.left_open}")
    return failures


def received_report(outcome: Outcome) -> str:
    lines = []
    for upstream in outcome.upstreams.values():
        for conn in upstream.connections:
            lines.append(f"  {upstream.name}#{conn.index} received {len(conn.raw)} B: "
                         f"{bytes(conn.raw[:400])!r}{'...' if len(conn.raw) > 400 else ''}")
    for run in outcome.runs:
        lines.append(f"  c{run.plan.conn} ({run.end}) read: "
                     + "; ".join(f"{r.status} x-req={r.value('x-req')}" + (
                         f" (router: {bytes(r.body).strip().decode()})" if r.from_router else "")
                                 for r in run.reader.responses))
    return "\n".join(lines)


# --- the test --------------------------------------------------------------------------------


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


def held_memory() -> tracemalloc.Snapshot:
    """What is allocated and still referenced, outside hypothesis and pytest."""
    gc.collect()  # protocols and transports refer to each other: freed by the collector
    return tracemalloc.take_snapshot().filter_traces(NOT_THE_ROUTERS)


def growth(since: tracemalloc.Snapshot) -> str:
    """A failure if the run grew past the bound since ``since``, with where it grew."""
    now = held_memory()
    grown = sum(s.size for s in now.statistics("filename")) - \
        sum(s.size for s in since.statistics("filename"))
    if grown <= MEMORY_BOUND:
        return ""
    return (f"the run grew by {grown / MiB:.0f} MiB (bound {MEMORY_BOUND / MiB:.0f} MiB); most "
            "at:\n" + "\n".join(f"    {stat}" for stat in now.compare_to(since, "lineno")[:8]))


@pytest.fixture(scope="module")
def traced() -> Iterator[SimpleNamespace]:
    """tracemalloc for the whole run, and bridged's errors (ERROR and above)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    errors = ErrorLog()
    logger = logging.getLogger("bridged")
    logger.addHandler(errors)
    try:
        yield SimpleNamespace(start=held_memory(), errors=errors, examples=0)
    finally:
        logger.removeHandler(errors)
        if started:
            tracemalloc.stop()


def then_another_client(*first: Item) -> Scenario:
    """One connection writes ``first`` at once and ends; then another client sends a request
    (with a credential) on a new connection: issue 9's shape of a smuggling attack."""
    victim = Item("get", "c1-0", "", head("GET", "/b", "c1-0", "", frozenset(),
                                          b"Authorization: Bearer the-second-clients-secret"),
                  VALID, sha256(b""))
    return Scenario(((ConnPlan(0, first, True),), (ConnPlan(1, (victim,), False),)))


#: issue 9's upgrade request, which the upstream refuses (200, keep-alive)
UPGRADE = Item("upgrade", "c0-0", "", head("GET", "/a", "c0-0", "", frozenset(),
                                           b"Connection: Upgrade", b"Upgrade: websocket"),
               VALID, sha256(b""))
#: issue 9's smuggled request: its length would swallow the next client's request
CAPTURE = Item("swallow", "c0-1", "", head("POST", "/capture", "c0-1", "", frozenset(),
                                           b"Content-Length: 90"),
               VALID, glued=True, complete=False)
#: a whole request smuggled behind it, for another developer
FOR_ALICE = Item("get", "c0-1", "alice", head("GET", "/c0-1", "c0-1", "alice", frozenset()),
                 VALID, sha256(b""), glued=True)


@pytest.mark.timeout(max(300, EXAMPLES))  # about 0.1 s an example: ample for a long run
@settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example, HealthCheck.filter_too_much])
@given(scenario=scenarios())
@example(scenario=then_another_client(UPGRADE, CAPTURE))  # issue 9's example, verbatim
@example(scenario=then_another_client(UPGRADE, FOR_ALICE))
@example(scenario=then_another_client(hostile("connect", "c0-0"), FOR_ALICE))
@example(scenario=then_another_client(hostile("huge-trailers", "c0-0")))  # point 3
@example(scenario=then_another_client(hostile("huge-head", "c0-0")))  # in the first read
def test_router_fuzz(scenario: Scenario, traced: SimpleNamespace) -> None:
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    outcome = asyncio.run(asyncio.wait_for(run_scenario(scenario), EXAMPLE_WAIT))
    failures = scenario_failures(outcome)
    failures += [f"bridged logged an error: {line}" for line in traced.errors.records]
    traced.errors.records.clear()
    peak = tracemalloc.get_traced_memory()[1]
    if peak - before > MEMORY_BOUND:
        failures.append(f"an example took {(peak - before) / MiB:.0f} MiB (bound "
                        f"{MEMORY_BOUND / MiB:.0f} MiB)")
    traced.examples += 1
    if traced.examples % GROWTH_CHECK_EVERY == 0:
        failures += filter(None, [growth(traced.start)])
    assert not failures, "\n".join(failures) + "\nwhat each side got:\n" + received_report(outcome)

