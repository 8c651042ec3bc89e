"""A container's environment, rebuilt as the kubelet builds it, with service addresses made local.

Pure part (no I/O): :func:`resolve_env`, :func:`apply_rewrites`, :func:`format_env`. I/O part:
:func:`workload_env` (reads the workload, one of its pods and exactly the ConfigMaps and Secrets
the container refers to) and :func:`write_env_file`.

Kubernetes semantics followed (Kubernetes 1.35 source, ``pkg/kubelet/kubelet_pods.go``
``makeEnvironmentVariables``):

- ``envFrom`` first, in order (a later source wins), then ``env`` in order (a later entry wins);
  ConfigMaps give their ``data`` (never ``binaryData``), Secrets their base64-decoded ``data``;
  ``prefix`` is prepended to every key. A missing source marked ``optional`` is skipped, a
  missing required one stops the container (``CreateContainerConfigError``): here a
  :class:`~bridged.errors.ConfigError` naming the container, the ConfigMap or Secret and, for
  ``valueFrom``, the variable and the key.
- Names from ``envFrom``: kubelets before 1.30 skipped keys that are not ``IsEnvVarName``
  (``[-._a-zA-Z][-._a-zA-Z0-9]*``, not ``.``/``..``/``..x``) and recorded a Warning event
  ``InvalidEnvironmentVariableNames``; since 1.30 (KEP-4369, PR #123385) the kubelet passes every
  key and the API accepts any printable ASCII except ``=``. ``strict_names=True`` gives the old
  behaviour; either way skipped keys are reported in :attr:`EnvResult.skipped` with the event's
  message.
- ``value`` is expanded with ``$(VAR)`` as ``third_party/forked/golang/expansion`` does: ``$$``
  is a literal ``$``, ``$(NAME)`` is replaced by the variable defined so far (all of ``envFrom``
  and the ``env`` entries above), else by a Service variable, else left as written; an
  unterminated ``$(`` and any other ``$x`` are kept.
- ``valueFrom``: ``configMapKeyRef``/``secretKeyRef`` (``optional``: a missing object or key
  leaves the variable unset, not empty), ``fieldRef`` (``podshelper.ConvertDownwardAPIFieldLabel``
  and ``fieldpath.ExtractFieldPathAsString``: labels/annotations with a subscript, whole maps as
  ``k="v"`` lines with Go quoting), ``resourceFieldRef``
  (``pkg/api/v1/resource.ExtractContainerResourceValue``: cpu in millis, the rest in units,
  ``ceil(value / divisor)`` in float64; a missing limit is the node's allocatable, as
  ``defaultPodLimitsForDownwardAPI`` does; a missing request is the limit, as API defaulting
  does), ``fileKeyRef`` (reads a file another container wrote: unknown here).
- Service variables (``pkg/kubelet/envvars.FromServices``): for each Service of the namespace
  with a cluster IP, when ``enableServiceLinks`` is not false, ``X_SERVICE_HOST``,
  ``X_SERVICE_PORT``, ``X_SERVICE_PORT_<NAME>``, and the Docker-link variables ``X_PORT``,
  ``X_PORT_<P>_<PROTO>{,_PROTO,_PORT,_ADDR}``; defined variables win over them. The
  ``kubernetes`` Service of ``default`` (which the kubelet always adds) is only used when the
  caller passes it: :func:`workload_env` leaves it out on purpose, because on a laptop
  ``KUBERNETES_SERVICE_HOST`` makes client libraries believe they run in a pod.
- Default container: ``kubectl``'s (``podcmd.FindOrDefaultContainerByName``): the one named by
  the ``kubectl.kubernetes.io/default-container`` annotation if it exists, else the first.

Output (:func:`format_env`): ``dotenv`` as python-dotenv and ``docker --env-file`` read it,
``json``, ``shell`` (``export K='v'``); :attr:`EnvResult.secret_names` says which values hold
Secret data, and :func:`write_env_file` writes such files 0600.

Values the laptop cannot know (fields of a pod that does not run, a node's allocatable) are
kept empty and listed with the reason in :attr:`EnvResult.unknown`.

Rewrites (:func:`apply_rewrites`): ``rewrites`` maps cluster addresses ``host:port`` (a Service
name in any of its DNS forms, a cluster IP, ``[v6]:port``) to the local forward ``host:port``.
Values are never edited by substring. A value changes only by these rules:

1. *address tokens*: ``host:port`` inside any value (URLs, comma lists, plain ``redis:6379``)
   where ``host`` is delimited (not preceded by a letter, digit, ``_``, ``.`` or ``-``) and the
   port is complete (not followed by a letter, digit, ``_``, ``-``, ``@`` or ``.x``): so
   ``myredis:6379``, ``a.redis:6379``, ``redis:63790`` and the userinfo in
   ``redis://user:6379@host`` are left alone. Host names match case-insensitively, with or
   without a final dot;
2. *URLs without a port*: ``scheme://[userinfo@]host[,host...]`` with a scheme whose default port
   is well known (http 80, https 443, redis 6379, postgres 5432, ...): ``host`` gets the
   forward's ``host:port`` when ``host:default-port`` is rewritten;
3. *host/port pairs*: a variable named ``STEM_HOST``/``_HOSTNAME``/``_ADDR``/``_ADDRESS`` whose
   whole value is a rewritten host, and ``STEM_PORT`` whose whole value is a port of it: both
   are replaced. The Service variables are such pairs (``X_SERVICE_HOST``/``X_SERVICE_PORT``,
   ``X_PORT_P_TCP_ADDR``/``X_PORT_P_TCP_PORT``); ``X_SERVICE_PORT_<NAME>`` follows
   ``X_SERVICE_HOST``; ``X_PORT`` and ``X_PORT_P_TCP`` are URLs (rule 1);
4. *host alone*: such a host variable whose ``STEM_PORT`` is absent or no port number (like the
   Docker-link ``REDIS_PORT=tcp://...`` of a Service ``redis``) gets the forward's host when all
   forwards of that host share one local host; a warning says so when a port differs.

A value that is a Service name but not in a host variable (``CACHE_BACKEND=redis``) is never
touched. A variable keeps its :attr:`EnvVar.secret` flag and gains
:attr:`EnvVar.rewritten_from`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from ..errors import ConfigError, NotFound
from .client import Kube, translate

__all__ = [
    "EnvResult",
    "EnvVar",
    "SkippedKeys",
    "Unknown",
    "Workload",
    "apply_rewrites",
    "env_references",
    "format_env",
    "format_warnings",
    "load_workload",
    "parse_quantity",
    "parse_ref",
    "pick_container",
    "pod_fields_of",
    "resolve_env",
    "service_env",
    "service_rewrites",
    "template_fields",
    "workload_env",
    "write_env_file",
]

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
FORMATS = ("dotenv", "json", "shell")


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvVar:
    """One variable of the container's environment.

    ``source``: where the value came from: ``env``, ``configmap/NAME``, ``secret/NAME``,
    ``configmap/NAME:KEY``, ``secret/NAME:KEY``, ``fieldRef:PATH``, ``resourceFieldRef:RES``,
    ``service/NAME``. ``secret``: the value holds Secret data (from a Secret, or expanded from a
    variable that does). ``unknown``: why the value could not be known here (it is then "").
    ``rewritten_from``: the value before a rewrite made a service address local.
    """

    name: str
    value: str
    source: str
    secret: bool = False
    unknown: str | None = None
    rewritten_from: str | None = None


@dataclass(frozen=True)
class SkippedKeys:
    """Keys of an ``envFrom`` source that the kubelet skips (its InvalidEnvironmentVariableNames
    Warning event); ``message`` is the event's message."""

    kind: str  # "configMap" | "secret"
    name: str
    keys: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class EnvResult:
    """What the kubelet would give the container, in a stable order (``envFrom`` keys sorted per
    source, then ``env`` in order, then Service variables)."""

    container: str
    vars: tuple[EnvVar, ...]
    skipped: tuple[SkippedKeys, ...] = ()
    warnings: tuple[str, ...] = ()
    source: str = ""  # where the spec and the pod fields came from, for humans

    def as_dict(self) -> dict[str, str]:
        return {v.name: v.value for v in self.vars}

    def get(self, name: str) -> EnvVar | None:
        return next((v for v in self.vars if v.name == name), None)

    @property
    def secret_names(self) -> tuple[str, ...]:
        """Variables whose values hold Secret data: a file of them must be private."""
        return tuple(v.name for v in self.vars if v.secret)

    @property
    def has_secrets(self) -> bool:
        return any(v.secret for v in self.vars)

    @property
    def unknown(self) -> dict[str, str]:
        return {v.name: v.unknown for v in self.vars if v.unknown is not None}

    @property
    def rewritten(self) -> dict[str, tuple[str, str]]:
        return {v.name: (v.rewritten_from, v.value) for v in self.vars
                if v.rewritten_from is not None}


