"""The resource types the stand-in serves, and the discovery documents that describe them.

Follows the API reference for each kind (group, version, plural, Kind, namespaced, verbs,
subresources, short names, categories) and the legacy discovery documents ``APIVersions``
(``/api``), ``APIGroupList`` (``/apis``), ``APIGroup`` (``/apis/{group}``) and
``APIResourceList`` (``/api/v1``, ``/apis/{group}/{version}``), including the
``{resource}/{subresource}`` entries real servers list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RESOURCES", "ResourceType", "Subresource", "api_group_list", "api_resource_list",
           "api_versions", "find", "groups"]

CRUD = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Subresource:
    """``{resource}/{name}`` with the Kind it speaks and its verbs (discovery)."""

    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str | None = None  # only when the subresource's kind is of another group
    version: str | None = None


@dataclass(frozen=True)
class ResourceType:
    """One REST resource. ``returns_deleted`` mirrors the registry's ``ReturnDeletedObject``
    (DELETE answers the object rather than a ``Status``); ``generation`` marks the kinds whose
    strategy keeps ``metadata.generation`` (bumped on spec changes)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str
    verbs: tuple[str, ...] = CRUD
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[Subresource, ...] = ()
    returns_deleted: bool = False
    generation: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return any(s.name == "status" for s in self.subresources)

    def subresource(self, name: str) -> Subresource | None:
        return next((s for s in self.subresources if s.name == name), None)

    def base_path(self, namespace: str | None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{root}/namespaces/{namespace}/{self.plural}"
        return f"{root}/{self.plural}"


def _status(kind: str) -> Subresource:
    return Subresource("status", kind, ("get", "patch", "update"))


def _scale() -> Subresource:
    return Subresource("scale", "Scale", ("get", "patch", "update"), "autoscaling", "v1")


RESOURCES: list[ResourceType] = [
    ResourceType("", "v1", "namespaces", "Namespace", False, "namespace",
                 verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
                 short_names=("ns",), returns_deleted=True,
                 subresources=(Subresource("finalize", "Namespace", ("update",)),
                               _status("Namespace"))),
    ResourceType("", "v1", "pods", "Pod", True, "pod", short_names=("po",), categories=("all",),
                 returns_deleted=True, generation=True,
                 subresources=(Subresource("log", "Pod", ("get",)),
                               Subresource("portforward", "PodPortForwardOptions",
                                           ("create", "get")),
                               _status("Pod"))),
    ResourceType("", "v1", "services", "Service", True, "service", short_names=("svc",),
                 categories=("all",), returns_deleted=True, subresources=(_status("Service"),)),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, "configmap", short_names=("cm",)),
    ResourceType("", "v1", "secrets", "Secret", True, "secret"),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, "serviceaccount",
                 short_names=("sa",)),
    ResourceType("", "v1", "events", "Event", True, "event", short_names=("ev",)),
    ResourceType("apps", "v1", "deployments", "Deployment", True, "deployment",
                 short_names=("deploy",), categories=("all",), generation=True,
                 subresources=(_scale(), _status("Deployment"))),
    ResourceType("apps", "v1", "replicasets", "ReplicaSet", True, "replicaset",
                 short_names=("rs",), categories=("all",), generation=True,
                 subresources=(_scale(), _status("ReplicaSet"))),
    ResourceType("apps", "v1", "statefulsets", "StatefulSet", True, "statefulset",
                 short_names=("sts",), categories=("all",), generation=True,
                 subresources=(_scale(), _status("StatefulSet"))),
    # written by the EndpointSlice controller, read by kube-proxy (:mod:`.kubeproxy`)
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True,
                 "endpointslice"),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", True, "role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True,
                 "rolebinding"),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False,
                 "clusterrole"),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
                 False, "clusterrolebinding"),
    ResourceType("authorization.k8s.io", "v1", "selfsubjectaccessreviews",
                 "SelfSubjectAccessReview", False, "selfsubjectaccessreview", verbs=("create",)),
]  # a list: installing a CustomResourceDefinition adds to it (see :mod:`.crds`)

_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KIND = {(r.group, r.kind): r for r in RESOURCES}


def find(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_PATH.get((group, version, plural))


def by_kind(group: str, kind: str) -> ResourceType:
    return _BY_KIND[(group, kind)]


def groups() -> dict[str, list[str]]:
    """Named groups (not the legacy core group) and their versions, preferred first."""
    out: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group and r.version not in out.setdefault(r.group, []):
            out[r.group].append(r.version)
    return out


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": server_address}]}


def api_group(name: str) -> dict[str, Any]:
    versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in groups()[name]]
    return {"name": name, "versions": versions, "preferredVersion": versions[0]}


def api_group_list() -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [api_group(name) for name in groups()]}


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    members = [r for r in RESOURCES if r.group == group and r.version == version]
    if not members:
        return None
    resources: list[dict[str, Any]] = []
    for r in members:
        entry: dict[str, Any] = {"name": r.plural, "singularName": r.singular,
                                 "namespaced": r.namespaced, "kind": r.kind,
                                 "verbs": list(r.verbs)}
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        resources.append(entry)
        for sub in r.subresources:
            s: dict[str, Any] = {"name": f"{r.plural}/{sub.name}", "singularName": "",
                                 "namespaced": r.namespaced, "kind": sub.kind,
                                 "verbs": list(sub.verbs)}
            if sub.group is not None:
                s["group"], s["version"] = sub.group, sub.version
            resources.append(s)
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": resources}
