"""The controllers a cluster runs behind the API: what makes objects *do* something.

Each follows its kube-controller-manager counterpart closely enough for a client to observe
the same objects, in the same order of events:

- :class:`DeploymentController` (``pkg/controller/deployment``): one ReplicaSet per pod
  template (``pod-template-hash`` label, ``deployment.kubernetes.io/revision`` annotation,
  owner reference); ``RollingUpdate`` with ``maxSurge``/``maxUnavailable`` (percent rounded up
  for surge, down for unavailable), ``Recreate``; status ``replicas``, ``updatedReplicas``,
  ``readyReplicas``, ``availableReplicas``, ``unavailableReplicas``, ``observedGeneration`` and
  the ``Available``/``Progressing`` conditions; old ReplicaSets beyond
  ``revisionHistoryLimit`` are deleted; events ``ScalingReplicaSet``.
- :class:`ReplicaSetController` (``pkg/controller/replicaset``): creates pods from the template
  (``generateName: <rs>-``, controller owner reference) and deletes the surplus, not-ready
  ones first; events ``SuccessfulCreate``/``SuccessfulDelete``/``FailedCreate``.
- :class:`StatefulSetController` (``pkg/controller/statefulset``): pods ``<sts>-<ordinal>``,
  ``OrderedReady`` (one at a time, each Running and Ready before the next) or ``Parallel``,
  scale-down from the highest ordinal, ``RollingUpdate`` from the highest ordinal down to the
  partition (``controller-revision-hash`` label; ControllerRevision objects are not kept).
- :class:`GarbageCollector` (``pkg/controller/garbagecollector``): ownerReferences cascade;
  ``Background`` deletes dependents after the owner, ``Foreground`` before it (finalizer
  ``foregroundDeletion``), ``Orphan`` removes the references (finalizer ``orphan``).
- :class:`NamespaceController`: a new namespace gets the ``default`` ServiceAccount and the
  ``kube-root-ca.crt`` ConfigMap; a terminating one is emptied, then removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import math
from collections.abc import Hashable
from typing import Any

from . import errors as E
from .registry import Registry, now
from .resources import RESOURCES, ResourceType
from .store import Change

__all__ = ["Controller", "DeploymentController", "EventRecorder", "GarbageCollector",
           "NamespaceController", "ReplicaSetController", "StatefulSetController",
           "controller_uid", "owner_ref", "template_hash"]

log = logging.getLogger(__name__)
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: dict[str, Any], collisions: int = 0) -> str:
    """``controller.ComputeHash``: fnv32a of the template, ``rand.SafeEncodeString``-ed."""
    h = 0x811C9DC5
    for byte in (json.dumps(template, sort_keys=True) + str(collisions or "")).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE[ord(c) % len(_SAFE)] for c in str(h))


def owner_ref(res: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": res.api_version, "kind": res.kind, "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def controller_uid(obj: dict[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _is_active(pod: dict[str, Any]) -> bool:
    return (not pod["metadata"].get("deletionTimestamp")
            and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))


class EventRecorder:
    """``record.EventRecorder`` writing core/v1 Events (identical ones are aggregated:
    ``count`` and ``lastTimestamp`` go up)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._seen: dict[tuple[str, ...], str] = {}
        self._n = 0

    def record(self, res: ResourceType, obj: dict[str, Any], type_: str, reason: str,
               message: str, component: str, *, host: str = "",
               field_path: str = "") -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        events = self.registry.resource("events")
        key = (meta.get("uid", ""), reason, message, component, field_path)
        existing = self._seen.get(key)
        if existing is not None:
            current = self.registry.store.get(events, namespace, existing)
            if current is not None:
                current["count"] = current.get("count", 1) + 1
                current["lastTimestamp"] = now()
                self.registry.store.update(events, current)
                return
        self._n += 1
        involved: dict[str, Any] = {
            "kind": res.kind, "namespace": meta.get("namespace"), "name": meta["name"],
            "uid": meta.get("uid"), "apiVersion": res.api_version,
            "resourceVersion": meta.get("resourceVersion")}
        if field_path:
            involved["fieldPath"] = field_path
        name = f"{meta['name']}.{asyncio.get_running_loop().time() * 1e9:.0f}{self._n:x}"
        event: dict[str, Any] = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": name, "namespace": namespace, "uid": "",
                              "creationTimestamp": now()},
                 "involvedObject": {k: v for k, v in involved.items() if v is not None},
                 "reason": reason, "message": message,
                 "source": {"component": component, **({"host": host} if host else {})},
                 "firstTimestamp": now(), "lastTimestamp": now(), "count": 1, "type": type_,
                 "eventTime": None, "reportingComponent": component,
                 "reportingInstance": host}
        import uuid
        event["metadata"]["uid"] = str(uuid.uuid4())
        with contextlib.suppress(E.StatusError):
            self.registry.store.create(events, event)
            self._seen[key] = name


