"""A connection to one cluster and namespace, resolved like kubectl resolves it.

Kubeconfig: ``$KUBECONFIG`` (several files, merged, first wins), else ``~/.kube/config``, else
the in-cluster service account. Context: ``--context`` or the current one.
Namespace: ``--namespace``, else the context's, else ``default``. Token, client-certificate and
exec-plugin users work through kubernetes-asyncio's loader.

That client (:class:`Kube`) is the daemon's and the CLI's. The relay uses the small one of
:mod:`.lite`: kubernetes-asyncio's package loads every API and model it has (≈ 35-45 MiB of
RSS), and the relay needs plain JSON calls and one watch. Code that both use (redirects, the
keys' watch, the host key) goes through :func:`rest` and :func:`watch` here, on either client
(:class:`KubeAPI`), and catches :class:`KubeApiError`, which both raise. So this
module imports kubernetes-asyncio only where :class:`Kube` needs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError, KubeError

if TYPE_CHECKING:
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException


class KubeApiError(KubeError):
    """The API server answered a request with an error: its HTTP ``status``, ``reason``
    (the HTTP reason phrase, or the watch's ERROR event's) and ``body`` (its Status object as
    text, when it sent one). Both Kubernetes clients raise it (the relay's small one, and
    the full one at its ``rest``/``watch`` seam), so the code above them names no client.
    (Its code stays ``kube``: across the control API it is the KubeError it derives from; code
    that lets one through has not said what it was doing, see :func:`translate`.)"""

    def __init__(self, status: int, reason: str = "", body: str = "") -> None:
        try:
            found = json.loads(body) if body else {}
        except ValueError:
            found = {}
        status_object = found if isinstance(found, dict) else {}
        message = str(status_object.get("message") or "")
        super().__init__(f"{status} {message or reason or status_object.get('reason') or ''}")
        # (set after the bases' __init__: a class also deriving from another client's
        # exception must end with these, whatever that one's __init__ sets)
        self.status, self.reason, self.body = status, reason, body
        #: the Status object's ``reason`` (``Forbidden``, ``NotFound``, ``Expired``…) and
        #: ``message`` (what the server says went wrong), "" when it sent none
        self.status_reason = str(status_object.get("reason") or "")
        self.status_message = message


class KubeAPI(Protocol):
    """What :func:`rest` and :func:`watch` need of a client: :class:`Kube` or
    :class:`.lite.LiteKube`."""

    namespace: str

    async def request(self, method: str, path: str, body: Any,
                      query: dict[str, str]) -> dict[str, Any]: ...

    def watch_events(self, path: str, query: dict[str, str],
                     seconds: float) -> AsyncGenerator[dict[str, Any], None]: ...


@dataclass(frozen=True)
class KubeTarget:
    """What the user asked for; None means: as kubectl would choose."""

    context: str | None = None
    namespace: str | None = None
    #: the caller's $KUBECONFIG (the CLI's shell, not the daemon's environment); None: the
    #: daemon's own, else ~/.kube/config
    kubeconfig: str | None = None


def kubeconfig_paths(override: str | None = None) -> tuple[str, list[str]]:
    """What is searched (as kubectl would) and which of those files exist."""
    paths = override or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    existing = [p for p in paths.split(os.pathsep) if p and os.path.exists(os.path.expanduser(p))]
    return paths, existing


class Kube:
    """An API client bound to a context and namespace. Close it (``async with``)."""

    def __init__(self, api: client.ApiClient, context: str, namespace: str) -> None:
        from kubernetes_asyncio import client

        self.api = api
        self.context = context
        self.namespace = namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)

    @classmethod
    async def connect(cls, target: KubeTarget = KubeTarget()) -> Kube:
        from kubernetes_asyncio import client, config
        from kubernetes_asyncio.config.config_exception import ConfigException
        from kubernetes_asyncio.config.kube_config import KubeConfigMerger

        paths, existing = kubeconfig_paths(target.kubeconfig)
        configuration = client.Configuration()
        if existing:
            merged = KubeConfigMerger(os.pathsep.join(existing))
            if merged.config is None:
                raise ConfigError(f"no kubeconfig found in {paths}")
            # kubectl takes current-context from the first file that sets it; the merger
            # would let the last one win and pick another cluster
            context_name = target.context or _first_current_context(existing)
            try:
                loader = await config.load_kube_config_from_dict(
                    merged.config.value, context=context_name,
                    client_configuration=configuration,
                )
            except ConfigException as exc:
                raise ConfigError(f"kubeconfig: {exc}") from exc
            _keep_credentials_fresh(loader, configuration)
            current: Any = loader.current_context
            context = str(current["name"])
            namespace = target.namespace or current["context"].get("namespace") or "default"
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            context = "in-cluster"
            namespace = target.namespace or _incluster_namespace()
        else:
            raise ConfigError(
                f"no kubeconfig at {paths}",
                hint="set KUBECONFIG or run where kubectl works, or give a tcp:// or ws:// URL",
            )
        return cls(client.ApiClient(configuration), context, str(namespace))

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.api.close()

    @property
    def configuration(self) -> client.Configuration:
        return self.api.configuration

    async def request(self, method: str, path: str, body: Any,
                      query: dict[str, str]) -> dict[str, Any]:
        from kubernetes_asyncio.client.exceptions import ApiException

        codes = {200: "object", 201: "object", 202: "object"}
        try:
            result: dict[str, Any] = await self.api.call_api(
                path, method, query_params=list(query.items()),
                header_params={"Accept": "application/json",
                               "Content-Type": "application/json"},
                body=body, response_types_map=codes, auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as exc:
            raise api_error(exc) from None
        return result

    async def watch_events(self, path: str, query: dict[str, str],
                           seconds: float) -> AsyncGenerator[dict[str, Any], None]:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            response = await self.api.call_api(
                path, "GET", query_params=[*query.items(), ("watch", "true")],
                header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
                _preload_content=False, _request_timeout=seconds,
            )
        except ApiException as exc:
            raise api_error(exc) from None
        import json

        if response.status >= 300:  # (unread answers are not raised by the library)
            body = await response.text()
            response.release()
            raise _full_api_error()(response.status, str(response.reason or ""), body)
        try:
            while line := await response.content.readline():
                yield json.loads(line)
        finally:
            response.release()


@cache
def _full_api_error() -> type[KubeApiError]:
    """Our error that is also kubernetes-asyncio's ApiException: code written against that
    client (``except ApiException``) keeps catching what :func:`rest` raises."""
    from kubernetes_asyncio.client.exceptions import ApiException

    class FullApiError(KubeApiError, ApiException):  # type: ignore[misc]
        def __init__(self, status: int, reason: str = "", body: str = "") -> None:
            KubeApiError.__init__(self, status, reason, body)
            self.headers = None

    return FullApiError


def api_error(exc: ApiException) -> KubeApiError:
    """kubernetes-asyncio's error as ours (also an ApiException), from the answer it got."""
    raw: Any = exc.body
    body = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
    error = _full_api_error()(int(exc.status or 0), str(exc.reason or ""), body)
    error.headers = exc.headers  # type: ignore[attr-defined]
    return error


