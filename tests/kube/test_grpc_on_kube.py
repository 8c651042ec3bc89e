"""Issue 11 end to end on the stand-in cluster, with real processes: a gRPC Service (its port
says ``appProtocol: grpc``) runs three replicas of test.v1.Echo (tests/grpckit), kube-proxy
serves its ClusterIP, and two developers' daemons (``bridged`` CLI) intercept it through the
real relay (takeover) with their own metadata. Clients multiplex alice's, bob's and everybody
else's calls on the same channels; every server records each call it saw, so the tests count
where every call landed, check the bytes by their hashes, and check what ``bridged traffic``
shows each developer. A killed laptop's calls go back to the replicas, and once everybody is
gone the Service is back exactly as it was."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import grpc
import pytest

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess

from ..grpckit import payload
from ..grpckit.calls import a_cancelled_stream_reaches, one_of_each_kind
from ..grpckit.clients import CHANNEL_OPTIONS, EchoClient, metadata
from ..grpckit.servers import SERVER_OPTIONS, EchoServer, EchoServicer
from ..helpers import Daemon, assert_clean_log, eventually
from .apiserver import KubeApiServer, PodHandle, PodSandbox
from .relay_kubelet import RelayKubelet
from .test_intercept_on_kube import NS, _comparable, _ready_pods, cluster  # noqa: F401

pytestmark = pytest.mark.timeout(120)  # each test takes well under a minute: this stops a hang

T = TypeVar("T")
MiB = 1024 * 1024
PORT = 50051  # the Service's port
#: channels, each one client connection: 12 all sent to one replica of three by chance has
#: a probability of 3 * (1/3)^12, about 6e-6
CHANNELS = 12
DEVS = ("alice", "bob", None)  # None: the calls nobody intercepts
METHODS = ("Call", "Download", "Upload", "Chat")


async def within(awaitable: Awaitable[T], seconds: float = 30.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


@dataclass
class PodEchoServer(EchoServer):
    """An Echo replica listening where a pod does: its IP (loopback, 127.244.x.y) and its
    containerPort, which kube-proxy dials."""

    host: str = "127.0.0.1"

    async def start(self) -> PodEchoServer:
        self._server = grpc.aio.server(options=SERVER_OPTIONS)
        self.stubs.pb2_grpc.add_EchoServicer_to_server(EchoServicer(self), self._server)
        bound = self._server.add_insecure_port(f"{self.host}:{self.port}")
        assert bound == self.port, f"{self.host}:{self.port} is taken"
        await self._server.start()
        return self


class EchoReplicas:
    """The kubelet's hook for the application's pods: each serves test.v1.Echo on its
    containerPort, answering with the pod's name."""

    def __init__(self, api: KubeApiServer, stubs: SimpleNamespace) -> None:
        self.api = api
        self.stubs = stubs
        self.servers: dict[str, PodEchoServer] = {}

    async def __call__(self, sandbox: PodSandbox) -> PodHandle:
        pod = self.api.get("pods", sandbox.namespace, sandbox.name) or sandbox.pod
        (port,) = sandbox.container_ports
        server = await PodEchoServer(sandbox.name, self.stubs, port=port,
                                     host=pod["status"]["podIP"]).start()
        self.servers[sandbox.name] = server
        return PodHandle(stop=server.stop)

    def calls(self) -> list[Any]:
        return [seen for server in self.servers.values() for seen in server.seen]


@dataclass
class EchoService:
    service: dict[str, Any]  # as created
    replicas: EchoReplicas

    @property
    def address(self) -> str:
        return f"{self.service['spec']['clusterIP']}:{PORT}"

    @property
    def names(self) -> set[str]:
        return set(self.replicas.servers)


@pytest.fixture
async def echo(cluster: KubeApiServer, stubs: SimpleNamespace) -> EchoService:  # noqa: F811
    """test.v1.Echo: three replicas behind a Service whose port says gRPC, with labels and an
    annotation of the team's own (the restore must bring them back too)."""
    replicas = EchoReplicas(cluster, stubs)
    kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
    kubelet.others = replicas
    labels = {"app": "echo"}
    cluster.apply({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "echo", "namespace": NS},
        "spec": {"replicas": 3, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     {"name": "echo", "image": "echo:1",
                      "ports": [{"name": "grpc", "containerPort": 9000}]}]}}}})
    service = cluster.apply({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": NS, "labels": {**labels, "tier": "backend"},
                     "annotations": {"team.example.com/owner": "payments"}},
        "spec": {"selector": labels, "ports": [
            {"name": "grpc", "port": PORT, "targetPort": "grpc", "appProtocol": "grpc"}]}})

    async def three_ready() -> bool:
        return len(_ready_pods(cluster, "echo")) == 3 and len(replicas.servers) == 3

    await eventually(three_ready, within=30, what="three ready replicas")
    return EchoService(service, replicas)


