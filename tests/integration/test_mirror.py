"""Issue 12, mirror mode at the router: matching requests are copied to the laptop while the
cluster keeps answering them.

What a user checks: the copy reaches the laptop whole (its body hashed against the cluster's),
marked ``x-bridged-mirror``; the client only ever gets the cluster's answer, byte for byte, and
gets it as fast whether the laptop answers, never answers or is down; copies past the bounds
are dropped and counted, never waited for; the cluster's answer is reported for the
side-by-side view.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from bridged import protocol
from bridged.config import MirrorSettings
from bridged.keys import load_or_create_key
from bridged.relay.policy import DestinationPolicy
from bridged.relay.router import UpstreamUnavailable, tcp_upstream
from bridged.relay.router.mirror import (
    QUEUE_FULL,
    RATE,
    TOO_LARGE,
    UNREACHABLE,
    MirrorResult,
    Mirrors,
)
from bridged.relay.server import Relay, RelaySettings
from bridged.routing.decide import Route
from bridged.routing.rules import RequestHead

from ..helpers import free_port, read_response
from .recording_upstream import Received, RecordingUpstream, recording_upstreams
from .routerkit import client, router_on


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Reports:
    """What the mirrors told: results (each sets ``changed``) and drops by reason."""

    results: list[MirrorResult] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    opened: int = 0  # connections to a laptop tried

    def result(self, result: MirrorResult) -> None:
        self.results.append(result)
        self.changed.set()

    def drop(self, intercept_id: str, reason: str) -> None:
        assert intercept_id == "alice"
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self.changed.set()

    async def until(self, done: Any, seconds: float = 15.0) -> None:
        async def wait() -> None:
            while not done():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), seconds)


def mirrored(head: RequestHead) -> list[str]:
    """alice mirrors the requests that carry ``x-mirror: yes``."""
    return ["alice"] if "yes" in head.values("x-mirror") else []


def mirrors(ports: dict[str, int], reports: Reports, **settings: Any) -> Mirrors:
    async def open_upstream(route: Route, peer: tuple[str, int], factory: Any) -> Any:
        reports.opened += 1
        if route.target not in ports:
            raise UpstreamUnavailable(f"{route.target}: unknown here")
        return await tcp_upstream("127.0.0.1", ports[route.target], factory, route.target)

    return Mirrors(mirrored, open_upstream, reports.result, reports.drop,
                   MirrorSettings(**settings))


@dataclass
class SilentLaptop:
    """A laptop whose service reads its requests and never answers (a breakpoint)."""

    port: int = 0
    received: bytearray = field(default_factory=bytearray)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def copies(self) -> int:
        return self.received.count(b"x-bridged-mirror:")


@contextlib.asynccontextmanager
async def silent_laptop() -> AsyncIterator[SilentLaptop]:
    laptop = SilentLaptop()
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while data := await reader.read(65536):
                laptop.received += data
                laptop.arrived.set()
        except ConnectionError:
            pass
        finally:
            handlers.discard(task)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    laptop.port = server.sockets[0].getsockname()[1]
    try:
        yield laptop
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def exchange(writer: asyncio.StreamWriter, reader: asyncio.StreamReader,
                   request: bytes) -> tuple[int, dict[str, str], bytes]:
    writer.write(request)
    return await asyncio.wait_for(read_response(reader), 10)


def received(up: RecordingUpstream) -> list[Received]:
    return [r for conn in up.connections for r in conn.requests]


def post(path: str, body: bytes, *, mirror: bool = True, dev: str = "",
         chunked: bool = False, answer: str = "") -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nhost: shop\r\nauthorization: Bearer s3cret\r\n"
            f"x-req: {path}\r\n")
    head += f"x-answer: {answer}\r\n" if answer else ""
    head += "x-mirror: yes\r\n" if mirror else ""
    head += f"x-dev: {dev}\r\n" if dev else ""
    if chunked:
        half = len(body) // 2
        framed = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (body[:half], body[half:])
                          if p) + b"0\r\n\r\n"
        return (head + "transfer-encoding: chunked\r\n\r\n").encode() + framed
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


async def test_matched_requests_reach_both_and_the_client_sees_only_the_cluster() -> None:
    reports = Reports()
    bodies = [b"", b"x" * 10, bytes(range(256)) * 300, b"chunked body " * 1000]
    async with recording_upstreams(["origin", "alice"]) as up:
        ports = {name: u.port for name, u in up.items()}
        async with router_on(ports, mirror=mirrors(ports, reports)) as relay, \
                client(relay.port) as (reader, writer):
            answers = []
            for i, body in enumerate(bodies):  # the last sent chunked, answered chunked
                answers.append(await exchange(writer, reader, post(
                    f"/orders/{i}", body, chunked=i == 3, answer="chunked" if i == 3 else "")))
            plain = await exchange(writer, reader, post("/not-mirrored", b"abc", mirror=False))
            await reports.until(lambda: len(reports.results) == len(bodies))
        origin, alice = received(up["origin"]), received(up["alice"])

    # the client: the cluster's answers, nothing of the laptop's
    for i, (status, headers, answer) in enumerate(answers):
        assert (status, headers["x-upstream"]) == (200, "origin")
        assert json.loads(answer) == {"upstream": "origin", "conn": 0, "tag": f"/orders/{i}",
                                      "sha256": sha(bodies[i])}
    assert json.loads(plain[2])["upstream"] == "origin"
    assert [r.target for r in origin] == [*(f"/orders/{i}" for i in range(4)), "/not-mirrored"]
    # the laptop: a copy of each matching request, whole, marked, one per connection
    copies = sorted(alice, key=lambda r: r.target)
    assert [c.target for c in copies] == [f"/orders/{i}" for i in range(4)]
    assert [sha(c.body) for c in copies] == [sha(b) for b in bodies]
    assert [sha(c.body) for c in copies] == [sha(r.body) for r in origin[:4]]
    assert all(c.complete and c.close for c in copies)
    assert len(up["alice"].connections) == 4
    by_id = {r.mirror_id: r for r in reports.results}
    for copy in copies:
        [mirror_id] = copy.values("x-bridged-mirror")
        result = by_id[mirror_id]
        i = int(copy.target.rsplit("/", 1)[1])
        assert copy.values("authorization") == ["Bearer s3cret"]  # the copy is the request
        assert copy.values("transfer-encoding") == []
        # the report: the cluster's answer as its client got it, and the laptop's status
        assert (result.method, result.path, result.status) == ("POST", f"/orders/{i}", 200)
        assert result.body == answers[i][2] and result.size == len(answers[i][2])
        assert ("x-upstream", "origin") in result.headers
        assert not result.truncated
        assert (result.laptop_status, result.laptop_error) == (200, "")
    assert reports.drops == {}


async def test_a_request_another_developer_intercepts_is_theirs_and_still_copied() -> None:
    reports = Reports()
    async with recording_upstreams(["origin", "alice", "bob"]) as up:
        ports = {name: u.port for name, u in up.items()}
        async with router_on(ports, mirror=mirrors(ports, reports)) as relay, \
                client(relay.port) as (reader, writer):
            _, _, answer = await exchange(writer, reader, post("/pay", b"42", dev="bob"))
            await reports.until(lambda: len(reports.results) == 1)
        origin, alice, bob = (received(up[n]) for n in ("origin", "alice", "bob"))
    assert json.loads(answer)["upstream"] == "bob"
    assert [r.target for r in bob] == ["/pay"] and origin == []
    assert [(r.target, bytes(r.body)) for r in alice] == [("/pay", b"42")]
    assert reports.results[0].body == answer


async def _timed_answers(port: int, n: int) -> tuple[list[bytes], float]:
    """``n`` mirrored requests one after another: the answers, and the slowest's seconds."""
    loop = asyncio.get_running_loop()
    answers, slowest = [], 0.0
    async with client(port) as (reader, writer):
        for i in range(n):
            started = loop.time()
            status, _, answer = await exchange(writer, reader, post(f"/r/{i}", b"body"))
            slowest = max(slowest, loop.time() - started)
            assert status == 200
            answers.append(answer)
    return answers, slowest


