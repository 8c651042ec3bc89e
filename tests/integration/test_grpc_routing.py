"""Issue 11: gRPC routed per call, end to end through the relay's router.

A real gRPC service (tests/grpckit: test.v1.Echo, one method of each kind) runs as three
replicas behind one "origin" port (a round-robin TCP front, as kube-proxy) and as two
developers' laptops, "alice" and "bob". Clients multiplex calls with ``x-dev: alice``,
``x-dev: bob`` and no header on the same channels; every server records each call it saw, so
each test counts where every call landed and checks the bytes by their hashes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar

import grpc
import pytest

from bridged.routing.decide import ORIGIN, Route

from ..grpckit import payload
from ..grpckit.balancer import RoundRobinFront, round_robin
from ..grpckit.calls import a_cancelled_stream_reaches, one_of_each_kind
from ..grpckit.clients import EchoClient, channel, metadata
from ..grpckit.servers import EchoServer, Seen, echo_servers
from .routerkit import router_on

pytestmark = pytest.mark.timeout(60)  # each test takes seconds; this only stops a hang

T = TypeVar("T")
MiB = 1024 * 1024
REPLICAS = ("replica-0", "replica-1", "replica-2")
DEVS = ("alice", "bob", None)  # None: the calls nobody intercepts


async def within(awaitable: Awaitable[T], seconds: float = 20.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


@dataclass
class Cluster:
    replicas: list[EchoServer]
    front: RoundRobinFront
    alice: EchoServer
    bob: EchoServer

    @property
    def ports(self) -> dict[str, int]:
        return {ORIGIN: self.front.port, "alice": self.alice.port, "bob": self.bob.port}

    def servers(self) -> list[EchoServer]:
        return [*self.replicas, self.alice, self.bob]

    def landed(self) -> Counter[str]:
        return Counter({s.name: len(s.seen) for s in self.servers()})

    def replica_calls(self) -> list[Seen]:
        return [seen for replica in self.replicas for seen in replica.seen]


@pytest.fixture
async def cluster(stubs: SimpleNamespace) -> AsyncIterator[Cluster]:
    async with echo_servers(stubs, *REPLICAS, "alice", "bob") as servers, \
            round_robin([s.port for s in servers[:3]]) as front:
        yield Cluster(servers[:3], front, servers[3], servers[4])


@contextlib.asynccontextmanager
async def clients(port: int, stubs: SimpleNamespace, n: int) -> AsyncIterator[list[EchoClient]]:
    """``n`` channels to ``port``, each its own client connection."""
    async with contextlib.AsyncExitStack() as stack:
        yield [EchoClient(await stack.enter_async_context(channel(port)), stubs)
               for _ in range(n)]


def lands_at(dev: str | None) -> set[str]:
    return {dev} if dev is not None else set(REPLICAS)


async def test_every_call_lands_where_its_metadata_says(stubs: SimpleNamespace,
                                                        cluster: Cluster) -> None:
    rounds = 2  # per channel and developer: every kind of call, twice, all at once
    async with router_on(cluster.ports) as relay, \
            clients(relay.port, stubs, 3) as channels:
        plan = [(c, dev, f"{c}.{dev}.{r}") for c in range(3) for dev in DEVS for r in range(rounds)]
        answers = await within(asyncio.gather(*(
            one_of_each_kind(channels[c], dev, tag) for c, dev, tag in plan)))

    for (_, dev, tag), whos in zip(plan, answers, strict=True):
        for method, who in whos:
            assert who in lands_at(dev), f"{method} of {tag} (x-dev {dev}) answered by {who}"
    per_dev = 3 * rounds * 4  # channels, rounds, kinds
    landed = cluster.landed()
    assert (landed["alice"], landed["bob"], sum(landed[r] for r in REPLICAS)) == \
        (per_dev, per_dev, per_dev), landed
    assert {s.dev for s in cluster.alice.seen} == {"alice"}
    assert {s.dev for s in cluster.bob.seen} == {"bob"}
    replica_calls = cluster.replica_calls()
    assert len(replica_calls) == per_dev and {s.dev for s in replica_calls} == {None}


async def test_each_client_connection_keeps_its_replica(stubs: SimpleNamespace,
                                                        cluster: Cluster) -> None:
    """Unmatched calls of one client connection share one upstream connection, so the
    replica kube-proxy chose for it answers them all, developers' calls in between or not."""
    async with router_on(cluster.ports) as relay, \
            clients(relay.port, stubs, 3) as channels:
        for r in range(3):  # rounds one after the other: each reuses what the last one opened
            await within(asyncio.gather(*(
                one_of_each_kind(channels[c], dev, f"{c}.{dev}.{r}")
                for c in range(3) for dev in (None, "alice"))))
    channels_at = {name: {s.metadata["x-call"].split(".")[0] for s in replica.seen}
                   for name, replica in zip(REPLICAS, cluster.replicas, strict=True)}
    assert sorted(map(len, channels_at.values())) == [1, 1, 1], channels_at
    assert len(cluster.replica_calls()) == len(cluster.alice.seen) == 3 * 3 * 4


