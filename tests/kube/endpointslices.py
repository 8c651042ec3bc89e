"""The EndpointSlice controller (``pkg/controller/endpointslice``): what kube-proxy programs from.

For each Service with a selector it writes the EndpointSlices listing the pods the selector
picks, each with its IP, its ``ready``/``serving``/``terminating`` conditions and a
``targetRef``; a slice carries one port list, so pods whose named targetPorts resolve to
different numbers land in different slices, as in the real controller. Slices are labelled
``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by``, and owned by
their Service (the garbage collector deletes them with it).

``lag``: seconds between a change (a Service's selector or targetPort, a pod's readiness) and
the slices that reflect it. The real controller batches changes (``--endpointslice-updates-
batch-period``) and kube-proxy then syncs at most once a second: in a cluster a takeover takes
one to two seconds to reach new connections. Tests of that window set a lag; 0 writes at once.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .controllers import Controller, owner_ref
from .store import Change

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER = "endpointslice-controller.k8s.io"


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _target(pod: dict[str, Any], target: Any) -> int | None:
    if isinstance(target, int):
        return target
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports") or []:
            if port.get("name") == target:
                return int(port["containerPort"])
    return None


class EndpointSliceController(Controller):
    name = "endpointslice-controller"

    def __init__(self, *args: Any, lag: float = 0.0) -> None:
        super().__init__(*args)
        self.lag = lag

    def on_change(self, change: Change) -> None:
        plural = change.resource.plural
        meta = change.obj["metadata"]
        ns = meta.get("namespace") or ""
        if plural == "services":
            self._later((ns, meta["name"]))
        elif plural == "pods":  # any Service of the namespace may select it
            for service in self.store.items(self.res("services"), ns):
                self._later((ns, service["metadata"]["name"]))

    def _later(self, key: tuple[str, str]) -> None:
        if self.lag > 0:
            self.enqueue_after(key, self.lag)
        else:
            self.enqueue(key)

    async def reconcile(self, key: tuple[str, str]) -> None:
        ns, name = key
        res = self.res("endpointslices")
        service = self.store.peek(self.res("services"), ns, name)
        wanted = self._slices(service) if service is not None else {}
        current = {s["metadata"]["name"]: s for s in self.store.items(res, ns)
                   if (s["metadata"].get("labels") or {}).get(SERVICE_NAME) == name
                   and (s["metadata"].get("labels") or {}).get(MANAGED_BY) == CONTROLLER}
        for slice_name, obj in wanted.items():
            old = current.pop(slice_name, None)
            if old is None:
                self.registry.create(res, ns, obj)
            elif (old.get("endpoints"), old.get("ports")) != (obj["endpoints"], obj["ports"]):
                self.store.update(res, {**old, "endpoints": obj["endpoints"],
                                        "ports": obj["ports"]})
        for old in current.values():
            self.store.delete(res, ns, old["metadata"]["name"])

    def _slices(self, service: dict[str, Any]) -> dict[str, dict[str, Any]]:
        spec = service.get("spec") or {}
        selector = spec.get("selector") or {}
        if not selector or spec.get("type") == "ExternalName":
            return {}
        meta = service["metadata"]
        ns = meta.get("namespace") or ""
        groups: dict[tuple[tuple[str, int, str], ...], list[dict[str, Any]]] = {}
        for pod in self.store.items(self.res("pods"), ns):
            labels = pod["metadata"].get("labels") or {}
            ip = (pod.get("status") or {}).get("podIP")
            if not ip or not all(labels.get(k) == v for k, v in selector.items()):
                continue
            ports = []
            for p in spec.get("ports") or []:
                target = _target(pod, p.get("targetPort", p["port"]))
                if target is not None:
                    ports.append((p.get("name") or "", target, p.get("protocol", "TCP")))
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            ready = _ready(pod)
            groups.setdefault(tuple(ports), []).append({
                "addresses": [ip],
                "conditions": {"ready": ready and not terminating, "serving": ready,
                               "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": ns,
                              "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
            })
        slices = {}
        for ports, endpoints in groups.items():
            digest = hashlib.sha256(repr(ports).encode()).hexdigest()[:5]
            slice_name = f"{meta['name']}-{digest}"
            slices[slice_name] = {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": slice_name, "namespace": ns,
                             "labels": {SERVICE_NAME: meta["name"], MANAGED_BY: CONTROLLER},
                             "ownerReferences": [owner_ref(self.res("services"), service)]},
                "addressType": "IPv6" if ":" in endpoints[0]["addresses"][0] else "IPv4",
                "endpoints": sorted(endpoints, key=lambda e: e["targetRef"]["name"]),
                "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
            }
        return slices