async def test_a_laptop_that_never_answers_changes_nothing_for_the_client() -> None:
    reports = Reports()
    async with recording_upstreams(["origin"]) as up, silent_laptop() as laptop:
        ports = {"origin": up["origin"].port, "alice": laptop.port}
        # the laptop has 30 s to answer each copy: a client waiting for it would time out
        async with router_on(ports, mirror=mirrors(ports, reports, senders=2)) as relay:
            answers, slowest = await asyncio.wait_for(_timed_answers(relay.port, 20), 10)

            async def two_copies() -> None:
                while laptop.copies() < 2:
                    laptop.arrived.clear()
                    await laptop.arrived.wait()
            await asyncio.wait_for(two_copies(), 10)
    assert [json.loads(a) for a in answers] == [
        {"upstream": "origin", "conn": 0, "tag": f"/r/{i}", "sha256": sha(b"body")}
        for i in range(20)]
    assert slowest < 2.0
    assert laptop.copies() == 2  # two senders, each held by its unanswered copy
    assert reports.drops == {}  # 2 held by the laptop, 18 waiting: within the 64 held


async def test_a_laptop_that_is_down_changes_nothing_and_its_copies_are_counted() -> None:
    reports = Reports()
    async with recording_upstreams(["origin"]) as up:
        ports = {"origin": up["origin"].port, "alice": free_port()}  # nobody listens there
        async with router_on(ports, mirror=mirrors(ports, reports)) as relay:
            answers, slowest = await asyncio.wait_for(_timed_answers(relay.port, 10), 10)
            await reports.until(lambda: reports.drops.get(UNREACHABLE) == 10)
    assert [json.loads(a)["upstream"] for a in answers] == ["origin"] * 10
    assert slowest < 2.0
    assert reports.drops == {UNREACHABLE: 10}
    # a laptop that is down costs the relay nothing more: after the first failed connection
    # the mirror backs off (copies dropped, counted, no connection tried, no report)
    assert reports.opened <= 4 and reports.results == []


