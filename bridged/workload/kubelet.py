"""A container's environment, built as the kubelet builds it: :func:`resolve_env`.

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
  leaves the variable unset, not empty), ``fieldRef`` and ``resourceFieldRef`` (the downward
  API: :mod:`.downward`), ``fileKeyRef`` (reads a file another container wrote: unknown here).
- Service variables (``pkg/kubelet/envvars.FromServices``): for each Service of the namespace
  with a cluster IP, when ``enableServiceLinks`` is not false, ``X_SERVICE_HOST``,
  ``X_SERVICE_PORT``, ``X_SERVICE_PORT_<NAME>``, and the Docker-link variables ``X_PORT``,
  ``X_PORT_<P>_<PROTO>{,_PROTO,_PORT,_ADDR}``; defined variables win over them. The
  ``kubernetes`` Service of ``default`` (which the kubelet always adds) is only used when the
  caller passes it: :func:`bridged.kube.env.workload_env` leaves it out on purpose, because on
  a laptop ``KUBERNETES_SERVICE_HOST`` makes client libraries believe they run in a pod. So
  are bridged's own Services (a takeover's shadow, a gateway's backends): the workload never
  had them.
- Default container: ``kubectl``'s (``podcmd.FindOrDefaultContainerByName``): the one named by
  the ``kubectl.kubernetes.io/default-container`` annotation if it exists, else the first.

Values the laptop cannot know (fields of a pod that does not run, a node's allocatable: see
:mod:`.downward`) are kept empty and listed with the reason in :attr:`EnvResult.unknown`.
Pure: the objects are passed in (:mod:`bridged.kube.env` reads them).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .downward import Unknown, field_value, resource_value
from .result import EnvResult, EnvVar, SkippedKeys
from .rewrites import apply_rewrites, join_host_port

__all__ = ["DEFAULT_CONTAINER_ANNOTATION", "env_references", "expand", "is_env_var_name",
           "is_relaxed_env_var_name", "pick_container", "resolve_env", "service_env"]

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"


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



def _env_name(text: str) -> str:
    """``makeEnvVariableName``."""
    return text.upper().replace("-", "_")


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
            url = f"{proto.lower()}://{join_host_port(ip, int(p['port']))}"
            if i == 0:
                out[f"{prefix}_PORT"] = (url, svc_name)
            base = f"{prefix}_PORT_{int(p['port'])}_{proto.upper()}"
            out[base] = (url, svc_name)
            out[f"{base}_PROTO"] = (proto.lower(), svc_name)
            out[f"{base}_PORT"] = (str(int(p["port"])), svc_name)
            out[f"{base}_ADDR"] = (ip, svc_name)
    return out



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

