"""The downward API: the pod's own fields and its containers' resources, as the kubelet gives them.

Kubernetes semantics followed (Kubernetes 1.35 source):

- ``fieldRef``: ``podshelper.ConvertDownwardAPIFieldLabel`` and
  ``fieldpath.ExtractFieldPathAsString``: labels/annotations with a subscript, whole maps as
  ``k="v"`` lines with Go quoting (:func:`format_map`, :func:`go_quote`).
- ``resourceFieldRef``: ``pkg/api/v1/resource.ExtractContainerResourceValue``: cpu in millis,
  the rest in units, ``ceil(value / divisor)`` in float64; a missing limit is the node's
  allocatable, as ``defaultPodLimitsForDownwardAPI`` does; a missing request is the limit, as
  API defaulting does. Quantities (``500m``, ``1.5Gi``) are read exactly
  (:func:`parse_quantity`).

The fields come from a running pod (:func:`pod_fields_of`) or, when none runs, from the pod
template (:func:`template_fields`); what the laptop cannot know is an :class:`Unknown` with its
reason. Used for env (:mod:`.kubelet`) and for downward-API volumes
(:mod:`bridged.kube.files`). Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from ..errors import ConfigError

__all__ = ["COMPUTE_RESOURCES", "ENV_FIELD_PATHS", "Unknown", "all_containers", "field_value",
           "format_map", "go_quote", "parse_quantity", "pod_fields_of", "resource_value",
           "template_fields"]


_QUANTITY = re.compile(
    r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?\d+))?$")
_SUFFIXES: dict[str, Fraction] = {
    "": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}


def parse_quantity(text: object) -> Fraction:
    """A ``resource.Quantity`` (``500m``, ``1.5Gi``, ``2e3``) as an exact number."""
    if isinstance(text, bool):
        raise ConfigError(f"not a quantity: {text!r}")
    if isinstance(text, int):
        return Fraction(text)
    m = _QUANTITY.match(str(text).strip())
    if not m:
        raise ConfigError(f"not a Kubernetes quantity: {text!r}")
    sign, number, suffix, exponent = m.groups()
    value = Fraction(number) * (Fraction(10) ** int(exponent) if exponent else
                                _SUFFIXES[suffix or ""])
    return -value if sign == "-" else value


def _ceil(value: Fraction) -> int:
    """``Quantity.Value()``/``MilliValue()`` round up."""
    return math.ceil(value)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote`` (``%q``), which the downward API uses for label/annotation maps."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte kept by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def format_map(values: Mapping[str, str]) -> str:
    """``fieldpath.FormatMap``: sorted ``key="value"`` lines (Go quoting), no final newline."""
    return "\n".join(f"{k}={go_quote(str(values[k]))}" for k in sorted(values))



def all_containers(pod_spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(pod_spec.get("containers") or []), *(pod_spec.get("initContainers") or [])]


#: the field paths the downward API gives env vars (``validEnvDownwardAPIFieldPathExpressions``)
ENV_FIELD_PATHS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
                   "spec.serviceAccountName", "status.hostIP", "status.hostIPs",
                   "status.podIP", "status.podIPs")
_SUBSCRIPTED = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


def pod_fields_of(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The downward-API fields of a Pod object; None marks what the pod does not have yet
    (an IP before it runs, ...)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    pod_ips = [ip.get("ip") for ip in status.get("podIPs") or [] if ip.get("ip")]
    host_ips = [ip.get("ip") for ip in status.get("hostIPs") or [] if ip.get("ip")]
    return {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "metadata.labels": dict(meta.get("labels") or {}),
        "metadata.annotations": dict(meta.get("annotations") or {}),
        "spec.nodeName": spec.get("nodeName") or None,
        "spec.serviceAccountName": spec.get("serviceAccountName") or None,
        "status.podIP": status.get("podIP") or (pod_ips[0] if pod_ips else None),
        "status.podIPs": pod_ips or ([status["podIP"]] if status.get("podIP") else None),
        "status.hostIP": status.get("hostIP") or (host_ips[0] if host_ips else None),
        "status.hostIPs": host_ips or ([status["hostIP"]] if status.get("hostIP") else None),
        "why": f"pod {meta.get('name')} has no such value yet (phase {phase})",
    }


def template_fields(template: Mapping[str, Any], namespace: str,
                    why: str = "no pod runs") -> dict[str, Any]:
    """The fields known from a pod template: namespace, the template's labels and annotations
    (a controller adds more: a key the template lacks is unknown), the ServiceAccount (the
    admission default is ``default``); the rest is unknown (None) for reason ``why``."""
    meta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    return {
        "metadata.name": None, "metadata.uid": None, "metadata.namespace": namespace,
        "metadata.labels": dict(meta.get("labels") or {}),
        "metadata.annotations": dict(meta.get("annotations") or {}),
        "spec.nodeName": None,
        "spec.serviceAccountName": spec.get("serviceAccountName") or spec.get("serviceAccount")
        or "default",
        "status.podIP": None, "status.podIPs": None, "status.hostIP": None,
        "status.hostIPs": None, "template": why,
    }


class Unknown:
    """A value the laptop cannot know, and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Unknown({self.reason!r})"