class Controller:
    """A work queue of keys and a reconcile loop, fed by store listeners (an informer)."""

    name = "controller"

    def __init__(self, registry: Registry, recorder: EventRecorder) -> None:
        self.registry = registry
        self.store = registry.store
        self.recorder = recorder
        self._pending: dict[Hashable, None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._unlisten = self.store.listen(self.on_change)

    def res(self, plural: str) -> ResourceType:
        return self.registry.resource(plural)

    def enqueue(self, key: Hashable) -> None:
        self._pending[key] = None
        self._wake.set()

    def enqueue_after(self, key: Hashable, delay: float) -> None:
        handle = asyncio.get_running_loop().call_later(delay, self.enqueue, key)
        self._timers.add(handle)

    def on_change(self, change: Change) -> None:
        """Maps a store change to keys to reconcile."""

    async def reconcile(self, key: Any) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)
        for res in RESOURCES:  # an informer's initial list
            for obj in self.store.items(res):
                self.on_change(Change(self.store.rv, res, "ADDED", obj, None))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            keys = list(self._pending)
            self._pending.clear()
            for key in keys:
                try:
                    await self.reconcile(key)
                except E.StatusError as exc:
                    if exc.code not in (404, 409):
                        log.warning("%s: %s: %s", self.name, key, exc)
                    self.enqueue_after(key, 0.05)
                except Exception:
                    log.exception("%s: reconciling %s", self.name, key)
                    self.enqueue_after(key, 0.5)

    async def stop(self) -> None:
        self._unlisten()
        for handle in self._timers:
            handle.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def write_status(self, res: ResourceType, obj: dict[str, Any],
                     status: dict[str, Any]) -> None:
        current = self.store.peek(res, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if current is None or current.get("status") == status:
            return
        self.store.update(res, {**current, "status": status})

    def scale(self, res: ResourceType, obj: dict[str, Any], replicas: int) -> dict[str, Any]:
        current = copy.deepcopy(self.store.peek(res, obj["metadata"].get("namespace"),
                                                obj["metadata"]["name"]))
        if current is None:
            raise E.not_found(res.group, res.plural, obj["metadata"]["name"])
        current["spec"]["replicas"] = replicas
        current["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        return self.store.update(res, current)


def _condition(conditions: list[dict[str, Any]], type_: str, status: str, reason: str,
               message: str) -> list[dict[str, Any]]:
    old = next((c for c in conditions if c.get("type") == type_), None)
    stamp = now()
    new = {"type": type_, "status": status, "lastUpdateTime": stamp,
           "lastTransitionTime": stamp, "reason": reason, "message": message}
    if old is not None:
        if old.get("status") == status:
            new["lastTransitionTime"] = old.get("lastTransitionTime", stamp)
        if old.get("status") == status and old.get("reason") == reason \
                and old.get("message") == message:
            new["lastUpdateTime"] = old.get("lastUpdateTime", stamp)
    return [c for c in conditions if c.get("type") != type_] + [new]


def _resolve(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = total * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value or 0)


def _revision(rs: dict[str, Any]) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(
            "deployment.kubernetes.io/revision", "0"))
    except ValueError:
        return 0


class DeploymentController(Controller):
    name = "deployment-controller"

    def on_change(self, change: Change) -> None:
        meta = change.obj["metadata"]
        ns = meta.get("namespace")
        if change.resource.plural == "deployments":
            self.enqueue((ns, meta["name"]))
        elif change.resource.plural == "replicasets":
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "Deployment" and ref.get("controller"):
                    self.enqueue((ns, ref["name"]))
        elif change.resource.plural == "pods" and change.type == "DELETED":
            for ref in meta.get("ownerReferences") or []:
                rs = self.store.peek(self.res("replicasets"), ns, ref.get("name", ""))
                for owner in (rs or {"metadata": {}})["metadata"].get("ownerReferences") or []:
                    if owner.get("kind") == "Deployment":
                        self.enqueue((ns, owner["name"]))

    async def reconcile(self, key: tuple[str, str]) -> None:
        ns, name = key
        deploy_res, rs_res = self.res("deployments"), self.res("replicasets")
        d = self.store.peek(deploy_res, ns, name)
        if d is None or d["metadata"].get("deletionTimestamp"):
            return
        uid = d["metadata"]["uid"]
        rss = [rs for rs in self.store.items(rs_res, ns) if controller_uid(rs) == uid]
        template = d["spec"]["template"]
        pth = template_hash(template, (d.get("status") or {}).get("collisionCount", 0))
        new = next((rs for rs in rss
                    if (rs["metadata"].get("labels") or {}).get("pod-template-hash") == pth),
                   None)
        olds = sorted((rs for rs in rss if rs is not new), key=_revision)
        want = int(d["spec"].get("replicas", 1))
        top = max((_revision(rs) for rs in rss), default=0)
        if new is None:
            if d["spec"].get("paused"):  # a paused deployment does not roll out
                return
            self._create_rs(d, pth, top + 1, 0)
            return
        if _revision(new) < top:  # a rollback to an older template
            current = copy.deepcopy(new)
            current["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = str(top + 1)
            new = self.store.update(rs_res, current)
        strategy = d["spec"].get("strategy") or {}
        if strategy.get("type") == "Recreate":
            self._recreate(d, new, olds, want)
        else:
            self._rolling(d, new, olds, want, strategy.get("rollingUpdate") or {})
        self._cleanup(d, olds)
        self._status(d, new, [rs for rs in self.store.items(rs_res, ns)
                              if controller_uid(rs) == uid], want)

    def _create_rs(self, d: dict[str, Any], pth: str, revision: int, replicas: int) -> None:
        template = copy.deepcopy(d["spec"]["template"])
        template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = pth
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})["pod-template-hash"] = pth
        name = f"{d['metadata']['name']}-{pth}"
        want = int(d["spec"].get("replicas", 1))
        surge = _resolve(((d["spec"].get("strategy") or {}).get("rollingUpdate") or {}).get(
            "maxSurge", "25%"), want, True)
        rs = {"metadata": {
            "name": name, "labels": dict(template["metadata"]["labels"]),
            "annotations": {"deployment.kubernetes.io/revision": str(revision),
                            "deployment.kubernetes.io/desired-replicas": str(want),
                            "deployment.kubernetes.io/max-replicas": str(want + surge)},
            "ownerReferences": [owner_ref(self.res("deployments"), d)]},
            "spec": {"replicas": replicas, "selector": selector, "template": template,
                     "minReadySeconds": d["spec"].get("minReadySeconds", 0)}}
        self.registry.create(self.res("replicasets"), d["metadata"]["namespace"], rs)

    def _scale_rs(self, d: dict[str, Any], rs: dict[str, Any], replicas: int) -> None:
        before = rs["spec"]["replicas"]
        if before == replicas:
            return
        self.scale(self.res("replicasets"), rs, replicas)
        verb = "up" if replicas > before else "down"
        self.recorder.record(self.res("deployments"), d, "Normal", "ScalingReplicaSet",
                             f"Scaled {verb} replica set {rs['metadata']['name']} from "
                             f"{before} to {replicas}", "deployment-controller")

    def _recreate(self, d: dict[str, Any], new: dict[str, Any], olds: list[dict[str, Any]],
                  want: int) -> None:
        for rs in olds:
            self._scale_rs(d, rs, 0)
        pods = self.res("pods")
        old_uids = {rs["metadata"]["uid"] for rs in olds}
        if any(controller_uid(p) in old_uids
               for p in self.store.items(pods, d["metadata"]["namespace"])):
            return
        self._scale_rs(d, new, want)

    def _rolling(self, d: dict[str, Any], new: dict[str, Any], olds: list[dict[str, Any]],
                 want: int, rolling: dict[str, Any]) -> None:
        surge = _resolve(rolling.get("maxSurge", "25%"), want, True)
        unavailable = _resolve(rolling.get("maxUnavailable", "25%"), want, False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        total = new["spec"]["replicas"] + sum(rs["spec"]["replicas"] for rs in olds)
        if new["spec"]["replicas"] > want:
            self._scale_rs(d, new, want)
        elif new["spec"]["replicas"] < want:
            allowed = max(0, want + surge - total)
            self._scale_rs(d, new, min(want, new["spec"]["replicas"] + allowed))
        new = self.store.peek(self.res("replicasets"), new["metadata"]["namespace"],
                              new["metadata"]["name"]) or new
        all_pods = new["spec"]["replicas"] + sum(rs["spec"]["replicas"] for rs in olds)
        new_unavailable = new["spec"]["replicas"] - (new.get("status") or {}).get(
            "availableReplicas", 0)
        budget = all_pods - (want - unavailable) - new_unavailable
        # unhealthy old replicas go first, then healthy ones, oldest ReplicaSet first
        for healthy in (False, True):
            for rs in olds:
                if budget <= 0:
                    return
                current = self.store.peek(self.res("replicasets"),
                                          rs["metadata"]["namespace"], rs["metadata"]["name"])
                if current is None or current["spec"]["replicas"] == 0:
                    continue
                ready = (current.get("status") or {}).get("availableReplicas", 0)
                count = (current["spec"]["replicas"] if healthy
                         else max(0, current["spec"]["replicas"] - ready))
                down = min(count, budget)
                if down > 0:
                    self._scale_rs(d, current, current["spec"]["replicas"] - down)
                    budget -= down

    def _cleanup(self, d: dict[str, Any], olds: list[dict[str, Any]]) -> None:
        limit = d["spec"].get("revisionHistoryLimit", 10)
        idle = [rs for rs in olds if rs["spec"]["replicas"] == 0
                and not (rs.get("status") or {}).get("replicas")]
        for rs in idle[:max(0, len(idle) - limit)]:
            with contextlib.suppress(E.StatusError):
                self.registry.delete(self.res("replicasets"), rs["metadata"]["namespace"],
                                     rs["metadata"]["name"])

    def _status(self, d: dict[str, Any], new: dict[str, Any], rss: list[dict[str, Any]],
                want: int) -> None:
        new = next((rs for rs in rss if rs["metadata"]["uid"] == new["metadata"]["uid"]), new)

        def total(field: str) -> int:
            return sum((rs.get("status") or {}).get(field, 0) for rs in rss)

        rolling = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        unavailable = _resolve(rolling.get("maxUnavailable", "25%"), want, False)
        available = total("availableReplicas")
        updated = (new.get("status") or {}).get("replicas", 0)
        status = copy.deepcopy(d.get("status") or {})
        status.update({"observedGeneration": d["metadata"].get("generation", 1),
                       "replicas": total("replicas"), "updatedReplicas": updated,
                       "readyReplicas": total("readyReplicas"), "availableReplicas": available})
        if want - available > 0:
            status["unavailableReplicas"] = want - available
        else:
            status.pop("unavailableReplicas", None)
        for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"):
            if not status[key]:
                status.pop(key)
        conditions = list(status.get("conditions") or [])
        if available >= want - unavailable:
            conditions = _condition(conditions, "Available", "True", "MinimumReplicasAvailable",
                                    "Deployment has minimum availability.")
        else:
            conditions = _condition(conditions, "Available", "False",
                                    "MinimumReplicasUnavailable",
                                    "Deployment does not have minimum availability.")
        rs_name = new["metadata"]["name"]
        complete = (updated == want and available >= want and total("replicas") == want
                    and (new.get("status") or {}).get("availableReplicas", 0) >= want)
        if complete:
            conditions = _condition(conditions, "Progressing", "True", "NewReplicaSetAvailable",
                                    f'ReplicaSet "{rs_name}" has successfully progressed.')
        else:
            conditions = _condition(conditions, "Progressing", "True", "ReplicaSetUpdated",
                                    f'ReplicaSet "{rs_name}" is progressing.')
        order = {"Available": 0, "Progressing": 1}
        status["conditions"] = sorted(conditions, key=lambda c: order.get(c["type"], 9))
        self.write_status(self.res("deployments"), d, status)


class ReplicaSetController(Controller):
    name = "replicaset-controller"

    def on_change(self, change: Change) -> None:
        meta = change.obj["metadata"]
        if change.resource.plural == "replicasets":
            self.enqueue((meta.get("namespace"), meta["name"]))
        elif change.resource.plural == "pods":
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "ReplicaSet" and ref.get("controller"):
                    self.enqueue((meta.get("namespace"), ref["name"]))

    async def reconcile(self, key: tuple[str, str]) -> None:
        ns, name = key
        rs_res, pod_res = self.res("replicasets"), self.res("pods")
        rs = self.store.peek(rs_res, ns, name)
        if rs is None:
            return
        pods = [p for p in self.store.items(pod_res, ns)
                if controller_uid(p) == rs["metadata"]["uid"]]
        active = [p for p in pods if _is_active(p)]
        want = 0 if rs["metadata"].get("deletionTimestamp") else rs["spec"].get("replicas", 1)
        failure: str | None = None
        if len(active) < want:
            template = rs["spec"]["template"]
            for _ in range(want - len(active)):
                pod = {"metadata": {
                    "generateName": f"{name}-",
                    "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                    "annotations": dict((template.get("metadata") or {}).get("annotations")
                                        or {}),
                    "ownerReferences": [owner_ref(rs_res, rs)]},
                    "spec": copy.deepcopy(template.get("spec") or {})}
                if not pod["metadata"]["annotations"]:
                    del pod["metadata"]["annotations"]
                try:
                    created = self.registry.create(pod_res, ns, pod)
                except E.StatusError as exc:
                    failure = exc.message
                    self.recorder.record(rs_res, rs, "Warning", "FailedCreate",
                                         f"Error creating: {exc.message}",
                                         "replicaset-controller")
                    self.enqueue_after(key, 1.0)
                    break
                self.recorder.record(rs_res, rs, "Normal", "SuccessfulCreate",
                                     f"Created pod: {created['metadata']['name']}",
                                     "replicaset-controller")
        elif len(active) > want:
            phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}

            def rank(p: dict[str, Any]) -> tuple[Any, ...]:
                return (bool(p["spec"].get("nodeName")),
                        phase_rank.get((p.get("status") or {}).get("phase", ""), 0),
                        _is_ready(p), _neg_time(p["metadata"]["creationTimestamp"]))

            for pod in sorted(active, key=rank)[:len(active) - want]:
                with contextlib.suppress(E.StatusError):
                    self.registry.delete(pod_res, ns, pod["metadata"]["name"])
                    self.recorder.record(rs_res, rs, "Normal", "SuccessfulDelete",
                                         f"Deleted pod: {pod['metadata']['name']}",
                                         "replicaset-controller")
        pods = [p for p in self.store.items(pod_res, ns)
                if controller_uid(p) == rs["metadata"]["uid"] and _is_active(p)]
        labels = (rs["spec"]["template"].get("metadata") or {}).get("labels") or {}
        ready = sum(1 for p in pods if _is_ready(p))
        status: dict[str, Any] = {
            "replicas": len(pods),
            "fullyLabeledReplicas": sum(
                1 for p in pods if labels.items() <= (p["metadata"].get("labels") or {}).items()),
            "readyReplicas": ready, "availableReplicas": ready,
            "observedGeneration": rs["metadata"].get("generation", 1)}
        for k in ("fullyLabeledReplicas", "readyReplicas", "availableReplicas"):
            if not status[k]:
                status.pop(k)
        if failure:
            status["conditions"] = [{"type": "ReplicaFailure", "status": "True",
                                     "reason": "FailedCreate", "message": failure,
                                     "lastTransitionTime": now()}]
        self.write_status(rs_res, rs, status)