@dataclass
class Laptop:
    daemon: Daemon
    server: EchoServer  # the developer's local copy of the service


def _developer(who: str) -> Any:
    """A fixture: ``who``'s laptop — a daemon of its own (state and keys in its own folder)
    and a local Echo server that answers with ``who``."""

    @pytest.fixture
    async def laptop(tmp_path: Path, cluster: KubeApiServer,  # noqa: F811
                     stubs: SimpleNamespace) -> AsyncIterator[Laptop]:
        process = await DaemonProcess(tmp_path / who).start()
        server = await EchoServer(who, stubs).start()
        yield Laptop(Daemon(process, ControlClient(process.socket)), server)
        await server.stop()
        await process.stop()
        assert_clean_log(process.log_path)

    return laptop


alice = _developer("alice")
bob = _developer("bob")


async def _intercept(laptop: Laptop, who: str, *args: str) -> None:
    await laptop.daemon.call("POST", "bridges", {})
    made = await laptop.daemon.acli("intercept", "echo", "--port", f"{laptop.server.port}:grpc",
                                    "--header", f"x-dev={who}", "--via", "takeover", *args)
    assert made.returncode == 0, made.stderr


@contextlib.asynccontextmanager
async def clients(address: str, stubs: SimpleNamespace, n: int
                  ) -> AsyncIterator[list[EchoClient]]:
    """``n`` channels to the Service's ClusterIP, each its own client connection."""
    async with contextlib.AsyncExitStack() as stack:
        channels = [await stack.enter_async_context(
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)) for _ in range(n)]
        yield [EchoClient(ch, stubs) for ch in channels]


async def _restored(cluster: KubeApiServer, before: dict[str, Any]) -> bool:  # noqa: F811
    """The whole Service as it was before (spec, labels, annotations), and no shadow."""
    return cluster.get("services", NS, "bridged-origin-echo") is None and \
        _comparable(cluster.get("services", NS, "echo")) == _comparable(before)


async def _traffic(daemon: Daemon) -> list[dict[str, Any]]:
    shown = await daemon.acli("traffic", "--json")
    assert shown.returncode == 0, shown.stderr
    return [json.loads(line) for line in shown.stdout.splitlines()]