async def test_copies_past_the_rate_are_dropped_and_counted() -> None:
    reports = Reports()
    async with recording_upstreams(["origin"]) as up, silent_laptop() as laptop:
        ports = {"origin": up["origin"].port, "alice": laptop.port}
        settings = dict(max_copies_per_second=3.0, max_copies=100)
        async with router_on(ports, mirror=mirrors(ports, reports, **settings)) as relay:
            answers, _ = await asyncio.wait_for(_timed_answers(relay.port, 10), 10)
    assert [json.loads(a)["upstream"] for a in answers] == ["origin"] * 10
    # a second's burst (3) is copied, the rest dropped within the same moment
    assert reports.drops.get(RATE, 0) >= 6 and reports.opened <= 4


async def test_copies_past_the_bounds_are_dropped_and_counted() -> None:
    reports = Reports()
    async with recording_upstreams(["origin"]) as up, silent_laptop() as laptop:
        ports = {"origin": up["origin"].port, "alice": laptop.port}
        settings = dict(max_copies=2, senders=1, max_body_bytes=1000)
        async with router_on(ports, mirror=mirrors(ports, reports, **settings)) as relay:
            async with client(relay.port) as (reader, writer):
                _, _, big = await exchange(writer, reader, post("/upload", b"u" * 5000))
            answers, _ = await asyncio.wait_for(_timed_answers(relay.port, 10), 10)
            await asyncio.wait_for(laptop.arrived.wait(), 10)
    assert json.loads(big)["sha256"] == sha(b"u" * 5000)
    assert [json.loads(a)["upstream"] for a in answers] == ["origin"] * 10
    # the upload was too large to copy; of the 10, one copy is held by the laptop's only
    # sender, one waits: the other 8 are dropped
    assert reports.drops == {TOO_LARGE: 1, QUEUE_FULL: 8}
    assert laptop.copies() == 1


# --- through a real relay: the developer's SSH session and its control channel ---------------


@contextlib.asynccontextmanager
async def relay_session(tmp_path: Path) -> AsyncIterator[tuple[Relay, Any, ControlLines]]:
    """A relay on loopback, and an SSH session to it as a daemon's (its control channel)."""
    key = load_or_create_key(tmp_path / "dev_key", comment="dev")
    (tmp_path / "authorized_keys").write_text(key.export_public_key().decode())
    settings = RelaySettings(host_key=tmp_path / "host_key",
                             authorized_keys=tmp_path / "authorized_keys", ssh_port=0,
                             intercept_host="127.0.0.1",
                             policy=DestinationPolicy.parse(allow_loopback=True))
    async with Relay(settings) as relay:
        conn = await asyncssh.connect("127.0.0.1", relay.ssh_port, client_keys=[key],
                                      known_hosts=None, username="dev")
        try:
            writer, reader, _ = await conn.open_session(subsystem=protocol.SUBSYSTEM,
                                                        encoding=None)
            control = ControlLines(writer, reader)
            await control.call(protocol.Hello(id=1))
            yield relay, conn, control
        finally:
            conn.close()
            await conn.wait_closed()


