"""``bridged run --from deploy/web -- python app.py`` on the stand-in cluster, with a real daemon
and relay: the child sees the workload's env, its ConfigMap volume under $BRIDGED_ROOT, reaches
the Service by name through HTTP_PROXY; its exit code is run's, SIGTERM reaches it, and the
folder of files is gone afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..helpers import Daemon, eventually
from .apiserver import KubeApiServer
from .relay_kubelet import RelayKubelet, cluster_dns_unavailable
from .test_intercept_on_kube import (  # noqa: F401  (fixtures)
    NS,
    _ready_pods,
    alice,
    cluster,
)

APP = """\
import json, os, sys, urllib.error, urllib.request
root = os.environ["BRIDGED_ROOT"]
seen = {"env": {k: os.environ.get(k) for k in ("LOG_LEVEL", "GREETING", "POD_NAMESPACE")},
        "root": root,
        "config": open(os.path.join(root, "etc/web/app.yaml")).read(),
        "proxy": os.environ.get("HTTP_PROXY"), "no_proxy": os.environ.get("NO_PROXY")}
if len(sys.argv) > 2:  # through HTTP_PROXY, by the Service's short name
    try:
        with urllib.request.urlopen(sys.argv[2], timeout=20) as answer:
            seen["answer"] = json.loads(answer.read())
    except urllib.error.HTTPError as exc:  # the proxy's reason, for the assertion
        seen["answer"] = {"status": exc.code, "body": exc.read().decode(errors="replace")}
