"""A taken-over Service whose daemon stops renewing is given back when the routing lease
lapses, even though the daemon's SSH connection stays open (a laptop asleep, a process
stopped): the relay restores the Service exactly, and the cluster's requests reach the
original replicas. When the daemon wakes up, what its status says must be true of the
cluster: an intercept reported active is taken over and routed to the laptop again."""

from __future__ import annotations

import os
import signal
from typing import Any

import aiohttp
import pytest

from ..helpers import Daemon, eventually
from .apiserver import KubeApiServer
from .relay_kubelet import RelayKubelet
from .test_intercept_on_kube import (  # noqa: F401  (fixtures)
    ALICE,
    NOBODY,
    NS,
    _comparable,
    _ready_pods,
    _requests,
    _restored,
    _taken_over,
    alice,
    cluster,
    orders,
)

#: seconds: a lease short enough to lapse within a test
LEASE = 1.5
#: the relay's keepalive, long enough that the stopped daemon's SSH connection stays up for
#: the whole test: the lease, not the connection, must lapse (3 missed = daemon gone)
KEEPALIVE = 30.0
#: seconds past the lease for the relay's sweep (every lease/8) and its writes to the API
#: server, on a loaded machine
MARGIN = 5.0


async def _alice_routed(url: str) -> bool:
    try:
        return await _requests(url, [ALICE]) == ["alice"]
    except (AssertionError, aiohttp.ClientError):
        return False


@pytest.mark.parametrize("resume", [
    pytest.param(0.0, id="released"),  # no reconnect window: the lapsed intercept is freed
    pytest.param(3600.0, id="reserved"),  # reserved for it: taken back when it wakes
])
async def test_a_lapsed_lease_gives_the_service_back_while_the_daemon_is_stopped(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],  # noqa: F811
    resume: float,
) -> None:
    kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
    kubelet.extra_args = ["--lease-seconds", f"{LEASE:g}", "--keepalive-seconds",
                          f"{KEEPALIVE:g}", "--resume-seconds", f"{resume:g}"]
    (a, port), before = alice, cluster.get("services", NS, "orders")
    assert before is not None
    await a.call("POST", "bridges", {})
    made = await a.acli("intercept", "orders", "--port", f"{port}:http", "--header",
                        "x-dev=alice", "--via", "takeover")
    assert made.returncode == 0, made.stderr
    url = f"http://{orders['spec']['clusterIP']}/"
    replicas = set(_ready_pods(cluster, "orders"))
    seen = await _requests(url, [ALICE, NOBODY])
    assert seen[0] == "alice" and seen[1] in replicas
    assert _taken_over(cluster)

    os.kill(a.process.pid, signal.SIGSTOP)  # no renewal; its SSH connection stays open
    try:
        await eventually(lambda: _restored(cluster, before), within=LEASE + MARGIN,
                         what="the Service restored when the lease lapsed")
        assert _comparable(cluster.get("services", NS, "orders")) == _comparable(before)
        # kube-proxy serves the original selector again: every request reaches a replica
        seen = await _requests(url, [NOBODY, ALICE, NOBODY, ALICE])
        assert set(seen) <= replicas, seen
    finally:
        os.kill(a.process.pid, signal.SIGCONT)

    # awake: its next renewal is answered (the holding reserved for it, or lost and made
    # again); the intercept it then says is active must be one the cluster honours: taken
    # over again, alice's requests at her laptop
    async def honoured() -> bool:
        intercept, = (await a.status())["intercepts"]
        return intercept["state"] == "active" and _taken_over(cluster) \
            and await _alice_routed(url)

    async def said() -> dict[str, Any]:
        intercept, = (await a.status())["intercepts"]
        return {"state": intercept["state"], "error": intercept["error"],
                "taken_over": _taken_over(cluster)}

    try:
        await eventually(honoured, within=LEASE + MARGIN + 10,
                         what="the intercept active on the daemon and in the cluster")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the daemon says {await said()}") from None
    seen = await _requests(url, [ALICE, NOBODY])
    assert seen[0] == "alice" and seen[1] in replicas

    left = await a.acli("leave", "orders")
    assert left.returncode == 0, left.stderr
    assert await _restored(cluster, before)
