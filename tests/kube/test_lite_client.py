"""The relay's small Kubernetes client (:mod:`bridged.kube.lite`) against the stand-in API
server, over real HTTP/TLS: where it connects (the pod's service account, the kubeconfig forms
it supports, and a clear refusal of the others), the token file read again when the kubelet
rotates it, the API's errors as :class:`KubeApiError` with their Status, a watch's events,
and the keys' watch (:mod:`bridged.kube.keywatch`) running on it through the server ending
its watches and answering 410 Gone."""

from __future__ import annotations

import asyncio
import base64
import os
from contextlib import aclosing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridged.errors import ConfigError
from bridged.kube.client import KubeApiError, rest, update_data, watch
from bridged.kube.keywatch import KeyWatchSettings, follow_secret
from bridged.kube.lite import Endpoint, LiteKube, from_kubeconfig, in_cluster

from ..helpers import eventually
from .apiserver import Context, KubeApiServer

NS = "team-a"
READ_CONFIGMAPS = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]


def _service_account(folder: Path, api: KubeApiServer, token: str) -> dict[str, str]:
    """The files the kubelet mounts, and the environment it sets, for a pod of ``NS``."""
    folder.mkdir(parents=True, exist_ok=True)
    assert api.ca_file is not None
    (folder / "ca.crt").write_bytes(api.ca_file.read_bytes())
    (folder / "namespace").write_text(NS)
    _rotate(folder, token)
    return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}


def _rotate(folder: Path, token: str) -> None:
    """What the kubelet's atomic writer does: a new file swapped in by one rename."""
    new = folder / ".token.new"
    new.write_text(token)
    os.replace(new, folder / "token")


async def test_in_cluster_token_is_read_again_when_the_kubelet_rotates_it(
        api: KubeApiServer, tmp_path: Path) -> None:
    stranger = api.add_user("system:serviceaccount:team-a:nobody")
    reader = api.add_user("system:serviceaccount:team-a:reader")
    api.grant(reader, NS, READ_CONFIGMAPS)
    assert stranger.token and reader.token
    folder = tmp_path / "serviceaccount"
    environ = _service_account(folder, api, stranger.token)
    async with LiteKube(in_cluster(folder=folder, environ=environ)) as kube:
        assert (kube.namespace, kube.endpoint.server) == (NS, api.url)
        path = f"/api/v1/namespaces/{kube.namespace}/configmaps/kube-root-ca.crt"
        # a 403 is our error, with what the Status object says
        with pytest.raises(KubeApiError) as refused:
            await rest(kube, "GET", path)
        assert (refused.value.status, refused.value.status_reason) == (403, "Forbidden")
        assert refused.value.status_message == (
            'configmaps "kube-root-ca.crt" is forbidden: User '
            '"system:serviceaccount:team-a:nobody" cannot get resource "configmaps" in API '
            'group "" in the namespace "team-a"')
        assert str(refused.value) == f"403 {refused.value.status_message}"
        # the kubelet rotates the token: the next request carries the new one
        _rotate(folder, reader.token)
        found = await rest(kube, "GET", path)
        assert found["metadata"]["name"] == "kube-root-ca.crt"
        # a rotation caught half-way (no file for a moment) keeps the token read last
        (folder / "token").unlink()
        assert (await rest(kube, "GET", path))["kind"] == "ConfigMap"
        assert stranger.token not in repr(kube.endpoint)


async def test_writes_name_bridged_as_field_manager_and_read_modify_write(
        api: KubeApiServer, tmp_path: Path) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig",
                                      [Context("admin", api.admin, NS, auth="cert")])
    async with LiteKube(from_kubeconfig([str(kubeconfig)])) as kube:
        base = f"/api/v1/namespaces/{NS}/configmaps"
        made = await rest(kube, "POST", base, {"metadata": {"name": "one"}, "data": {"a": "1"}})
        assert made["metadata"]["name"] == "one" and made["data"] == {"a": "1"}
        assert ("POST", f"{base}?fieldManager=bridged") in api.requests
        with pytest.raises(KubeApiError) as exists:
            await rest(kube, "POST", base, {"metadata": {"name": "one"}})
        assert (exists.value.status, exists.value.status_reason) == (409, "AlreadyExists")
        assert await update_data(kube, "ConfigMap", "one", lambda d: {**d, "b": "2"}) \
            == {"a": "1", "b": "2"}
        assert (api.get("configmaps", NS, "one") or {})["data"] == {"a": "1", "b": "2"}
        assert await update_data(kube, "ConfigMap", "absent", lambda d: d) is None
        deleted = await rest(kube, "DELETE", f"{base}/one")
        assert deleted.get("kind") in ("ConfigMap", "Status")
        with pytest.raises(KubeApiError) as gone:
            await rest(kube, "GET", f"{base}/one")
        assert (gone.value.status, gone.value.status_reason) == (404, "NotFound")