# --- small Kubernetes helpers (pure) --------------------------------------------------------

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


def is_env_var_name(name: str) -> bool:
    """``validation.IsEnvVarName``: the strict rule (the kubelet's filter before 1.30)."""
    return (re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", name) is not None
            and name not in (".", "..") and not name.startswith(".."))


def is_relaxed_env_var_name(name: str) -> bool:
    """``validation.IsRelaxedEnvVarName``: printable ASCII except ``=``, not empty."""
    return bool(name) and all(" " <= ch <= "~" and ch != "=" for ch in name)


def expand(value: str, lookup: Callable[[str], str | None]) -> tuple[str, list[str]]:
    """``expansion.Expand`` with a mapping that returns None for unknown names (left as
    ``$(NAME)``). Returns the expanded text and the names that were substituted."""
    out: list[str] = []
    used: list[str] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch != "$" or i + 1 == n:
            out.append(ch)
            i += 1
            continue
        nxt = value[i + 1]
        if nxt == "$":  # escaped operator
            out.append("$")
            i += 2
        elif nxt == "(":
            close = value.find(")", i + 2)
            if close < 0:  # incomplete reference: kept, scanning goes on after "$("
                out.append("$(")
                i += 2
                continue
            name = value[i + 2:close]
            found = lookup(name)
            if found is None:
                out.append(f"$({name})")
            else:
                out.append(found)
                used.append(name)
            i = close + 1
        else:  # "$x" is not an expression
            out.append("$" + nxt)
            i += 2
    return "".join(out), used