async def test_two_developers_and_the_cluster_share_a_grpc_service_then_it_is_restored(
    cluster: KubeApiServer, echo: EchoService, stubs: SimpleNamespace,  # noqa: F811
    alice: Laptop, bob: Laptop,
) -> None:
    before = cluster.get("services", NS, "echo")
    assert before is not None
    replicas = echo.names
    # alice relies on the port's appProtocol, bob says it
    await _intercept(alice, "alice")
    await _intercept(bob, "bob", "--protocol", "grpc")
    for laptop in (alice, bob):
        (intercept,) = (await laptop.daemon.status())["intercepts"]
        assert (intercept["protocol"], intercept["via"]) == ("grpc", "takeover")

    # every kind of call for alice, bob and nobody at once on each channel; then again, so
    # each channel's unmatched calls reuse what its first ones opened
    answered: dict[tuple[int, str | None, int], list[tuple[str, str]]] = {}
    async with clients(echo.address, stubs, CHANNELS) as channels:
        for r in range(2):
            plan = [(c, dev, r) for c in range(CHANNELS) for dev in DEVS]
            answers = await within(asyncio.gather(*(
                one_of_each_kind(channels[c], dev, f"{c}.{dev}.{r}") for c, dev, r in plan)), 60)
            answered.update(zip(plan, answers, strict=True))
    for (c, dev, r), whos in answered.items():
        for method, who in whos:
            assert who in ({dev} if dev else replicas), f"{method} of {c}.{dev}.{r}: {who}"
    per_dev = 2 * CHANNELS * len(METHODS)
    assert [s.dev for s in alice.server.seen] == ["alice"] * per_dev
    assert [s.dev for s in bob.server.seen] == ["bob"] * per_dev
    unmatched = echo.replicas.calls()
    assert len(unmatched) == per_dev and {s.dev for s in unmatched} == {None}
    # a client connection keeps the replica kube-proxy gave its upstream connection
    channels_at = {name: {str(s.metadata["x-call"]).split(".")[0] for s in server.seen}
                   for name, server in echo.replicas.servers.items()}
    assert sum(map(len, channels_at.values())) == CHANNELS, channels_at
    assert len([c for c in channels_at.values() if c]) > 1, channels_at  # spread over them

    # each developer's `bridged traffic` shows their calls, every one, and nobody else's
    for laptop, who in ((alice, "alice"), (bob, "bob")):
        async def logged(d: Daemon = laptop.daemon) -> list[dict[str, Any]]:
            entries = await _traffic(d)
            return entries if len(entries) >= per_dev else []

        entries = await eventually(logged, within=15, what=f"{who}'s calls in their traffic")
        assert Counter((e["path"], e["http_version"], e["grpc_status"]) for e in entries) == \
            Counter({(f"/test.v1.Echo/{m}", "h2", 0): 2 * CHANNELS for m in METHODS})
        assert {v for e in entries for n, v in e["headers"] if n == "x-dev"} == {who}
        lines = (await laptop.daemon.acli("traffic")).stdout.splitlines()
        assert len(lines) == per_dev and all(
            " gRPC test.v1.Echo/" in line and "  grpc-status 0 OK  " in line for line in lines)

    async with clients(echo.address, stubs, 1) as (client,):
        # 32 MiB through the relay and SSH both ways: in 4 MiB messages to alice's laptop,
        # one message from bob's, each checked by its hash at the other end
        size = 32 * MiB
        pieces = list(payload.chunks("upload", size, 4 * MiB))
        up = await within(client.upload(metadata("alice"), pieces))
        assert (up.who, up.count, up.size, up.sha256) == \
            ("alice", 8, size, payload.sha256(pieces))
        down = await within(client.download(metadata("bob"), "download", size, size))
        assert (down.whos, down.size, down.sha256) == \
            ({"bob"}, size, payload.sha256(payload.chunks("download", size, size)))

        # alice's laptop dies: her calls go back to the replicas, bob keeps his
        os.kill(alice.daemon.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await alice.daemon.process.proc.wait()  # type: ignore[union-attr]

        async def alices_go_to_the_cluster() -> bool:
            try:
                return (await within(client.call(metadata("alice")), 5)).who in replicas
            except (grpc.aio.AioRpcError, TimeoutError):
                return False  # in flight to her session when it ended, or refused

        # a bound, not the measure: her session's lease is 8 s, its SSH connection's end
        # tells the relay sooner
        await eventually(alices_go_to_the_cluster, within=20,
                         what="alice's calls answered by the replicas")
        print(f"alice's calls reached the replicas {time.monotonic() - killed_at:.1f} s "
              "after her daemon was killed")
        after = await within(one_of_each_kind(client, "alice", "after"))
        assert {who for _, who in after} <= replicas, after
        assert (await within(client.call(metadata("bob")))).who == "bob"
        assert (await within(client.call(metadata(None)))).who in replicas
    assert len(alice.server.seen) == per_dev + 1  # nothing of hers reached it after the kill

    # bob leaves: nobody intercepts any more, the Service is back as a whole, the shadow gone
    left = await bob.daemon.acli("leave", "echo")
    assert left.returncode == 0, left.stderr

    await eventually(lambda: _restored(cluster, before), within=15,
                     what="the Service restored, the shadow removed")
    async with clients(echo.address, stubs, 1) as (client,):
        for dev in DEVS:
            assert (await within(client.call(metadata(dev)))).who in replicas


async def test_deadlines_and_cancellation_reach_the_laptops_server(
    cluster: KubeApiServer, echo: EchoService, stubs: SimpleNamespace,  # noqa: F811
    alice: Laptop,
) -> None:
    before = cluster.get("services", NS, "echo")
    assert before is not None
    await _intercept(alice, "alice")
    async with clients(echo.address, stubs, 1) as (client,):
        # the client's deadline travels with the call (grpc-timeout) to alice's server, which
        # sees the call end when it passes
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await within(client.call(metadata("alice"), hold_seconds=15, deadline=2.0))
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        [held] = alice.server.seen
        assert held.time_remaining is not None and 0 < held.time_remaining <= 2.0
        await within(held.ended.wait(), 5)
        assert held.cancelled

        await a_cancelled_stream_reaches(client, alice.server, "alice")
        [_, talking, _] = alice.server.seen
        assert not talking.cancelled
    assert not echo.replicas.calls()  # nothing of alice's went anywhere else

    left = await alice.daemon.acli("leave", "echo")
    assert left.returncode == 0, left.stderr
    await eventually(lambda: _restored(cluster, before), within=15,
                     what="the Service restored, the shadow removed")