async def test_a_32_mib_message_is_intact_both_ways(stubs: SimpleNamespace,
                                                   cluster: Cluster) -> None:
    size = 32 * MiB
    async with router_on(cluster.ports) as relay, \
            clients(relay.port, stubs, 1) as (client,):
        # client-streaming: 32 MiB in 4 MiB messages to alice, checked by her answer
        pieces = list(payload.chunks("upload", size, 4 * MiB))
        up = await within(client.upload(metadata("alice"), pieces))
        assert (up.who, up.count, up.size, up.sha256) == \
            ("alice", 8, size, payload.sha256(pieces))
        # server-streaming: one 32 MiB message from bob, checked here
        down = await within(client.download(metadata("bob"), "download", size, size))
        assert (down.whos, down.size, down.sha256) == \
            ({"bob"}, size, payload.sha256(payload.chunks("download", size, size)))
        # bidirectional: 8 MiB each way, written while the answers stream back
        said = list(payload.chunks("chat", 8 * MiB, 512 * 1024))
        answers = await within(client.chat(metadata("alice"), said, lockstep=False))
        assert {a.who for a in answers} == {"alice"}
        assert payload.sha256(a.data for a in answers) == payload.sha256(said)
    assert cluster.landed() == Counter({"alice": 2, "bob": 1})


async def test_a_deadline_reaches_the_developers_server(stubs: SimpleNamespace,
                                                       cluster: Cluster) -> None:
    async with router_on(cluster.ports) as relay, \
            clients(relay.port, stubs, 1) as (client,):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await within(client.call(metadata("alice"), hold_seconds=15, deadline=1.0))
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        [seen] = cluster.alice.seen
        assert seen.time_remaining is not None and 0 < seen.time_remaining <= 1.0
        await within(seen.ended.wait(), 5)
        assert seen.cancelled
        # the channel and the router's connection to alice outlive the expired call
        assert (await within(client.call(metadata("alice")))).who == "alice"
    assert cluster.landed() == Counter({"alice": 2})


async def test_a_cancelled_stream_is_cancelled_at_the_developers_server(
    stubs: SimpleNamespace, cluster: Cluster,
) -> None:
    async with router_on(cluster.ports) as relay, \
            clients(relay.port, stubs, 1) as (client,):
        await a_cancelled_stream_reaches(client, cluster.alice, "alice")
    assert not cluster.alice.seen[0].cancelled


async def test_a_stopped_laptops_calls_go_back_to_the_replicas(stubs: SimpleNamespace,
                                                              cluster: Cluster) -> None:
    async with router_on(cluster.ports, fallback=lambda route: Route(ORIGIN)) as relay, \
            clients(relay.port, stubs, 1) as (client,):
        before = await within(one_of_each_kind(client, "alice", "before"))
        assert {who for _, who in before} == {"alice"}
        await within(cluster.alice.stop())
        after = await within(one_of_each_kind(client, "alice", "after"))
        assert {who for _, who in after} <= set(REPLICAS), after
        assert (await within(client.call(metadata("bob")))).who == "bob"
    assert len(cluster.alice.seen) == 4
    assert [s.dev for s in cluster.replica_calls()] == ["alice"] * 4


async def test_without_a_fallback_a_stopped_laptops_calls_fail_unavailable(
    stubs: SimpleNamespace, cluster: Cluster,
) -> None:
    async with router_on(cluster.ports) as relay, \
            clients(relay.port, stubs, 1) as (client,):
        assert (await within(client.call(metadata("alice")))).who == "alice"
        await within(cluster.alice.stop())
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await within(client.call(metadata("alice")))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        # everybody else's calls on the same connection carry on
        assert (await within(client.call(metadata(None)))).who in REPLICAS
        assert (await within(client.call(metadata("bob")))).who == "bob"
    assert [(s.method, s.dev) for s in cluster.replica_calls()] == [("Call", None)]
    assert (len(cluster.alice.seen), len(cluster.bob.seen)) == (1, 1)


@pytest.mark.parametrize("dev", ["bob", None], ids=["developer", "replica"])
async def test_grpc_status_and_trailers_come_back_as_sent(dev: str | None,
                                                          stubs: SimpleNamespace,
                                                          cluster: Cluster) -> None:
    trailers = {"x-why": "gone", "x-retry-after-ms": "250"}
    async with router_on(cluster.ports) as relay, \
            clients(relay.port, stubs, 1) as (client,):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await within(client.call(metadata(dev), fail_code=grpc.StatusCode.NOT_FOUND.value[0],
                                     fail_details="nope", fail_trailers=trailers))
    error: Any = failed.value
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "nope")
    assert {k: v for k, v in error.trailing_metadata() if k.startswith("x-")} == trailers
    [where] = [name for name, n in cluster.landed().items() if n]
    assert where in lands_at(dev)
