"""Errors read well (issue 10, point 6), on the stand-in cluster through the real CLI:
``doctor`` checks the connected bridge's namespace, not the kubeconfig's; ``--via auto``
does not wait for a mesh again where none accepted a route in this relay's life."""

# ruff: noqa: F811 (the fixtures shared with test_intercept_on_kube are parameters here)
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bridged.kube import manifests as m

from ..crds import HTTPROUTE, load_crd
from ..helpers import Daemon
from .apiserver import Context, KubeApiServer
from .relay_kubelet import RelayKubelet
from .test_intercept_on_kube import (  # noqa: F401 (fixtures)
    ALICE,
    NS,
    _requests,
    _taken_over,
    alice,
    cluster,
    orders,
)


async def test_doctor_checks_the_connected_bridges_namespace(
    cluster: KubeApiServer, alice: tuple[Daemon, int], tmp_path: Path
) -> None:
    a, _ = alice
    # the shell's kubeconfig points at another namespace than the bridge's
    other = cluster.write_kubeconfig(tmp_path / "elsewhere", [
        Context("admin", cluster.admin, "default", auth="cert")])
    env = {**a.process.env, "KUBECONFIG": str(other)}
    connected = await a.acli("connect", "-n", NS)
    assert connected.returncode == 0, connected.stderr

    result = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "bridged", "doctor", "--json"], env=env, capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["kubeconfig"]["detail"] == f"context admin, namespace {NS}"
    assert "1 pod(s) ready" in checks["relay"]["detail"]  # the bridge's relay, found
    # asked for, another namespace is checked
    asked = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "bridged", "doctor", "--json", "-n", "default"], env=env,
        capture_output=True, text=True, timeout=60)
    checks = {c["name"]: c for c in json.loads(asked.stdout)["checks"]}
    assert checks["kubeconfig"]["detail"] == "context admin, namespace default"
    assert "not deployed" in checks["relay"]["detail"]


async def test_auto_remembers_that_no_mesh_accepted_a_route(
    cluster: KubeApiServer, orders: dict[str, Any], alice: tuple[Daemon, int], tmp_path: Path
) -> None:
    accept = 3.0
    cluster.install_crd(load_crd(HTTPROUTE))  # served, but no mesh acts on a Service's route
    kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
    kubelet.extra_args = ["--mesh-accept-seconds", f"{accept:g}"]
    a, port = alice
    await a.call("POST", "bridges", {})

    async def intercept() -> float:
        started = time.monotonic()
        made = await a.acli("intercept", "orders", "--port", f"{port}:http", "--header",
                            "x-dev=alice", "--json")
        assert made.returncode == 0, made.stderr
        assert '"via": "takeover"' in made.stdout
        return time.monotonic() - started

    assert await intercept() >= accept  # the first waits for a mesh, in vain
    left = await a.acli("leave", "orders")
    assert left.returncode == 0, left.stderr
    assert not _taken_over(cluster)
    second = await intercept()
    (pod,) = [p for p in cluster.list("pods", NS)
              if p["metadata"]["labels"].get(m.NAME_LABEL) == m.RELAY]
    log = (tmp_path / "node" / pod["metadata"]["name"] / "relay.log").read_text()
    assert "--via gateway refused at once, remembered" in log
    assert second < accept, f"the second intercept took {second:.1f} s"
    assert _taken_over(cluster) and not cluster.list("httproutes", NS)
    assert await _requests(f"http://{orders['spec']['clusterIP']}/", [ALICE]) == ["alice"]