def _decode_secret(data: object, what: str) -> tuple[str, bool]:
    """A Secret ``data`` value (base64) as text; second: True if it was not UTF-8 (then the
    bytes are kept with ``surrogateescape``)."""
    try:
        raw = base64.b64decode(str(data), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{what}: not base64 data as the API returns it") from exc
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape"), True


def _all_containers(pod_spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(pod_spec.get("containers") or []), *(pod_spec.get("initContainers") or [])]


def pick_container(pod_spec: Mapping[str, Any], container: str | None,
                   annotations: Mapping[str, str] | None = None) -> Mapping[str, Any]:
    """The container ``kubectl`` would pick: ``container`` by name (app or init container),
    else the one the ``kubectl.kubernetes.io/default-container`` annotation names if it
    exists, else the first app container."""
    containers = list(pod_spec.get("containers") or [])
    inits = list(pod_spec.get("initContainers") or [])
    if container:
        for c in (*containers, *inits):
            if c.get("name") == container:
                return c
        names = ", ".join(str(c.get("name")) for c in containers) or "none"
        if inits:
            names += " (init: " + ", ".join(str(c.get("name")) for c in inits) + ")"
        raise ConfigError(f"container {container!r} not found; the pod's containers: {names}")
    wanted = (annotations or {}).get(DEFAULT_CONTAINER_ANNOTATION)
    if wanted:
        for c in (*containers, *inits):
            if c.get("name") == wanted:
                return c
    if not containers:
        raise ConfigError("the pod spec has no containers")
    return containers[0]


def env_references(pod_spec: Mapping[str, Any], container: str | None,
                   annotations: Mapping[str, str] | None = None
                   ) -> tuple[frozenset[str], frozenset[str]]:
    """The ConfigMaps and Secrets the container's ``env``/``envFrom`` refer to: exactly what
    must be readable (least privilege)."""
    c = pick_container(pod_spec, container, annotations)
    cms: set[str] = set()
    secrets: set[str] = set()
    for source in c.get("envFrom") or []:
        if (ref := source.get("configMapRef")) and ref.get("name"):
            cms.add(ref["name"])
        elif (ref := source.get("secretRef")) and ref.get("name"):
            secrets.add(ref["name"])
    for var in c.get("env") or []:
        if var.get("value"):
            continue
        value_from = var.get("valueFrom") or {}
        if (ref := value_from.get("configMapKeyRef")) and ref.get("name"):
            cms.add(ref["name"])
        elif (ref := value_from.get("secretKeyRef")) and ref.get("name"):
            secrets.add(ref["name"])
    return frozenset(cms), frozenset(secrets)


# --- pod fields (the downward API) ----------------------------------------------------------

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


_COMPUTE = ("cpu", "memory", "ephemeral-storage")


def resource_value(selector: Mapping[str, Any], pod_spec: Mapping[str, Any],
                   container: Mapping[str, Any] | None,
                   node_allocatable: Mapping[str, Any] | None) -> str | Unknown:
    """``containerResourceRuntimeValue`` after ``defaultPodLimitsForDownwardAPI``: limits not
    set are the node's allocatable (cpu, memory, ephemeral-storage), requests not set are the
    limits (API defaulting); ``ceil(value / divisor)`` with cpu in millis, in float64 as the
    kubelet computes it."""
    name = selector.get("containerName") or ""
    if name:
        target = next((c for c in _all_containers(pod_spec) if c.get("name") == name), None)
        if target is None:
            raise ConfigError(f"resourceFieldRef: container {name!r} not found")
    elif container is None:
        raise ConfigError("resourceFieldRef: containerName is required in a volume")
    else:
        target = container
    resource = str(selector.get("resource") or "")
    kind, _, res = resource.partition(".")
    if kind not in ("limits", "requests") or not (res in _COMPUTE
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
        if raw is None and res in _COMPUTE:
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


# --- Service variables ----------------------------------------------------------------------


def _env_name(text: str) -> str:
    """``makeEnvVariableName``."""
    return text.upper().replace("-", "_")


def _join_host_port(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def service_env(services: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """``envvars.FromServices``: name -> (value, Service name), for Services with a cluster IP
    (headless and ExternalName Services have none)."""
    out: dict[str, tuple[str, str]] = {}
    for svc in services:
        spec = svc.get("spec") or {}
        ip = spec.get("clusterIP") or ""
        ports = spec.get("ports") or []
        svc_name = str((svc.get("metadata") or {}).get("name") or "")
        if ip in ("", "None") or not ports or not svc_name:
            continue
        prefix = _env_name(svc_name)
        out[f"{prefix}_SERVICE_HOST"] = (ip, svc_name)
        out[f"{prefix}_SERVICE_PORT"] = (str(int(ports[0]["port"])), svc_name)
        for p in ports:
            if p.get("name"):
                out[f"{prefix}_SERVICE_PORT_{_env_name(p['name'])}"] = (str(int(p["port"])),
                                                                        svc_name)
        for i, p in enumerate(ports):
            proto = str(p.get("protocol") or "TCP")
            url = f"{proto.lower()}://{_join_host_port(ip, int(p['port']))}"
            if i == 0:
                out[f"{prefix}_PORT"] = (url, svc_name)
            base = f"{prefix}_PORT_{int(p['port'])}_{proto.upper()}"
            out[base] = (url, svc_name)
            out[f"{base}_PROTO"] = (proto.lower(), svc_name)
            out[f"{base}_PORT"] = (str(int(p["port"])), svc_name)
            out[f"{base}_ADDR"] = (ip, svc_name)
    return out


# --- resolve_env ----------------------------------------------------------------------------


@dataclass
class _Var:
    value: str
    source: str
    secret: bool = False
    unknown: str | None = None


def resolve_env(pod_spec: Mapping[str, Any], container: str | None, *,
                configmaps: Mapping[str, Mapping[str, Any]],
                secrets: Mapping[str, Mapping[str, Any]],
                pod_fields: Mapping[str, Any],
                resources: Mapping[str, Any] | None = None,
                rewrites: Mapping[str, str] | None = None,
                services: Sequence[Mapping[str, Any]] = (),
                strict_names: bool = False,
                source: str = "") -> EnvResult:
    """The environment the kubelet builds for ``container`` of a pod with ``pod_spec`` (see
    the module docstring for the semantics). Pure: no I/O.

    ``configmaps``/``secrets``: the objects by name as the API returns them (``data``,
    base64 for Secrets); a name that is absent does not exist. ``pod_fields``: the downward-API
    fields (:func:`pod_fields_of`, :func:`template_fields`); ``metadata.annotations`` also
    picks the default container. ``resources``: ``{"node_allocatable": {"cpu": "4", ...}}``
    if known. ``rewrites``: cluster ``host:port`` -> local ``host:port`` (:func:`apply_rewrites`).
    ``services``: the namespace's Service objects, for the Service variables.
    Raises :class:`ConfigError` for a missing required ConfigMap/Secret/key, an unknown
    container and what the API would have rejected.
    """
    annotations = pod_fields.get("metadata.annotations") or {}
    c = pick_container(pod_spec, container, annotations)
    cname = str(c.get("name"))
    ns = str(pod_fields.get("metadata.namespace") or "")
    node_allocatable = (resources or {}).get("node_allocatable")
    env: dict[str, _Var] = {}
    skipped: list[SkippedKeys] = []
    warnings: list[str] = []
    decoded: dict[str, dict[str, tuple[str, bool]]] = {}

    def secret_data(name: str) -> dict[str, tuple[str, bool]]:
        if name not in decoded:
            data = (secrets[name].get("data") or {})
            decoded[name] = {k: _decode_secret(v, f"Secret {name} key {k}")
                             for k, v in data.items()}
            for k, (_, binary) in decoded[name].items():
                if binary:
                    warnings.append(f"Secret {name} key {k} is not UTF-8 text: its bytes are "
                                    "kept as they are")
        return decoded[name]

    # 1. envFrom, in order
    for i, source_ref in enumerate(c.get("envFrom") or []):
        prefix = str(source_ref.get("prefix") or "")
        if (ref := source_ref.get("configMapRef")) is not None:
            kind, name, store = "configMap", str(ref.get("name") or ""), configmaps
        elif (ref := source_ref.get("secretRef")) is not None:
            kind, name, store = "secret", str(ref.get("name") or ""), secrets
        else:
            continue
        if name not in store:
            if ref.get("optional"):
                continue
            raise ConfigError(
                f"container {cname!r}: envFrom[{i}] refers to "
                f"{'ConfigMap' if kind == 'configMap' else 'Secret'} {ns}/{name}, which does "
                "not exist and is not optional",
                hint="the kubelet would not start the container (CreateContainerConfigError)")
        if kind == "configMap":
            items = {k: (str(v), False) for k, v in (store[name].get("data") or {}).items()}
        else:
            items = secret_data(name)
        invalid: list[str] = []
        for key in sorted(items):
            var_name = prefix + key
            ok = is_env_var_name(var_name) if strict_names else is_relaxed_env_var_name(var_name)
            if not ok:
                invalid.append(var_name)
                continue
            env[var_name] = _Var(items[key][0], f"{kind.lower()}/{name}", kind == "secret")
        if invalid:
            skipped.append(SkippedKeys(kind, name, tuple(invalid), (
                f"Keys [{', '.join(invalid)}] from the EnvFrom {kind} {ns}/{name} were skipped "
                "since they are considered invalid environment variable names.")))

    # 2. env, in order; $(VAR) sees what is defined so far, then the Service variables
    links = pod_spec.get("enableServiceLinks", True) is not False
    svc_env = service_env(
        s for s in services
        if links or ((s.get("metadata") or {}).get("name") == "kubernetes"
                     and (s.get("metadata") or {}).get("namespace") == "default"))

    def lookup(name: str) -> str | None:
        if name in env:
            var = env[name]
            return None if var.unknown is not None else var.value
        if name in svc_env:
            return svc_env[name][0]
        return None

    for var in c.get("env") or []:
        name = str(var.get("name") or "")
        value = var.get("value") or ""
        value_from = var.get("valueFrom")
        if value or not value_from:
            expanded, used = expand(str(value), lookup)
            unknown_refs = [n for n in _references(str(value)) if n in env
                            and env[n].unknown is not None]
            env[name] = _Var(
                expanded, "env", any(env[n].secret for n in used if n in env),
                f"uses {', '.join('$(' + n + ')' for n in unknown_refs)}, not known here"
                if unknown_refs else None)
            continue
        if (ref := value_from.get("configMapKeyRef")) is not None:
            cm_name, key = str(ref.get("name") or ""), str(ref.get("key") or "")
            if cm_name not in configmaps or key not in (configmaps[cm_name].get("data") or {}):
                if ref.get("optional"):
                    continue
                raise ConfigError(_missing_ref(cname, name, "ConfigMap", ns, cm_name, key,
                                               cm_name in configmaps))
            env[name] = _Var(str(configmaps[cm_name]["data"][key]),
                             f"configmap/{cm_name}:{key}")
        elif (ref := value_from.get("secretKeyRef")) is not None:
            s_name, key = str(ref.get("name") or ""), str(ref.get("key") or "")
            if s_name not in secrets or key not in (secrets[s_name].get("data") or {}):
                if ref.get("optional"):
                    continue
                raise ConfigError(_missing_ref(cname, name, "Secret", ns, s_name, key,
                                               s_name in secrets))
            env[name] = _Var(secret_data(s_name)[key][0], f"secret/{s_name}:{key}", True)
        elif (ref := value_from.get("fieldRef")) is not None:
            got = field_value(ref, pod_fields)
            env[name] = _field_var(got, f"fieldRef:{ref.get('fieldPath')}")
        elif (ref := value_from.get("resourceFieldRef")) is not None:
            got = resource_value(ref, pod_spec, c, node_allocatable)
            env[name] = _field_var(got, f"resourceFieldRef:{ref.get('resource')}")
        elif (ref := value_from.get("fileKeyRef")) is not None:
            env[name] = _Var("", f"fileKeyRef:{ref.get('volumeName')}/{ref.get('path')}",
                             unknown=f"read at start from a file in volume "
                                     f"{ref.get('volumeName')!r} that the pod writes itself")
        else:
            env[name] = _Var("", "env")

    # 3. the Service variables that nothing defined
    for name, (value, svc) in svc_env.items():
        env.setdefault(name, _Var(value, f"service/{svc}"))

    for name, var in env.items():
        if "\x00" in var.value:
            warnings.append(f"{name} holds a NUL byte, which no process environment can hold")
    result = EnvResult(
        container=cname,
        vars=tuple(EnvVar(n, v.value, v.source, v.secret, v.unknown) for n, v in env.items()),
        skipped=tuple(skipped), warnings=tuple(warnings), source=source)
    return apply_rewrites(result, rewrites) if rewrites else result


def _references(value: str) -> list[str]:
    """The names ``$(NAME)`` expressions of ``value`` refer to."""
    names: list[str] = []

    def note(name: str) -> None:
        names.append(name)

    expand(value, note)
    return names


def _field_var(got: str | Unknown, source: str) -> _Var:
    if isinstance(got, Unknown):
        return _Var("", source, unknown=got.reason)
    return _Var(got, source)


def _missing_ref(container: str, var: str, kind: str, ns: str, name: str, key: str,
                 exists: bool) -> str:
    what = f"key {key!r} of {kind} {ns}/{name}"
    why = f"{kind} {ns}/{name} does not exist" if not exists else f"{kind} has no key {key!r}"
    return (f"container {container!r}: env {var!r} refers to {what}, but the {why} "
            "and the reference is not optional (the kubelet would not start the container: "
            "CreateContainerConfigError)")


# --- rewrites -------------------------------------------------------------------------------

#: default ports of URL schemes, for rule 2 (URLs that name no port)
SCHEME_PORTS = {
    "http": 80, "ws": 80, "https": 443, "wss": 443, "redis": 6379, "rediss": 6379,
    "postgres": 5432, "postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mongodb": 27017,
    "amqp": 5672, "amqps": 5671, "nats": 4222, "memcached": 11211, "ldap": 389, "ldaps": 636,
}
_HOST_SUFFIXES = ("_HOST", "_HOSTNAME", "_ADDR", "_ADDRESS")
_NAME_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?"
_HOST = r"(?:\[[0-9A-Fa-f:.%]+\]|" + _NAME_HOST + r")"
_TOKEN = re.compile(r"(?<![A-Za-z0-9_.\-])(" + _HOST + r"):([0-9]{1,5})"
                    r"(?![0-9A-Za-z_@\-]|\.[A-Za-z0-9])")
_URL = re.compile(r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#\s\"'<>]*)")
_ENTRY = re.compile(r"^(" + _HOST + r")(?::([0-9]{1,5}))?$")

Address = tuple[str, int]


def _norm_host(host: str) -> str:
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host.split("%")[0]).compressed
    except ValueError:
        return host.lower().rstrip(".")


def _split_address(text: str) -> Address:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or (":" in host and not host.startswith("[")):
        raise ConfigError(f"rewrite {text!r}: expected HOST:PORT (IPv6 as [ADDR]:PORT)")
    return _norm_host(host), int(port)


def _parse_rewrites(rewrites: Mapping[str, str]) -> dict[Address, Address]:
    table: dict[Address, Address] = {}
    for cluster, local in rewrites.items():
        table[_split_address(cluster)] = _split_address(local)
    return table


def _render(address: Address) -> str:
    return _join_host_port(*address)


def rewrite_value(value: str, table: Mapping[Address, Address]) -> str:
    """Rules 1 and 2 of the module docstring on one value; everything else is kept."""
    def tokens(text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            target = table.get((_norm_host(m.group(1)), int(m.group(2))))
            return _render(target) if target else m.group(0)
        return _TOKEN.sub(sub, text)

    out: list[str] = []
    pos = 0
    for m in _URL.finditer(value):
        out.append(tokens(value[pos:m.start()]))
        scheme, authority = m.group(1), m.group(2)
        userinfo, at, hosts = authority.rpartition("@")
        entries = []
        for entry in hosts.split(","):
            em = _ENTRY.match(entry)
            port = int(em.group(2)) if em and em.group(2) else SCHEME_PORTS.get(scheme.lower())
            target = table.get((_norm_host(em.group(1)), port)) if em and port else None
            entries.append(_render(target) if target else entry)
        out.append(f"{scheme}://{userinfo}{at}{','.join(entries)}")
        pos = m.end()
    out.append(tokens(value[pos:]))
    return "".join(out)


def apply_rewrites(result: EnvResult, rewrites: Mapping[str, str]) -> EnvResult:
    """Make the cluster addresses in ``result`` local: the four rules of the module docstring.
    Every value is judged on its value before any rewrite."""
    table = _parse_rewrites(rewrites)
    if not table:
        return result
    by_host: dict[str, list[tuple[int, Address]]] = {}
    for (cluster_host, cluster_port), forward in table.items():
        by_host.setdefault(cluster_host, []).append((cluster_port, forward))
    values = result.as_dict()
    upper = {name.upper(): name for name in values}
    new: dict[str, str] = {}
    port_claims: dict[str, set[str]] = {}
    warnings = list(result.warnings)

    def claim_port(name: str, port: str) -> None:
        port_claims.setdefault(name, set()).add(port)

    for name, value in values.items():
        key = name.upper()
        suffix = next((s for s in _HOST_SUFFIXES if key.endswith(s)), None)
        host = _norm_host(value) if value and value.strip() == value else ""
        if suffix and host in by_host:
            stem = key[:-len(suffix)]
            port_name = upper.get(stem + "_PORT")
            port_value = values[port_name] if port_name else ""
            if port_name and port_value.isdigit():  # rule 3: a host/port pair
                local = table.get((host, int(port_value)))
                if local is not None:
                    new[name] = local[0]
                    claim_port(port_name, str(local[1]))
                continue
            # rule 4: the host alone (a STEM_PORT that is no port, like the Docker-link
            # REDIS_PORT=tcp://..., does not pair)
            locals_ = {local[0] for _, local in by_host[host]}
            if len(locals_) == 1:
                new[name] = next(iter(locals_))
                moved = [f"{p} -> {local[1]}" for p, local in sorted(by_host[host])
                         if p != local[1]]
                if moved:
                    warnings.append(f"{name}: the host is now {new[name]}, but no {stem}_PORT "
                                    f"variable gives the port: forwarded {', '.join(moved)}")
            continue
        if "_SERVICE_PORT_" in key and value.isdigit():
            # rule 3, named Service ports: X_SERVICE_PORT_<NAME> follows X_SERVICE_HOST
            host_name = upper.get(key.split("_SERVICE_PORT_", 1)[0] + "_SERVICE_HOST")
            if host_name:
                local = table.get((_norm_host(values[host_name]), int(value)))
                if local is not None:
                    claim_port(name, str(local[1]))
            continue
        rewritten = rewrite_value(value, table)  # rules 1 and 2
        if rewritten != value:
            new[name] = rewritten

    for name, ports in port_claims.items():
        if len(ports) == 1:
            new[name] = next(iter(ports))
        else:
            warnings.append(f"{name}: left as it is, its host variables are forwarded to "
                            f"different ports ({', '.join(sorted(ports))})")
    if not new:
        return replace(result, warnings=tuple(warnings))
    vars_ = tuple(
        replace(v, value=new[v.name], rewritten_from=v.rewritten_from or v.value)
        if v.name in new and new[v.name] != v.value else v
        for v in result.vars)
    return replace(result, vars=vars_, warnings=tuple(warnings))


def service_rewrites(name: str, namespace: str, cluster_ip: str | None,
                     forwards: Mapping[int, str], *,
                     cluster_domain: str = "cluster.local") -> dict[str, str]:
    """The rewrites for one exposed Service: every name a pod of ``namespace`` may use for it
    (``NAME``, ``NAME.NS``, ``NAME.NS.svc``, ``NAME.NS.svc.<domain>``) and its cluster IP, per
    port. ``forwards``: Service port -> the local ``host:port`` serving it."""
    hosts = [name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
             f"{name}.{namespace}.svc.{cluster_domain}"]
    if cluster_ip and cluster_ip != "None":
        hosts.append(cluster_ip)
    return {_join_host_port(h, port): local for port, local in forwards.items() for h in hosts}


# --- output ---------------------------------------------------------------------------------

_SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _dotenv_plain(value: str) -> bool:
    """A value both python-dotenv and ``docker --env-file`` read back unchanged unquoted."""
    if value == "":
        return True
    return (not any(ch in value for ch in "\r\n") and value == value.strip()
            and value[0] not in "'\"#" and re.search(r"\s#", value) is None)


def _dotenv_name_ok(name: str) -> bool:
    return (bool(name) and not any(ch in name for ch in "=#") and not name.startswith("'")
            and re.search(r"\s", name) is None)


def _dotenv_line(name: str, value: str) -> tuple[str, list[str]]:
    problems = []
    if "${" in value:
        problems.append("python-dotenv expands ${...} in it unless interpolate=False")
    if _dotenv_plain(value):
        return f"{name}={value}", problems
    if "\n" in value or "\r" in value:
        problems.append("docker --env-file cannot hold a multi-line value")
    else:
        problems.append("docker --env-file keeps the quotes (it reads values literally)")
    if value.endswith("\\"):
        problems.append("python-dotenv may misread a quoted value that ends with a backslash")
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"{name}='{quoted}'", problems


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def format_warnings(result: EnvResult, fmt: str) -> list[str]:
    """What a reader of ``fmt`` output would not get exactly (also written as comments)."""
    return _format(result, fmt)[1]


def format_env(result: EnvResult, fmt: str) -> str:
    """``result`` as a file: ``dotenv`` (``NAME=value``; values that need it single-quoted
    the python-dotenv way, ``\\\\`` and ``\\'`` escaped), ``json`` (one object, name -> value)
    or ``shell`` (``export NAME='value'``, POSIX single quoting, ``'`` as ``'\\''``). Comments
    (dotenv, shell) say where the values came from, which hold Secret data, which are unknown,
    and what a reader would not get exactly."""
    return _format(result, fmt)[0]


def _format(result: EnvResult, fmt: str) -> tuple[str, list[str]]:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown env format {fmt!r} (one of: {', '.join(FORMATS)})")
    problems: list[str] = []
    if fmt == "json":
        return json.dumps(result.as_dict(), indent=2, ensure_ascii=False) + "\n", problems
    lines: list[str] = []
    body: list[str] = []
    for var in result.vars:
        if "\x00" in var.value:
            raise ConfigError(f"{var.name} holds a NUL byte: it cannot be written as {fmt}")
        if fmt == "shell":
            if not _SHELL_NAME.match(var.name):
                problems.append(f"{var.name}: not a shell variable name, left out")
                continue
            body.append(f"export {var.name}={_shell_quote(var.value)}")
            continue
        if not _dotenv_name_ok(var.name):
            problems.append(f"{var.name}: a name a dotenv file cannot hold, left out")
            continue
        line, issues = _dotenv_line(var.name, var.value)
        problems += [f"{var.name}: {issue}" for issue in issues]
        body.append(line)
    head = f"# environment of container {result.container}"
    lines.append(head + (f" ({_one_line(result.source)})" if result.source else ""))
    if result.secret_names:
        lines.append("# holds Secret data: " + ", ".join(result.secret_names))
    for name, why in result.unknown.items():
        lines.append(f"# unknown here, left empty: {name}: {_one_line(why)}")
    if result.rewritten:
        lines.append("# service addresses made local: " + ", ".join(result.rewritten))
    for problem in problems:
        lines.append(f"# note: {_one_line(problem)}")
    return "\n".join([*lines, *body]) + "\n", problems


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


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


# --- the workload (I/O) ---------------------------------------------------------------------

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
    pod_containers = {c.get("name"): c for c in _all_containers(pod_spec)}
    for c in _all_containers(template_spec):
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
            target = next((c for c in _all_containers(pod_spec)
                           if c.get("name") == ref["containerName"]), container)
        if kind == "limits" and res in _COMPUTE and res not in (
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


async def list_services(kube: Kube) -> tuple[list[dict[str, Any]], str | None]:
    """The namespace's Services for the Service variables; (services, why not) on 403."""
    try:
        services = await kube.core.list_namespaced_service(kube.namespace)
    except ApiException as exc:
        if exc.status == 403:
            return [], "the Service variables (X_SERVICE_HOST...) are left out: " \
                       f"you may not list Services in {kube.namespace}"
        raise translate(exc, f"cannot list Services in {kube.namespace}") from exc
    return [_plain(kube, s) for s in services.items or []], None


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