@dataclass
class ControlLines:
    writer: Any
    reader: Any

    async def call(self, request: protocol.Request) -> dict[str, Any]:
        self.writer.write(protocol.encode(request))
        answer = await self.next(protocol.Ok, protocol.Error)
        assert isinstance(answer, protocol.Ok), answer
        return answer.body

    async def next(self, *kinds: type[protocol.Message]) -> protocol.Message:
        """The next message of one of ``kinds`` (the others are skipped)."""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            assert line, "the control channel closed"
            msg = protocol.decode(line)
            if isinstance(msg, kinds):
                return msg


async def test_the_relay_sends_the_cluster_answer_of_a_copy_on_the_control_channel(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with recording_upstreams(["origin", "laptop"]) as up, \
            relay_session(tmp_path) as (_, conn, control):
        claim = protocol.InterceptClaim(
            "m1", port, mode="http", mirror=True, origin=f"127.0.0.1:{up['origin'].port}",
            matchers=(protocol.Matcher("header", "equals", "x-mirror", "yes"),))
        await control.call(protocol.Register(id=2, claim=claim))
        await conn.forward_remote_port(claim.listen_host, port, "127.0.0.1",
                                       up["laptop"].port)
        async with client(port) as (reader, writer):
            status, _, answer = await exchange(writer, reader, post("/pay", b"card=4242"))
            _, _, unmatched = await exchange(writer, reader, post("/x", b"", mirror=False))
        traffic = await control.next(protocol.Traffic)
        mirrored = await control.next(protocol.MirrorAnswer)
        laptop = received(up["laptop"])
        stats = await control.call(protocol.GetStats(id=3))
    # the client: the cluster's answer; the laptop: the copy, marked with the answer's id
    assert (status, json.loads(answer)["upstream"]) == (200, "origin")
    assert json.loads(unmatched)["upstream"] == "origin"
    assert [(r.target, bytes(r.body)) for r in laptop] == [("/pay", b"card=4242")]
    assert isinstance(mirrored, protocol.MirrorAnswer)
    assert laptop[0].values("x-bridged-mirror") == [mirrored.mirror_id]
    assert (mirrored.intercept_id, mirrored.method, mirrored.path, mirrored.status,
            mirrored.laptop_status) == ("m1", "POST", "/pay", 200, 200)
    assert base64.b64decode(mirrored.body_b64) == answer and mirrored.size == len(answer)
    # the copy in the developer's traffic, its secrets redacted
    assert isinstance(traffic, protocol.Traffic)
    assert (traffic.intercept_id, traffic.path, traffic.status, traffic.note) == (
        "m1", "/pay", 200, "mirror")
    assert ("authorization", "[redacted]") in traffic.headers
    assert stats["intercepts"][0]["mirror_dropped"] == {}


async def test_copies_to_a_laptop_that_is_down_are_counted_to_the_developer(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with recording_upstreams(["origin"]) as up, \
            relay_session(tmp_path) as (_, conn, control):
        claim = protocol.InterceptClaim("m1", port, mode="http", mirror=True,
                                        origin=f"127.0.0.1:{up['origin'].port}")
        await control.call(protocol.Register(id=2, claim=claim))
        await conn.forward_remote_port(claim.listen_host, port, "127.0.0.1", free_port())
        answers, slowest = await asyncio.wait_for(_timed_answers(port, 3), 10)
        while True:  # totals: the last report says all three
            drops = await control.next(protocol.MirrorDrops)
            assert isinstance(drops, protocol.MirrorDrops)
            if sum(drops.dropped.values()) == 3:
                break
    assert [json.loads(a)["upstream"] for a in answers] == ["origin"] * 3
    assert slowest < 2.0
    assert (drops.intercept_id, drops.dropped) == ("m1", {UNREACHABLE: 3})