open(sys.argv[1], "w").write(json.dumps(seen))
"""

#: a child that says it is ready, then waits for SIGTERM and leaves a marker
WAITS_FOR_TERM = """\
import os, signal, sys, time
def done(signum, frame):
    open(sys.argv[1], "w").write(os.environ["BRIDGED_ROOT"])
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
print("ready", flush=True)
time.sleep(60)
sys.exit(3)
"""


@pytest.fixture
async def web(cluster: KubeApiServer) -> dict[str, Any]:  # noqa: F811
    """A Deployment with env from a ConfigMap, the downward API and $(VAR) expansion, a
    ConfigMap volume, and a Service in front of its pods (they answer with their name)."""
    labels = {"app": "web"}
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "web-config", "namespace": NS},
                   "data": {"LOG_LEVEL": "debug", "app.yaml": "port: 8080\n"}})
    cluster.apply({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "containers": [{
                         "name": "web", "image": "web:1",
                         "ports": [{"name": "http", "containerPort": 8080}],
                         "env": [
                             {"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {
                                 "name": "web-config", "key": "LOG_LEVEL"}}},
                             {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {
                                 "fieldPath": "metadata.namespace"}}},
                             {"name": "GREETING", "value": "hi from $(POD_NAMESPACE)"}],
                         "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}]}],
                     "volumes": [{"name": "config", "configMap": {"name": "web-config"}}]}}}})
    service = cluster.apply({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": NS, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80,
                                                "targetPort": "http"}]}})

    async def ready() -> bool:
        return len(_ready_pods(cluster, "web")) == 1

    await eventually(ready, within=30, what="a ready web pod")
    return service


@pytest.fixture
async def laptop(alice: tuple[Daemon, int]) -> Daemon:  # noqa: F811
    daemon, _ = alice
    connected = await daemon.acli("connect")
    assert connected.returncode == 0, connected.stderr
    return daemon


def _gone(path: str) -> bool:
    return not os.path.exists(path)


def _run(daemon: Daemon, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridged", "run", *args], cwd=cwd,
                          env=daemon.process.env, capture_output=True, text=True, timeout=120)


async def test_run_gives_the_workload_s_env_and_files_and_cleans_up(
    web: dict[str, Any], laptop: Daemon, tmp_path: Path,
) -> None:
    (tmp_path / "app.py").write_text(APP)
    out = tmp_path / "seen.json"
    result = await asyncio.to_thread(_run, laptop, tmp_path, "--from", "deploy/web",
                                     "--no-proxy", "--", sys.executable, "app.py", str(out))
    assert result.returncode == 0, result.stderr
    seen = json.loads(out.read_text())
    assert seen["env"] == {"LOG_LEVEL": "debug", "GREETING": f"hi from {NS}",
                           "POD_NAMESPACE": NS}
    assert seen["config"] == "port: 8080\n"
    assert seen["proxy"] is None  # --no-proxy
    assert _gone(seen["root"])  # removed once the child ended

    failing = await asyncio.to_thread(_run, laptop, tmp_path, "--from", "deploy/web",
                                      "--no-proxy", "--", sys.executable, "-c",
                                      "import sys; sys.exit(7)")
    assert failing.returncode == 7, failing.stderr

    unknown = await asyncio.to_thread(_run, laptop, tmp_path, "--from", "deploy/nope", "--",
                                      "true")
    assert unknown.returncode != 0
    assert unknown.stderr.count("\n") == 1 and unknown.stderr.startswith("bridged: ")
    assert "nope" in unknown.stderr and "Traceback" not in unknown.stderr


async def test_sigterm_to_run_reaches_the_child(
    web: dict[str, Any], laptop: Daemon, tmp_path: Path,
) -> None:
    marker = tmp_path / "terminated"
    (tmp_path / "child.py").write_text(WAITS_FOR_TERM)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridged", "run", "--from", "deploy/web", "--no-proxy", "--",
        sys.executable, "child.py", str(marker), cwd=tmp_path, env=laptop.process.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()  # the child's: it handled SIGTERM
    root = marker.read_text()
    assert root and _gone(root)


async def _through_the_proxy(laptop: Daemon, tmp_path: Path, url: str) -> dict[str, Any]:
    """What app.py, run with the proxies, saw: its HTTP_PROXY, NO_PROXY and the answer."""
    (tmp_path / "app.py").write_text(APP)
    out = tmp_path / "seen.json"
    result = await asyncio.to_thread(_run, laptop, tmp_path, "--from", "deploy/web", "--",
                                     sys.executable, "app.py", str(out), url)
    if "serves no proxy" in result.stderr:  # a daemon without POST /v1/proxy (404)
        pytest.skip("needs the daemon's proxy endpoint")
    assert result.returncode == 0, result.stderr
    seen: dict[str, Any] = json.loads(out.read_text())
    assert seen["proxy"].startswith("http://127.0.0.1:")
    assert seen["no_proxy"].startswith("localhost,127.0.0.1,::1")
    return seen


async def test_run_reaches_a_service_s_cluster_ip_through_the_proxy(
    web: dict[str, Any], laptop: Daemon, tmp_path: Path,
) -> None:
    url = f"http://{web['spec']['clusterIP']}/by-ip"
    answer = (await _through_the_proxy(laptop, tmp_path, url))["answer"]
    assert answer.get("who", "").startswith("web-"), answer  # a pod of the Service answered
    assert answer["path"] == "/by-ip"


@pytest.fixture
def cluster_dns(cluster: KubeApiServer) -> None:  # noqa: F811
    """The relay pod resolves cluster names (set before ``laptop`` connects and starts it)."""
    reason = cluster_dns_unavailable()
    if reason:
        pytest.skip(reason)
    kubelet: RelayKubelet = cluster.kubelet_hook  # type: ignore[attr-defined]
    kubelet.cluster_dns = True


async def test_run_reaches_a_service_by_name_through_the_proxy(
    cluster_dns: None, web: dict[str, Any], laptop: Daemon, tmp_path: Path,
) -> None:
    answer = (await _through_the_proxy(laptop, tmp_path, "http://web/hello"))["answer"]
    assert answer.get("who", "").startswith("web-"), answer  # a pod of the Service answered
    assert answer["path"] == "/hello"
