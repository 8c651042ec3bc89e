"""Service takeover: the Service's selector points at the relay pod while intercepts live.

:func:`take_over` turns the Service as read into the Service to write and the shadow Service to
create; :func:`restore` turns the Service as read later back into the original, or says why it
must not (someone else changed what we changed). The record of what was changed travels in an
annotation on the Service itself, so a relay that restarts, or ``bridged clean`` without any
relay, can undo a takeover it did not make.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from . import derived_name, owned_labels

ANNOTATION = "bridged.dev/takeover"
RECORD_VERSION = 1


class TakeoverRefused(Exception):
    """The Service cannot be taken over; the message says why and what to do."""


@dataclass(frozen=True)
class Record:
    """What a takeover changed: enough to undo it exactly, and to tell whether someone else
    changed the same fields since."""

    service: str
    shadow: str
    #: the original spec.selector and spec.ports, as they were
    selector: dict[str, str]
    ports: list[dict[str, Any]]
    #: what we wrote instead (a restore only proceeds if these are still in place)
    applied_selector: dict[str, str]
    applied_ports: list[dict[str, Any]]
    #: the original had no metadata.annotations at all (restored as absent, not as {})
    annotations_absent: bool = False
    #: internal/externalTrafficPolicy as they were, where the takeover set them to Cluster (a
    #: Local policy would send other nodes' clients to no endpoint: the relay is one pod)
    policies: dict[str, str] = field(default_factory=dict)
    version: int = RECORD_VERSION

    def to_annotation(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_annotation(cls, text: str) -> Record:
        try:
            data = json.loads(text)
            if data.get("version") != RECORD_VERSION:
                raise ValueError(f"record version {data.get('version')!r}")
            return cls(**data)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"unreadable {ANNOTATION} annotation: {exc}") from None


def record_of(service: Mapping[str, Any]) -> Record | None:
    """The takeover record on a Service as read, or None if it is not taken over."""
    text = (service.get("metadata", {}).get("annotations") or {}).get(ANNOTATION)
    return Record.from_annotation(text) if text else None


def shadow_name(service: str) -> str:
    return derived_name("bridged-origin", service)


def _port_key(port: Mapping[str, Any]) -> tuple[Any, ...]:
    """What routes a port: compared to tell our rewrite from someone else's change (the API
    server may add defaulted fields; those do not count)."""
    return (port.get("name"), port.get("port"), port.get("targetPort", port.get("port")),
            port.get("protocol", "TCP"))


def take_over(service: Mapping[str, Any], relay_selector: Mapping[str, str],
              relay_ports: Mapping[int, int]) -> tuple[dict[str, Any], dict[str, Any], Record]:
    """(the Service to write, its shadow Service to create, the record).

    ``relay_ports`` maps every port of the Service to the relay port that now serves it: a
    named targetPort means nothing on the relay pod, so each becomes a number.
    """
    meta, spec = service["metadata"], service.get("spec") or {}
    name = meta["name"]
    selector = spec.get("selector") or {}
    if spec.get("type") == "ExternalName":
        raise TakeoverRefused(f"Service {name} is an ExternalName: there are no pods to "
                              "take its traffic from")
    if not selector:
        raise TakeoverRefused(
            f"Service {name} has no selector (its endpoints are managed another way): "
            "takeover cannot redirect it; use --via gateway")
    if spec.get("clusterIP") == "None":
        raise TakeoverRefused(
            f"Service {name} is headless (clusterIP: None): its clients reach the pods "
            "directly by their DNS names, past any Service; takeover cannot redirect it")
    ports = spec.get("ports") or []
    other = sorted({p.get("protocol", "TCP") for p in ports} - {"TCP"})
    if other:
        raise TakeoverRefused(
            f"Service {name} has {'/'.join(other)} ports: takeover moves every port to the "
            "relay, which carries TCP only; use --via gateway")
    missing = [p["port"] for p in ports if p["port"] not in relay_ports]
    if missing:
        raise TakeoverRefused(f"no relay port for port(s) {missing} of Service {name}")
    applied_ports = []
    for port in ports:
        applied = copy.deepcopy(port)
        applied["targetPort"] = relay_ports[port["port"]]
        applied_ports.append(applied)
    policies = {k: spec[k] for k in POLICIES if spec.get(k) == "Local"}
    record = Record(
        service=name, shadow=shadow_name(name),
        selector=dict(selector), ports=copy.deepcopy(ports),
        applied_selector=dict(relay_selector), applied_ports=applied_ports,
        annotations_absent="annotations" not in meta, policies=policies,
    )
    new = copy.deepcopy(dict(service))
    new["spec"]["selector"] = dict(relay_selector)
    new["spec"]["ports"] = applied_ports
    for key in policies:
        new["spec"][key] = "Cluster"
    new["metadata"].setdefault("annotations", {})[ANNOTATION] = record.to_annotation()
    return new, shadow_service(service), record


POLICIES = ("internalTrafficPolicy", "externalTrafficPolicy")


def shadow_service(service: Mapping[str, Any]) -> dict[str, Any]:
    """A ClusterIP Service with ``service``'s selector and ports: how the relay reaches the
    original pods while the Service itself points elsewhere (or is routed by a mesh)."""
    meta, spec = service["metadata"], service.get("spec") or {}
    ports = spec.get("ports") or []
    selector = spec.get("selector") or {}
    shadow_ports = [{k: v for k, v in p.items() if k != "nodePort"} for p in ports]
    shadow_spec: dict[str, Any] = {"type": "ClusterIP", "selector": dict(selector),
                                   "ports": shadow_ports}
    for key in ("sessionAffinity", "sessionAffinityConfig", "ipFamilyPolicy", "ipFamilies",
                "publishNotReadyAddresses", "trafficDistribution"):
        if key in spec:
            shadow_spec[key] = copy.deepcopy(spec[key])
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": shadow_name(meta["name"]), "namespace": meta.get("namespace"),
                     "labels": owned_labels(meta["name"])},
        "spec": shadow_spec,
    }


def changed_by_others(current: Mapping[str, Any], record: Record) -> list[str]:
    """The fields we rewrote that no longer hold what we wrote: someone else changed them."""
    spec = current.get("spec") or {}
    changed = []
    if (spec.get("selector") or {}) != record.applied_selector:
        changed.append("selector")
    if [_port_key(p) for p in spec.get("ports") or []] != \
            [_port_key(p) for p in record.applied_ports]:
        changed.append("ports")
    return changed


def restore(current: Mapping[str, Any], record: Record) -> tuple[dict[str, Any], list[str]]:
    """(the Service to write back, the fields someone else changed meanwhile).

    Unchanged by others: the original selector and ports come back and our annotation goes.
    Changed by others: their change is kept as it is and only our annotation goes; the caller
    reports which fields it left alone. Fields we never touched are kept as they are now.
    """
    new = copy.deepcopy(dict(current))
    changed = changed_by_others(current, record)
    if not changed:
        # put back what the takeover changed and only that: the selector, each port's
        # targetPort, the traffic policies; whatever else others changed meanwhile stays
        new["spec"]["selector"] = copy.deepcopy(record.selector)
        original = {(p.get("name"), p["port"], p.get("protocol", "TCP")): p
                    for p in record.ports}
        for port in new["spec"].get("ports") or []:
            was = original.get((port.get("name"), port["port"], port.get("protocol", "TCP")))
            if was is not None and "targetPort" in was:
                port["targetPort"] = copy.deepcopy(was["targetPort"])
        for key, value in record.policies.items():
            if new["spec"].get(key) == "Cluster":
                new["spec"][key] = value
    annotations = new["metadata"].get("annotations") or {}
    annotations.pop(ANNOTATION, None)
    if not annotations and record.annotations_absent:
        new["metadata"].pop("annotations", None)
    elif "annotations" in new["metadata"]:
        new["metadata"]["annotations"] = annotations
    return new, changed
