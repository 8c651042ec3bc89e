"""bridged.yaml end to end: `bridged up --wait` brings everything up (the lines VS Code's
problem matcher waits for), `bridged down` leaves nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridged.cli.project import tasks
from bridged.kube.manifests import MANAGED_BY
from bridged.project import load
from bridged.redirect.takeover import ANNOTATION

from ..helpers import Daemon, eventually, free_port
from .apiserver import KubeApiServer
from .test_intercept_on_kube import (  # noqa: F401  (fixtures)
    ALICE,
    NS,
    _comparable,
    _ready_pods,
    _requests,
    alice,
    cluster,
    orders,
)

PROJECT = """\
intercept:
  service: orders
  port: {port}
  servicePort: http
  headers:
    x-dev: alice
  via: takeover
expose:
  - orders:9090
env:
  workload: deploy/orders
  file: .env.bridged
"""


async def _bridged(daemon: Daemon, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bridged", *args], cwd=cwd,
        env=daemon.process.env, capture_output=True, text=True, timeout=120)


def _matcher() -> dict[str, Any]:
    up = tasks(["bridged"])[0]
    return up["problemMatcher"]  # type: ignore[no-any-return]


async def test_up_then_down_round_trip(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    a, port = alice
    before = cluster.get("services", NS, "orders")
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "bridged.yaml").write_text(PROJECT.format(port=port))

    result = await _bridged(a, repo / "src", "up", "--wait")  # found in the parent
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    matcher = _matcher()["background"]
    assert re.search(matcher["beginsPattern"], lines[0])
    assert re.search(matcher["endsPattern"], lines[-1])
    assert lines[-1].startswith("bridged up: ready — orders:80 → 127.0.0.1:")
    status = await a.status()
    assert [i["state"] for i in status["intercepts"]] == ["active"]
    assert [(f["service"], f["remote_port"]) for f in status["forwards"]] == [("orders", 9090)]
    env = (repo / ".env.bridged").read_text()
    assert "ORDERS_SERVICE_PORT_ADMIN=" in env or "ORDERS_SERVICE_HOST=" in env
    url = f"http://{orders['spec']['clusterIP']}/"
    assert await _requests(url, [ALICE]) == ["alice"]

    again = await _bridged(a, repo, "up", "--json")  # idempotent
    assert again.returncode == 0, again.stderr
    assert len((await a.status())["intercepts"]) == 1

    down = await _bridged(a, repo, "down")
    assert down.returncode == 0, down.stderr
    assert "Service orders restored" in down.stdout
    assert _comparable(cluster.get("services", NS, "orders")) == _comparable(before)
    after = await a.status()
    assert after["bridges"] == [] and after["forwards"] == [] and after["intercepts"] == []
    assert not (repo / ".env.bridged").exists()
    assert sorted(p.name for p in repo.iterdir()) == ["bridged.yaml", "src"]
    saved = json.loads((a.process.home / "state" / "bridged" / "state.json").read_text())
    assert saved["bridges"] == [] and saved["up"] is None
    nothing = await _bridged(a, repo, "down")
    assert nothing.returncode == 2 and "nothing is up" in nothing.stderr


def _env_names(text: str) -> set[str]:
    return {line.split("=", 1)[0] for line in text.splitlines()
            if line and not line.startswith("#")}


async def test_the_env_file_has_the_workload_s_services_not_bridged_s_own(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    """While a takeover intercept is active, the namespace also holds bridged's shadow Service
    (bridged-origin-orders): the env file has the variables of the real Services, a Service of
    the team's that only happens to be named bridged-*, and none of bridged's own."""
    a, port = alice
    _billing(cluster)
    cluster.apply({  # the team's own, no managed-by label: its variables stay
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bridged-docs", "namespace": NS, "labels": {"app": "docs"}},
        "spec": {"selector": {"app": "docs"}, "ports": [{"port": 8000}]}})
    (tmp_path / "bridged.yaml").write_text(PROJECT.format(port=port))
    up = await _bridged(a, tmp_path, "up", "--wait")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        shadow = cluster.get("services", NS, "bridged-origin-orders")
        assert shadow is not None and shadow["spec"].get("clusterIP")  # would give variables
        names = _env_names((tmp_path / ".env.bridged").read_text())
        billing_ip = cluster.get("services", NS, "billing")["spec"]["clusterIP"]
        assert {"ORDERS_SERVICE_HOST", "ORDERS_SERVICE_PORT_HTTP", "BILLING_SERVICE_HOST",
                "BILLING_PORT_80_TCP_ADDR", "BRIDGED_DOCS_SERVICE_HOST"} <= names
        assert f"BILLING_SERVICE_HOST={billing_ip}" in (tmp_path / ".env.bridged").read_text()
        own = [svc["metadata"]["name"] for svc in cluster.list("services", NS)
               if (svc["metadata"].get("labels") or {}).get(MANAGED_BY) == "bridged"]
        assert "bridged-origin-orders" in own
        prefixes = tuple(name.upper().replace("-", "_") + "_" for name in own)
        assert not {n for n in names if n.startswith(prefixes)}, names
    finally:
        down = await _bridged(a, tmp_path, "down")
        assert down.returncode == 0, down.stderr


async def test_a_mistake_in_the_file_is_reported_where_vs_code_shows_it(
    cluster: KubeApiServer, alice: tuple[Daemon, int], tmp_path: Path,  # noqa: F811
) -> None:
    a, _ = alice
    (tmp_path / "bridged.yaml").write_text(PROJECT.format(port="eighty"))
    result = await _bridged(a, tmp_path, "up", "--wait")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    matcher = _matcher()
    assert re.search(matcher["background"]["endsPattern"], result.stdout.splitlines()[-1])
    problem = next(line for line in result.stderr.splitlines()
                   if re.search(matcher["pattern"]["regexp"], line))
    m = re.search(matcher["pattern"]["regexp"], problem)
    assert m is not None
    assert (m[1], m[2]) == (str(tmp_path / "bridged.yaml"), "3")
    assert "intercept.port: expected a whole number" in m[3]
    assert not cluster.get("services", NS, "orders") or ANNOTATION not in str(
        cluster.get("services", NS, "orders"))


async def test_init_from_the_cluster_then_up_and_down(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    a, port = alice
    asked = await _bridged(a, tmp_path, "init", "--port", str(port))
    assert asked.returncode == 2, asked.stderr
    assert "which Service? give --service NAME (this namespace has: orders)" in asked.stderr
    made = await _bridged(a, tmp_path, "init", "--service", "orders", "--port", str(port))
    assert made.returncode == 0, made.stderr
    text = (tmp_path / "bridged.yaml").read_text()
    assert "context: admin" in text and f"namespace: {NS}" in text
    assert "servicePort: http" in text  # orders has two ports: the first is proposed
    up = await _bridged(a, tmp_path, "up", "--wait")
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.splitlines()[-1].startswith("bridged up: ready — orders:80")
    down = await _bridged(a, tmp_path, "down")
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "bridged.yaml").read_text() == text  # the project file stays
    assert not (tmp_path / ".env.bridged").exists()
    assert (await a.status())["intercepts"] == []


async def test_init_pins_the_context_and_namespace_it_used(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Everything given but the context and namespace: init still asks the cluster which it
    used, and pins them (a teammate's current context may be another cluster)."""
    a, port = alice
    made = await _bridged(a, tmp_path, "init", "--service", "orders", "--port", str(port),
                          "--service-port", "http", "--expose", "orders:9090", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["context"] == "admin"
    lines = (tmp_path / "bridged.yaml").read_text().splitlines()
    assert "context: admin" in lines and f"namespace: {NS}" in lines  # keys, not comments
    project = load(tmp_path / "bridged.yaml")  # valid against the schema
    assert (project.context, project.namespace) == ("admin", NS)


def _billing(api: KubeApiServer) -> None:
    """A second application with its own Service: what the developer intercepts by hand."""
    labels = {"app": "billing"}
    api.apply({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "billing", "namespace": NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     {"name": "app", "image": "billing:1",
                      "ports": [{"name": "web", "containerPort": 8080}]}]}}}})
    api.apply({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "billing", "namespace": NS, "labels": labels},
        "spec": {"selector": labels,
                 "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}})


async def _hashed_through(port: int, payload: bytes) -> dict[str, Any]:
    """POST ``payload`` to 127.0.0.1:``port`` (a forward to the replicas, which answer with
    who they are and the body's hash)."""
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/", data=payload,
            timeout=aiohttp.ClientTimeout(total=30)) as response:
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("bridge_made_by", [
    "hand",
    "up",  # up connected the bridge: down keeps it all the same, for what was made by hand
])
async def test_down_after_a_daemon_restart_undoes_only_what_up_made(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int],  # noqa: F811
    tmp_path: Path, bridge_made_by: str,
) -> None:
    """up, then things made by hand beside it, a daemon killed and started again, down:
    the Service is back whole and up's objects are gone; what was made by hand still
    works, whether the bridge was connected by hand first or by up (the hand-made forward
    and intercept ride on it then)."""
    a, port = alice
    _billing(cluster)
    if bridge_made_by == "hand":
        await a.call("POST", "bridges", {})
    before = cluster.get("services", NS, "orders")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "bridged.yaml").write_text(PROJECT.format(port=port))
    up = await _bridged(a, repo, "up", "--wait")
    assert up.returncode == 0, up.stdout + up.stderr
    assert cluster.get("services", NS, "bridged-origin-orders") is not None

    # by hand, beside what up made: a forward, and an intercept of another Service
    hand_port = free_port()
    exposed = await a.acli("expose", "orders:80", "--name", "by-hand", "--local-port",
                           str(hand_port))
    assert exposed.returncode == 0, exposed.stderr
    made = await a.acli("intercept", "billing", "--port", f"{port}:http", "--header",
                        "x-dev=alice", "--via", "takeover", "--name", "billing-by-hand")
    assert made.returncode == 0, made.stderr

    def shape(status: dict[str, Any]) -> dict[str, Any]:
        return {"forwards": sorted((f["name"], f["remote_port"], f["local_port"])
                                   for f in status["forwards"]),
                "intercepts": sorted((i["name"], i["service"], i["state"])
                                     for i in status["intercepts"])}

    was = shape(await a.status())
    assert was["intercepts"] == [("billing-by-hand", "billing", "active"),
                                 ("orders", "orders", "active")]
    assert len(was["forwards"]) == 2 and ("by-hand", 80, hand_port) in was["forwards"]

    # the daemon dies without a goodbye and is started again: it restores all of it
    a.process.kill()
    await asyncio.wait_for(a.process.proc.wait(), 10)  # type: ignore[union-attr]
    await a.process.start()

    async def restored() -> bool:
        status = await a.status()
        return not status["restore"]["restoring"] and shape(status) == was

    await eventually(restored, within=30, what="the daemon's state restored")

    down = await _bridged(a, repo, "down")
    assert down.returncode == 0, down.stderr
    assert "Service orders restored" in down.stdout

    # what up made is gone: the Service exactly as it was, its shadow, up's forward
    assert _comparable(cluster.get("services", NS, "orders")) == _comparable(before)
    assert cluster.get("services", NS, "bridged-origin-orders") is None
    after = await a.status()
    assert len(after["bridges"]) == 1  # what the hand-made forward and intercept ride on
    assert [(f["name"], f["local_port"]) for f in after["forwards"]] == [("by-hand", hand_port)]
    assert not (repo / ".env.bridged").exists()
    # what the developer made stays, and works
    assert [(i["name"], i["service"], i["state"]) for i in after["intercepts"]] == [
        ("billing-by-hand", "billing", "active")]
    assert _taken_over(cluster, "billing")
    assert cluster.get("services", NS, "bridged-origin-billing") is not None
    payload = os.urandom(512 * 1024)
    answer = await _hashed_through(hand_port, payload)
    assert answer["sha256"] == hashlib.sha256(payload).hexdigest()
    assert answer["who"] in _ready_pods(cluster, "orders")
    billing = cluster.get("services", NS, "billing")
    assert billing is not None
    assert await _requests(f"http://{billing['spec']['clusterIP']}/", [ALICE]) == ["alice"]


def _taken_over(api: KubeApiServer, service: str) -> bool:
    svc = api.get("services", NS, service) or {}
    return ANNOTATION in (svc["metadata"].get("annotations") or {})