def _neg_time(stamp: str) -> str:
    return "".join(chr(255 - ord(c)) for c in stamp)  # newest first when sorted ascending


class StatefulSetController(Controller):
    name = "statefulset-controller"

    def on_change(self, change: Change) -> None:
        meta = change.obj["metadata"]
        if change.resource.plural == "statefulsets":
            self.enqueue((meta.get("namespace"), meta["name"]))
        elif change.resource.plural == "pods":
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "StatefulSet" and ref.get("controller"):
                    self.enqueue((meta.get("namespace"), ref["name"]))

    async def reconcile(self, key: tuple[str, str]) -> None:
        ns, name = key
        sts_res, pod_res = self.res("statefulsets"), self.res("pods")
        sts = self.store.peek(sts_res, ns, name)
        if sts is None or sts["metadata"].get("deletionTimestamp"):
            return
        spec = sts["spec"]
        want = spec.get("replicas", 1)
        revision = f"{name}-{template_hash(spec['template'])}"
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        pods = {p["metadata"]["name"]: p for p in self.store.items(pod_res, ns)
                if controller_uid(p) == sts["metadata"]["uid"]}
        blocked = False
        for i in range(want):
            pod = pods.get(f"{name}-{i}")
            if pod is None:
                self._create_pod(sts, i, revision)
                if ordered:
                    blocked = True
                    break
            elif ordered and not (_is_ready(pod) and _is_active(pod)):
                blocked = True
                break
        extra = sorted((p for n, p in pods.items() if _ordinal(n, name) >= want),
                       key=lambda p: -_ordinal(p["metadata"]["name"], name))
        for pod in extra:
            if not pod["metadata"].get("deletionTimestamp"):
                self.registry.delete(pod_res, ns, pod["metadata"]["name"])
            if ordered:
                break
        update = spec.get("updateStrategy") or {}
        if not blocked and not extra and update.get("type", "RollingUpdate") == "RollingUpdate":
            partition = (update.get("rollingUpdate") or {}).get("partition", 0)
            for i in reversed(range(partition, want)):
                pod = pods.get(f"{name}-{i}")
                if pod is None or pod["metadata"].get("deletionTimestamp"):
                    break
                if (pod["metadata"].get("labels") or {}).get(
                        "controller-revision-hash") != revision:
                    self.registry.delete(pod_res, ns, pod["metadata"]["name"])
                    break
                if not _is_ready(pod):
                    break
        live = [p for p in self.store.items(pod_res, ns)
                if controller_uid(p) == sts["metadata"]["uid"] and _is_active(p)]
        ready = sum(1 for p in live if _is_ready(p))
        updated = sum(1 for p in live if (p["metadata"].get("labels") or {}).get(
            "controller-revision-hash") == revision)
        status = {"observedGeneration": sts["metadata"].get("generation", 1),
                  "replicas": len(live), "readyReplicas": ready, "availableReplicas": ready,
                  "currentReplicas": updated, "updatedReplicas": updated,
                  "currentRevision": revision, "updateRevision": revision, "collisionCount": 0}
        for k in ("readyReplicas", "availableReplicas", "currentReplicas", "updatedReplicas"):
            if not status[k]:
                status.pop(k)
        self.write_status(sts_res, sts, status)

    def _create_pod(self, sts: dict[str, Any], ordinal: int, revision: str) -> None:
        name = sts["metadata"]["name"]
        template = sts["spec"]["template"]
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update({"controller-revision-hash": revision,
                       "statefulset.kubernetes.io/pod-name": f"{name}-{ordinal}",
                       "apps.kubernetes.io/pod-index": str(ordinal)})
        spec = copy.deepcopy(template.get("spec") or {})
        spec["hostname"] = f"{name}-{ordinal}"
        if sts["spec"].get("serviceName"):
            spec["subdomain"] = sts["spec"]["serviceName"]
        pod = {"metadata": {"name": f"{name}-{ordinal}", "labels": labels,
                            "ownerReferences": [owner_ref(self.res("statefulsets"), sts)]},
               "spec": spec}
        try:
            self.registry.create(self.res("pods"), sts["metadata"]["namespace"], pod)
        except E.StatusError as exc:
            self.recorder.record(self.res("statefulsets"), sts, "Warning", "FailedCreate",
                                 f"create Pod {name}-{ordinal} in StatefulSet {name} failed "
                                 f"error: {exc.message}", "statefulset-controller")
            raise
        self.recorder.record(self.res("statefulsets"), sts, "Normal", "SuccessfulCreate",
                             f"create Pod {name}-{ordinal} in StatefulSet {name} successful",
                             "statefulset-controller")


