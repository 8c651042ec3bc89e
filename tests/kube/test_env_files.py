"""``bridged env`` / files against the stand-in API server, through kubernetes_asyncio and
:class:`bridged.kube.client.Kube`: a Deployment whose container takes env from every kind of
source, pods run by the stand-in's kubelet, least-privilege users, volumes written to disk."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridged.errors import ConfigError, KubeError, NotFound
from bridged.kube.client import Kube
from bridged.kube.env import workload_env, write_env_file
from bridged.kube.files import workload_files
from bridged.workload.formats import format_env
from bridged.workload.rewrites import service_rewrites

from ..helpers import eventually
from .apiserver import Context, KubeApiServer
from .conftest import EchoKubelet

NS = "team-a"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


CONFIG_MAP: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "app-config", "namespace": NS},
                              "data": {"LOG_LEVEL": "debug", "app.yaml": "port: 8080\n",
                                       "UPSTREAM": "http://redis:6379/"}}
SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": NS},
          "type": "Opaque",
          "data": {"password": b64("s3cr3t"), "user": b64("orders"),
                   "DATABASE_URL": b64("redis://:s3cr3t@redis.team-a.svc.cluster.local:6379/0")}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "redis", "namespace": NS},
           "spec": {"selector": {"app": "redis"},
                    "ports": [{"name": "redis", "port": 6379, "targetPort": 6379}]}}

ORDERS_ENV = [
    {"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {"name": "app-config",
                                                            "key": "LOG_LEVEL"}}},
    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
    {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "nope",
                                                        "optional": True}}},
    {"name": "MAYBE_SECRET", "valueFrom": {"secretKeyRef": {"name": "absent-secret",
                                                            "key": "k", "optional": True}}},
    field("POD_NAME", "metadata.name"),
    field("POD_NAMESPACE", "metadata.namespace"),
    field("POD_UID", "metadata.uid"),
    field("POD_IP", "status.podIP"),
    field("POD_IPS", "status.podIPs"),
    field("HOST_IP", "status.hostIP"),
    field("NODE_NAME", "spec.nodeName"),
    field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    field("APP_LABEL", "metadata.labels['app']"),
    field("TEAM", "metadata.annotations['example.com/team']"),
    {"name": "MEMORY_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                             "divisor": "1Mi"}}},
    {"name": "CPU_MILLIS", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu",
                                                              "divisor": "1m"}}},
    {"name": "STORAGE", "valueFrom": {"resourceFieldRef": {
        "resource": "limits.ephemeral-storage"}}},
    {"name": "GREETING", "value": "hello from $(POD_NAME) on $(NODE_NAME)"},
    {"name": "LITERAL", "value": "$$(POD_NAME) $(UNDEFINED)"},
    {"name": "DSN", "value": "postgres://$(DB_user):$(DB_PASSWORD)@postgres:5432/orders"},
    {"name": "REDIS_ADDR", "value": "$(REDIS_SERVICE_HOST):$(REDIS_SERVICE_PORT)"},
    {"name": "CACHE_HOST", "value": "redis"},
    {"name": "CACHE_PORT", "value": "6379"},
]

ORDERS_VOLUMES = [
    {"name": "config", "configMap": {"name": "app-config", "items": [
        {"key": "app.yaml", "path": "app.yaml"},
        {"key": "LOG_LEVEL", "path": "levels/log", "mode": 0o600}]}},
    {"name": "creds", "secret": {"secretName": "db", "defaultMode": 0o400}},
    {"name": "podinfo", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "mem", "resourceFieldRef": {"containerName": "orders",
                                             "resource": "limits.memory", "divisor": "1Mi"}}]}},
    {"name": "bundle", "projected": {"sources": [
        {"configMap": {"name": "app-config", "items": [{"key": "UPSTREAM", "path": "upstream"}]}},
        {"secret": {"name": "db", "items": [{"key": "user", "path": "db/user"}]}},
        {"secret": {"name": "absent-secret", "optional": True}},
        {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {
            "fieldPath": "metadata.namespace"}}]}}]}},
    {"name": "scratch", "emptyDir": {}},
]


def deployment(name: str = "orders", *, replicas: int = 1,
               env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name},
                             "annotations": {"example.com/team": "payments",
                                             "kubectl.kubernetes.io/default-container": name}},
                "spec": {
                    "containers": [
                        {"name": "proxy", "image": "envoy:1.30", "ports": [{"containerPort": 9901}],
                         "env": [{"name": "PROXY_ONLY", "value": "1"}]},
                        {"name": name, "image": "orders:1.0", "ports": [{"containerPort": 8080}],
                         "resources": {"limits": {"memory": "128Mi", "cpu": "500m"}},
                         "envFrom": [
                             {"configMapRef": {"name": "app-config"}, "prefix": "CFG_"},
                             {"secretRef": {"name": "db"}, "prefix": "DB_"},
                             {"configMapRef": {"name": "feature-flags", "optional": True}},
                             {"secretRef": {"name": "absent-secret", "optional": True}}],
                         "env": env if env is not None else ORDERS_ENV,
                         "volumeMounts": [
                             {"name": "config", "mountPath": "/etc/orders"},
                             {"name": "creds", "mountPath": "/etc/orders/creds",
                              "readOnly": True},
                             {"name": "podinfo", "mountPath": "/etc/podinfo"},
                             {"name": "bundle", "mountPath": "/var/run/bundle"},
                             {"name": "config", "mountPath": "/app/app.yaml",
                              "subPath": "app.yaml"},
                             {"name": "scratch", "mountPath": "/tmp"}]},
                    ],
                    "volumes": ORDERS_VOLUMES,
                },
            },
        },
    }


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  echo_kubelet: EchoKubelet) -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(kubelet=echo_kubelet, namespaces=[NS],
                             bookmark_interval=0.2) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig",
                                          [Context("admin", api.admin, NS, auth="cert")])
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        for obj in (CONFIG_MAP, SECRET, SERVICE):
            api.apply(obj)
        yield api


@pytest.fixture
async def kube(cluster: KubeApiServer) -> AsyncIterator[Kube]:
    k = await Kube.connect()
    try:
        yield k
    finally:
        await k.close()


async def running_pod(api: KubeApiServer, app: str) -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        for p in api.list("pods", NS):
            conditions = {c["type"]: c["status"] for c in p["status"].get("conditions") or []}
            if (p["metadata"].get("labels") or {}).get("app") == app \
                    and p["status"].get("phase") == "Running" and conditions.get("Ready") == "True":
                return p
        return None

    pod: dict[str, Any] = await eventually(ready, what=f"a Running and Ready pod of {app}")
    return pod


async def test_env_of_a_deployment_from_every_source_with_a_real_pod(
        cluster: KubeApiServer, kube: Kube) -> None:
    cluster.apply(deployment())
    pod = await running_pod(cluster, "orders")
    redis_ip = cluster.get("services", NS, "redis")["spec"]["clusterIP"]  # type: ignore[index]
    rewrites = service_rewrites("redis", NS, redis_ip, {6379: "127.0.0.1:16379"})

    result = await workload_env(kube, "deploy/orders", None, rewrites=rewrites)

    env = result.as_dict()
    assert result.container == "orders"  # the default-container annotation, not the first
    assert pod["metadata"]["name"] in result.source
    # envFrom with prefixes; optional sources that do not exist are skipped
    assert env["CFG_LOG_LEVEL"] == "debug" and env["CFG_app.yaml"] == "port: 8080\n"
    assert env["DB_password"] == "s3cr3t" and env["DB_user"] == "orders"
    # valueFrom: keys, optional missing keys leave the variable out
    assert env["LOG_LEVEL"] == "debug" and env["DB_PASSWORD"] == "s3cr3t"
    assert "MAYBE" not in env and "MAYBE_SECRET" not in env
    # fieldRefs from the real Running pod
    assert env["POD_NAME"] == pod["metadata"]["name"]
    assert env["POD_NAMESPACE"] == NS
    assert env["POD_UID"] == pod["metadata"]["uid"]
    assert env["POD_IP"] == pod["status"]["podIP"] == env["POD_IPS"]
    assert env["HOST_IP"] == pod["status"]["hostIP"]
    assert env["NODE_NAME"] == pod["spec"]["nodeName"] == "standin-node"
    assert env["SERVICE_ACCOUNT"] == "default"
    assert env["APP_LABEL"] == "orders" and env["TEAM"] == "payments"
    # resourceFieldRefs: limits, requests defaulted from limits, a limit that is not set
    assert env["MEMORY_MI"] == "128" and env["CPU_MILLIS"] == "500"
    assert env["STORAGE"] == "" and "allocatable" in result.unknown["STORAGE"]
    # $(VAR) expansion
    assert env["GREETING"] == f"hello from {pod['metadata']['name']} on standin-node"
    assert env["LITERAL"] == "$(POD_NAME) $(UNDEFINED)"
    assert env["DSN"] == "postgres://orders:s3cr3t@postgres:5432/orders"
    # Service variables and rewrites to the local forward
    assert env["REDIS_ADDR"] == "127.0.0.1:16379"
    assert env["REDIS_SERVICE_HOST"] == "127.0.0.1" and env["REDIS_SERVICE_PORT"] == "16379"
    assert env["REDIS_PORT"] == "tcp://127.0.0.1:16379"
    assert env["CACHE_HOST"] == "127.0.0.1" and env["CACHE_PORT"] == "16379"
    assert env["CFG_UPSTREAM"] == "http://127.0.0.1:16379/"
    assert env["DB_DATABASE_URL"] == "redis://:s3cr3t@127.0.0.1:16379/0"
    assert result.rewritten["REDIS_ADDR"] == (f"{redis_ip}:6379", "127.0.0.1:16379")
    assert "KUBERNETES_SERVICE_HOST" not in env and "PROXY_ONLY" not in env
    # which values hold Secret data
    assert set(result.secret_names) == {"DB_password", "DB_user", "DB_DATABASE_URL",
                                        "DB_PASSWORD", "DSN"}
    text = format_env(result, "dotenv")
    assert f"POD_NAME={pod['metadata']['name']}\n" in text
    assert "# holds Secret data: " in text


async def test_env_file_with_secrets_is_private(cluster: KubeApiServer, kube: Kube,
                                                tmp_path: Path) -> None:
    cluster.apply(deployment())
    result = await workload_env(kube, "deployment/orders", "orders")
    path = tmp_path / ".env"
    assert write_env_file(result, path, "shell") == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "export DB_PASSWORD='s3cr3t'\n" in path.read_text()


async def test_other_containers_and_unknown_ones(cluster: KubeApiServer, kube: Kube) -> None:
    cluster.apply(deployment())
    proxy = await workload_env(kube, "deploy/orders", "proxy")
    assert proxy.as_dict()["PROXY_ONLY"] == "1" and "LOG_LEVEL" not in proxy.as_dict()
    with pytest.raises(ConfigError) as err:
        await workload_env(kube, "deploy/orders", "ghost")
    assert "'ghost'" in str(err.value) and "proxy, orders" in str(err.value)


async def test_missing_required_ref_is_a_clear_error(cluster: KubeApiServer, kube: Kube) -> None:
    cluster.apply(deployment("broken", env=[
        {"name": "FEATURE", "valueFrom": {"configMapKeyRef": {"name": "app-config",
                                                              "key": "FEATURE"}}}]))
    with pytest.raises(ConfigError) as err:
        await workload_env(kube, "deploy/broken", None)
    message = str(err.value)
    for part in ("deployment/broken", "'broken'", "'FEATURE'", f"ConfigMap {NS}/app-config",
                 "'FEATURE'"):
        assert part in message


async def test_without_a_running_pod_the_template_is_used(cluster: KubeApiServer,
                                                          kube: Kube) -> None:
    cluster.apply(deployment("idle", replicas=0))
    result = await workload_env(kube, "deploy/idle", None)
    env = result.as_dict()
    assert "pod template" in result.source
    assert env["POD_NAMESPACE"] == NS and env["APP_LABEL"] == "idle"
    assert env["SERVICE_ACCOUNT"] == "default"
    for name in ("POD_NAME", "POD_UID", "POD_IP", "NODE_NAME", "HOST_IP", "GREETING"):
        assert name in result.unknown, name
    assert "no Running and Ready pod of deployment/idle" in result.unknown["POD_IP"]
    assert env["GREETING"] == "hello from $(POD_NAME) on $(NODE_NAME)"


async def test_statefulsets_and_pods(cluster: KubeApiServer, kube: Kube) -> None:
    template = deployment("db")["spec"]["template"]
    cluster.apply({"apiVersion": "apps/v1", "kind": "StatefulSet",
                   "metadata": {"name": "db", "namespace": NS},
                   "spec": {"replicas": 1, "serviceName": "db",
                            "selector": {"matchLabels": {"app": "db"}},
                            "template": template}})
    await running_pod(cluster, "db")
    # (the stand-in's StatefulSet controller does not copy the template's annotations to its
    # pods, so the default-container annotation is not there: name the container)
    by_sts = await workload_env(kube, "sts/db", "db")
    assert by_sts.as_dict()["POD_NAME"] == "db-0"
    by_pod = await workload_env(kube, "pod/db-0", "db")
    assert by_pod.as_dict()["POD_IP"] == by_sts.as_dict()["POD_IP"] != ""
    with pytest.raises(NotFound):
        await workload_env(kube, "statefulset/ghost", None)
    with pytest.raises(ConfigError):
        await workload_env(kube, "service/db", None)


async def test_least_privilege_reads_only_what_the_container_refers_to(
        cluster: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.apply(deployment())
    cluster.apply({**SECRET, "metadata": {"name": "unrelated", "namespace": NS}})
    await running_pod(cluster, "orders")
    dev = cluster.add_user("dev")
    cluster.grant(dev, NS, [
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"],
         "resourceNames": ["app-config", "feature-flags"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
         "resourceNames": ["db", "absent-secret"]},
    ])
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(
        tmp_path / "dev-kubeconfig", [Context("dev", dev, NS)])))
    before = len(cluster.requests)
    async with await Kube.connect() as kube:
        result = await workload_env(kube, "deploy/orders", None)
    assert result.as_dict()["DB_PASSWORD"] == "s3cr3t"
    secret_requests = sorted(p for m, p in cluster.requests[before:] if "/secrets" in p)
    assert secret_requests == [f"/api/v1/namespaces/{NS}/secrets/absent-secret",
                               f"/api/v1/namespaces/{NS}/secrets/db"]
    assert all(m == "GET" for m, _ in cluster.requests[before:])


async def test_a_reference_the_user_may_not_read_is_an_error_not_a_missing_one(
        cluster: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.apply(deployment())
    dev = cluster.add_user("dev")
    cluster.grant(dev, NS, [
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
    ])
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(
        tmp_path / "dev-kubeconfig", [Context("dev", dev, NS)])))
    async with await Kube.connect() as kube:
        with pytest.raises(KubeError) as err:
            await workload_env(kube, "deploy/orders", None)
    assert "Secret" in str(err.value) and err.value.hint and "RBAC" in err.value.hint


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


async def test_files_of_the_deployments_volumes(cluster: KubeApiServer, kube: Kube,
                                                tmp_path: Path) -> None:
    cluster.apply(deployment())
    pod = await running_pod(cluster, "orders")
    out = tmp_path / "files"

    written = await workload_files(kube, "deploy/orders", None, out)

    files = {str(w.path.relative_to(out)): w for w in written}
    assert set(files) == {
        "etc/orders/app.yaml", "etc/orders/levels/log",
        "etc/orders/creds/password", "etc/orders/creds/user", "etc/orders/creds/DATABASE_URL",
        "etc/podinfo/labels", "etc/podinfo/name", "etc/podinfo/mem",
        "var/run/bundle/upstream", "var/run/bundle/db/user", "var/run/bundle/ns",
        "app/app.yaml",
        "var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        "var/run/secrets/kubernetes.io/serviceaccount/namespace",
    }
    read = {name: (out / name).read_bytes() for name in files}
    assert read["etc/orders/app.yaml"] == read["app/app.yaml"] == b"port: 8080\n"
    assert read["etc/orders/levels/log"] == b"debug"
    assert read["etc/orders/creds/password"] == b"s3cr3t"
    labels = pod["metadata"]["labels"]
    assert read["etc/podinfo/labels"] == "\n".join(
        f'{k}="{labels[k]}"' for k in sorted(labels)).encode()
    assert read["etc/podinfo/name"] == pod["metadata"]["name"].encode()
    assert read["etc/podinfo/mem"] == b"128"
    assert read["var/run/bundle/upstream"] == b"http://redis:6379/"
    assert read["var/run/bundle/db/user"] == b"orders"
    assert read["var/run/bundle/ns"] == NS.encode()
    assert read["var/run/secrets/kubernetes.io/serviceaccount/namespace"] == NS.encode()
    assert b"BEGIN CERTIFICATE" in read["var/run/secrets/kubernetes.io/serviceaccount/ca.crt"]
    # modes: the pod's noted, ours read-only; Secrets for the owner only
    assert (files["etc/orders/levels/log"].pod_mode, files["etc/orders/levels/log"].mode) == (
        0o600, 0o444)
    assert (files["etc/orders/creds/password"].pod_mode,
            files["etc/orders/creds/password"].mode) == (0o400, 0o400)
    for name, w in files.items():
        real = (out / name).resolve()
        assert mode(real) == (0o400 if w.secret else 0o444), name
    assert mode(out / "etc/orders/creds") == 0o700
    assert mode(out / "etc/podinfo") == 0o755
    assert os.readlink(out / "etc/orders/app.yaml") == "..data/app.yaml"
    assert files["etc/orders/creds/password"].container_path == "/etc/orders/creds/password"
    # what could not be reproduced is said
    assert any(s.startswith("/tmp (volume scratch, emptyDir)") for s in written.skipped)
    assert any("ServiceAccount token" in s for s in written.skipped)

    # a second run refreshes in place
    cluster.apply({**CONFIG_MAP, "data": {**CONFIG_MAP["data"], "app.yaml": "port: 9090\n"}})
    await workload_files(kube, "deploy/orders", None, out)
    assert (out / "etc/orders/app.yaml").read_bytes() == b"port: 9090\n"
    assert (out / "app/app.yaml").read_bytes() == b"port: 9090\n"


async def test_files_need_their_required_sources(cluster: KubeApiServer, kube: Kube,
                                                 tmp_path: Path) -> None:
    broken = deployment("broken")
    broken["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"] = "gone"
    cluster.apply(broken)
    with pytest.raises(ConfigError) as err:
        await workload_files(kube, "deploy/broken", None, tmp_path / "out")
    assert "Secret gone does not exist" in str(err.value)
    assert "deployment/broken" in str(err.value)
