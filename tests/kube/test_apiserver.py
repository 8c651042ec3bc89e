"""The stand-in API server against the API's documented behaviour, through real clients:
kubernetes-asyncio (with a generated kubeconfig: client-certificate and token users over
TLS) where it has a call for the thing, raw aiohttp for the exact wire (Status bodies, watch
lines, websocket frames)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.stream import WsApiClient

from tests.helpers import eventually

from .apiserver import ContainerWaiting, Context, KubeApiServer
from .conftest import EchoKubelet

pytestmark = pytest.mark.timeout(60)

Json = dict[str, Any]


async def call(session: aiohttp.ClientSession, method: str, path: str,
               **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, path, **kwargs) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


@pytest.fixture
async def admin(api: KubeApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with api.session() as session:
        yield session


async def kube_client(path: Path, context: str | None = None) -> client.ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(path), context=context,
                                  client_configuration=configuration)
    return client.ApiClient(configuration)


def model(body: Json) -> Any:
    """kubernetes-asyncio takes plain dicts as bodies; its annotations want model objects."""
    return body


def deployment(name: str, replicas: int = 2, image: str = "relay:1", **extra: Any) -> Json:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{
                                      "name": "relay", "image": image,
                                      "ports": [{"containerPort": 2222, "name": "ssh"}],
                                      "env": [{"name": "A", "value": "1"}]}]}},
                     **extra}}


# --- discovery and clients ---------------------------------------------------------------------


async def test_discovery_documents(api: KubeApiServer, kubeconfig: Path) -> None:
    async with await kube_client(kubeconfig) as kube:
        version = await client.VersionApi(kube).get_code()
        assert (version.major, version.minor) == ("1", "35")
        core = await client.CoreApi(kube).get_api_versions()
        assert core.versions == ["v1"]
        groups = await client.ApisApi(kube).get_api_versions()
        names = {g.name: g.preferred_version.group_version for g in groups.groups}
        assert names["apps"] == "apps/v1"
        assert names["rbac.authorization.k8s.io"] == "rbac.authorization.k8s.io/v1"
        resources = await client.CoreV1Api(kube).get_api_resources()
        by_name = {r.name: r for r in resources.resources}
        assert by_name["pods"].namespaced and by_name["pods"].kind == "Pod"
        assert by_name["pods/portforward"].verbs == ["create", "get"]
        assert not by_name["namespaces"].namespaced
        apps = await client.AppsV1Api(kube).get_api_resources()
        scale = next(r for r in apps.resources if r.name == "deployments/scale")
        assert (scale.group, scale.version, scale.kind) == ("autoscaling", "v1", "Scale")
    async with api.session() as s:
        assert (await call(s, "GET", "/apis/apps"))[1]["kind"] == "APIGroup"
        status, body = await call(s, "GET", "/apis/nope.example.com/v1")
        assert (status, body["reason"], body["details"]) == (404, "NotFound", {})


async def test_kubeconfig_contexts_token_and_certificate(api: KubeApiServer,
                                                         tmp_path: Path) -> None:
    alice = api.add_user("alice", ["devs"], cert=True)
    api.grant(alice, "team-a", [{"apiGroups": [""], "resources": ["configmaps"],
                                 "verbs": ["*"]}])
    path = api.write_kubeconfig(tmp_path / "kc", [
        Context("admin", api.admin, "default", auth="cert"),
        Context("alice-token", alice, "team-a"),
        Context("alice-cert", alice, "team-a", auth="cert")], current="alice-cert")
    for context in ("alice-token", "alice-cert", None):
        async with await kube_client(path, context) as kube:
            v1 = client.CoreV1Api(kube)
            name = f"cm-{context or 'current'}"
            created = await v1.create_namespaced_config_map(
                "team-a", model({"metadata": {"name": name}, "data": {"k": "v"}}))
            assert created.metadata.uid and created.metadata.resource_version.isdigit()
            with pytest.raises(ApiException) as forbidden:
                await v1.list_namespaced_config_map("team-b")
            assert forbidden.value.status == 403
            assert json.loads(forbidden.value.body or "")["message"] == (
                'configmaps is forbidden: User "alice" cannot list resource "configmaps" in '
                'API group "" in the namespace "team-b"')
    async with await kube_client(path, "admin") as kube:
        names = [cm.metadata.name for cm in
                 (await client.CoreV1Api(kube).list_namespaced_config_map("team-a")).items]
        assert names == ["cm-alice-cert", "cm-alice-token", "cm-current", "kube-root-ca.crt"]


async def test_plain_http_mode_with_tokens(http_api: KubeApiServer, tmp_path: Path) -> None:
    assert http_api.url.startswith("http://127.0.0.1:")
    path = http_api.write_kubeconfig(tmp_path / "kc")
    async with await kube_client(path) as kube:
        ns = await client.CoreV1Api(kube).read_namespace("default")
        assert ns.status.phase == "Active"
        assert ns.metadata.labels == {"kubernetes.io/metadata.name": "default"}
    with pytest.raises(ValueError):
        http_api.add_user("bob", cert=True)


# --- typed errors ------------------------------------------------------------------------------


async def test_status_errors_are_shaped_like_the_api(api: KubeApiServer,
                                                      admin: aiohttp.ClientSession) -> None:
    status, body = await call(admin, "GET", "/apis/apps/v1/namespaces/default/deployments/x")
    assert status == 404
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": 'deployments.apps "x" not found', "reason": "NotFound",
                    "details": {"name": "x", "group": "apps", "kind": "deployments"},
                    "code": 404}
    cm = {"metadata": {"name": "one"}, "data": {"a": "b"}}
    assert (await call(admin, "POST", "/api/v1/namespaces/default/configmaps", json=cm))[0] == 201
    status, body = await call(admin, "POST", "/api/v1/namespaces/default/configmaps", json=cm)
    assert (status, body["reason"], body["message"]) == (
        409, "AlreadyExists", 'configmaps "one" already exists')
    status, body = await call(admin, "POST", "/api/v1/namespaces/default/configmaps",
                              json={"metadata": {"labels": {"a": "b"}}})
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["message"] == ('ConfigMap "" is invalid: metadata.name: Required value: name '
                               "or generateName is required")
    assert body["details"] == {"kind": "ConfigMap", "causes": [{
        "reason": "FieldValueRequired", "message": "Required value: name or generateName is "
        "required", "field": "metadata.name"}]}
    status, body = await call(admin, "POST", "/apis/apps/v1/namespaces/default/deployments",
                              json=deployment("Bad_Name") | {"metadata": {
                                  "name": "Bad_Name", "labels": {"app": "bad value!"}}})
    assert status == 422
    assert body["details"]["group"] == "apps" and body["details"]["kind"] == "Deployment"
    fields = [c["field"] for c in body["details"]["causes"]]
    assert fields == ["metadata.name", "metadata.labels"]
    assert body["message"].startswith('Deployment.apps "Bad_Name" is invalid: [metadata.name: '
                                      'Invalid value: "Bad_Name": a lowercase RFC 1123')
    status, body = await call(admin, "POST", "/api/v1/namespaces/nowhere/configmaps", json=cm)
    assert (status, body["message"]) == (404, 'namespaces "nowhere" not found')
    status, body = await call(admin, "POST", "/api/v1/namespaces/team-a/configmaps",
                              json={"metadata": {"name": "z", "namespace": "team-b"}})
    assert (status, body["reason"]) == (400, "BadRequest")
    assert "does not match the namespace sent on the request" in body["message"]
    status, body = await call(admin, "PUT", "/api/v1/namespaces/default/configmaps", json=cm)
    assert (status, body["reason"]) == (405, "MethodNotAllowed")
    status, body = await call(admin, "POST", "/api/v1/namespaces/default/configmaps",
                              data=b"a: b", headers={"Content-Type": "text/csv"})
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")
    status, body = await call(admin, "PATCH", "/api/v1/namespaces/default/configmaps/one",
                              data=b"{}", headers={"Content-Type": "application/json"})
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")
    status, body = await call(admin, "GET", "/api/v1/namespaces/default/configmaps/one",
                              headers={"Accept": "application/vnd.kubernetes.protobuf"})
    assert (status, body["reason"]) == (406, "NotAcceptable")
    status, body = await call(admin, "POST", "/api/v1/namespaces/default/configmaps",
                              json={**cm, "metadata": {"name": "two", "resourceVersion": "5"}})
    assert (status, body["reason"]) == (400, "BadRequest")
    connector = aiohttp.TCPConnector(ssl=api.ssl_context() or False)
    async with aiohttp.ClientSession(api.url, headers={"Authorization": "Bearer nope"},
                                     connector=connector) as s:
        status, body = await call(s, "GET", "/api/v1/namespaces")
        assert (status, body) == (401, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                        "status": "Failure", "message": "Unauthorized",
                                        "reason": "Unauthorized", "code": 401})


async def test_create_generate_name_and_delete_answers(api: KubeApiServer,
                                                       admin: aiohttp.ClientSession) -> None:
    status, body = await call(admin, "POST", "/api/v1/namespaces/default/secrets", json={
        "metadata": {"generateName": "tok-"}, "stringData": {"t": "s3cret"}})
    assert status == 201
    name = body["metadata"]["name"]
    assert name.startswith("tok-") and len(name) == 9
    assert body["data"] == {"t": "czNjcmV0"} and body["type"] == "Opaque"
    assert "stringData" not in body
    status, gone = await call(admin, "DELETE", f"/api/v1/namespaces/default/secrets/{name}")
    assert (status, gone["kind"], gone["status"]) == (200, "Status", "Success")
    assert gone["details"] == {"name": name, "kind": "secrets", "uid": body["metadata"]["uid"]}
    status, svc = await call(admin, "POST", "/api/v1/namespaces/default/services", json={
        "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
                                              "ports": [{"port": 80}]}})
    assert status == 201 and svc["spec"]["clusterIP"].startswith("127.96.")
    assert svc["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    status, deleted = await call(admin, "DELETE", "/api/v1/namespaces/default/services/web")
    assert (status, deleted["kind"], deleted["metadata"]["name"]) == (200, "Service", "web")
    assert int(deleted["metadata"]["resourceVersion"]) > int(svc["metadata"]["resourceVersion"])


# --- optimistic concurrency --------------------------------------------------------------------


async def test_put_and_patch_conflict_on_a_stale_resource_version(
        admin: aiohttp.ClientSession) -> None:
    base = "/api/v1/namespaces/default/configmaps"
    _, first = await call(admin, "POST", base, json={"metadata": {"name": "c"},
                                                     "data": {"n": "1"}})
    stale = first["metadata"]["resourceVersion"]
    first["data"]["n"] = "2"
    status, second = await call(admin, "PUT", f"{base}/c", json=first)
    assert status == 200 and second["metadata"]["resourceVersion"] != stale
    first["data"]["n"] = "3"
    status, body = await call(admin, "PUT", f"{base}/c", json=first)
    assert status == 409
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": 'Operation cannot be fulfilled on configmaps "c": the object has '
                    "been modified; please apply your changes to the latest version and try "
                    "again", "reason": "Conflict", "details": {"name": "c", "kind":
                                                               "configmaps"}, "code": 409}
    status, body = await call(admin, "PATCH", f"{base}/c", json={
        "metadata": {"resourceVersion": stale}, "data": {"n": "4"}},
        headers={"Content-Type": "application/merge-patch+json"})
    assert (status, body["reason"]) == (409, "Conflict")
    unconditional = {"metadata": {"name": "c"}, "data": {"n": "5"}}
    status, third = await call(admin, "PUT", f"{base}/c", json=unconditional)
    assert status == 200 and third["data"] == {"n": "5"}
    assert third["metadata"]["uid"] == first["metadata"]["uid"]
    assert third["metadata"]["creationTimestamp"] == first["metadata"]["creationTimestamp"]
    status, same = await call(admin, "PUT", f"{base}/c", json=unconditional)
    assert same["metadata"]["resourceVersion"] == third["metadata"]["resourceVersion"]
    status, body = await call(admin, "PUT", f"{base}/other", json=unconditional)
    assert (status, body["reason"]) == (400, "BadRequest")
    status, body = await call(admin, "PUT", f"{base}/missing", json={
        "metadata": {"name": "missing"}})
    assert (status, body["reason"]) == (404, "NotFound")


async def test_generation_follows_spec_changes_and_status_is_kept(
        api: KubeApiServer, admin: aiohttp.ClientSession) -> None:
    base = "/apis/apps/v1/namespaces/default/deployments"
    _, d = await call(admin, "POST", base, json=deployment("gen", replicas=0))
    assert d["metadata"]["generation"] == 1 and d["status"] == {}
    assert d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {
        "maxUnavailable": "25%", "maxSurge": "25%"}}
    assert d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    merge = {"Content-Type": "application/merge-patch+json"}
    _, d = await call(admin, "PATCH", f"{base}/gen", json={"metadata": {"labels": {"x": "y"}}},
                      headers=merge)
    assert d["metadata"]["generation"] == 1
    _, d = await call(admin, "PATCH", f"{base}/gen", json={"spec": {"replicas": 0,
                                                                    "paused": True}},
                      headers=merge)
    assert d["metadata"]["generation"] == 2
    _, d = await call(admin, "PATCH", f"{base}/gen", json={"status": {"replicas": 7}},
                      headers=merge)
    assert d["status"].get("replicas") != 7
    status, body = await call(admin, "PATCH", f"{base}/gen", json={
        "spec": {"selector": {"matchLabels": {"app": "other"}}}}, headers=merge)
    assert status == 422 and "spec.selector" in [c["field"] for c in body["details"]["causes"]]


# --- patches -----------------------------------------------------------------------------------


async def test_merge_strategic_and_json_patches(admin: aiohttp.ClientSession) -> None:
    base = "/apis/apps/v1/namespaces/default/deployments"
    await call(admin, "POST", base, json=deployment("p", replicas=0))
    smp = {"Content-Type": "application/strategic-merge-patch+json"}
    status, d = await call(admin, "PATCH", f"{base}/p", headers=smp, json={
        "metadata": {"labels": {"tier": "edge"}},
        "spec": {"template": {"spec": {"containers": [
            {"name": "relay", "env": [{"name": "B", "value": "2"}],
             "ports": [{"containerPort": 8080, "name": "http"}]},
            {"name": "sidecar", "image": "busybox:1"}]}}}})
    assert status == 200
    containers = d["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["relay", "sidecar"]
    assert containers[0]["image"] == "relay:1"
    assert containers[0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert [p["containerPort"] for p in containers[0]["ports"]] == [2222, 8080]
    assert d["metadata"]["labels"] == {"app": "p", "tier": "edge"}
    _, d = await call(admin, "PATCH", f"{base}/p", headers=smp, json={
        "metadata": {"labels": {"tier": None}},
        "spec": {"template": {"spec": {"containers": [
            {"name": "relay", "env": [{"name": "A", "$patch": "delete"}]},
            {"name": "sidecar", "$patch": "delete"}]}}}})
    containers = d["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["relay"]
    assert containers[0]["env"] == [{"name": "B", "value": "2"}]
    assert d["metadata"]["labels"] == {"app": "p"}
    merge = {"Content-Type": "application/merge-patch+json"}
    _, d = await call(admin, "PATCH", f"{base}/p", headers=merge, json={
        "spec": {"template": {"spec": {"containers": [{"name": "relay", "image": "relay:2"}]}}}})
    assert d["spec"]["template"]["spec"]["containers"] == [{
        "name": "relay", "image": "relay:2", "imagePullPolicy": "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        "resources": {}}]  # a merge patch replaces lists; defaults are applied again
    jp = {"Content-Type": "application/json-patch+json"}
    status, d = await call(admin, "PATCH", f"{base}/p", headers=jp, json=[
        {"op": "test", "path": "/spec/replicas", "value": 0},
        {"op": "add", "path": "/metadata/annotations", "value": {"a/b": "c"}},
        {"op": "add", "path": "/spec/template/spec/containers/-",
         "value": {"name": "second", "image": "x:1"}},
        {"op": "replace", "path": "/spec/replicas", "value": 0}])
    assert status == 200 and d["metadata"]["annotations"] == {"a/b": "c"}
    assert [c["name"] for c in d["spec"]["template"]["spec"]["containers"]] == ["relay",
                                                                                "second"]
    status, body = await call(admin, "PATCH", f"{base}/p", headers=jp, json=[
        {"op": "test", "path": "/spec/replicas", "value": 9}])
    assert (status, body["reason"], body["message"]) == (
        422, "Invalid", "the server rejected our request due to an error in our request")
    status, body = await call(admin, "PATCH", f"{base}/p", headers=jp, json={"op": "add"})
    assert (status, body["reason"]) == (400, "BadRequest")
    status, body = await call(admin, "PATCH", f"{base}/nope", headers=merge, json={})
    assert status == 404


async def test_service_ports_merge_on_port_and_cluster_ip_is_kept(
        admin: aiohttp.ClientSession) -> None:
    base = "/api/v1/namespaces/default/services"
    _, svc = await call(admin, "POST", base, json={"metadata": {"name": "s"}, "spec": {
        "selector": {"app": "a"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    smp = {"Content-Type": "application/strategic-merge-patch+json"}
    _, patched = await call(admin, "PATCH", f"{base}/s", headers=smp, json={"spec": {
        "selector": {"app": "relay", "bridged": "yes"},
        "ports": [{"name": "http", "port": 80, "targetPort": 9000},
                  {"name": "grpc", "port": 90}]}})
    assert patched["spec"]["selector"] == {"app": "relay", "bridged": "yes"}
    assert [(p["port"], p["targetPort"]) for p in patched["spec"]["ports"]] == [(80, 9000),
                                                                                (90, 90)]
    replaced: Json = {"metadata": {"name": "s"}, "spec": {"selector": {"app": "a"},
                                                    "ports": [{"name": "http", "port": 80}]}}
    status, put = await call(admin, "PUT", f"{base}/s", json=replaced)
    assert status == 200 and put["spec"]["clusterIP"] == svc["spec"]["clusterIP"]
    replaced["spec"]["clusterIP"] = "127.96.9.9"
    status, body = await call(admin, "PUT", f"{base}/s", json=replaced)
    assert status == 422 and body["details"]["causes"][0]["field"] == "spec.clusterIPs[0]"


# --- lists: selectors, pages, versions -----------------------------------------------------------


async def test_label_and_field_selectors(api: KubeApiServer,
                                         admin: aiohttp.ClientSession) -> None:
    base = "/api/v1/namespaces/team-a/configmaps"
    for name, labels in (("a", {"app": "web", "tier": "front"}),
                         ("b", {"app": "web", "tier": "back"}),
                         ("c", {"app": "db"}), ("d", {})):
        await call(admin, "POST", base, json={"metadata": {"name": name, "labels": labels}})

    async def names(selector: str, key: str = "labelSelector") -> list[str]:
        status, body = await call(admin, "GET", base, params={key: selector})
        assert status == 200, body
        return [i["metadata"]["name"] for i in body["items"]
                if i["metadata"]["name"] != "kube-root-ca.crt"]

    assert await names("app=web") == ["a", "b"]
    assert await names("app==web,tier=back") == ["b"]
    assert await names("app!=web") == ["c", "d"]  # != also matches objects without the label
    assert await names("tier in (front, back)") == ["a", "b"]
    assert await names("tier notin (front)") == ["b", "c", "d"]
    assert await names("tier") == ["a", "b"]
    assert await names("!tier") == ["c", "d"]
    assert await names("metadata.name=c", "fieldSelector") == ["c"]
    assert await names("metadata.name!=c,metadata.namespace=team-a", "fieldSelector") == [
        "a", "b", "d"]
    status, body = await call(admin, "GET", base, params={"labelSelector": "app=bad value"})
    assert (status, body["reason"]) == (400, "BadRequest")
    status, body = await call(admin, "GET", base, params={"fieldSelector": "spec.x=1"})
    assert (status, body["message"]) == (400, "field label not supported: spec.x")


async def test_pods_field_selector_on_phase(api: KubeApiServer,
                                            admin: aiohttp.ClientSession) -> None:
    pod = {"metadata": {"name": "p1", "labels": {"app": "x"}},
           "spec": {"containers": [{"name": "c", "image": "x:1"}]}}
    status, created = await call(admin, "POST", "/api/v1/namespaces/default/pods", json=pod)
    assert status == 201 and created["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    assert created["spec"]["serviceAccountName"] == "default"

    async def running() -> bool:
        _, body = await call(admin, "GET", "/api/v1/pods",
                             params={"fieldSelector": "status.phase=Running"})
        return [i["metadata"]["name"] for i in body["items"]] == ["p1"]

    await eventually(running, within=10, what="p1 Running")
    _, body = await call(admin, "GET", "/api/v1/namespaces/default/pods",
                         params={"fieldSelector": "status.phase=Pending"})
    assert body["items"] == []
    _, p1 = await call(admin, "GET", "/api/v1/namespaces/default/pods/p1")
    assert p1["spec"]["nodeName"] == "standin-node"
    assert {c["type"]: c["status"] for c in p1["status"]["conditions"]} == {
        "PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True",
        "ContainersReady": "True", "PodScheduled": "True"}
    assert p1["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]


async def test_pages_exact_versions_and_compaction(api: KubeApiServer,
                                                   admin: aiohttp.ClientSession) -> None:
    base = "/api/v1/namespaces/team-b/secrets"
    for i in range(5):
        await call(admin, "POST", base, json={"metadata": {"name": f"s{i}"}})
    _, first = await call(admin, "GET", base, params={"limit": "2"})
    assert [i["metadata"]["name"] for i in first["items"]] == ["s0", "s1"]
    assert first["metadata"]["remainingItemCount"] == 3
    assert "kind" not in first["items"][0]  # list items carry no kind/apiVersion
    at = first["metadata"]["resourceVersion"]
    await call(admin, "DELETE", f"{base}/s3")
    _, second = await call(admin, "GET", base, params={
        "limit": "2", "continue": first["metadata"]["continue"]})
    assert [i["metadata"]["name"] for i in second["items"]] == ["s2", "s3"]  # as of `at`
    _, exact = await call(admin, "GET", base, params={"resourceVersion": at,
                                                      "resourceVersionMatch": "Exact"})
    assert len(exact["items"]) == 5 and exact["metadata"]["resourceVersion"] == at
    _, latest = await call(admin, "GET", base, params={"resourceVersion": "0"})
    assert len(latest["items"]) == 4
    api.compact()
    status, body = await call(admin, "GET", base, params={
        "limit": "2", "continue": second["metadata"]["continue"]})
    assert (status, body["reason"]) == (410, "Expired")
    status, body = await call(admin, "GET", base, params={"resourceVersion": at,
                                                          "resourceVersionMatch": "Exact"})
    assert (status, body["reason"]) == (410, "Expired")


# --- watch -------------------------------------------------------------------------------------


async def read_events(response: aiohttp.ClientResponse, count: int,
                      within: float = 5) -> list[Json]:
    events: list[Json] = []
    async with asyncio.timeout(within):
        while len(events) < count:
            line = await response.content.readline()
            if not line:
                break
            events.append(json.loads(line))
    return events


async def test_watch_from_a_resource_version_with_bookmarks(
        api: KubeApiServer, admin: aiohttp.ClientSession) -> None:
    base = "/api/v1/namespaces/team-a/configmaps"
    _, listed = await call(admin, "GET", base)
    start = listed["metadata"]["resourceVersion"]
    await call(admin, "POST", base, json={"metadata": {"name": "w", "labels": {"x": "1"}}})
    async with admin.get(base, params={"watch": "1", "resourceVersion": start,
                                       "allowWatchBookmarks": "true",
                                       "labelSelector": "x=1"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Transfer-Encoding"] == "chunked"
        [added] = await read_events(response, 1)
        assert added["type"] == "ADDED" and added["object"]["kind"] == "ConfigMap"
        assert added["object"]["apiVersion"] == "v1"
        merge = {"Content-Type": "application/merge-patch+json"}
        await call(admin, "PATCH", f"{base}/w", json={"data": {"k": "v"}}, headers=merge)
        await call(admin, "PATCH", f"{base}/w", json={"metadata": {"labels": {"x": "2"}}},
                   headers=merge)  # stops matching: DELETED for this watch
        await call(admin, "PATCH", f"{base}/w", json={"metadata": {"labels": {"x": "1"}}},
                   headers=merge)  # matches again: ADDED
        await call(admin, "DELETE", f"{base}/w")
        events = await read_events(response, 4)
        assert [e["type"] for e in events] == ["MODIFIED", "DELETED", "ADDED", "DELETED"]
        assert events[0]["object"]["data"] == {"k": "v"}
        versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert versions == sorted(versions)
        [bookmark] = await read_events(response, 1)
        assert bookmark["type"] == "BOOKMARK"
        assert bookmark["object"]["kind"] == "ConfigMap"
        assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= versions[-1]


async def test_watch_initial_state_timeout_and_expired(api: KubeApiServer,
                                                       admin: aiohttp.ClientSession) -> None:
    base = "/api/v1/namespaces/team-b/configmaps"
    await call(admin, "POST", base, json={"metadata": {"name": "one"}})
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with admin.get(base, params={"watch": "true", "timeoutSeconds": "1"}) as response:
        events = [json.loads(line) async for line in response.content]
    assert 0.9 < loop.time() - began < 3
    assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in events) == [
        ("ADDED", "kube-root-ca.crt"), ("ADDED", "one")]
    async with admin.get(base, params={
            "watch": "1", "sendInitialEvents": "true", "allowWatchBookmarks": "true",
            "resourceVersionMatch": "NotOlderThan", "timeoutSeconds": "5"}) as response:
        events = await read_events(response, 3)
    assert events[-1]["type"] == "BOOKMARK"
    assert events[-1]["object"]["metadata"]["annotations"] == {
        "k8s.io/initial-events-end": "true"}
    _, listed = await call(admin, "GET", base)
    old = listed["metadata"]["resourceVersion"]
    await call(admin, "POST", base, json={"metadata": {"name": "two"}})
    oldest = api.compact()
    async with admin.get(base, params={"watch": "1", "resourceVersion": old}) as response:
        assert response.status == 200
        events = [json.loads(line) async for line in response.content]
    assert events == [{"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: {old} ({oldest})", "reason": "Expired",
        "code": 410}}]


async def test_kubernetes_asyncio_watch_sees_changes(api: KubeApiServer,
                                                     kubeconfig: Path) -> None:
    async with await kube_client(kubeconfig) as kube:
        v1 = client.CoreV1Api(kube)
        listed = await v1.list_namespaced_service_account("team-a")
        seen: list[tuple[str, str]] = []

        async def changes() -> None:
            async with watch.Watch() as w:
                async for event in w.stream(
                        v1.list_namespaced_service_account, "team-a",
                        resource_version=listed.metadata.resource_version, timeout_seconds=5):
                    seen.append((event["type"], event["object"].metadata.name))
                    if len(seen) == 2:
                        return

        task = asyncio.create_task(changes())
        await asyncio.sleep(0.1)
        await v1.create_namespaced_service_account("team-a",
                                                   model({"metadata": {"name": "relay"}}))
        await v1.delete_namespaced_service_account("relay", "team-a")
        await asyncio.wait_for(task, 10)
        assert seen == [("ADDED", "relay"), ("DELETED", "relay")]
        api.compact()
        with pytest.raises(ApiException) as expired:
            async with watch.Watch() as w:
                async for _ in w.stream(v1.list_namespaced_service_account, "team-a",
                                        resource_version=listed.metadata.resource_version,
                                        timeout_seconds=5):
                    pass
        assert expired.value.status == 410
        assert (expired.value.reason or "").startswith("Expired: too old resource version")


# --- authentication and RBAC -------------------------------------------------------------------


async def test_rbac_forbids_until_granted(api: KubeApiServer) -> None:
    bob = api.add_user("bob", ["devs"])
    async with api.session(bob) as s:
        status, body = await call(s, "GET", "/api/v1/namespaces/team-a/pods/relay")
        assert status == 403
        assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": 'pods "relay" is forbidden: User "bob" '
                        'cannot get resource "pods" in API group "" in the namespace "team-a"',
                        "reason": "Forbidden", "details": {"name": "relay", "kind": "pods"},
                        "code": 403}
        status, body = await call(s, "GET", "/apis/apps/v1/deployments")
        assert body["message"] == ('deployments.apps is forbidden: User "bob" cannot list '
                                   'resource "deployments" in API group "apps" at the cluster '
                                   "scope")
        assert body["details"] == {"group": "apps", "kind": "deployments"}
        assert (await call(s, "GET", "/version"))[0] == 200
        assert (await call(s, "GET", "/apis"))[0] == 200
        api.grant("devs", "team-a", [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"],
             "resourceNames": ["relay"]}], kind="Group")
        status, body = await call(s, "GET", "/api/v1/namespaces/team-a/pods")
        assert status == 200
        status, _ = await call(s, "GET", "/apis/apps/v1/namespaces/team-a/deployments/relay")
        assert status == 404  # allowed by resourceNames: now the object is what is missing
        status, _ = await call(s, "GET", "/apis/apps/v1/namespaces/team-a/deployments/other")
        assert status == 403
        status, _ = await call(s, "GET", "/api/v1/namespaces/team-b/pods")
        assert status == 403
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"namespace": "team-a", "verb": "create",
                                                  "resource": "pods",
                                                  "subresource": "portforward"}}}
        status, body = await call(s, "POST",
                                  "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                  json=review)
        assert status == 201 and body["status"] == {"allowed": False}
        status, body = await call(s, "GET",
                                  "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        assert (status, body["reason"]) == (403, "Forbidden")  # authorization comes first
    async with api.session() as admin:
        status, body = await call(admin, "GET",
                                  "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        assert (status, body["reason"]) == (405, "MethodNotAllowed")
    async with aiohttp.ClientSession(
            api.url, connector=aiohttp.TCPConnector(ssl=api.ssl_context() or False)) as anonymous:
        status, body = await call(anonymous, "GET", "/api/v1/namespaces")
        assert status == 403 and 'User "system:anonymous" cannot list' in body["message"]
        status, _ = await call(anonymous, "GET", "/api")
        assert status == 403  # discovery is for authenticated users
        assert (await call(anonymous, "GET", "/version"))[0] == 200


async def test_client_certificate_identity_and_ssar_via_client(api: KubeApiServer,
                                                               tmp_path: Path) -> None:
    carol = api.add_user("carol", ["ops"], token=False, cert=True)
    api.grant("ops", None, [{"apiGroups": [""], "resources": ["namespaces"],
                             "verbs": ["get", "list"]}], kind="Group")
    path = api.write_kubeconfig(tmp_path / "kc", [Context("carol", carol, auth="cert")])
    async with await kube_client(path) as kube:
        names = [n.metadata.name for n in (await client.CoreV1Api(kube).list_namespace()).items]
        assert "team-a" in names
        review = await client.AuthorizationV1Api(kube).create_self_subject_access_review(
            model({"spec": {"resourceAttributes": {"verb": "list", "resource": "namespaces"}}}))
        assert review.status.allowed
        assert review.status.reason.startswith('RBAC: allowed by ClusterRoleBinding "grant-ops')
        with pytest.raises(ApiException) as exc:
            await client.CoreV1Api(kube).delete_namespace("team-a")
        assert exc.value.status == 403


# --- deployments, pods and the kubelet hook ----------------------------------------------------


async def pods_of(admin: aiohttp.ClientSession, ns: str, selector: str) -> list[Json]:
    _, body = await call(admin, "GET", f"/api/v1/namespaces/{ns}/pods",
                         params={"labelSelector": selector})
    return list(body["items"])


def ready(pod: Json) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))


async def test_deployment_creates_ready_pods_through_the_hook(
        api: KubeApiServer, admin: aiohttp.ClientSession, echo_kubelet: EchoKubelet,
        kubeconfig: Path) -> None:
    async with await kube_client(kubeconfig) as kube:
        apps = client.AppsV1Api(kube)
        await apps.create_namespaced_deployment("team-a",
                                                model(deployment("relay", replicas=2)))

        async def available() -> Any:
            d = await apps.read_namespaced_deployment("relay", "team-a")
            return d if d.status.available_replicas == 2 and d.status.observed_generation == 1 \
                else None

        d = await eventually(available, within=10, what="2 available replicas")
        conditions = {c.type: (c.status, c.reason) for c in d.status.conditions}
        assert conditions == {"Available": ("True", "MinimumReplicasAvailable"),
                              "Progressing": ("True", "NewReplicaSetAvailable")}
        assert (d.status.replicas, d.status.updated_replicas, d.status.ready_replicas) == (2, 2,
                                                                                          2)
    pods = await pods_of(admin, "team-a", "app=relay")
    assert len(pods) == 2 and all(ready(p) for p in pods)
    rs_name = pods[0]["metadata"]["ownerReferences"][0]["name"]
    _, rs = await call(admin, "GET", f"/apis/apps/v1/namespaces/team-a/replicasets/{rs_name}")
    owner = rs["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Deployment", "relay", True)
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    pth = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs_name == f"relay-{pth}"
    for pod in pods:
        assert pod["metadata"]["name"].startswith(f"{rs_name}-")
        assert pod["metadata"]["labels"] == {"app": "relay", "pod-template-hash": pth}
        assert pod["metadata"]["ownerReferences"] == [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
            "uid": rs["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        assert pod["status"]["podIP"].startswith("127.244.")
    assert sorted(echo_kubelet.started) == sorted(p["metadata"]["name"] for p in pods)
    _, events = await call(admin, "GET", "/api/v1/namespaces/team-a/events",
                           params={"fieldSelector": "involvedObject.kind=Deployment"})
    assert [e["reason"] for e in events["items"]] == ["ScalingReplicaSet"]
    assert events["items"][0]["message"] == f"Scaled up replica set {rs_name} from 0 to 2"
    status, log = await call(admin, "GET",
                             f"/api/v1/namespaces/team-a/pods/{pods[0]['metadata']['name']}/log")
    assert (status, log) == (200, f"hello from {pods[0]['metadata']['name']}\n")


async def test_rolling_update_replaces_pods_and_delete_cascades(
        api: KubeApiServer, admin: aiohttp.ClientSession, echo_kubelet: EchoKubelet) -> None:
    base = "/apis/apps/v1/namespaces/team-a/deployments"
    await call(admin, "POST", base, json=deployment("roll", replicas=2))

    async def settled(image: str) -> list[Json] | None:
        pods = await pods_of(admin, "team-a", "app=roll")
        images = {p["spec"]["containers"][0]["image"] for p in pods}
        done = len(pods) == 2 and images == {image} and all(ready(p) for p in pods)
        return pods if done else None

    old = await eventually(lambda: settled("relay:1"), within=10, what="first rollout")
    smp = {"Content-Type": "application/strategic-merge-patch+json"}
    _, d = await call(admin, "PATCH", f"{base}/roll", headers=smp, json={"spec": {"template": {
        "spec": {"containers": [{"name": "relay", "image": "relay:2"}]}}}})
    assert d["metadata"]["generation"] == 2
    new = await eventually(lambda: settled("relay:2"), within=15, what="second rollout")
    assert not {p["metadata"]["name"] for p in old} & {p["metadata"]["name"] for p in new}
    assert {p["metadata"]["name"] for p in old} <= set(echo_kubelet.stopped)
    _, rss = await call(admin, "GET", "/apis/apps/v1/namespaces/team-a/replicasets")
    by_revision = {r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]:
                   r["spec"]["replicas"] for r in rss["items"]}
    assert by_revision == {"1": 0, "2": 2}

    async def rolled_out() -> bool:
        _, d = await call(admin, "GET", f"{base}/roll")
        return bool(d["status"].get("observedGeneration") == 2
                    and d["status"].get("updatedReplicas") == 2
                    and d["status"].get("availableReplicas") == 2)

    await eventually(rolled_out, within=10, what="deployment status")
    _, scale = await call(admin, "GET", f"{base}/roll/scale")
    assert scale["kind"] == "Scale" and scale["spec"] == {"replicas": 2}
    assert scale["status"]["selector"] == "app=roll"
    status, gone = await call(admin, "DELETE", f"{base}/roll")
    assert (status, gone["status"]) == (200, "Success")

    async def all_gone() -> bool:
        pods = await pods_of(admin, "team-a", "app=roll")
        _, rss = await call(admin, "GET", "/apis/apps/v1/namespaces/team-a/replicasets")
        return not pods and not rss["items"]

    await eventually(all_gone, within=10, what="pods and replicasets deleted")
    assert {p["metadata"]["name"] for p in new} <= set(echo_kubelet.stopped)


async def test_pod_graceful_deletion_and_terminating_state(
        api: KubeApiServer, admin: aiohttp.ClientSession) -> None:
    pod = {"metadata": {"name": "solo"}, "spec": {"containers": [{"name": "c",
                                                                  "image": "x:1"}]}}
    await call(admin, "POST", "/api/v1/namespaces/default/pods", json=pod)
    await eventually(lambda: _phase(admin, "solo", "Running"), within=10, what="Running")
    async with admin.get("/api/v1/namespaces/default/pods",
                         params={"watch": "1", "fieldSelector": "metadata.name=solo",
                                 "timeoutSeconds": "10"}) as response:
        await read_events(response, 1)
        status, body = await call(admin, "DELETE", "/api/v1/namespaces/default/pods/solo")
        assert status == 200 and body["kind"] == "Pod"
        assert body["metadata"]["deletionGracePeriodSeconds"] == 30
        assert body["metadata"]["deletionTimestamp"]
        events = await read_events(response, 2)
    assert events[0]["type"] == "MODIFIED" and events[-1]["type"] == "DELETED"


async def _phase(admin: aiohttp.ClientSession, name: str, phase: str) -> bool:
    status, pod = await call(admin, "GET", f"/api/v1/namespaces/default/pods/{name}")
    return status == 200 and pod["status"].get("phase") == phase


async def test_image_pull_backoff_and_crash_loop(api: KubeApiServer,
                                                 admin: aiohttp.ClientSession,
                                                 echo_kubelet: EchoKubelet) -> None:
    echo_kubelet.fail_with = ContainerWaiting("ImagePullBackOff",
                                              'pull access denied for "ghost"')
    await call(admin, "POST", "/apis/apps/v1/namespaces/team-b/deployments",
               json=deployment("ghost", replicas=1, image="ghost:9"))

    async def waiting(reason: str) -> Json | None:
        pods = await pods_of(admin, "team-b", "app=ghost")
        for pod in pods:
            state = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {})
            if state.get("waiting", {}).get("reason") == reason:
                return pod
        return None

    pod = await eventually(lambda: waiting("ImagePullBackOff"), within=10, what="backoff")
    assert pod["status"]["phase"] == "Pending" and not ready(pod)
    name = pod["metadata"]["name"]
    _, events = await call(admin, "GET", "/api/v1/namespaces/team-b/events", params={
        "fieldSelector": f"involvedObject.name={name},involvedObject.kind=Pod"})
    by_reason = [(e["type"], e["reason"], e["message"]) for e in events["items"]]
    assert ("Normal", "BackOff", 'Back-off pulling image "ghost:9"') in by_reason
    assert ("Warning", "Failed", "Error: ImagePullBackOff") in by_reason
    assert all(e["source"] == {"component": "kubelet", "host": "standin-node"}
               for e in events["items"] if e["reason"] != "Scheduled")
    echo_kubelet.fail_with = None
    await api.restart_pod("team-b", name)
    running = await eventually(lambda: _ready_pod(admin, "team-b", name), within=10,
                               what="recovered")
    assert running["status"]["phase"] == "Running"
    await api.fail_pod("team-b", name, "CrashLoopBackOff", "relay exited", exit_code=3)
    pod = await eventually(lambda: waiting("CrashLoopBackOff"), within=10, what="crash loop")
    status = pod["status"]["containerStatuses"][0]
    assert pod["status"]["phase"] == "Running" and not ready(pod)
    assert status["restartCount"] == 1 and status["lastState"]["terminated"]["exitCode"] == 3
    _, events = await call(admin, "GET", "/api/v1/namespaces/team-b/events",
                           params={"fieldSelector": "reason=BackOff,type=Warning"})
    assert events["items"][0]["message"].startswith(
        f"Back-off restarting failed container relay in pod {name}_team-b(")


async def _ready_pod(admin: aiohttp.ClientSession, ns: str, name: str) -> Json | None:
    status, pod = await call(admin, "GET", f"/api/v1/namespaces/{ns}/pods/{name}")
    return pod if status == 200 and ready(pod) else None


async def test_readiness_reported_by_the_hook(api: KubeApiServer,
                                              admin: aiohttp.ClientSession,
                                              echo_kubelet: EchoKubelet) -> None:
    echo_kubelet.ready = False
    await call(admin, "POST", "/apis/apps/v1/namespaces/team-a/deployments",
               json=deployment("slow", replicas=1))

    async def running_unready() -> Json | None:
        pods = await pods_of(admin, "team-a", "app=slow")
        return pods[0] if pods and pods[0]["status"].get("phase") == "Running" else None

    pod = await eventually(running_unready, within=10, what="running pod")
    ready_condition = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready_condition == {"type": "Ready", "status": "False", "lastProbeTime": None,
                               "lastTransitionTime": ready_condition["lastTransitionTime"],
                               "reason": "ContainersNotReady",
                               "message": "containers with unready status: [relay]"}
    sandbox = api.sandbox("team-a", pod["metadata"]["name"])
    assert sandbox is not None
    sandbox.set_ready(True)
    await eventually(lambda: _ready_pod(admin, "team-a", pod["metadata"]["name"]), within=5,
                     what="ready")


async def test_statefulset_creates_ordinals_in_order(api: KubeApiServer,
                                                     admin: aiohttp.ClientSession) -> None:
    sts = deployment("db", replicas=3)
    sts["kind"] = "StatefulSet"
    sts["spec"]["serviceName"] = "db"
    await call(admin, "POST", "/apis/apps/v1/namespaces/team-a/statefulsets", json=sts)

    async def three_ready() -> list[Json] | None:
        pods = await pods_of(admin, "team-a", "app=db")
        return pods if len(pods) == 3 and all(ready(p) for p in pods) else None

    pods = await eventually(three_ready, within=10, what="3 ready ordinals")
    assert [p["metadata"]["name"] for p in pods] == ["db-0", "db-1", "db-2"]
    starts = [p["metadata"]["creationTimestamp"] for p in pods]
    assert starts == sorted(starts)
    assert pods[1]["metadata"]["labels"]["apps.kubernetes.io/pod-index"] == "1"
    assert pods[1]["spec"]["hostname"] == "db-1" and pods[1]["spec"]["subdomain"] == "db"


async def test_namespace_deletion_and_orphan_propagation(
        api: KubeApiServer, admin: aiohttp.ClientSession) -> None:
    await call(admin, "POST", "/api/v1/namespaces", json={"metadata": {"name": "scratch"}})
    await eventually(lambda: _exists(admin, "/api/v1/namespaces/scratch/serviceaccounts/"
                                            "default"), within=5, what="default SA")
    await call(admin, "POST", "/apis/apps/v1/namespaces/scratch/deployments",
               json=deployment("keep", replicas=1))

    async def one_pod() -> bool:
        return len(await pods_of(admin, "scratch", "app=keep")) == 1

    await eventually(one_pod, within=10, what="pod")
    status, body = await call(admin, "DELETE",
                              "/apis/apps/v1/namespaces/scratch/deployments/keep",
                              json={"propagationPolicy": "Orphan"})
    assert status == 200 and "orphan" in body["metadata"]["finalizers"]

    async def orphaned() -> bool:
        gone = not await _exists(admin, "/apis/apps/v1/namespaces/scratch/deployments/keep")
        _, rss = await call(admin, "GET", "/apis/apps/v1/namespaces/scratch/replicasets")
        return gone and len(rss["items"]) == 1 and \
            "ownerReferences" not in rss["items"][0]["metadata"]

    await eventually(orphaned, within=10, what="orphaned replicaset")
    await call(admin, "POST", "/api/v1/namespaces/scratch/configmaps", json={
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    status, ns = await call(admin, "DELETE", "/api/v1/namespaces/scratch")
    assert status == 200 and ns["status"]["phase"] == "Terminating"
    status, body = await call(admin, "POST", "/api/v1/namespaces/scratch/configmaps",
                              json={"metadata": {"name": "late"}})
    assert (status, body["reason"]) == (403, "Forbidden")
    assert "because it is being terminated" in body["message"]

    async def only_the_held_one_left() -> Json | None:
        _, held = await call(admin, "GET", "/api/v1/namespaces/scratch/configmaps/held")
        left = [await pods_of(admin, "scratch", ""), (await call(
            admin, "GET", "/apis/apps/v1/namespaces/scratch/replicasets"))[1]["items"]]
        return held if held["metadata"].get("deletionTimestamp") and not any(left) else None

    await eventually(only_the_held_one_left, within=10, what="namespace emptied")
    assert await _exists(admin, "/api/v1/namespaces/scratch")
    await call(admin, "PATCH", "/api/v1/namespaces/scratch/configmaps/held",
               json={"metadata": {"finalizers": None}},
               headers={"Content-Type": "application/merge-patch+json"})
    await eventually(lambda: _missing(admin, "/api/v1/namespaces/scratch"), within=15,
                     what="namespace removed")


async def _exists(admin: aiohttp.ClientSession, path: str) -> bool:
    return (await call(admin, "GET", path))[0] == 200


async def _missing(admin: aiohttp.ClientSession, path: str) -> bool:
    return (await call(admin, "GET", path))[0] == 404


async def test_pod_needs_its_service_account(api: KubeApiServer,
                                             admin: aiohttp.ClientSession) -> None:
    status, body = await call(admin, "POST", "/api/v1/namespaces/team-a/pods", json={
        "metadata": {"name": "x"}, "spec": {"serviceAccountName": "relay",
                                            "containers": [{"name": "c", "image": "i:1"}]}})
    assert (status, body["reason"]) == (403, "Forbidden")
    assert body["message"] == ('pods "x" is forbidden: error looking up service account '
                               'team-a/relay: serviceaccount "relay" not found')


# --- pods/portforward --------------------------------------------------------------------------


async def running_relay(api: KubeApiServer, admin: aiohttp.ClientSession, name: str = "relay",
                        ports: tuple[int, ...] = (2222,)) -> str:
    body = deployment(name, replicas=1)
    body["spec"]["template"]["spec"]["containers"][0]["ports"] = [
        {"containerPort": p} for p in ports]
    await call(admin, "POST", "/apis/apps/v1/namespaces/team-a/deployments", json=body)

    async def one_ready() -> str | None:
        pods = [p for p in await pods_of(admin, "team-a", f"app={name}") if ready(p)]
        return pods[0]["metadata"]["name"] if pods else None

    return str(await eventually(one_ready, within=10, what="a ready relay pod"))


async def test_portforward_framing_and_bytes_intact(api: KubeApiServer,
                                                    admin: aiohttp.ClientSession) -> None:
    pod = await running_relay(api, admin)
    path = f"/api/v1/namespaces/team-a/pods/{pod}/portforward"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    async with admin.ws_connect(path, params={"ports": "2222"},
                                protocols=("v4.channel.k8s.io",)) as ws:
        assert ws.protocol == "v4.channel.k8s.io"
        first = [await ws.receive_bytes(timeout=5) for _ in range(2)]
        assert first == [b"\x00\xae\x08", b"\x01\xae\x08"]  # 2222 little-endian, data + error

        async def send() -> None:
            for i in range(0, len(payload), 50_000):
                await ws.send_bytes(b"\x00" + payload[i:i + 50_000])

        sender = asyncio.create_task(send())
        received = bytearray()
        async with asyncio.timeout(20):
            while len(received) < len(payload):
                frame = await ws.receive_bytes()
                assert frame[0] == 0 and 1 < len(frame) <= 32 * 1024 + 1
                received += frame[1:]
        await sender
        assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest()
        await ws.send_bytes(b"\x01ignored: the error channel is write-only")
        await ws.send_bytes(b"")
        await ws.send_bytes(b"\x00ping")
        assert await ws.receive_bytes(timeout=5) == b"\x00ping"


async def test_portforward_with_kubernetes_asyncio_ws_client(api: KubeApiServer,
                                                             admin: aiohttp.ClientSession,
                                                             kubeconfig: Path) -> None:
    pod = await running_relay(api, admin)
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), context="admin",
                                  client_configuration=configuration)
    async with WsApiClient(configuration) as ws_api:
        v1 = client.CoreV1Api(ws_api)
        ws_ctx: Any = await v1.connect_get_namespaced_pod_portforward(
            pod, "team-a", ports=2222, _preload_content=False)
        async with ws_ctx as ws:
            prefixes = {(await ws.receive_bytes(timeout=5))[0] for _ in range(2)}
            assert prefixes == {0, 1}
            await ws.send_bytes(b"\x00hello relay")
            assert await ws.receive_bytes(timeout=5) == b"\x00hello relay"


async def test_portforward_two_ports_and_the_error_channel(
        api: KubeApiServer, admin: aiohttp.ClientSession) -> None:
    pod = await running_relay(api, admin, "two", ports=(2222, 8080))
    path = f"/api/v1/namespaces/team-a/pods/{pod}/portforward"
    async with admin.ws_connect(path, params=[("ports", "2222,8080")],
                                protocols=("v4.channel.k8s.io",)) as ws:
        first = [await ws.receive_bytes(timeout=5) for _ in range(4)]
        assert first == [b"\x00\xae\x08", b"\x01\xae\x08", b"\x02\x90\x1f", b"\x03\x90\x1f"]
        await ws.send_bytes(b"\x02to 8080")
        await ws.send_bytes(b"\x00to 2222")
        got = {(await ws.receive_bytes(timeout=5)) for _ in range(2)}
        assert got == {b"\x02to 8080", b"\x00to 2222"}
    async with admin.ws_connect(path, params={"ports": "9999"},
                                protocols=("v4.channel.k8s.io",)) as ws:
        assert [await ws.receive_bytes(timeout=5) for _ in range(2)] == [b"\x00\x0f\x27",
                                                                         b"\x01\x0f\x27"]
        error = await ws.receive_bytes(timeout=5)
        assert error[0] == 1
        text = error[1:].decode()
        assert text.startswith("error forwarding port 9999 to pod ")
        assert "failed to connect to localhost:9999 inside namespace" in text
        closing = await ws.receive(timeout=5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1000


async def test_portforward_refusals(api: KubeApiServer, admin: aiohttp.ClientSession) -> None:
    pod = await running_relay(api, admin)
    path = f"/api/v1/namespaces/team-a/pods/{pod}/portforward"
    status, body = await call(admin, "GET", path, params={"ports": "2222"})
    assert (status, body["message"]) == (400, "Upgrade request required")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await admin.ws_connect(path, params={"ports": "2222"}, protocols=("channel.k8s.io",))
    assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await admin.ws_connect(path, protocols=("v4.channel.k8s.io",))
    assert refused.value.status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await admin.ws_connect("/api/v1/namespaces/team-a/pods/nope/portforward",
                               params={"ports": "2222"}, protocols=("v4.channel.k8s.io",))
    assert refused.value.status == 404
    dave = api.add_user("dave")
    api.grant(dave, "team-a", [{"apiGroups": [""], "resources": ["pods/portforward"],
                                "verbs": ["get"]}])
    async with api.session(dave) as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(path, params={"ports": "2222"}, protocols=("v4.channel.k8s.io",))
        assert refused.value.status == 403
        api.grant(dave, "team-a", [{"apiGroups": [""], "resources": ["pods/portforward"],
                                    "verbs": ["create"]}])
        async with s.ws_connect(path, params={"ports": "2222"}) as ws:
            assert ws.protocol is None  # no subprotocol asked: binary channels all the same
            assert len([await ws.receive_bytes(timeout=5) for _ in range(2)]) == 2


async def test_portforward_base64_channel_protocol(api: KubeApiServer,
                                                   admin: aiohttp.ClientSession) -> None:
    import base64

    pod = await running_relay(api, admin)
    path = f"/api/v1/namespaces/team-a/pods/{pod}/portforward"
    async with admin.ws_connect(path, params={"ports": "2222"},
                                protocols=("v4.base64.channel.k8s.io",)) as ws:
        assert [await ws.receive_str(timeout=5) for _ in range(2)] == ["0rgg=", "1rgg="]
        await ws.send_str("0" + base64.b64encode(b"text mode").decode())
        assert base64.b64decode((await ws.receive_str(timeout=5))[1:]) == b"text mode"


async def test_dropping_portforwards_and_failing_the_pod(api: KubeApiServer,
                                                         admin: aiohttp.ClientSession) -> None:
    pod = await running_relay(api, admin)
    path = f"/api/v1/namespaces/team-a/pods/{pod}/portforward"
    async with admin.ws_connect(path, params={"ports": "2222"},
                                protocols=("v4.channel.k8s.io",)) as ws:
        [await ws.receive_bytes(timeout=5) for _ in range(2)]
        assert await api.drop_portforwards("team-a", pod) == 1
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    async with admin.ws_connect(path, params={"ports": "2222"},
                                protocols=("v4.channel.k8s.io",)) as ws:
        [await ws.receive_bytes(timeout=5) for _ in range(2)]
        assert await api.drop_portforwards("team-a", pod, abrupt=True) == 1
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR)
    async with admin.ws_connect(path, params={"ports": "2222"},
                                protocols=("v4.channel.k8s.io",)) as ws:
        [await ws.receive_bytes(timeout=5) for _ in range(2)]
        await api.fail_pod("team-a", pod, "CrashLoopBackOff")
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    async with admin.ws_connect(path, params={"ports": "2222"},
                                protocols=("v4.channel.k8s.io",)) as ws:
        [await ws.receive_bytes(timeout=5) for _ in range(2)]
        error = await ws.receive_bytes(timeout=5)
        assert error[0] == 1 and b"connection refused" in error


async def test_scale_subresource_yaml_bodies_and_delete_collection(
        api: KubeApiServer, admin: aiohttp.ClientSession) -> None:
    manifest = (b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: y\nspec:\n"
                b"  replicas: 1\n  selector:\n    matchLabels: {app: y}\n  template:\n"
                b"    metadata:\n      labels: {app: y}\n    spec:\n      containers:\n"
                b"      - {name: c, image: 'y:1'}\n")
    status, created = await call(admin, "POST", "/apis/apps/v1/namespaces/team-b/deployments",
                                 data=manifest, headers={"Content-Type": "application/yaml"})
    assert status == 201 and created["spec"]["replicas"] == 1
    status, scale = await call(admin, "PATCH",
                               "/apis/apps/v1/namespaces/team-b/deployments/y/scale",
                               json={"spec": {"replicas": 3}},
                               headers={"Content-Type": "application/merge-patch+json"})
    assert status == 200 and scale["spec"] == {"replicas": 3}

    async def three() -> bool:
        return len([p for p in await pods_of(admin, "team-b", "app=y") if ready(p)]) == 3

    await eventually(three, within=10, what="scaled to 3")
    status, listed = await call(admin, "DELETE", "/api/v1/namespaces/team-b/pods",
                                params={"labelSelector": "app=y"})
    assert status == 200 and listed["kind"] == "PodList" and len(listed["items"]) == 3
    await eventually(three, within=10, what="replaced by the replicaset")


async def test_portforward_reaches_a_real_bridged_relay(tmp_path: Path) -> None:
    """The kubelet hook runs the real ``bridged relay``; its SSH banner comes through the
    port-forward, as it would from a relay pod in a cluster."""
    from bridged.localrun import RelayProcess

    from .apiserver import PodHandle, PodSandbox

    async def relay_kubelet(sandbox: PodSandbox) -> PodHandle:
        relay = await RelayProcess(tmp_path / sandbox.name).start()

        async def stop() -> None:
            await relay.stop()

        return PodHandle(ports={2222: relay.ssh_port}, stop=stop)

    async with KubeApiServer(kubelet=relay_kubelet, namespaces=["team-a"]) as api, \
            api.session() as admin:
        pod = await running_relay(api, admin)
        async with admin.ws_connect(f"/api/v1/namespaces/team-a/pods/{pod}/portforward",
                                    params={"ports": "2222"},
                                    protocols=("v4.channel.k8s.io",)) as ws:
            [await ws.receive_bytes(timeout=5) for _ in range(2)]
            banner = await ws.receive_bytes(timeout=15)
            assert banner[0] == 0 and banner[1:].startswith(b"SSH-2.0-")