def _ordinal(pod_name: str, sts_name: str) -> int:
    suffix = pod_name[len(sts_name) + 1:]
    return int(suffix) if suffix.isdigit() else -1


class GarbageCollector(Controller):
    name = "garbage-collector"

    def on_change(self, change: Change) -> None:
        meta = change.obj["metadata"]
        if change.type == "DELETED":
            self.enqueue(("deleted", meta["uid"], meta.get("namespace")))
            for ref in meta.get("ownerReferences") or []:
                self.enqueue(("owner", ref.get("uid"), meta.get("namespace")))
        elif meta.get("deletionTimestamp") and {"orphan", "foregroundDeletion"} & set(
                meta.get("finalizers") or []):
            self.enqueue(("owner", meta["uid"], meta.get("namespace")))

    def _dependents(self, uid: str, namespace: str | None) -> list[tuple[ResourceType,
                                                                          dict[str, Any]]]:
        out = []
        for res in RESOURCES:
            for obj in self.store.items(res, namespace if res.namespaced and namespace
                                        else None):
                if any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or []):
                    out.append((res, obj))
        return out

    def _find(self, uid: str, namespace: str | None) -> tuple[ResourceType,
                                                               dict[str, Any]] | None:
        for res in RESOURCES:
            for obj in self.store.items(res, namespace if res.namespaced else None):
                if obj["metadata"]["uid"] == uid:
                    return res, obj
        return None

    def _drop_ref(self, res: ResourceType, obj: dict[str, Any], uid: str) -> None:
        current = copy.deepcopy(obj)
        refs = [r for r in current["metadata"].get("ownerReferences") or []
                if r.get("uid") != uid]
        if refs:
            current["metadata"]["ownerReferences"] = refs
        else:
            current["metadata"].pop("ownerReferences", None)
        self.store.update(res, current)

    async def reconcile(self, key: tuple[str, str, str | None]) -> None:
        kind, uid, namespace = key
        if kind == "deleted":
            for res, obj in self._dependents(uid, namespace):
                others = [r for r in obj["metadata"].get("ownerReferences") or []
                          if r.get("uid") != uid and self._find(r.get("uid", ""), namespace)]
                if others:
                    self._drop_ref(res, obj, uid)
                elif not obj["metadata"].get("deletionTimestamp"):
                    with contextlib.suppress(E.StatusError):
                        self.registry.delete(res, obj["metadata"].get("namespace"),
                                             obj["metadata"]["name"],
                                             {"propagationPolicy": "Background"})
            return
        found = self._find(uid, namespace)
        if found is None:
            return
        res, owner = found
        finalizers = list(owner["metadata"].get("finalizers") or [])
        if not owner["metadata"].get("deletionTimestamp"):
            return
        if "orphan" in finalizers:
            for dep_res, dep in self._dependents(uid, namespace):
                self._drop_ref(dep_res, dep, uid)
            finalizers.remove("orphan")
        elif "foregroundDeletion" in finalizers:
            blocking = []
            for dep_res, dep in self._dependents(uid, namespace):
                ref = next(r for r in dep["metadata"]["ownerReferences"] if r.get("uid") == uid)
                if not dep["metadata"].get("deletionTimestamp"):
                    with contextlib.suppress(E.StatusError):
                        self.registry.delete(dep_res, dep["metadata"].get("namespace"),
                                             dep["metadata"]["name"],
                                             {"propagationPolicy": "Foreground"})
                if ref.get("blockOwnerDeletion"):
                    blocking.append(dep)
            if blocking:
                return
            finalizers.remove("foregroundDeletion")
        else:
            return
        current = copy.deepcopy(owner)
        current["metadata"]["finalizers"] = finalizers
        if not finalizers:
            current["metadata"].pop("finalizers")
            if res.plural != "pods":
                self.store.delete(res, current["metadata"].get("namespace"),
                                  current["metadata"]["name"])
                return
        self.store.update(res, current)


