"""A stand-in Kubernetes API server for tests: real HTTP(S) on 127.0.0.1, real semantics.

Written from the API's reference and conventions
(https://kubernetes.io/docs/reference/using-api/api-concepts/) and the API server's source,
not from what one client sends, so that code tested against it also works against a cluster.
The pieces, each documenting the semantics it follows:

==========================  ====================================================================
:mod:`.errors`              ``Status`` errors (404, 409 AlreadyExists/Conflict, 403, 422, ...)
:mod:`.resources`           the served kinds and the discovery documents
:mod:`.store`               resourceVersion, the event window, watchers, 410 Expired
:mod:`.registry`            create/get/list/update/patch/delete with metadata rules
:mod:`.kinds`               per-kind defaults, validation, update strategy
:mod:`.patch`               merge, strategic-merge and JSON patches
:mod:`.selectors`           label and field selectors
:mod:`.validation`          names, labels, annotations
:mod:`.rbac`                users, tokens, client certificates, RBAC
:mod:`.pki`                 the test CA, server and client certificates
:mod:`.controllers`         deployments, replicasets, statefulsets, GC, namespaces, events
:mod:`.kubelet`             scheduling, the kubelet hook, pod status, pod failures
:mod:`.portforward`         ``pods/portforward`` over ``v4.channel.k8s.io``
:mod:`.server`              the HTTP layer and watch streams
:mod:`.kubeconfig`          kubeconfig files for the server
==========================  ====================================================================

Use::

    async with KubeApiServer(kubelet=my_hook) as api:        # TLS; KubeApiServer(tls=False)
        alice = api.add_user("alice", cert=True)              # token + client certificate
        api.grant(alice, "team-a", [{"apiGroups": [""], "resources": ["pods"],
                                     "verbs": ["get", "list"]}])
        path = api.write_kubeconfig(tmp / "kubeconfig", [
            Context("admin", api.admin, "default", auth="cert"),
            Context("alice", alice, "team-a")])
        ...
        await api.fail_pod("team-a", "relay-0", "CrashLoopBackOff")
        await api.drop_portforwards("team-a", "relay-0")
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from . import errors as E
from .controllers import (
    DeploymentController,
    EventRecorder,
    GarbageCollector,
    NamespaceController,
    ReplicaSetController,
    StatefulSetController,
)
from .endpointslices import EndpointSliceController
from .kubeconfig import Context, Credentials, write_kubeconfig
from .kubelet import ContainerWaiting, Kubelet, KubeletHook, PodHandle, PodSandbox
from .kubeproxy import KubeProxy
from .pki import CertificateAuthority
from .rbac import BOOTSTRAP_BINDINGS, BOOTSTRAP_CLUSTER_ROLES, Authorizer, User
from .registry import Registry
from .server import ApiHandler
from .store import Store

__all__ = ["ContainerWaiting", "Context", "Credentials", "KubeApiServer", "KubeletHook",
           "PodHandle", "PodSandbox"]

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class KubeApiServer:
    """The stand-in API server, an async context manager.

    ``tls``: HTTPS with a test CA and client-certificate authentication (else plain HTTP,
    tokens only). ``kubelet``: the hook that runs pods (see :mod:`.kubelet`).
    ``bookmark_interval``: seconds between watch bookmarks (a real server: about a minute).
    ``min_request_timeout``: the default watch length is 1-2x this (real default: 1800 s).
    ``window``: how many past changes a watch can resume from before 410 Expired.
    ``stream_idle_timeout``: port-forward idle timeout (the kubelet's default: 4 h).
    ``websocket_create_check``: also require ``create`` for websocket ``pods/portforward``
    (1.35+; False behaves as 1.30-1.34).
    ``kube_proxy``: serve Services at their (loopback) ClusterIPs (see :mod:`.kubeproxy`),
    from the EndpointSlices the EndpointSlice controller writes (:mod:`.endpointslices`; its
    ``lag`` is ``self.endpointslices.lag``).
    """

    def __init__(self, *, tls: bool = True, kubelet: KubeletHook | None = None,
                 bookmark_interval: float = 60.0, min_request_timeout: float = 1800.0,
                 window: int = 10_000, stream_idle_timeout: float | None = None,
                 websocket_create_check: bool = True, namespaces: Iterable[str] = (),
                 kube_proxy: bool = False) -> None:
        self.tls = tls
        self.bookmark_interval = bookmark_interval
        self.min_request_timeout = min_request_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self.websocket_create_check = websocket_create_check
        self.version_info = {
            "major": "1", "minor": "35", "emulationMajor": "1", "emulationMinor": "35",
            "minCompatibilityMajor": "1", "minCompatibilityMinor": "34",
            "gitVersion": "v1.35.0", "gitCommit": "0" * 40, "gitTreeState": "clean",
            "buildDate": "2025-12-17T00:00:00Z", "goVersion": "go1.25.5", "compiler": "gc",
            "platform": "linux/amd64"}
        self._extra_namespaces = tuple(namespaces)
        self._workdir = Path(tempfile.mkdtemp(prefix="kube-standin-"))
        self.ca = CertificateAuthority(self._workdir / "pki")
        self.store = Store(window)
        self.registry = Registry(self.store)
        self.recorder = EventRecorder(self.registry)
        self.authorizer = Authorizer(self.store, self.registry)
        self.kubelet = Kubelet(self.registry, self.recorder, kubelet)
        self._controllers = [
            NamespaceController(self.registry, self.recorder, self.ca.pair.cert_pem().decode()),
            DeploymentController(self.registry, self.recorder),
            ReplicaSetController(self.registry, self.recorder),
            StatefulSetController(self.registry, self.recorder),
            GarbageCollector(self.registry, self.recorder),
            self.kubelet,
        ]
        self._crds: list[Any] = []
        self.kube_proxy = KubeProxy(self.registry, self.recorder) if kube_proxy else None
        self.endpointslices = EndpointSliceController(self.registry, self.recorder) \
            if kube_proxy else None
        if self.kube_proxy is not None and self.endpointslices is not None:
            self._controllers += [self.endpointslices, self.kube_proxy]
        self._users: dict[str, Credentials] = {}
        self._tokens: dict[str, User] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path?query) of every request
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.admin = self.add_user("admin", ("system:masters",), cert=tls)

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> KubeApiServer:
        try:
            for controller in self._controllers:
                controller.start()
            self._bootstrap()
            for _ in range(200):  # the namespace controller's ServiceAccounts and CA bundles
                if all(self.get("serviceaccounts", ns, "default") for ns in SYSTEM_NAMESPACES):
                    break
                await asyncio.sleep(0.005)
            app = web.Application(client_max_size=3 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", ApiHandler(self).__call__)
            self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.25)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0,
                               ssl_context=self.ca.server_context() if self.tls else None)
            await site.start()
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def install_crd(self, crd: dict[str, Any]) -> None:
        """Serve a CustomResourceDefinition's kind (see :mod:`.crds`) while this server runs."""
        from . import crds

        self._crds.append(crds.install(self, crd))

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        from . import crds

        for res in self._crds:
            crds.uninstall(self, res)
        self._crds.clear()
        self.store.close_watchers()
        for uid in list(self.kubelet.streams):
            await self.kubelet.drop_streams(uid)
        for controller in reversed(self._controllers):
            with contextlib.suppress(Exception):
                await controller.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _bootstrap(self) -> None:
        reg = self.registry
        for name in (*SYSTEM_NAMESPACES, *self._extra_namespaces):
            reg.create(reg.resource("namespaces"), None, {"metadata": {"name": name}})
        for role in BOOTSTRAP_CLUSTER_ROLES:
            reg.create(reg.resource("clusterroles"), None, role)
        for binding in BOOTSTRAP_BINDINGS:
            reg.create(reg.resource("clusterrolebindings"), None, binding)
        reg.create(reg.resource("services"), "default", {
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver",
                                                          "provider": "kubernetes"}},
            "spec": {"clusterIP": "127.96.0.1", "ports": [
                {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}})

    # --- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        return self.ca.cert_file if self.tls else None

    def ssl_context(self, user: Credentials | None = None) -> ssl.SSLContext | None:
        """A client TLS context trusting the server (and presenting ``user``'s cert)."""
        if not self.tls:
            return None
        return self.ca.client_context(user.cert if user is not None else None)

    def session(self, user: Credentials | None = None, *, auth: str = "token",
                **kwargs: Any) -> aiohttp.ClientSession:
        """An aiohttp session to the server as ``user`` (default: admin) by token or cert."""
        user = user or self.admin
        headers = dict(user.headers) if auth == "token" else {}
        connector = aiohttp.TCPConnector(
            ssl=self.ssl_context(user if auth == "cert" else None) or False)
        return aiohttp.ClientSession(self.url, headers=headers, connector=connector, **kwargs)

    # --- users -----------------------------------------------------------------------------

    def add_user(self, name: str, groups: Iterable[str] = (), *, token: bool = True,
                 cert: bool = False) -> Credentials:
        """A user known to the server: a bearer token and/or (TLS mode) a client cert."""
        groups = tuple(groups)
        if cert and not self.tls:
            raise ValueError("client certificates need tls=True")
        creds = Credentials(name, groups, secrets.token_urlsafe(24) if token else None,
                            self.ca.client_pair(name, groups) if cert else None)
        if creds.token:
            self._tokens[creds.token] = User(name, groups)
        self._users[name] = creds
        return creds

    def user_for_token(self, token: str) -> User | None:
        return self._tokens.get(token)

    def grant(self, subject: Credentials | str, namespace: str | None,
              rules: list[dict[str, Any]], *, name: str | None = None,
              kind: str = "User") -> None:
        """Lets ``subject`` (a user, or a group with ``kind="Group"``) do ``rules`` in
        ``namespace`` (a Role and RoleBinding), or cluster-wide when ``namespace`` is None."""
        who = subject.name if isinstance(subject, Credentials) else subject
        name = name or f"grant-{who.replace(':', '-')}-{secrets.token_hex(3)}"
        reg = self.registry
        subjects = [{"kind": kind, "name": who, "apiGroup": "rbac.authorization.k8s.io"}]
        if kind == "ServiceAccount":
            ns_, sa = who.split(":")[-2:]
            subjects = [{"kind": "ServiceAccount", "name": sa, "namespace": ns_}]
        if namespace is None:
            reg.create(reg.resource("clusterroles"), None,
                       {"metadata": {"name": name}, "rules": rules})
            reg.create(reg.resource("clusterrolebindings"), None, {
                "metadata": {"name": name}, "subjects": subjects,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": name}})
            return
        reg.create(reg.resource("roles"), namespace, {"metadata": {"name": name},
                                                      "rules": rules})
        reg.create(reg.resource("rolebindings"), namespace, {
            "metadata": {"name": name}, "subjects": subjects,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": name}})

    def write_kubeconfig(self, path: Path, contexts: Iterable[Context] | None = None,
                         current: str | None = None) -> Path:
        """A kubeconfig for this server; by default an ``admin`` context (client cert in
        TLS mode) and an ``admin-token`` context, both in ``default``."""
        if contexts is None:
            contexts = [Context("admin", self.admin, "default",
                                auth="cert" if self.tls else "token"),
                        Context("admin-token", self.admin, "default", auth="token")]
        return write_kubeconfig(path, self.url, self.ca_file, contexts, current)

    # --- objects (as the cluster sees them, bypassing authorization) -----------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Creates ``obj`` (or replaces it when it exists), as an administrator would."""
        from .resources import RESOURCES

        group, _, version = obj["apiVersion"].rpartition("/")
        res = next(r for r in RESOURCES if r.group == group and r.version == version
                   and r.kind == obj["kind"])
        ns = obj["metadata"].get("namespace", "default") if res.namespaced else None
        if ns and self.store.peek(self.registry.resource("namespaces"), None, ns) is None:
            self.registry.create(self.registry.resource("namespaces"), None,
                                 {"metadata": {"name": ns}})
        current = self.store.peek(res, ns, obj["metadata"]["name"])
        if current is None:
            return self.registry.create(res, ns, obj)
        body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": None}}
        return self.registry.update(res, ns, obj["metadata"]["name"], body)

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.store.get(self.registry.resource(plural), namespace, name)

    def list(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [dict(o) for o in self.registry.list(self.registry.resource(plural),
                                                    namespace)["items"]]

    def compact(self) -> int:
        """Forgets the change history (etcd compaction): older watches get 410 Expired."""
        return self.store.compact()

    # --- the node --------------------------------------------------------------------------

    def sandbox(self, namespace: str, name: str) -> PodSandbox | None:
        return self.kubelet.sandbox_of(namespace, name)

    async def fail_pod(self, namespace: str, name: str, reason: str = "CrashLoopBackOff",
                       message: str = "", *, container: str | None = None,
                       exit_code: int = 1) -> None:
        """Stops the pod's hook handle and puts the container in a waiting state of
        ``reason`` (CrashLoopBackOff, ImagePullBackOff, ...) with the kubelet's events."""
        await self.kubelet.fail(namespace, name, reason, message, container=container,
                                exit_code=exit_code)

    async def restart_pod(self, namespace: str, name: str) -> None:
        """The kubelet restarting a failed container: the hook runs again."""
        await self.kubelet.restart(namespace, name)

    async def drop_portforwards(self, namespace: str, name: str, *,
                                abrupt: bool = False) -> int:
        """Ends every port-forward websocket of the pod (a close frame, or with
        ``abrupt`` a cut TCP connection); returns how many there were."""
        pod = self.store.peek(self.registry.resource("pods"), namespace, name)
        if pod is None:
            raise E.not_found("", "pods", name)
        return await self.kubelet.drop_streams(pod["metadata"]["uid"], abrupt=abrupt)
