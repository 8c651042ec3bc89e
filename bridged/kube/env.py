"""A workload's environment from the cluster: the API reads behind ``bridged env``, and the file.

The only I/O of env: :func:`workload_env` reads the workload, one of its pods and exactly the
ConfigMaps and Secrets the container refers to, then builds the environment with the pure
rules of :mod:`bridged.workload` (:mod:`~bridged.workload.kubelet` builds it,
:mod:`~bridged.workload.rewrites` makes Service addresses local,
:mod:`~bridged.workload.formats` writes it); :func:`write_env_file` writes the file, private
when it holds Secret data.

Which pod: a Running and Ready pod of the workload that runs the template's env spec (the
longest Ready), else the pod template. Which Services give the Service variables: the
namespace's, except bridged's own (labelled ``app.kubernetes.io/managed-by=bridged``: a
takeover's shadow Service, a gateway's backends), which exist only while an intercept does and
which the workload never had.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from ..errors import ConfigError, NotFound
from ..workload.downward import COMPUTE_RESOURCES, all_containers, pod_fields_of, template_fields
from ..workload.formats import format_env
from ..workload.kubelet import env_references, pick_container, resolve_env
from ..workload.result import EnvResult
from .client import Kube, translate
from .manifests import MANAGED_BY

__all__ = ["Workload", "env_of", "load_workload", "parse_ref", "read_objects",
           "workload_env", "workload_services", "write_env_file"]


_KINDS = {"deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
          "deployment.apps": "Deployment", "sts": "StatefulSet", "statefulset": "StatefulSet",
          "statefulsets": "StatefulSet", "statefulset.apps": "StatefulSet", "po": "Pod",
          "pod": "Pod", "pods": "Pod"}


def parse_ref(ref: str) -> tuple[str, str]:
    """``deploy/NAME``, ``deployment/NAME``, ``statefulset/NAME``, ``sts/NAME``, ``pod/NAME``
    (kubectl's TYPE/NAME) -> (kind, name)."""
    kind, sep, name = ref.strip().partition("/")
    if not sep or kind.lower() not in _KINDS or not name or "/" in name:
        raise ConfigError(f"not a workload: {ref!r}",
                          hint="use deploy/NAME, statefulset/NAME (sts/NAME) or pod/NAME")
    return _KINDS[kind.lower()], name


@dataclass(frozen=True)
class Workload:
    """A workload's pod spec and downward-API fields: from a Running and Ready pod of it when
    there is one (``pod`` names it), else from its pod template (``pod`` is None)."""

    kind: str
    name: str
    namespace: str
    pod_spec: dict[str, Any]
    pod_fields: dict[str, Any]
    pod: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def description(self) -> str:
        what = f"{self.kind.lower()}/{self.name} in {self.namespace}"
        if self.kind == "Pod":
            return what
        return f"{what}, pod {self.pod}" if self.pod else f"{what}, pod template (no pod runs)"


def _selector(selector: Mapping[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return (status.get("phase") == "Running" and not (pod.get("metadata") or {}).get(
        "deletionTimestamp") and any(c.get("type") == "Ready" and c.get("status") == "True"
                                     for c in status.get("conditions") or []))


def _ready_since(pod: Mapping[str, Any]) -> str:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("lastTransitionTime") or "")
    return ""


def _owned(pod: Mapping[str, Any], kind: str, workload: Mapping[str, Any]) -> bool:
    meta = workload.get("metadata") or {}
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if not ref.get("controller"):
            continue
        if kind == "StatefulSet":
            return ref.get("kind") == "StatefulSet" and ref.get("uid") == meta.get("uid")
        pth = ((pod.get("metadata") or {}).get("labels") or {}).get("pod-template-hash")
        return ref.get("kind") == "ReplicaSet" and ref.get("name") == f"{meta.get('name')}-{pth}"
    return False


def _in_order(wanted: Sequence[Any], have: Sequence[Any]) -> bool:
    """``wanted`` is a subsequence of ``have``."""
    it = iter(have)
    return all(any(w == h for h in it) for w in wanted)


def _same_env_spec(pod_spec: Mapping[str, Any], template_spec: Mapping[str, Any]) -> bool:
    """The pod runs the template's revision as far as env goes (a rollout leaves pods of older
    revisions): every ``env``/``envFrom`` entry of the template is in the pod's container, in
    order. Entries the pod has in addition were added by mutating admission webhooks (which
    inject variables such as an agent's host), and are what the kubelet used."""
    pod_containers = {c.get("name"): c for c in all_containers(pod_spec)}
    for c in all_containers(template_spec):
        running = pod_containers.get(c.get("name"))
        if running is None:
            return False
        for key in ("env", "envFrom"):
            if not _in_order(c.get(key) or [], running.get(key) or []):
                return False
    return True


def _plain(kube: Kube, obj: Any) -> dict[str, Any]:
    """A client model as the API's JSON (camelCase keys)."""
    data = kube.api.sanitize_for_serialization(obj)
    return data if isinstance(data, dict) else {}


async def load_workload(kube: Kube, ref: str) -> Workload:
    """Read ``ref`` in the namespace of ``kube``; for a Deployment or StatefulSet also its pods
    (selector, controller owner, same env spec as the template), the longest Ready one."""
    kind, name = parse_ref(ref)
    ns = kube.namespace
    read: Any = {"Deployment": kube.apps.read_namespaced_deployment,
                 "StatefulSet": kube.apps.read_namespaced_stateful_set,
                 "Pod": kube.core.read_namespaced_pod}[kind]
    try:
        obj = _plain(kube, await read(name, ns))
    except ApiException as exc:
        if exc.status == 404:
            raise NotFound(f"{kind} {name} not found in namespace {ns}") from exc
        raise translate(exc, f"cannot read {kind} {name} in {ns}") from exc
    if kind == "Pod":
        return Workload(kind, name, ns, obj.get("spec") or {}, pod_fields_of(obj), name)
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    notes: list[str] = []
    try:
        pods = await kube.core.list_namespaced_pod(
            ns, label_selector=_selector(spec.get("selector") or {}))
    except ApiException as exc:
        raise translate(exc, f"cannot list the pods of {kind} {name} in {ns}") from exc
    candidates = [p for p in (_plain(kube, p) for p in pods.items or [])
                  if _ready(p) and _owned(p, kind, obj)]
    current = [p for p in candidates if _same_env_spec(p.get("spec") or {},
                                                       template.get("spec") or {})]
    if candidates and not current:
        notes.append("the running pods are of another revision of the template: "
                     "the template is used")
    if current:
        best = min(current, key=lambda p: (_ready_since(p), p["metadata"]["name"]))
        return Workload(kind, name, ns, best.get("spec") or {}, pod_fields_of(best),
                        best["metadata"]["name"], tuple(notes))
    why = f"no Running and Ready pod of {kind.lower()}/{name}"
    return Workload(kind, name, ns, template.get("spec") or {},
                    template_fields(template, ns, why), None, tuple(notes))


async def read_objects(kube: Kube, kind: str, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ConfigMaps or Secrets ``names`` of the namespace that exist (404: absent). Any other
    refusal is an error: an optional reference we may not read is not a missing one."""
    read: Any = {"ConfigMap": kube.core.read_namespaced_config_map,
                 "Secret": kube.core.read_namespaced_secret}[kind]
    ns = kube.namespace

    async def one(name: str) -> tuple[str, dict[str, Any] | None]:
        try:
            return name, _plain(kube, await read(name, ns))
        except ApiException as exc:
            if exc.status == 404:
                return name, None
            raise translate(exc, f"cannot read {kind} {name} in {ns}") from exc

    found = await asyncio.gather(*(one(n) for n in sorted(set(names))))
    return {n: obj for n, obj in found if obj is not None}


def needs_node_allocatable(pod_spec: Mapping[str, Any], container: Mapping[str, Any]) -> bool:
    """A ``resourceFieldRef`` of the container asks for a limit that is not set."""
    for var in container.get("env") or []:
        ref = (var.get("valueFrom") or {}).get("resourceFieldRef")
        if not ref or var.get("value"):
            continue
        kind, _, res = str(ref.get("resource") or "").partition(".")
        target = container
        if ref.get("containerName"):
            target = next((c for c in all_containers(pod_spec)
                           if c.get("name") == ref["containerName"]), container)
        if kind == "limits" and res in COMPUTE_RESOURCES and res not in (
                (target.get("resources") or {}).get("limits") or {}):
            return True
    return False


async def node_allocatable(kube: Kube, node: str | None) -> dict[str, Any] | None:
    """The node's allocatable resources, or None when it cannot be read (no node yet, or no
    right to read Nodes: a cluster-scoped read that least-privilege users lack)."""
    if not node:
        return None
    try:
        obj = _plain(kube, await kube.core.read_node(node))
    except ApiException:
        return None
    return dict((obj.get("status") or {}).get("allocatable") or {}) or None


def workload_services(services: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Services whose variables the workload has: all but bridged's own, found by label
    (their names, ``bridged-origin-*`` and the like, could be anyone's)."""
    return [s for s in services
            if ((s.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY) != "bridged"]


async def list_services(kube: Kube) -> tuple[list[dict[str, Any]], str | None]:
    """The namespace's Services for the Service variables, bridged's own left out
    (:func:`workload_services`); (services, why not) on 403."""
    try:
        services = await kube.core.list_namespaced_service(kube.namespace)
    except ApiException as exc:
        if exc.status == 403:
            return [], "the Service variables (X_SERVICE_HOST...) are left out: " \
                       f"you may not list Services in {kube.namespace}"
        raise translate(exc, f"cannot list Services in {kube.namespace}") from exc
    return workload_services(_plain(kube, s) for s in services.items or []), None


async def env_of(kube: Kube, workload: Workload, container: str | None, *,
                 rewrites: Mapping[str, str] | None = None,
                 strict_names: bool = False) -> EnvResult:
    """:func:`resolve_env` for a loaded workload, reading only what the container refers to."""
    annotations = workload.pod_fields.get("metadata.annotations") or {}
    c = pick_container(workload.pod_spec, container, annotations)
    cm_names, secret_names = env_references(workload.pod_spec, str(c.get("name")), annotations)
    configmaps, secrets = await asyncio.gather(read_objects(kube, "ConfigMap", cm_names),
                                               read_objects(kube, "Secret", secret_names))
    notes = list(workload.notes)
    services: list[dict[str, Any]] = []
    if workload.pod_spec.get("enableServiceLinks", True) is not False:
        services, why = await list_services(kube)
        if why:
            notes.append(why)
    resources: dict[str, Any] = {}
    if needs_node_allocatable(workload.pod_spec, c):
        allocatable = await node_allocatable(kube, workload.pod_fields.get("spec.nodeName"))
        if allocatable:
            resources["node_allocatable"] = allocatable
    result = resolve_env(workload.pod_spec, str(c.get("name")), configmaps=configmaps,
                         secrets=secrets, pod_fields=workload.pod_fields, resources=resources,
                         rewrites=rewrites, services=services, strict_names=strict_names,
                         source=workload.description)
    if notes:
        result = replace(result, warnings=(*notes, *result.warnings))
    return result


async def workload_env(kube: Kube, ref: str, container: str | None, *,
                       rewrites: Mapping[str, str] | None = None,
                       strict_names: bool = False) -> EnvResult:
    """The environment of ``container`` (default: kubectl's) of ``ref`` (``deploy/NAME``,
    ``deployment/NAME``, ``statefulset/NAME``, ``sts/NAME``, ``pod/NAME``) in ``kube``'s
    namespace, as the kubelet builds it, with ``rewrites`` applied.

    Reads: the workload, its pods (list with its selector), the ConfigMaps and Secrets the
    container refers to (get, by name), the namespace's Services (list; skipped on 403) and,
    only for a ``resourceFieldRef`` on a limit that is not set, the pod's Node (get; unknown
    when refused). Errors: :class:`NotFound` (no such workload), :class:`ConfigError` (bad ref,
    unknown container, missing required reference), :class:`KubeError` (the API refused).
    """
    workload = await load_workload(kube, ref)
    try:
        return await env_of(kube, workload, container, rewrites=rewrites,
                            strict_names=strict_names)
    except ConfigError as exc:
        raise ConfigError(f"{workload.kind.lower()}/{workload.name}: {exc.message}",
                          hint=exc.hint) from exc


def write_env_file(result: EnvResult, path: Path, fmt: str) -> int:
    """Write ``format_env(result, fmt)`` to ``path`` atomically; mode 0600 when a value holds
    Secret data, else 0644. Returns the mode."""
    text = format_env(result, fmt)
    mode = 0o600 if result.has_secrets else 0o644
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return mode