def translate(exc: KubeApiError | ApiException, doing: str) -> KubeError:
    """One line from the API's Status object: what failed, why, and what to do."""
    if not isinstance(exc, KubeApiError):
        exc = api_error(exc)
    reason = exc.status_reason or exc.reason or ""
    message = exc.status_message
    hint = None
    if exc.status == 403:
        hint = "your kube user lacks an RBAC right (bridged doctor lists what is needed)"
    elif exc.status == 401:
        hint = "your kube credentials were refused: log in again"
    error = KubeError(f"{doing}: {message or reason or exc.status}", hint=hint)
    error.status = exc.status  # type: ignore[attr-defined]
    return error


async def rest(kube: KubeAPI, method: str, path: str, body: Any = None,
               query: dict[str, str] | None = None) -> dict[str, Any]:
    """One API call on plain JSON objects: what the server sent, every field of it.

    The typed models would drop fields this client version does not know, and an update
    written from them would erase those fields on the server: whatever bridged changes and
    later restores (Services, routes) is read and written as dicts.
    Raises :class:`KubeApiError` (from :class:`Kube`, one that is also an ApiException).
    """
    query = dict(query or {})
    if method in ("POST", "PUT", "PATCH"):
        # the fields bridged writes are owned by "bridged" in managedFields, not by the
        # client library's user agent: server-side apply users see who changed them
        query.setdefault("fieldManager", "bridged")
    return await kube.request(method, path, body, query)


