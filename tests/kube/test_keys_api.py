"""A new developer's key works at once (issue 10, point 3): the relay follows the
authorized-keys Secret through the API (list + watch of that one object), not through the
mounted volume the kubelet refreshes about once a minute.

The stand-in's kubelet here refreshes the volume only when the test says so (a real one takes
up to a minute), so only the relay's watch can explain a key that works, or stops working, at
once; each test also checks the relay's own account of where the change came from.
"""

# ruff: noqa: F811  (``cluster``, the fixture imported below, is the tests' parameter)
from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridged.kube import manifests as m

from ..helpers import Daemon, assert_clean_log, eventually
from .apiserver import KubeApiServer
from .relay_kubelet import RelayKubelet
from .test_bridged_on_kube import _daemon, cluster  # noqa: F401  (the same cluster fixture)

NS = "team-a"
WATCHED = f"authorized keys from Secret {m.AUTHORIZED_KEYS_SECRET} (watch"


@pytest.fixture(autouse=True)
def _volume_never_refreshes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubelet's refresh of the mounted Secret, not due within a test (real: ~1 min): only
    the relay's watch can bring it a key. (Autouse: in place before the cluster starts.)"""

    async def never(self: RelayKubelet, ns: str, name: str, folder: Path) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    monkeypatch.setattr(RelayKubelet, "_sync_secret", never)


@pytest.fixture
async def alice(tmp_path: Path, cluster: KubeApiServer) -> AsyncIterator[Daemon]:
    d = await _daemon(tmp_path / "alice")
    yield d
    await d.process.stop()
    assert_clean_log(d.process.log_path)


@pytest.fixture
async def bob(tmp_path: Path, cluster: KubeApiServer) -> AsyncIterator[Daemon]:
    d = await _daemon(tmp_path / "bob")
    yield d
    await d.process.stop()


def _relay_home(tmp_path: Path, cluster: KubeApiServer) -> Path:
    (pod,) = cluster.list("pods", NS)
    return tmp_path / "node" / pod["metadata"]["name"]


def _relay_log(tmp_path: Path, cluster: KubeApiServer) -> str:
    return (_relay_home(tmp_path, cluster) / "relay.log").read_text()


def _mounted(tmp_path: Path, cluster: KubeApiServer) -> set[str]:
    """The public keys in the relay's mounted copy of the Secret."""
    folder = _relay_home(tmp_path, cluster) / "authorized-keys"
    return {p.read_text().strip() for p in folder.iterdir()}


async def test_a_second_developer_is_let_in_from_the_watch(
    cluster: KubeApiServer, alice: Daemon, bob: Daemon, tmp_path: Path
) -> None:
    await alice.call("POST", "bridges", {})  # deploys the relay; it is Ready
    watched_before = _relay_log(tmp_path, cluster).count(WATCHED)
    started = time.monotonic()
    bridge = await asyncio.wait_for(bob.call("POST", "bridges", {}), 30)
    took = time.monotonic() - started
    assert bridge["state"] == "connected"
    bob_key = await bob.public_key()
    # the mounted copy never got bob's key: the relay let him in from the Secret it watches
    assert bob_key not in _mounted(tmp_path, cluster)
    log = _relay_log(tmp_path, cluster)
    assert log.count(WATCHED) > watched_before, log
    assert f"{WATCHED}, resourceVersion" in log and "): 2 key(s)" in log
    assert took < 5.0, f"bob's connect took {took:.1f}s"


async def test_a_key_removed_from_the_secret_is_refused_at_once(
    cluster: KubeApiServer, alice: Daemon, bob: Daemon, tmp_path: Path
) -> None:
    await alice.call("POST", "bridges", {})
    await bob.call("POST", "bridges", {})
    bob_key = await bob.public_key()
    # the kubelet's refresh has come meanwhile: bob's key is in the mounted copy too
    kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
    home = _relay_home(tmp_path, cluster)
    kubelet._write_keys(NS, m.AUTHORIZED_KEYS_SECRET, home / "authorized-keys")
    assert bob_key in _mounted(tmp_path, cluster)
    # the API server ends every watch (a restart, its time-out): the relay watches again
    cluster.store.close_watchers()
    # an admin takes bob's key out of the Secret
    secret = cluster.get("secrets", NS, m.AUTHORIZED_KEYS_SECRET)
    assert secret is not None
    data = {k: v for k, v in secret["data"].items()
            if base64.b64decode(v).decode().strip() != bob_key}
    assert len(data) == 1
    cluster.apply({**secret, "data": data})

    async def applied() -> bool:
        return "): 1 key(s)" in _relay_log(tmp_path, cluster).split(WATCHED)[-1]

    await eventually(applied, within=5, what="the relay to apply the Secret's change")
    # both daemons connect anew: bob is refused, though the mounted copy still lists him
    pod = cluster.list("pods", NS)[0]["metadata"]["name"]
    await cluster.drop_portforwards(NS, pod)

    async def bob_refused() -> str:
        (b,) = (await bob.status())["bridges"]
        return str(b["last_error"]) if "refused this machine's key" in b["last_error"] else ""

    async def alice_back() -> bool:
        (b,) = (await alice.status())["bridges"]
        return bool(b["state"] == "connected")

    await eventually(bob_refused, within=15, what="bob's reconnect to be refused")
    await eventually(alice_back, within=15, what="alice's reconnect")
    assert bob_key in _mounted(tmp_path, cluster)
    assert "not authorized" in _relay_log(tmp_path, cluster)


async def test_doctor_names_a_relay_role_without_the_keys_watch(
    cluster: KubeApiServer, alice: Daemon
) -> None:
    import json

    await alice.call("POST", "bridges", {})

    async def relay_rights() -> dict[str, str]:
        result = await alice.acli("doctor", "--json")
        return {c["name"]: c for c in json.loads(result.stdout)["checks"]}["relay rights"]

    assert (await relay_rights())["verdict"] == "ok"
    # a Role as an older bridged made it: the keys reach the relay only through the volume
    role = cluster.get("roles", NS, m.RELAY)
    assert role is not None
    older = [r for r in role["rules"]
             if m.AUTHORIZED_KEYS_SECRET not in r.get("resourceNames", [])]
    cluster.apply({**role, "rules": older})
    check = await relay_rights()
    assert check["verdict"] == "warn"
    assert f"lacks get/list/watch secrets ({m.AUTHORIZED_KEYS_SECRET})" in check["detail"]
