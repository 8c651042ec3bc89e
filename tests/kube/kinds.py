"""What each kind adds to the generic registry: defaults, validation, and update strategy.

Follows the kinds' ``SetDefaults_*`` functions, their ``validation`` packages and their
registry strategies (``PrepareForCreate``/``PrepareForUpdate``): status is reset on create and
kept on update of the main resource (kinds with a ``/status`` subresource), ``generation`` is
bumped when ``spec`` changes, Service ``clusterIP`` is allocated and kept when an update omits
it, a pod's spec is immutable but for images, the selector of a workload is immutable, a
RoleBinding's ``roleRef`` cannot change. Only the defaults and checks a client can notice for
these kinds are here; the API reference has the rest.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import secrets
from typing import Any

from .errors import FieldError, bad_request
from .selectors import from_label_selector
from .validation import dns1123_label, label_value, validate_labels

__all__ = ["Strategy", "strategy_for"]


class Strategy:
    """The generic strategy; kinds override what they change."""

    name_rule = "subdomain"

    def defaults(self, obj: dict[str, Any], api: Any) -> None:
        """Defaulting (``SetDefaults_*`` and mutating admission) on create and update."""

    def prepare_create(self, obj: dict[str, Any]) -> None:
        """``PrepareForCreate``: what the server owns (status) is reset."""

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any], status: bool) -> None:
        """``PrepareForUpdate``: status kept on the main resource, spec kept on /status."""
        if status:
            for key in list(new):
                if key not in ("apiVersion", "kind", "metadata", "status"):
                    new.pop(key)
            for key, value in old.items():
                if key not in ("metadata", "status"):
                    new[key] = copy.deepcopy(value)
            new["metadata"] = {**old["metadata"],
                               "resourceVersion": new["metadata"].get("resourceVersion")}

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        return []

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        return self.validate(new)


class _WithStatus(Strategy):
    def prepare_create(self, obj: dict[str, Any]) -> None:
        obj.pop("status", None)

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any], status: bool) -> None:
        if status:
            super().prepare_update(new, old, status)
            return
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
        if new.get("spec") != old.get("spec") and "generation" in old["metadata"]:
            new["metadata"]["generation"] = old["metadata"]["generation"] + 1


# --- pods and pod templates --------------------------------------------------------------------


def _image_pull_policy(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    if "@" in name:
        return "IfNotPresent"
    tag = name.split(":", 1)[1] if ":" in name else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_containers(containers: list[dict[str, Any]] | None) -> None:
    for c in containers or []:
        if isinstance(c, dict):
            if c.get("image"):
                c.setdefault("imagePullPolicy", _image_pull_policy(c["image"]))
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})
            for port in c.get("ports") or []:
                port.setdefault("protocol", "TCP")
            for env in c.get("env") or []:
                field_ref = (env.get("valueFrom") or {}).get("fieldRef")
                if field_ref is not None:
                    field_ref.setdefault("apiVersion", "v1")


def _default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    _default_containers(spec.get("containers"))
    _default_containers(spec.get("initContainers"))


def _validate_containers(containers: Any, path: str) -> list[FieldError]:
    if not containers:
        return [FieldError("FieldValueRequired", path, None, "")]
    errs: list[FieldError] = []
    seen: set[str] = set()
    for i, c in enumerate(containers):
        at = f"{path}[{i}]"
        name = c.get("name") if isinstance(c, dict) else None
        if not name:
            errs.append(FieldError("FieldValueRequired", f"{at}.name", None, ""))
        else:
            errs += [FieldError("FieldValueInvalid", f"{at}.name", name, m)
                     for m in dns1123_label(name)]
            if name in seen:
                errs.append(FieldError("FieldValueDuplicate", f"{at}.name", name))
            seen.add(name)
        if not (c or {}).get("image"):
            errs.append(FieldError("FieldValueRequired", f"{at}.image", None, ""))
        for j, port in enumerate((c or {}).get("ports") or []):
            number = port.get("containerPort")
            if not isinstance(number, int) or not 1 <= number <= 65535:
                errs.append(FieldError("FieldValueInvalid", f"{at}.ports[{j}].containerPort",
                                       number, "must be between 1 and 65535, inclusive"))
    return errs


def _validate_pod_spec(spec: Any, path: str) -> list[FieldError]:
    if not isinstance(spec, dict):
        return [FieldError("FieldValueRequired", path, None, "")]
    errs = _validate_containers(spec.get("containers"), f"{path}.containers")
    policy = spec.get("restartPolicy")
    if policy not in ("Always", "OnFailure", "Never"):
        errs.append(FieldError("FieldValueNotSupported", f"{path}.restartPolicy", policy,
                               'supported values: "Always", "OnFailure", "Never"'))
    return errs


class PodStrategy(_WithStatus):
    def defaults(self, obj: dict[str, Any], api: Any) -> None:
        spec = obj.setdefault("spec", {})
        _default_pod_spec(spec)
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("priority", 0)

    def admit_create(self, obj: dict[str, Any], api: Any) -> None:
        """The ServiceAccount and DefaultTolerationSeconds admission plugins."""
        spec, ns, name = obj["spec"], obj["metadata"]["namespace"], obj["metadata"].get("name")
        sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        if api.get_object("serviceaccounts", ns, sa) is None:
            from .errors import forbidden
            raise forbidden("", "pods", name or "", f"error looking up service account {ns}/{sa}"
                            f': serviceaccount "{sa}" not found')
        spec["serviceAccountName"] = spec["serviceAccount"] = sa
        if spec.get("automountServiceAccountToken", True):
            volume = "kube-api-access-" + "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789")
                                                  for _ in range(5))
            spec.setdefault("volumes", []).append({"name": volume, "projected": {
                "defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt",
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                        "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}})
            for c in spec["containers"]:
                c.setdefault("volumeMounts", []).append({
                    "name": volume, "readOnly": True,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
        tolerations = spec.setdefault("tolerations", [])
        for taint in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
            if not any(t.get("key") == taint for t in tolerations):
                tolerations.append({"key": taint, "operator": "Exists", "effect": "NoExecute",
                                    "tolerationSeconds": 300})

    def prepare_create(self, obj: dict[str, Any]) -> None:
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        return _validate_pod_spec(obj.get("spec"), "spec")

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        errs = self.validate(new)

        def mutable_stripped(spec: dict[str, Any]) -> dict[str, Any]:
            spec = copy.deepcopy(spec or {})
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                c.pop("image", None)
            for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
                spec.pop(key, None)
            return spec

        if mutable_stripped(new.get("spec", {})) != mutable_stripped(old.get("spec", {})):
            errs.append(FieldError(
                "FieldValueForbidden", "spec", None,
                "pod updates may not change fields other than `spec.containers[*].image`,"
                "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                "`spec.tolerations` (only additions to existing tolerations),"
                "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
                "previously negative)"))
        return errs


# --- workloads ---------------------------------------------------------------------------------


class _WorkloadStrategy(_WithStatus):
    what = "deployment"

    def defaults(self, obj: dict[str, Any], api: Any) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        template = spec.setdefault("template", {})
        template.setdefault("metadata", {})
        _default_pod_spec(template.setdefault("spec", {}))

    def prepare_create(self, obj: dict[str, Any]) -> None:
        obj["status"] = {}

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        spec = obj.get("spec") or {}
        errs: list[FieldError] = []
        selector = spec.get("selector")
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not selector:
            errs.append(FieldError("FieldValueRequired", "spec.selector", None, ""))
        elif not selector.get("matchLabels") and not selector.get("matchExpressions"):
            errs.append(FieldError("FieldValueInvalid", "spec.selector", selector,
                                   f"empty selector is invalid for {self.what}"))
        else:
            for value in (selector.get("matchLabels") or {}).values():
                errs += [FieldError("FieldValueInvalid", "spec.selector.matchLabels", value, m)
                         for m in label_value(value)]
            if not from_label_selector(selector).matches(labels):
                errs.append(FieldError("FieldValueInvalid", "spec.template.metadata.labels",
                                       labels, "`selector` does not match template `labels`"))
        errs += validate_labels(labels, "spec.template.metadata.labels")
        replicas = spec.get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            errs.append(FieldError("FieldValueInvalid", "spec.replicas", replicas,
                                   "must be greater than or equal to 0"))
        errs += _validate_pod_spec(template.get("spec"), "spec.template.spec")
        policy = (template.get("spec") or {}).get("restartPolicy")
        if policy != "Always" and not any(e.field.endswith("restartPolicy") for e in errs):
            errs.append(FieldError("FieldValueNotSupported", "spec.template.spec.restartPolicy",
                                   policy, 'supported values: "Always"'))
        return errs

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        errs = self.validate(new)
        if (new.get("spec") or {}).get("selector") != (old.get("spec") or {}).get("selector"):
            errs.append(FieldError("FieldValueInvalid", "spec.selector",
                                   (new.get("spec") or {}).get("selector"), "field is immutable"))
        return errs


class DeploymentStrategy(_WorkloadStrategy):
    def defaults(self, obj: dict[str, Any], api: Any) -> None:
        super().defaults(obj, api)
        spec = obj["spec"]
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
        spec.setdefault("progressDeadlineSeconds", 600)


class ReplicaSetStrategy(_WorkloadStrategy):
    what = "replicaset"

    def defaults(self, obj: dict[str, Any], api: Any) -> None:
        super().defaults(obj, api)
        obj["spec"].pop("revisionHistoryLimit", None)


class StatefulSetStrategy(_WorkloadStrategy):
    what = "statefulset"

    def defaults(self, obj: dict[str, Any], api: Any) -> None:
        super().defaults(obj, api)
        spec = obj["spec"]
        spec.setdefault("podManagementPolicy", "OrderedReady")
        update = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        if update.get("type") == "RollingUpdate":
            update.setdefault("rollingUpdate", {"partition": 0})
        spec.setdefault("persistentVolumeClaimRetentionPolicy",
                        {"whenDeleted": "Retain", "whenScaled": "Retain"})


# --- services ----------------------------------------------------------------------------------


class ServiceStrategy(_WithStatus):
    name_rule = "dns1035"

    def defaults(self, obj: dict[str, Any], api: Any) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        if spec["type"] != "ExternalName":
            spec.setdefault("internalTrafficPolicy", "Cluster")
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")

    def allocate(self, obj: dict[str, Any], api: Any) -> None:
        spec = obj["spec"]
        if spec["type"] == "ExternalName":
            return
        if not spec.get("clusterIP"):
            spec["clusterIP"] = api.allocate_cluster_ip()
        spec.setdefault("clusterIPs", [spec["clusterIP"]])

    def prepare_create(self, obj: dict[str, Any]) -> None:
        obj["status"] = {"loadBalancer": {}}

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any], status: bool) -> None:
        super().prepare_update(new, old, status)
        spec, before = new.setdefault("spec", {}), old.get("spec") or {}
        if spec.get("type") == before.get("type") and before.get("clusterIP"):
            if not spec.get("clusterIP"):  # patchAllocatedValues
                spec["clusterIP"] = before["clusterIP"]
                spec.setdefault("clusterIPs", before.get("clusterIPs"))
            spec.setdefault("clusterIPs", [spec["clusterIP"]])

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        spec = obj.get("spec") or {}
        errs: list[FieldError] = []
        ports = spec.get("ports") or []
        if not ports and spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None":
            errs.append(FieldError("FieldValueRequired", "spec.ports", None, ""))
        names: set[str] = set()
        for i, port in enumerate(ports):
            number = port.get("port")
            if not isinstance(number, int) or not 1 <= number <= 65535:
                errs.append(FieldError("FieldValueInvalid", f"spec.ports[{i}].port", number,
                                       "must be between 1 and 65535, inclusive"))
            name = port.get("name", "")
            if len(ports) > 1 and not name:
                errs.append(FieldError("FieldValueRequired", f"spec.ports[{i}].name", None, ""))
            if name in names:
                errs.append(FieldError("FieldValueDuplicate", f"spec.ports[{i}].name", name))
            names.add(name)
        if spec.get("type") not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            errs.append(FieldError("FieldValueNotSupported", "spec.type", spec.get("type"),
                                   'supported values: "ClusterIP", "ExternalName", '
                                   '"LoadBalancer", "NodePort"'))
        for value in (spec.get("selector") or {}).values():
            errs += [FieldError("FieldValueInvalid", "spec.selector", value, m)
                     for m in label_value(value)]
        return errs

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        errs = self.validate(new)
        before, after = old.get("spec") or {}, new.get("spec") or {}
        if before.get("clusterIPs") and after.get("clusterIPs") != before["clusterIPs"]:
            errs.append(FieldError("FieldValueInvalid", "spec.clusterIPs[0]",
                                   after.get("clusterIPs"), "may not change once set"))
        return errs


# --- config ------------------------------------------------------------------------------------

_CONFIG_KEY = "[-._a-zA-Z0-9]+"


def _validate_keys(obj: dict[str, Any], fields: tuple[str, ...]) -> list[FieldError]:
    errs: list[FieldError] = []
    for f in fields:
        for key in obj.get(f) or {}:
            if not re.fullmatch(_CONFIG_KEY, key) or len(key) > 253:
                errs.append(FieldError(
                    "FieldValueInvalid", f"{f}[{key}]", key,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or "
                    "'.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for "
                    f"validation is '{_CONFIG_KEY}')"))
    return errs


class ConfigMapStrategy(Strategy):
    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        return _validate_keys(obj, ("data", "binaryData"))


class SecretStrategy(Strategy):
    def defaults(self, obj: dict[str, Any], api: Any) -> None:
        obj.setdefault("type", "Opaque")
        for value in (obj.get("data") or {}).values():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError) as exc:
                raise bad_request(f'Secret in version "v1" cannot be handled as a Secret: '
                                  f"illegal base64 data: {exc}") from exc
        string_data = obj.pop("stringData", None) or {}
        if string_data:
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        return _validate_keys(obj, ("data",))

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        errs = self.validate(new)
        if new.get("type") != old.get("type"):
            errs.append(FieldError("FieldValueInvalid", "type", new.get("type"),
                                   "field is immutable"))
        return errs


class NamespaceStrategy(_WithStatus):
    name_rule = "label"

    def defaults(self, obj: dict[str, Any], api: Any) -> None:
        name = obj["metadata"].get("name")
        if name:
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])

    def prepare_create(self, obj: dict[str, Any]) -> None:
        obj["status"] = {"phase": "Active"}


# --- rbac --------------------------------------------------------------------------------------


class RoleStrategy(Strategy):
    name_rule = "path"

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        errs = []
        for i, rule in enumerate(obj.get("rules") or []):
            if not rule.get("verbs"):
                errs.append(FieldError("FieldValueRequired", f"rules[{i}].verbs", None,
                                       "verbs must contain at least one value"))
            if not rule.get("nonResourceURLs") and not rule.get("resources"):
                errs.append(FieldError("FieldValueRequired", f"rules[{i}].resources", None,
                                       "resource rules must supply at least one resource"))
        return errs


class RoleBindingStrategy(Strategy):
    name_rule = "path"
    role_kinds: tuple[str, ...] = ("Role", "ClusterRole")

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        errs = []
        ref = obj.get("roleRef") or {}
        if ref.get("kind") not in self.role_kinds:
            errs.append(FieldError("FieldValueNotSupported", "roleRef.kind", ref.get("kind"),
                                   "supported values: " + ", ".join(
                                       f'"{k}"' for k in self.role_kinds)))
        if not ref.get("name"):
            errs.append(FieldError("FieldValueRequired", "roleRef.name", None, ""))
        for i, subject in enumerate(obj.get("subjects") or []):
            if subject.get("kind") not in ("User", "Group", "ServiceAccount"):
                errs.append(FieldError("FieldValueNotSupported", f"subjects[{i}].kind",
                                       subject.get("kind"),
                                       'supported values: "Group", "ServiceAccount", "User"'))
            if not subject.get("name"):
                errs.append(FieldError("FieldValueRequired", f"subjects[{i}].name", None, ""))
        return errs

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        errs = self.validate(new)
        if new.get("roleRef") != old.get("roleRef"):
            errs.append(FieldError("FieldValueInvalid", "roleRef", new.get("roleRef"),
                                   "cannot change roleRef"))
        return errs


class ClusterRoleBindingStrategy(RoleBindingStrategy):
    role_kinds = ("ClusterRole",)


class EventStrategy(Strategy):
    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        if not (obj.get("involvedObject") or {}).get("name") and not obj.get("regarding"):
            return [FieldError("FieldValueRequired", "involvedObject.name", None, "")]
        return []


_STRATEGIES: dict[str, Strategy] = {
    "pods": PodStrategy(), "deployments": DeploymentStrategy(),
    "replicasets": ReplicaSetStrategy(), "statefulsets": StatefulSetStrategy(),
    "services": ServiceStrategy(), "configmaps": ConfigMapStrategy(),
    "secrets": SecretStrategy(), "namespaces": NamespaceStrategy(),
    "roles": RoleStrategy(), "clusterroles": RoleStrategy(),
    "rolebindings": RoleBindingStrategy(), "clusterrolebindings": ClusterRoleBindingStrategy(),
    "events": EventStrategy(),
}


def strategy_for(plural: str) -> Strategy:
    return _STRATEGIES.get(plural, Strategy())