def watch(kube: KubeAPI, path: str, query: dict[str, str],
          seconds: float) -> AsyncGenerator[dict[str, Any], None]:
    """The events of one watch of the collection at ``path`` (``watch=true`` is added), as
    the server sends them (``ADDED``, ``MODIFIED``, ``DELETED``, ``BOOKMARK``, ``ERROR`` with
    a Status object), until the server ends it; ``seconds``: what the client gives the whole
    stream. Close it (``contextlib.aclosing``) when leaving it early. A refused watch raises
    :class:`KubeApiError` (e.g. 410 for a version too old, on servers that check before
    streaming)."""
    return kube.watch_events(path, query, seconds)


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


DataChange = Callable[[dict[str, str]], "dict[str, str] | None"]


async def update_data(kube: KubeAPI, kind: str, name: str, change: DataChange,
                      *, attempts: int = 10) -> dict[str, str] | None:
    """Read-modify-write of a Secret's or ConfigMap's ``data``, safe with concurrent writers:
    the replace carries the resourceVersion that was read, and a 409 Conflict starts over.
    (As plain JSON: every other field goes back as the server sent it.)

    ``change`` gets the current data and returns the new data, or None to leave the object
    as it is. Returns the data the object ends with, or None if it does not exist.
    """
    plural = {"Secret": "secrets", "ConfigMap": "configmaps"}[kind]
    path = f"/api/v1/namespaces/{kube.namespace}/{plural}/{name}"
    for _ in range(attempts):
        try:
            obj = await rest(kube, "GET", path)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise translate(exc, f"cannot read {kind} {name}") from exc
        current = dict(obj.get("data") or {})
        new = change(current)
        if new is None:
            return current
        obj["data"] = new
        try:
            await rest(kube, "PUT", path, obj)
            return new
        except KubeApiError as exc:
            if exc.status != 409:
                raise translate(exc, f"cannot update {kind} {name}") from exc
    raise KubeError(f"{kind} {name} kept changing under us; try again")


def _first_current_context(paths: list[str]) -> str | None:
    import yaml

    for path in paths:
        try:
            with open(os.path.expanduser(path)) as f:
                data = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("current-context"):
            return str(data["current-context"])
    return None


#: seconds between re-running a kubeconfig's credential source (exec plugin, OIDC, gcp):
#: EKS tokens live 15 minutes, GKE's and AKS's an hour; a daemon lives for days
CREDENTIAL_REFRESH_SECONDS = 300.0


def _keep_credentials_fresh(loader: Any, configuration: client.Configuration) -> None:
    """kubernetes-asyncio loads an exec plugin's token once; renew it before it expires, on
    the request that needs it (its refresh hook runs before every authenticated call)."""
    import asyncio
    import time

    loaded_at = time.monotonic()
    lock = asyncio.Lock()

    async def refresh(conf: client.Configuration) -> None:
        nonlocal loaded_at
        if time.monotonic() - loaded_at < CREDENTIAL_REFRESH_SECONDS:
            return
        async with lock:
            if time.monotonic() - loaded_at < CREDENTIAL_REFRESH_SECONDS:
                return
            conf.refresh_api_key_hook = None  # loading must not re-enter this hook
            try:
                await loader.load_and_set(conf)
            finally:
                conf.refresh_api_key_hook = refresh
            loaded_at = time.monotonic()

    configuration.refresh_api_key_hook = refresh