def _kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": cluster}], "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": NS}}],
    }))
    return path


async def _whoami(endpoint: Endpoint) -> str:
    """Who the server took the client for: an administrator reads the namespace."""
    async with LiteKube(endpoint) as kube:
        try:
            found = await rest(kube, "GET", f"/api/v1/namespaces/{kube.namespace}")
        except KubeApiError as exc:
            return f"refused: {exc.status}"
    return "admin" if found["metadata"]["name"] == NS else "?"


async def test_kubeconfig_forms_files_data_token_and_refusals(
        api: KubeApiServer, tmp_path: Path) -> None:
    assert api.ca_file is not None and api.admin.cert is not None
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "admin.crt").write_bytes(api.admin.cert.cert_pem())
    (tmp_path / "certs" / "admin.key").write_bytes(api.admin.cert.key_pem())
    (tmp_path / "certs" / "ca.crt").write_bytes(api.ca_file.read_bytes())
    (tmp_path / "token").write_text(str(api.admin.token) + "\n")
    ca_data = base64.b64encode(api.ca_file.read_bytes()).decode()
    # files, relative to the kubeconfig that names them
    files = _kubeconfig(tmp_path / "files", {"server": api.url,
                                             "certificate-authority": "certs/ca.crt"},
                        {"client-certificate": "certs/admin.crt",
                         "client-key": "certs/admin.key"})
    assert await _whoami(from_kubeconfig([str(files)])) == "admin"
    # a token file, the CA as data
    token_file = _kubeconfig(tmp_path / "tokenfile",
                             {"server": api.url, "certificate-authority-data": ca_data},
                             {"tokenFile": str(tmp_path / "token")})
    assert await _whoami(from_kubeconfig([str(token_file)])) == "admin"
    (tmp_path / "token").write_text("not-a-token")
    assert await _whoami(from_kubeconfig([str(token_file)])) == "refused: 401"
    # merged as kubectl merges: the first file's current-context, the first entry of a name
    other = _kubeconfig(tmp_path / "other", {"server": "https://127.0.0.1:1"},
                        {"token": "not-this-one"})
    merged = from_kubeconfig([str(token_file), str(other)])
    assert (merged.server, merged.namespace) == (api.url, NS)
    # TLS is verified: without the cluster's CA, the system's trust does not know it
    untrusted = _kubeconfig(tmp_path / "untrusted", {"server": api.url},
                            {"token": str(api.admin.token)})
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _whoami(from_kubeconfig([str(untrusted)]))
    # what the relay's client does not do is refused in one line
    refusals = {
        "insecure-skip-tls-verify": ({"server": api.url, "insecure-skip-tls-verify": True},
                                     {"token": "t"}),
        "exec": ({"server": api.url}, {"exec": {"command": "aws"}}),
        "password, username": ({"server": api.url}, {"username": "u", "password": "p"}),
        "client certificate needs its key": ({"server": api.url},
                                             {"client-certificate": "certs/admin.crt"}),
    }
    for what, (cluster, user) in refusals.items():
        with pytest.raises(ConfigError, match=what):
            from_kubeconfig([str(_kubeconfig(tmp_path / "refused", cluster, user))])


async def test_a_watch_yields_the_servers_events_bookmarks_and_410(api: KubeApiServer,
                                                                  tmp_path: Path) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig",
                                      [Context("admin-token", api.admin, NS)])
    async with LiteKube(from_kubeconfig([str(kubeconfig)])) as kube:
        base = f"/api/v1/namespaces/{NS}/configmaps"
        listed = await rest(kube, "GET", base)
        start = listed["metadata"]["resourceVersion"]
        await rest(kube, "POST", base, {"metadata": {"name": "seen"}})
        events = watch(kube, base, {"resourceVersion": start, "allowWatchBookmarks": "true",
                                    "timeoutSeconds": "30"}, 40)
        kinds = []
        async with aclosing(events):
            async for event in events:
                kinds.append(event["type"])
                if event["type"] == "BOOKMARK":  # asked for: sent every 0.2 s here
                    assert event["object"]["metadata"]["resourceVersion"]
                    break
        assert kinds[0] == "ADDED" and kinds[-1] == "BOOKMARK"
        # the server ends a watch at its timeoutSeconds: the stream just ends
        ended = [e async for e in watch(kube, base, {"timeoutSeconds": "1"}, 10)]
        assert {e["type"] for e in ended} == {"ADDED"}
        # a version older than the server's window: one ERROR event with a 410 Status
        api.compact()
        expired = [e async for e in watch(kube, base, {"resourceVersion": start}, 10)]
        assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in expired] \
            == [("ERROR", 410, "Expired")]


