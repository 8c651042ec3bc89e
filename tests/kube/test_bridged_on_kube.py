"""bridged against the stand-in API server: the relay deployed and reached through the API
server's port-forward, other developers, upgrades, failures, Services, clean-up."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridged.control.client import ControlClient
from bridged.kube import manifests as m
from bridged.localrun import DaemonProcess

from ..helpers import Daemon, assert_clean_log, eventually
from .apiserver import Context, KubeApiServer
from .relay_kubelet import RelayKubelet

NS = "team-a"


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeApiServer]:
    kubelet = RelayKubelet(tmp_path / "node")
    async with KubeApiServer(kubelet=kubelet, namespaces=[NS], bookmark_interval=0.2) as api:
        kubelet.attach(api)
        api.kubelet_hook = kubelet  # type: ignore[attr-defined]
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", [
            Context("admin", api.admin, NS, auth="cert"),
        ])
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield api


async def _daemon(home: Path) -> Daemon:
    process = await DaemonProcess(home).start()
    return Daemon(process, ControlClient(process.socket))


@pytest.fixture
async def laptop(tmp_path: Path, cluster: KubeApiServer) -> AsyncIterator[Daemon]:
    d = await _daemon(tmp_path / "laptop")
    yield d
    await d.process.stop()
    assert_clean_log(d.process.log_path)


def _keys(api: KubeApiServer) -> dict[str, str]:
    secret = api.get("secrets", NS, m.AUTHORIZED_KEYS_SECRET) or {}
    return {k: base64.b64decode(v).decode().strip() for k, v in (secret.get("data") or {}).items()}


async def _echo_on(host: str, port: int) -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, host, port)


async def _roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return data


async def test_connect_from_scratch_deploys_a_locked_down_relay(
    cluster: KubeApiServer, laptop: Daemon
) -> None:
    bridge = await laptop.call("POST", "bridges", {})
    assert bridge["state"] == "connected"
    assert bridge["relay"] == f"kube://admin/{NS}"
    # every object is ours, labelled with the version
    for plural, name in (("serviceaccounts", m.RELAY), ("roles", m.RELAY),
                         ("rolebindings", m.RELAY), ("deployments", m.RELAY),
                         ("secrets", m.AUTHORIZED_KEYS_SECRET),
                         ("secrets", m.HOST_KEY_SECRET), ("configmaps", m.PUBLISHED_CONFIGMAP)):
        obj = cluster.get(plural, NS, name)
        assert obj is not None, (plural, name)
        assert obj["metadata"]["labels"][m.MANAGED_BY] == "bridged"
    # least privilege: three named objects (the keys' Secret read and watched, the host key
    # and its published copy read and updated); the redirects' kinds and nothing else
    role = cluster.get("roles", NS, m.RELAY)
    assert role is not None
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert len(named) == 3 and all(set(r["verbs"]) <= {"get", "update"} for r in named
                                   if r["resourceNames"] != [m.AUTHORIZED_KEYS_SECRET])
    assert [r["verbs"] for r in named if r["resourceNames"] == [m.AUTHORIZED_KEYS_SECRET]] \
        == [["get", "list", "watch"]]
    assert [(r["apiGroups"], r["resources"], r["verbs"]) for r in role["rules"]
            if not r.get("resourceNames")] == [
        (group, [kind], ["get", "list", "update", "create", "delete"])
        for group, kind in ((([""]), "services"), (["gateway.networking.k8s.io"], "httproutes"),
                            (["gateway.networking.k8s.io"], "grpcroutes"),
                            (["cilium.io"], "ciliumenvoyconfigs"))] + [
        (["discovery.k8s.io"], ["endpointslices"], ["get", "list"])]  # read only: --tcp lives
    pod_spec = cluster.get("deployments", NS, m.RELAY)["spec"]["template"]["spec"]  # type: ignore[index]
    sc = pod_spec["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"] and pod_spec["securityContext"]["runAsNonRoot"]
    # the developer's key is authorized, the relay's key published and pinned
    key = await laptop.public_key()
    assert list(_keys(cluster).values()) == [key]
    published = (cluster.get("configmaps", NS, m.PUBLISHED_CONFIGMAP) or {})["data"]["host_key"]
    assert published.startswith("ssh-ed25519 ")


async def test_a_service_is_exposed_by_name_through_the_port_forward(
    cluster: KubeApiServer, laptop: Daemon
) -> None:
    svc = cluster.apply({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "redis", "namespace": NS},
                         "spec": {"selector": {"app": "redis"},
                                  "ports": [{"name": "client", "port": 6379}]}})
    cluster_ip = svc["spec"]["clusterIP"]
    server = await _echo_on(cluster_ip, 6379)  # the "cluster" answers on the ClusterIP
    try:
        await laptop.call("POST", "bridges", {})
        made = (await laptop.call("POST", "forwards", {"target": "redis"}))["forwards"]
        assert len(made) == 1
        forward = made[0]
        assert forward["remote_host"] == cluster_ip and forward["remote_port"] == 6379
        assert forward["env"]["REDIS_SERVICE_PORT"] == str(forward["local_port"])
        assert forward["env"]["REDIS_SERVICE_PORT_CLIENT"] == str(forward["local_port"])
        payload = os.urandom(2 * 1024 * 1024)
        assert await _roundtrip(forward["local_port"], payload) == payload
        services = await laptop.call("GET", "services")
        assert [(s["service"], s["exposed"]) for s in services] == [("redis", True)]
        missing = await laptop.acli("expose", "no-such-service")
        assert missing.returncode == 1 and "no Service 'no-such-service'" in missing.stderr
    finally:
        server.close()


async def test_a_second_developer_joins_and_keys_are_kept(
    cluster: KubeApiServer, laptop: Daemon, tmp_path: Path
) -> None:
    await laptop.call("POST", "bridges", {})
    other = await _daemon(tmp_path / "bob")
    try:
        await other.call("POST", "bridges", {})
        assert sorted(_keys(cluster).values()) == sorted(
            [await laptop.public_key(), await other.public_key()])
        pods = cluster.list("pods", NS)
        assert len(pods) == 1  # joined, not redeployed
        # bob leaves: his key goes, alice's stays, the relay stays
        await other.call("DELETE", "bridges/admin-team-a")
        assert list(_keys(cluster).values()) == [await laptop.public_key()]
        assert cluster.get("deployments", NS, m.RELAY) is not None
    finally:
        await other.process.stop()


async def test_an_older_relay_is_upgraded(
    cluster: KubeApiServer, laptop: Daemon, tmp_path: Path
) -> None:
    await laptop.call("POST", "bridges", {})
    first_pod = cluster.list("pods", NS)[0]["metadata"]["name"]
    # what an older bridged left behind: the same objects, another version label
    dep = cluster.get("deployments", NS, m.RELAY) or {}
    dep["metadata"]["labels"][m.VERSION_LABEL] = "0.0.1"
    dep["spec"]["template"]["metadata"]["labels"][m.VERSION_LABEL] = "0.0.1"
    cluster.apply(dep)

    async def old_pod_running() -> bool:
        return any(p["metadata"]["labels"].get(m.VERSION_LABEL) == "0.0.1" and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or [])
            for p in cluster.list("pods", NS))

    await eventually(old_pod_running, within=20, what="the 0.0.1 relay to run")
    other = await _daemon(tmp_path / "bob")
    try:
        await other.call("POST", "bridges", {})  # finds 0.0.1: upgrades, then connects
        dep = cluster.get("deployments", NS, m.RELAY) or {}
        assert dep["metadata"]["labels"][m.VERSION_LABEL] != "0.0.1"
        template = dep["spec"]["template"]["metadata"]["labels"]
        assert template[m.VERSION_LABEL] == dep["metadata"]["labels"][m.VERSION_LABEL]
        # the first developer's bridge survives the roll: same host key (kept in a Secret)
        async def back() -> Any:
            b = (await laptop.status())["bridges"][0]
            return b["state"] == "connected"

        await eventually(back, within=20, what="alice's bridge after the upgrade")
        live = [p for p in cluster.list("pods", NS) if not p["metadata"].get("deletionTimestamp")]
        assert [p["metadata"]["labels"][m.VERSION_LABEL] for p in live] == [
            dep["metadata"]["labels"][m.VERSION_LABEL]]  # rolled: only new pods remain
        assert first_pod not in [p["metadata"]["name"] for p in live]
    finally:
        await other.process.stop()


async def test_an_image_that_cannot_be_pulled_is_reported(
    cluster: KubeApiServer, laptop: Daemon
) -> None:
    cluster.kubelet_hook.pullable = {m.DEFAULT_IMAGE}  # type: ignore[attr-defined]
    result = await laptop.acli("connect", "--relay-image", "registry.invalid/relay:nope")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("bridged: ")]
    assert len(errors) == 1, result.stderr  # progress lines ("… step") aside
    assert "cannot start: ImagePullBackOff" in errors[0]
    assert "--relay-image" in errors[0]


async def test_missing_rbac_rights_are_a_clear_error(
    cluster: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer = cluster.add_user("viewer")
    cluster.grant(viewer, NS, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}])
    kubeconfig = cluster.write_kubeconfig(tmp_path / "viewer-kubeconfig",
                                          [Context("viewer", viewer, NS)])
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    daemon = await _daemon(tmp_path / "viewer")
    try:
        result = await daemon.acli("connect")
        assert result.returncode == 1
        assert "Forbidden" in result.stderr or "forbidden" in result.stderr, result.stderr
        assert "RBAC" in result.stderr
        assert len([ln for ln in result.stderr.splitlines() if ln.startswith("bridged: ")]) == 1
    finally:
        await daemon.process.stop()


async def test_a_dropped_port_forward_is_a_normal_reconnect(
    cluster: KubeApiServer, laptop: Daemon, echo_server: int
) -> None:
    await laptop.call("POST", "bridges", {})
    forward = (await laptop.call("POST", "forwards",
                                 {"target": f"127.0.0.1:{echo_server}"}))["forwards"][0]
    pod = cluster.list("pods", NS)[0]["metadata"]["name"]
    dropped = await cluster.drop_portforwards(NS, pod)
    assert dropped >= 1

    async def reconnected() -> Any:
        b = (await laptop.status())["bridges"][0]
        return b["state"] == "connected" and b["connects"] == 2

    await eventually(reconnected, within=15, what="the bridge to come back")
    assert await _roundtrip(forward["local_port"], b"still here") == b"still here"


async def test_clean_after_a_crash_removes_everything(
    cluster: KubeApiServer, laptop: Daemon, tmp_path: Path
) -> None:
    await laptop.call("POST", "bridges", {})
    os.kill(laptop.process.pid, signal.SIGKILL)  # the laptop dies without a goodbye
    await laptop.process.proc.wait()  # type: ignore[union-attr]
    fresh = await _daemon(tmp_path / "laptop")
    try:
        result = await fresh.acli("clean", "--json")
        assert result.returncode == 0, result.stderr
        for plural, name in (("deployments", m.RELAY), ("roles", m.RELAY),
                             ("rolebindings", m.RELAY), ("serviceaccounts", m.RELAY),
                             ("secrets", m.AUTHORIZED_KEYS_SECRET),
                             ("secrets", m.HOST_KEY_SECRET),
                             ("configmaps", m.PUBLISHED_CONFIGMAP)):
            assert cluster.get(plural, NS, name) is None, (plural, name)
        again = await fresh.acli("clean", "--json")  # idempotent
        assert again.returncode == 0 and '"deleted": []' in again.stdout
    finally:
        await fresh.process.stop()


async def test_a_crashing_relay_is_reported(cluster: KubeApiServer, laptop: Daemon) -> None:
    cluster.kubelet_hook.crash = "back-off 10s restarting failed container=relay"  # type: ignore[attr-defined]
    result = await laptop.acli("connect")
    errors = [line for line in result.stderr.splitlines() if line.startswith("bridged: ")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "cannot start: CrashLoopBackOff" in errors[0] and "bridged-relay-" in errors[0]


async def test_merged_kubeconfigs_context_and_namespace_flags(
    cluster: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = cluster.add_user("dev")  # a token user in a second file
    cluster.grant(dev, None, [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
    first = cluster.write_kubeconfig(tmp_path / "a", [Context("admin", cluster.admin, NS,
                                                              auth="cert")])
    second = cluster.write_kubeconfig(tmp_path / "b", [Context("dev", dev, "default")])
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-b"}})
    daemon = await _daemon(tmp_path / "dev")
    try:
        result = await daemon.acli("connect", "--context", "dev", "-n", "team-b", "--json")
        assert result.returncode == 0, result.stderr
        assert '"relay": "kube://dev/team-b"' in result.stdout
        assert cluster.get("deployments", "team-b", m.RELAY) is not None
        assert cluster.get("deployments", NS, m.RELAY) is None  # the current context's: untouched
    finally:
        await daemon.process.stop()


async def test_with_two_replicas_a_reconnect_lands_on_a_ready_pod(
    cluster: KubeApiServer, laptop: Daemon, echo_server: int
) -> None:
    await laptop.call("POST", "bridges", {})
    dep = cluster.get("deployments", NS, m.RELAY) or {}
    dep["spec"]["replicas"] = 2
    cluster.apply(dep)

    async def two_ready() -> bool:
        pods = [p for p in cluster.list("pods", NS) if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or [])]
        return len(pods) == 2

    await eventually(two_ready, within=20, what="two Ready relay pods")
    forward = (await laptop.call("POST", "forwards",
                                 {"target": f"127.0.0.1:{echo_server}"}))["forwards"][0]
    for pod in cluster.list("pods", NS):  # cut every port-forward, whichever pod it used
        await cluster.drop_portforwards(NS, pod["metadata"]["name"])

    async def reconnected() -> Any:
        b = (await laptop.status())["bridges"][0]
        return b["state"] == "connected" and b["connects"] >= 2

    await eventually(reconnected, within=15, what="the bridge to reconnect")
    # both replicas share the host key (a Secret): no pin conflict whichever pod answered
    assert await _roundtrip(forward["local_port"], b"via a replica") == b"via a replica"


async def test_env_and_files_of_a_workload_with_services_made_local(
    cluster: KubeApiServer, laptop: Daemon, tmp_path: Path
) -> None:
    svc = cluster.apply({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "redis", "namespace": NS},
                         "spec": {"ports": [{"name": "client", "port": 6379}]}})
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "orders-config", "namespace": NS},
                   "data": {"LOG_LEVEL": "debug", "app.yaml": "port: 8080\n"}})
    cluster.apply({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "orders-db", "namespace": NS},
                   "data": {"password": base64.b64encode(b"s3cr3t").decode()}})
    container = {
        "name": "orders", "image": "orders:1",
        "envFrom": [{"configMapRef": {"name": "orders-config"}}],
        "env": [
            {"name": "REDIS_URL", "value": "redis://redis:6379/0"},
            {"name": "DB_PASSWORD",
             "valueFrom": {"secretKeyRef": {"name": "orders-db", "key": "password"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "GREETING", "value": "level=$(LOG_LEVEL)"},
        ],
        "volumeMounts": [{"name": "config", "mountPath": "/etc/orders"},
                         {"name": "db", "mountPath": "/var/run/db"}],
    }
    cluster.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "orders", "namespace": NS},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "orders"}},
                            "template": {"metadata": {"labels": {"app": "orders"}},
                                         "spec": {"containers": [container], "volumes": [
                                             {"name": "config",
                                              "configMap": {"name": "orders-config"}},
                                             {"name": "db",
                                              "secret": {"secretName": "orders-db"}}]}}}})
    await laptop.call("POST", "bridges", {})
    forward = (await laptop.call("POST", "forwards", {"target": "redis"}))["forwards"][0]
    assert forward["remote_host"] == svc["spec"]["clusterIP"]

    env_file = tmp_path / "orders.env"
    result = await laptop.acli("env", "deploy/orders", "-o", str(env_file))
    assert result.returncode == 0, result.stderr
    assert (env_file.stat().st_mode & 0o777) == 0o600  # it holds a Secret value
    text = env_file.read_text()
    assert f"REDIS_URL=redis://127.0.0.1:{forward['local_port']}/0" in text.replace("'", "") \
        .replace('"', "")
    assert "s3cr3t" in text and "level=debug" in text
    pod = cluster.list("pods", NS)
    names = [p["metadata"]["name"] for p in pod if p["metadata"]["name"].startswith("orders-")]
    assert any(n in text for n in names)  # fieldRef from the real running pod

    out = tmp_path / "files"
    result = await laptop.acli("files", "deploy/orders", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    config = out / "etc" / "orders" / "app.yaml"
    assert config.read_text() == "port: 8080\n"
    password = out / "var" / "run" / "db" / "password"
    assert password.read_bytes() == b"s3cr3t"
    assert (password.stat().st_mode & 0o077) == 0  # secrets: owner only


async def test_expose_all_services_of_the_namespace(
    cluster: KubeApiServer, laptop: Daemon
) -> None:
    for name, ports in (("redis", [6379]), ("api", [8080, 9090])):
        cluster.apply({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": name, "namespace": NS},
                       "spec": {"ports": [{"name": f"p{p}", "port": p} for p in ports]}})
    await laptop.call("POST", "bridges", {})
    result = await laptop.acli("expose", "--all", "--json")
    assert result.returncode == 0, result.stderr
    services = await laptop.call("GET", "services")
    assert sorted((s["service"], s["port"]) for s in services if s["exposed"]) == [
        ("api", 8080), ("api", 9090), ("redis", 6379)]
    again = await laptop.acli("expose", "--all", "--json")  # nothing left to expose
    assert again.returncode == 0 and again.stdout.strip() == "[]"


async def test_a_newer_relay_is_joined_not_downgraded(
    cluster: KubeApiServer, laptop: Daemon, tmp_path: Path
) -> None:
    await laptop.call("POST", "bridges", {})
    dep = cluster.get("deployments", NS, m.RELAY) or {}
    dep["metadata"]["labels"][m.VERSION_LABEL] = "99.0.0"
    cluster.apply(dep)
    generation = (cluster.get("deployments", NS, m.RELAY) or {})["metadata"]["generation"]
    other = await _daemon(tmp_path / "bob")
    try:
        await other.call("POST", "bridges", {})
        after = cluster.get("deployments", NS, m.RELAY) or {}
        assert after["metadata"]["labels"][m.VERSION_LABEL] == "99.0.0"
        assert after["metadata"]["generation"] == generation  # untouched: nobody restarted
    finally:
        await other.process.stop()


async def test_the_first_kubeconfig_file_chooses_the_current_context(
    cluster: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-b"}})
    first = cluster.write_kubeconfig(tmp_path / "a", [Context("a", cluster.admin, "team-b",
                                                              auth="cert")], current="a")
    second = cluster.write_kubeconfig(tmp_path / "b", [Context("b", cluster.admin, NS,
                                                               auth="cert")], current="b")
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")  # kubectl would use context "a"
    daemon = await _daemon(tmp_path / "dev")
    try:
        bridge = await daemon.call("POST", "bridges", {})
        assert bridge["relay"] == "kube://a/team-b"
    finally:
        await daemon.process.stop()


async def test_connect_uses_the_shells_kubeconfig_not_the_daemons(
    cluster: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os as _os

    real = _os.environ["KUBECONFIG"]
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))  # the daemon's environment
    daemon = await _daemon(tmp_path / "dev")
    try:
        monkeypatch.setenv("KUBECONFIG", real)  # a later shell
        result = await daemon.acli("connect", "--json")
        assert result.returncode == 0, result.stderr
        assert f'"relay": "kube://admin/{NS}"' in result.stdout
    finally:
        await daemon.process.stop()


async def test_doctor_gives_a_verdict_per_check(cluster: KubeApiServer, laptop: Daemon,
                                                tmp_path: Path) -> None:
    import json

    await laptop.call("POST", "bridges", {})
    result = await laptop.acli("doctor", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["kubeconfig"]["detail"] == f"context admin, namespace {NS}"
    assert checks["API server"]["detail"].startswith("Kubernetes v1.")
    assert checks["clock"]["verdict"] == "ok"
    assert checks["RBAC: create pods/portforward"]["verdict"] == "ok"
    assert checks["relay"]["verdict"] == "ok" and "1 pod(s) ready" in checks["relay"]["detail"]
    assert checks["bridge admin-team-a"]["verdict"] == "ok"
    # a developer who may only read: the rights they lack are named, exit 1
    viewer = cluster.add_user("viewer", ())
    cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "viewer", "namespace": NS},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": "view"},
                   "subjects": [{"kind": "User", "name": "viewer"}]})
    kubeconfig = cluster.write_kubeconfig(tmp_path / "viewer", [Context("v", viewer, NS)])
    env = {**laptop.process.env, "KUBECONFIG": str(kubeconfig)}
    import subprocess
    import sys

    # (told which context: without it doctor checks the connected bridge's, the admin's)
    limited = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "bridged", "doctor", "--context", "v"], env=env,
        capture_output=True, text=True, timeout=60)
    assert limited.returncode == 1, limited.stdout + limited.stderr
    assert "✗" in limited.stdout and "create pods/portforward" in limited.stdout
    assert "problem(s)" in limited.stdout
