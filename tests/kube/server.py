"""The HTTP layer: request info, authentication, authorization, routing, watch streams.

Follows the API server's handler chain (``k8s.io/apiserver/pkg/server/filters``,
``pkg/endpoints/filters``, ``pkg/endpoints/request/requestinfo.go``,
``pkg/endpoints/handlers``):

1. authentication: a bad bearer token is a 401 ``Unauthorized`` ``Status``; no credentials make
   the anonymous user;
2. request info from the path (``/api/v1/...``, ``/apis/G/V/...``, ``namespaces/NS/...``;
   ``namespaces/NAME/status|finalize`` are namespace subresources; the verb from the method,
   ``list``/``watch``/``deletecollection`` on collections; the name of a list or watch comes from
   a ``metadata.name`` field selector);
3. authorization (RBAC, :mod:`tests.kube.rbac`), 403 ``Forbidden`` before any routing;
4. routing: an unknown group/version/resource is a 404 ``the server could not find the
   requested resource``; a method the path does not serve a 405 ``MethodNotAllowed``;
5. content negotiation: JSON answers (406 if the client accepts neither JSON nor ``*/*``),
   JSON or YAML bodies (415 otherwise), a malformed body a 400;
6. watch (``?watch=1``): ``Transfer-Encoding: chunked``, one JSON ``{"type","object"}`` per
   line; ``resourceVersion`` unset or ``0`` starts with synthetic ADDED events for what exists,
   ``N`` replays the changes after ``N``; a too-old ``N`` gets HTTP 200 and a single ERROR event
   carrying a 410 ``Expired`` Status, as the watch cache does (``newErrWatcher``);
   ``allowWatchBookmarks`` adds BOOKMARK events (an object of the kind with only
   ``metadata.resourceVersion``) every ``bookmark_interval``; ``sendInitialEvents`` ends the
   initial ADDED events with a bookmark annotated ``k8s.io/initial-events-end``;
   ``timeoutSeconds`` ends the stream cleanly, and without it the server picks one between
   ``min_request_timeout`` and twice that, as ``--min-request-timeout`` does.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

from . import errors as E
from .portforward import serve_portforward
from .rbac import ANONYMOUS, Attributes, User
from .registry import PATCH_TYPES
from .resources import (
    ResourceType,
    api_group,
    api_group_list,
    api_resource_list,
    api_versions,
    find,
    groups,
)
from .selectors import parse_field_selector, parse_label_selector, supported_fields
from .store import Watcher

if TYPE_CHECKING:
    from .apiserver import KubeApiServer

__all__ = ["ApiHandler", "RequestInfo"]

_JSON = "application/json"


@dataclass
class RequestInfo:
    """``request.RequestInfo``."""

    resource_request: bool
    path: str
    verb: str
    api_prefix: str = ""
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    parts: tuple[str, ...] = ()
    selected_name: str = ""  # a list/watch's metadata.name field selector (authorization)


def request_info(request: web.Request) -> RequestInfo:
    path = request.path
    parts = [p for p in path.strip("/").split("/") if p]
    method = request.method.lower()
    nonresource = RequestInfo(False, path, method, parts=tuple(parts))
    if not parts or parts[0] not in ("api", "apis"):
        return nonresource
    prefix, rest = parts[0], parts[1:]
    if prefix == "api":
        if not rest:
            return nonresource
        group, version, rest = "", rest[0], rest[1:]
    else:
        if len(rest) < 2:
            return nonresource
        group, version, rest = rest[0], rest[1], rest[2:]
    if not rest:
        return nonresource
    info = RequestInfo(True, path, "", prefix, group, version, parts=tuple(parts))
    if rest[0] == "namespaces" and len(rest) > 1:
        info.namespace = rest[1]
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):
            rest = rest[2:]
    info.resource = rest[0]
    if len(rest) > 1:
        info.name = rest[1]
    if len(rest) > 2:
        info.subresource = rest[2]
    if len(rest) > 3:
        info.subresource = "/".join(rest[2:])  # not a known path: 404 later
    watch = request.query.get("watch", "").lower() in ("1", "true")
    if method == "get":
        info.verb = ("watch" if watch else "list") if not info.name else "get"
    elif method == "post":
        info.verb = "create"
    elif method == "put":
        info.verb = "update"
    elif method == "patch":
        info.verb = "patch"
    elif method == "delete":
        info.verb = "delete" if info.name else "deletecollection"
    else:
        info.verb = method
    if info.verb in ("list", "watch"):
        selector = request.query.get("fieldSelector", "")
        for term in selector.split(","):
            if term.startswith("metadata.name=") and "!" not in term:
                info.selected_name = term.split("=", 1)[1].lstrip("=")
    return info


class ApiHandler:
    """The aiohttp request handler of one :class:`~tests.kube.apiserver.KubeApiServer`."""

    def __init__(self, api: KubeApiServer) -> None:
        self.api = api

    # --- entry -----------------------------------------------------------------------------

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.api.requests.append((request.method, request.path_qs))
        try:
            user = self.authenticate(request)
            info = request_info(request)
            self.authorize(user, info, request)
            return await self.route(request, info, user)
        except E.StatusError as exc:
            return self.error(exc)

    @staticmethod
    def error(exc: E.StatusError) -> web.Response:
        return web.json_response(exc.status(), status=exc.code,
                                 headers=exc.headers or None)

    def authenticate(self, request: web.Request) -> User:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise E.unauthorized()
            user = self.api.user_for_token(token.strip())
            if user is None:
                raise E.unauthorized()
            return user
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        if cert:
            name, groups_ = "", []
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        name = value
                    elif key == "organizationName":
                        groups_.append(value)
            if name:
                return User(name, tuple(groups_))
        return ANONYMOUS

    def authorize(self, user: User, info: RequestInfo, request: web.Request) -> None:
        attrs = Attributes(user, info.verb, info.resource_request, path=info.path,
                           namespace=info.namespace, group=info.group, version=info.version,
                           resource=info.resource, subresource=info.subresource,
                           name=info.name or info.selected_name)
        checks = [attrs]
        if (info.resource == "pods" and info.subresource in ("exec", "attach", "portforward")
                and info.verb == "get" and request.headers.get("Upgrade", "").lower()
                == "websocket" and self.api.websocket_create_check):
            checks.append(Attributes(**{**attrs.__dict__, "verb": "create"}))
        for check in checks:
            allowed, _ = self.api.authorizer.authorize(check)
            if not allowed:
                if not check.resource_request:
                    raise E.forbidden("", "", "", check.forbidden_message())
                raise E.forbidden(check.group, check.resource, check.name,
                                  check.forbidden_message())

    # --- routing ---------------------------------------------------------------------------

    async def route(self, request: web.Request, info: RequestInfo,
                    user: User) -> web.StreamResponse:
        self.negotiate(request)
        if not info.resource_request:
            return await self.nonresource(request, info)
        res = find(info.group, info.version, info.resource)
        if res is None or (info.namespace and not res.namespaced
                           and info.resource != "namespaces"):
            raise E.StatusError(404, "NotFound", "the server could not find the requested "
                                "resource", {})
        if info.resource == "namespaces":
            return await self.namespace_object(request, info, res)
        if info.subresource:
            return await self.subresource(request, info, res, user)
        if info.name:
            return await self.item(request, info, res)
        return await self.collection(request, info, res)

    @staticmethod
    def negotiate(request: web.Request) -> None:
        accept = request.headers.get("Accept", "")
        if accept and not any(kind.strip().split(";")[0] in ("application/json", "*/*",
                                                              "application/*", "")
                              for kind in accept.split(",")):
            raise E.not_acceptable(["application/json", "application/yaml"])

    async def body(self, request: web.Request) -> Any:
        content_type = request.content_type
        raw = await request.read()
        if content_type in ("application/json", ""):
            try:
                return json.loads(raw or b"null")
            except ValueError as exc:
                raise E.bad_request(f"couldn't get version/kind; json parse error: {exc}") \
                    from exc
        if content_type == "application/yaml":
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise E.bad_request(f"error converting YAML to JSON: {exc}") from exc
        raise E.unsupported_media_type(content_type, ["application/json", "application/yaml",
                                                      "application/vnd.kubernetes.protobuf"])

    @staticmethod
    def dry_run(request: web.Request) -> bool:
        values = request.query.getall("dryRun", [])
        for value in values:
            if value != "All":
                raise E.bad_request(f'Invalid dry run value "{value}", supported values: '
                                    '"All"')
        return bool(values)

    @staticmethod
    def ok(body: Any, status: int = 200) -> web.Response:
        return web.json_response(body, status=status)

    async def nonresource(self, request: web.Request, info: RequestInfo) -> web.StreamResponse:
        parts = info.parts
        if request.method != "GET":
            raise E.method_not_allowed()
        if parts in (("healthz",), ("livez",), ("readyz",)):
            return web.Response(text="ok", content_type="text/plain")
        if parts == ("version",):
            return self.ok(self.api.version_info)
        if parts == ("api",):
            return self.ok(api_versions(f"127.0.0.1:{self.api.port}"))
        if parts == ("apis",):
            return self.ok(api_group_list())
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups():
            return self.ok({"kind": "APIGroup", "apiVersion": "v1", **api_group(parts[1])})
        if len(parts) == 2 and parts[0] == "api":
            found = api_resource_list("", parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            found = api_resource_list(parts[1], parts[2])
        else:
            found = None
        if found is None:
            raise E.StatusError(404, "NotFound", "the server could not find the requested "
                                "resource", {})
        return self.ok(found)

    # --- collections -----------------------------------------------------------------------

    def _selectors(self, request: web.Request, res: ResourceType) -> tuple[Any, Any]:
        labels = parse_label_selector(request.query.get("labelSelector"))
        fields = parse_field_selector(request.query.get("fieldSelector"),
                                      supported_fields(res.plural))
        return labels, fields

    async def collection(self, request: web.Request, info: RequestInfo,
                         res: ResourceType) -> web.StreamResponse:
        registry, ns = self.api.registry, info.namespace or None
        if res.namespaced is False and info.namespace:
            raise E.StatusError(404, "NotFound", "the server could not find the requested "
                                "resource", {})
        if info.verb in ("list", "watch"):
            if "list" not in res.verbs:
                raise E.method_not_allowed()
            labels, fields = self._selectors(request, res)
            if info.verb == "watch":
                return await self.watch(request, res, ns, labels, fields)
            limit = request.query.get("limit")
            return self.ok(registry.list(
                res, ns, labels=labels, fields=fields,
                resource_version=request.query.get("resourceVersion"),
                match=request.query.get("resourceVersionMatch"),
                limit=int(limit) if limit and limit.isdigit() else None,
                continue_token=request.query.get("continue")))
        if info.verb == "create":
            if res.plural == "selfsubjectaccessreviews":
                return self.ok(self.self_subject_access_review(
                    await self.body(request), self.authenticate(request)), 201)
            if not res.namespaced or info.namespace:
                created = registry.create(res, ns, await self.body(request),
                                          dry_run=self.dry_run(request))
                return self.ok(created, 201)
            raise E.method_not_allowed()
        if info.verb == "deletecollection" and "deletecollection" in res.verbs:
            labels, fields = self._selectors(request, res)
            options = await self._delete_options(request)
            return self.ok(registry.delete_collection(res, ns, labels, fields, options))
        raise E.method_not_allowed()

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if request.can_read_body:
            body = await self.body(request)
            if isinstance(body, dict):
                options.update(body)
        if "gracePeriodSeconds" in request.query:
            options["gracePeriodSeconds"] = int(request.query["gracePeriodSeconds"])
        if "propagationPolicy" in request.query:
            options["propagationPolicy"] = request.query["propagationPolicy"]
        return options

    # --- single objects --------------------------------------------------------------------

    async def item(self, request: web.Request, info: RequestInfo,
                   res: ResourceType, subresource: str | None = None) -> web.StreamResponse:
        registry, ns, name = self.api.registry, info.namespace or None, info.name
        if res.namespaced and not ns:
            raise E.StatusError(404, "NotFound", "the server could not find the requested "
                                "resource", {})
        if info.verb not in res.verbs and info.verb != "get":
            raise E.method_not_allowed()
        if info.verb == "get":
            if "get" not in res.verbs:
                raise E.method_not_allowed()
            return self.ok(registry.get(res, ns, name))
        if info.verb == "update":
            return self.ok(registry.update(res, ns, name, await self.body(request),
                                           subresource=subresource,
                                           dry_run=self.dry_run(request)))
        if info.verb == "patch":
            content_type = request.content_type
            return self.ok(registry.patch(res, ns, name, content_type, await request.read(),
                                          subresource=subresource,
                                          dry_run=self.dry_run(request)))
        if info.verb == "delete" and subresource is None:
            options = await self._delete_options(request)
            code, body = registry.delete(res, ns, name, options, dry_run=self.dry_run(request))
            return self.ok(body, code)
        raise E.method_not_allowed()

    async def namespace_object(self, request: web.Request, info: RequestInfo,
                               res: ResourceType) -> web.StreamResponse:
        parts = info.parts[2:] if info.group == "" else info.parts[3:]
        # /api/v1/namespaces[/NAME[/status|finalize]]
        name = parts[1] if len(parts) > 1 else ""
        sub = parts[2] if len(parts) > 2 else ""
        if len(parts) > 3 or (sub and sub not in ("status", "finalize")):
            raise E.StatusError(404, "NotFound", "the server could not find the requested "
                                "resource", {})
        ns_info = RequestInfo(True, info.path, info.verb, info.api_prefix, "", "v1", "",
                              "namespaces", sub, name, info.parts)
        if not name:
            return await self.collection(request, ns_info, res)
        if sub:
            if request.method == "GET" and sub == "status":
                return self.ok(self.api.registry.get(res, None, name))
            if request.method in ("PUT", "PATCH"):
                return await self.item(request, ns_info, res, subresource="status")
            raise E.method_not_allowed()
        return await self.item(request, ns_info, res)

    async def subresource(self, request: web.Request, info: RequestInfo, res: ResourceType,
                          user: User) -> web.StreamResponse:
        sub = res.subresource(info.subresource)
        if sub is None or not info.name:
            raise E.StatusError(404, "NotFound", "the server could not find the requested "
                                "resource", {})
        registry, ns = self.api.registry, info.namespace or None
        if sub.name == "status":
            if request.method == "GET":
                return self.ok(registry.get(res, ns, info.name))
            if request.method in ("PUT", "PATCH"):
                return await self.item(request, info, res, subresource="status")
            raise E.method_not_allowed()
        if sub.name == "scale":
            return await self.scale(request, info, res)
        if sub.name == "portforward":
            if request.method not in ("GET", "POST"):
                raise E.method_not_allowed()
            pod = registry.get(res, ns, info.name)
            if request.method == "POST":
                raise E.bad_request("Upgrade request required")
            return await serve_portforward(request, self.api.kubelet, pod,
                                           idle_timeout=self.api.stream_idle_timeout)
        if sub.name == "log":
            if request.method != "GET":
                raise E.method_not_allowed()
            return self.pod_log(request, registry.get(res, ns, info.name))
        raise E.method_not_allowed()

    async def scale(self, request: web.Request, info: RequestInfo,
                    res: ResourceType) -> web.StreamResponse:
        registry, ns, name = self.api.registry, info.namespace or None, info.name
        if request.method == "GET":
            return self.ok(registry.scale(res, ns, name))
        if request.method == "PUT":
            return self.ok(registry.update_scale(res, ns, name, await self.body(request),
                                                 dry_run=self.dry_run(request)))
        if request.method == "PATCH":
            from .patch import json_patch, merge_patch

            current = registry.scale(res, ns, name)
            document = json.loads(await request.read() or b"null")
            if request.content_type == "application/json-patch+json":
                patched = json_patch(current, document)
            elif request.content_type in PATCH_TYPES[1:3]:
                patched = merge_patch(current, document)
            else:
                raise E.unsupported_media_type(request.content_type, list(PATCH_TYPES))
            if patched["metadata"].get("resourceVersion") == \
                    current["metadata"]["resourceVersion"]:
                patched["metadata"].pop("resourceVersion")
            return self.ok(registry.update_scale(res, ns, name, patched,
                                                 dry_run=self.dry_run(request)))
        raise E.method_not_allowed()

    def pod_log(self, request: web.Request, pod: dict[str, Any]) -> web.Response:
        name = pod["metadata"]["name"]
        containers = [c["name"] for c in pod["spec"].get("containers", [])]
        container = request.query.get("container")
        if not container:
            if len(containers) != 1:
                raise E.bad_request(f"a container name must be specified for pod {name}, "
                                    f"choose one of: [{' '.join(containers)}]")
            container = containers[0]
        if container not in containers:
            raise E.bad_request(f"container {container} is not valid for pod {name}")
        sandbox = self.api.kubelet.sandboxes.get(pod["metadata"]["uid"])
        if sandbox is None or sandbox.handle is None:
            raise E.bad_request(f'container "{container}" in pod "{name}" is waiting to '
                                "start: ContainerCreating")
        text = sandbox.handle.logs() if sandbox.handle.logs is not None else ""
        return web.Response(text=text, content_type="text/plain")

    def self_subject_access_review(self, body: Any, user: User) -> dict[str, Any]:
        spec = (body or {}).get("spec") or {}
        ra, nra = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        if bool(ra) == bool(nra):
            raise E.invalid("authorization.k8s.io", "SelfSubjectAccessReview", "", [
                E.FieldError("FieldValueRequired", "spec.resourceAttributes", None,
                             "exactly one of nonResourceAttributes or resourceAttributes "
                             "must be specified")])
        if ra:
            attrs = Attributes(user, ra.get("verb", ""), True, namespace=ra.get("namespace", ""),
                               group=ra.get("group", ""), version=ra.get("version", ""),
                               resource=ra.get("resource", ""),
                               subresource=ra.get("subresource", ""), name=ra.get("name", ""))
        else:
            assert nra is not None
            attrs = Attributes(user, nra.get("verb", ""), False, path=nra.get("path", ""))
        allowed, reason = self.api.authorizer.authorize(attrs)
        status: dict[str, Any] = {"allowed": allowed}
        if reason:
            status["reason"] = reason
        return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}

    # --- watch -----------------------------------------------------------------------------

    async def watch(self, request: web.Request, res: ResourceType, ns: str | None,
                    labels: Any, fields: Any) -> web.StreamResponse:
        store = self.api.store
        query = request.query
        rv = query.get("resourceVersion", "")
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("1", "true")
        send_initial = query.get("sendInitialEvents", "").lower() in ("1", "true")
        if send_initial and (not bookmarks or query.get("resourceVersionMatch")
                             != "NotOlderThan"):
            raise E.invalid("meta.k8s.io", "ListOptions", "", [E.FieldError(
                "FieldValueForbidden", "sendInitialEvents", None,
                "sendInitialEvents is forbidden for watch unless the WatchList feature gate "
                "is enabled and resourceVersionMatch is NotOlderThan and allowWatchBookmarks "
                "is true")])
        timeout = query.get("timeoutSeconds")
        limit = (float(timeout) if timeout and timeout.isdigit() else
                 self.api.min_request_timeout * (1 + random.random()))
        since: int | None = None
        if rv not in ("", "0") and not send_initial:
            try:
                since = int(rv)
            except ValueError as exc:
                raise E.bad_request(f'invalid resource version "{rv}"') from exc
        watcher = Watcher(res, ns, labels, fields)
        initial: list[dict[str, Any]] = []
        failure: E.StatusError | None = None
        if since is not None and not await store.wait_for_rv(since, 3.0):
            failure = E.timeout(f"Too large resource version: {since}, current: {store.rv}")
        if failure is None:
            if since is None:
                initial = [o for o in store.items(res, ns) if watcher.matches(o)]
            try:
                store.watch(watcher, since)
            except E.StatusError as exc:
                failure = exc
        start_rv = store.rv
        response = web.StreamResponse(headers={"Content-Type": _JSON,
                                               "Cache-Control": "no-cache, private"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        registry = self.api.registry

        async def send(type_: str, obj: dict[str, Any]) -> None:
            line = json.dumps({"type": type_, "object": obj}, separators=(",", ":"))
            await response.write(line.encode() + b"\n")

        def bookmark(annotate: bool = False) -> dict[str, Any]:
            meta: dict[str, Any] = {"resourceVersion": str(store.rv)}
            if annotate:
                meta = {"resourceVersion": str(start_rv),
                        "annotations": {"k8s.io/initial-events-end": "true"}}
            return {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta}

        try:
            if failure is not None:
                await send("ERROR", failure.status())
                return response
            for obj in initial:
                await send("ADDED", registry.typed(res, obj))
            if send_initial:
                await send("BOOKMARK", bookmark(annotate=True))
            loop = asyncio.get_running_loop()
            end = loop.time() + limit
            next_mark = loop.time() + self.api.bookmark_interval
            while True:
                now_ = loop.time()
                if now_ >= end:
                    break
                wait = min(end, next_mark if bookmarks else end) - now_
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), timeout=max(wait, 0))
                except TimeoutError:
                    if bookmarks and loop.time() >= next_mark and watcher.queue.empty():
                        await send("BOOKMARK", bookmark())
                        next_mark = loop.time() + self.api.bookmark_interval
                    continue
                if item is None:
                    break
                await send(item[0], registry.typed(res, item[1]))
        except ConnectionError:
            pass
        finally:
            store.unwatch(watcher)
        return response