class NamespaceController(Controller):
    name = "namespace-controller"

    def __init__(self, registry: Registry, recorder: EventRecorder, ca_pem: str) -> None:
        super().__init__(registry, recorder)
        self.ca_pem = ca_pem

    def on_change(self, change: Change) -> None:
        if change.resource.plural == "namespaces" and change.type != "DELETED":
            self.enqueue(change.obj["metadata"]["name"])
        elif change.type == "DELETED" and change.resource.namespaced:
            ns = change.obj["metadata"].get("namespace")
            owner = self.store.peek(self.res("namespaces"), None, ns or "")
            if owner is not None and owner["metadata"].get("deletionTimestamp"):
                self.enqueue(ns)

    async def reconcile(self, name: str) -> None:
        ns_res = self.res("namespaces")
        ns = self.store.peek(ns_res, None, name)
        if ns is None:
            return
        if not ns["metadata"].get("deletionTimestamp"):
            sa, cm = self.res("serviceaccounts"), self.res("configmaps")
            if self.store.peek(sa, name, "default") is None:
                with contextlib.suppress(E.StatusError):
                    self.registry.create(sa, name, {"metadata": {"name": "default"}})
            if self.store.peek(cm, name, "kube-root-ca.crt") is None:
                with contextlib.suppress(E.StatusError):
                    self.registry.create(cm, name, {
                        "metadata": {"name": "kube-root-ca.crt", "annotations": {
                            "kubernetes.io/description": "Contains a CA bundle that can be used "
                            "to verify the kube-apiserver when using internal endpoints such as "
                            "the internal service IP or kubernetes.default.svc. No other usage "
                            "is guaranteed across distributions of Kubernetes clusters."}},
                        "data": {"ca.crt": self.ca_pem}})
            return
        remaining = 0
        for res in RESOURCES:
            if not res.namespaced:
                continue
            for obj in list(self.store.items(res, name)):
                remaining += 1
                if not obj["metadata"].get("deletionTimestamp"):
                    with contextlib.suppress(E.StatusError):
                        self.registry.delete(res, name, obj["metadata"]["name"])
        if remaining:
            self.enqueue_after(name, 0.1)
            return
        self.store.delete(ns_res, None, name)