def field_value(field_ref: Mapping[str, Any], pod_fields: Mapping[str, Any], *,
                volume: bool = False) -> str | Unknown:
    """``podFieldSelectorRuntimeValue`` / ``fieldpath.ExtractFieldPathAsString``."""
    version = field_ref.get("apiVersion") or "v1"
    path = str(field_ref.get("fieldPath") or "")
    if version != "v1":
        raise ConfigError(f"fieldRef apiVersion {version!r} is not supported (only v1)")
    unknown_why = pod_fields.get("template") or pod_fields.get("why") or "not known here"
    if m := _SUBSCRIPTED.match(path):
        values = pod_fields.get(f"metadata.{m.group(1)}")
        if values is None:
            return Unknown(f"{path}: {unknown_why}")
        if m.group(2) in values:
            return str(values[m.group(2)])
        if pod_fields.get("template"):
            return Unknown(f"{path}: not in the pod template, a controller may set it "
                            f"({unknown_why})")
        return ""
    if path in ("metadata.labels", "metadata.annotations"):
        values = pod_fields.get(path)
        if values is None or pod_fields.get("template"):
            return Unknown(f"{path}: {unknown_why}")
        return format_map(values)
    allowed = ("metadata.name", "metadata.namespace", "metadata.uid") if volume \
        else ENV_FIELD_PATHS
    if path not in allowed:
        raise ConfigError(f"fieldRef fieldPath {path!r} is not supported "
                          f"(supported: {', '.join(allowed)}, metadata.labels['KEY'], "
                          f"metadata.annotations['KEY'])")
    value = pod_fields.get(path)
    if value is None or value == []:
        return Unknown(f"{path}: {unknown_why}")
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


#: the resources whose unset limit the kubelet takes from the node's allocatable
COMPUTE_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def resource_value(selector: Mapping[str, Any], pod_spec: Mapping[str, Any],
                   container: Mapping[str, Any] | None,
                   node_allocatable: Mapping[str, Any] | None) -> str | Unknown:
    """``containerResourceRuntimeValue`` after ``defaultPodLimitsForDownwardAPI``: limits not
    set are the node's allocatable (cpu, memory, ephemeral-storage), requests not set are the
    limits (API defaulting); ``ceil(value / divisor)`` with cpu in millis, in float64 as the
    kubelet computes it."""
    name = selector.get("containerName") or ""
    if name:
        target = next((c for c in all_containers(pod_spec) if c.get("name") == name), None)
        if target is None:
            raise ConfigError(f"resourceFieldRef: container {name!r} not found")
    elif container is None:
        raise ConfigError("resourceFieldRef: containerName is required in a volume")
    else:
        target = container
    resource = str(selector.get("resource") or "")
    kind, _, res = resource.partition(".")
    if kind not in ("limits", "requests") or not (res in COMPUTE_RESOURCES
                                                  or res.startswith("hugepages-")):
        raise ConfigError(f"resourceFieldRef: unsupported container resource {resource!r}")
    divisor = parse_quantity(selector.get("divisor") or "0")
    if divisor == 0:
        divisor = Fraction(1)
    resources = target.get("resources") or {}
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    raw: object
    if kind == "limits":
        raw = limits.get(res)
        if raw is None and res in COMPUTE_RESOURCES:
            raw = (node_allocatable or {}).get(res)
            if raw is None:
                return Unknown(f"{resource}: no limit is set, so the kubelet uses the node's "
                                f"allocatable {res}, which is not known here")
    else:
        raw = requests.get(res, limits.get(res))
    value = parse_quantity(raw) if raw is not None else Fraction(0)
    if res == "cpu":
        result = math.ceil(float(_ceil(value * 1000)) / float(_ceil(divisor * 1000)))
    else:
        result = math.ceil(float(_ceil(value)) / float(_ceil(divisor)))
    return str(result)

