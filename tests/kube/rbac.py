"""Authentication and RBAC authorization.

Authentication (https://kubernetes.io/docs/reference/access-authn-authz/authentication/):
a bearer token (``Authorization: Bearer T``) from a static token list, or an X.509 client
certificate signed by the client CA (user = subject CN, groups = subject O). Every
authenticated user is also in ``system:authenticated``; a request without credentials is
``system:anonymous`` in ``system:unauthenticated``; a wrong token is a 401 ``Unauthorized``.
The group ``system:masters`` bypasses authorization, as on a real cluster.

Authorization (https://kubernetes.io/docs/reference/access-authn-authz/rbac/): request
attributes from the URL (``RequestInfoFactory``: verb from the method, ``list``/``watch`` for
collections, ``deletecollection``, subresources), evaluated over the Roles and RoleBindings of
the namespace and the ClusterRoles and ClusterRoleBindings stored in the server (rules with
``apiGroups``, ``resources`` incl. ``res/sub`` and ``*``, ``verbs``, ``resourceNames``,
``nonResourceURLs``). The 403 message is ``forbiddenMessage``'s: ``User "u" cannot VERB
resource "RES[/SUB]" in API group "G" in the namespace "NS"``. A websocket upgrade of
``pods/exec|attach|portforward`` is also checked as ``create``
(``AuthorizePodWebsocketUpgradeCreatePermission``, on by default since 1.35).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .store import Store

__all__ = ["Attributes", "Authorizer", "User"]

BOOTSTRAP_CLUSTER_ROLES: list[dict[str, Any]] = [
    {"metadata": {"name": "cluster-admin"},
     "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
               {"nonResourceURLs": ["*"], "verbs": ["*"]}]},
    {"metadata": {"name": "system:discovery"},
     "rules": [{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz",
                                    "/livez", "/openapi", "/openapi/*", "/readyz", "/version",
                                    "/version/"], "verbs": ["get"]}]},
    {"metadata": {"name": "system:public-info-viewer"},
     "rules": [{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"],
                "verbs": ["get"]}]},
    {"metadata": {"name": "system:basic-user"},
     "rules": [{"apiGroups": ["authorization.k8s.io"],
                "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                "verbs": ["create"]}]},
]
BOOTSTRAP_BINDINGS: list[dict[str, Any]] = [
    {"metadata": {"name": name},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}
                  for group in groups]}
    for name, role, groups in (
        ("cluster-admin", "cluster-admin", ["system:masters"]),
        ("system:discovery", "system:discovery", ["system:authenticated"]),
        ("system:basic-user", "system:basic-user", ["system:authenticated"]),
        ("system:public-info-viewer", "system:public-info-viewer",
         ["system:authenticated", "system:unauthenticated"]),
    )
]


@dataclass(frozen=True)
class User:
    """An authenticated identity (``user.Info``)."""

    name: str
    groups: tuple[str, ...] = ()

    @property
    def all_groups(self) -> tuple[str, ...]:
        if self.name == "system:anonymous":
            return (*self.groups, "system:unauthenticated")
        return (*self.groups, "system:authenticated")


ANONYMOUS = User("system:anonymous")


@dataclass(frozen=True)
class Attributes:
    """``authorizer.Attributes`` of one request."""

    user: User
    verb: str
    resource_request: bool
    path: str = ""
    namespace: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""

    def forbidden_message(self) -> str:
        if not self.resource_request:
            return f'User "{self.user.name}" cannot {self.verb} path "{self.path}"'
        resource = self.resource + (f"/{self.subresource}" if self.subresource else "")
        where = (f'in the namespace "{self.namespace}"' if self.namespace
                 else "at the cluster scope")
        return (f'User "{self.user.name}" cannot {self.verb} resource "{resource}" in API '
                f'group "{self.group}" {where}')


@dataclass
class Authorizer:
    """RBAC over the stored roles and bindings."""

    store: Store
    registry: Any
    extra_allow: list[Any] = field(default_factory=list)

    def _subject_matches(self, subject: dict[str, Any], user: User, namespace: str) -> bool:
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "User":
            return bool(name == user.name)
        if kind == "Group":
            return name in user.all_groups
        if kind == "ServiceAccount":
            ns = subject.get("namespace") or namespace
            return user.name == f"system:serviceaccount:{ns}:{name}"
        return False

    @staticmethod
    def _rule_allows(rule: dict[str, Any], attrs: Attributes) -> bool:
        verbs = rule.get("verbs") or []
        if "*" not in verbs and attrs.verb not in verbs:
            return False
        if not attrs.resource_request:
            for url in rule.get("nonResourceURLs") or []:
                if url == "*" or url == attrs.path or (
                        url.endswith("*") and attrs.path.startswith(url[:-1])):
                    return True
            return False
        groups = rule.get("apiGroups") or []
        if "*" not in groups and attrs.group not in groups:
            return False
        combined = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
        resources = rule.get("resources") or []
        ok = ("*" in resources or combined in resources
              or (attrs.subresource and f"*/{attrs.subresource}" in resources)
              or (not attrs.subresource and attrs.resource in resources))
        if not ok:
            return False
        names = rule.get("resourceNames") or []
        return not names or attrs.name in names

    def _role_rules(self, ref: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
        if ref.get("kind") == "ClusterRole":
            role = self.registry.get_object("clusterroles", None, ref.get("name", ""))
        else:
            role = self.registry.get_object("roles", namespace, ref.get("name", ""))
        return list((role or {}).get("rules") or [])

    def authorize(self, attrs: Attributes) -> tuple[bool, str]:
        """(allowed, reason) like the RBAC authorizer's decision."""
        if "system:masters" in attrs.user.all_groups:
            return True, ""
        bindings: list[tuple[str, dict[str, Any]]] = [
            ("ClusterRoleBinding", b) for b in self.store.items(
                self.registry.resource("clusterrolebindings"))]
        if attrs.namespace:
            bindings += [("RoleBinding", b) for b in self.store.items(
                self.registry.resource("rolebindings"), attrs.namespace)]
        for kind, binding in bindings:
            ns = binding["metadata"].get("namespace", "")
            if not any(self._subject_matches(s, attrs.user, ns)
                       for s in binding.get("subjects") or []):
                continue
            for rule in self._role_rules(binding.get("roleRef") or {}, ns):
                if self._rule_allows(rule, attrs):
                    ref = binding["roleRef"]
                    where = f'"{binding["metadata"]["name"]}"' + (f' in "{ns}"' if ns else "")
                    return True, (f'RBAC: allowed by {kind} {where} of {ref["kind"]} '
                                  f'"{ref["name"]}" to {attrs.user.name}')
        return False, ""