def _watches(api: KubeApiServer) -> int:
    return sum(1 for method, path in api.requests if method == "GET" and "watch=true" in path)


async def _more(api: KubeApiServer, than: int) -> bool:
    return _watches(api) > than


async def test_the_keys_watch_on_the_lite_client_resumes_and_relists_after_410(
        api: KubeApiServer, tmp_path: Path) -> None:
    relay = api.add_user("system:serviceaccount:team-a:bridged-relay")
    api.grant(relay, NS, [{"apiGroups": [""], "resources": ["secrets"],
                           "resourceNames": ["keys"], "verbs": ["get", "list", "watch"]}])
    assert relay.token
    api.apply({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "keys", "namespace": NS}, "data": {"a": "QQ=="}})
    folder = tmp_path / "serviceaccount"
    environ = _service_account(folder, api, relay.token)
    seen: list[tuple[dict[str, str], str]] = []
    lost: list[str] = []
    settings = KeyWatchSettings(watch_seconds=60, retry_seconds=0.05, retry_max_seconds=0.2)

    def secret(data: dict[str, str]) -> None:
        current = api.get("secrets", NS, "keys")
        assert current is not None
        api.apply({**current, "data": data})

    async def applied(data: dict[str, str], how: str) -> bool:
        return bool(seen) and seen[-1] == (data, how)

    async with LiteKube(in_cluster(folder=folder, environ=environ)) as kube:
        follower = asyncio.create_task(follow_secret(
            kube, "keys", lambda data, _, how: seen.append((data, how)), lost.append,
            settings))
        try:
            await eventually(lambda: applied({"a": "QQ=="}, "list"), within=10,
                             what="the list")
            secret({"a": "QQ==", "b": "Qg=="})
            await eventually(lambda: applied({"a": "QQ==", "b": "Qg=="}, "watch"), within=10,
                             what="the change, from the watch")
            # the server ends every watch (a restart, its time-out): watched again, from
            # where it was: the next change comes from the watch, nothing listed again
            lists = [how for _, how in seen].count("list")
            watches = _watches(api)
            api.store.close_watchers()
            await eventually(lambda: _more(api, watches), within=10, what="a new watch")
            secret({"b": "Qg=="})
            await eventually(lambda: applied({"b": "Qg=="}, "watch"), within=10,
                             what="the change after the server ended the watch")
            assert [how for _, how in seen].count("list") == lists
            # the server ends the watch, and the Secret changes and the history is compacted
            # before the relay watches again: its version is too old to resume from (410),
            # so it lists again, then watches
            api.store.close_watchers()
            secret({"c": "Qw=="})
            api.compact()
            await eventually(lambda: applied({"c": "Qw=="}, "list"), within=10,
                             what="the list after 410 Gone")
            secret({"d": "RA=="})
            await eventually(lambda: applied({"d": "RA=="}, "watch"), within=10,
                             what="the watch after the list")
            assert lost == []
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)


@pytest.mark.parametrize("client", ["lite", "full"])
async def test_a_refused_watch_is_our_error_with_either_client(
        api: KubeApiServer, tmp_path: Path, client: str) -> None:
    """A watch the server refuses (403) raises KubeApiError with the Status's reason from
    both clients, not an event made of the Status object."""
    from bridged.kube.client import Kube, KubeTarget

    stranger = api.add_user("jane")
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", [Context("jane", stranger, NS)])
    kube: Any = (LiteKube(from_kubeconfig([str(kubeconfig)])) if client == "lite" else
                 await Kube.connect(KubeTarget(kubeconfig=str(kubeconfig))))
    async with kube:
        with pytest.raises(KubeApiError) as refused:
            async for _event in watch(kube, f"/api/v1/namespaces/{NS}/secrets", {}, 10):
                pass
    assert (refused.value.status, refused.value.status_reason) == (403, "Forbidden")
