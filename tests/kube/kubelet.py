"""The scheduler and the kubelet of the one node, ``standin-node``, with the test's hook.

Pods that the API holds are bound to the node (``spec.nodeName``, ``PodScheduled``, event
``Scheduled``), then "run" by calling the test's **kubelet hook**: an async callable that gets a
:class:`PodSandbox` (the pod, its container ports) and returns a :class:`PodHandle` (the
``127.0.0.1`` port behind each ``containerPort``, and how to stop it) — for example a real
``bridged relay`` process on loopback. The pod status follows the kubelet's
(``pkg/kubelet/status``, ``kubelet_pods.go``):

- while the hook runs: phase ``Pending``, containers ``waiting: ContainerCreating``;
- once it returns: phase ``Running``, containers ``running`` with ``startedAt``, conditions
  ``PodReadyToStartContainers``, ``Initialized``, ``ContainersReady``, ``Ready``,
  ``PodScheduled``; ``Ready`` is ``True`` unless the hook said ``sandbox.set_ready(False)``
  (then ``ContainersNotReady``, "containers with unready status: [...]");
- the hook raising :class:`ContainerWaiting` (or a test calling ``fail_pod``):
  ``ImagePullBackOff``/``ErrImagePull`` keep the pod ``Pending`` with the container waiting for
  that reason and the kubelet's events (``Failed`` "Failed to pull image ...", ``Failed``
  "Error: ErrImagePull", ``BackOff`` "Back-off pulling image ...", ``Failed``
  "Error: ImagePullBackOff"); ``CrashLoopBackOff`` (or any other exception) leaves it
  ``Running`` with ``waiting: CrashLoopBackOff``, ``lastState.terminated``, ``restartCount``
  and a ``BackOff`` "Back-off restarting failed container" Warning. The kubelet's events use
  the kubelet's reasons: no event has the reason ``ImagePullBackOff``/``CrashLoopBackOff``;
  those are container-state reasons;
- graceful deletion: the handle is stopped (event ``Killing``), the pod's port-forward
  streams end, then the pod object is removed.

Addresses are loopback (pod IPs from 127.244.0.0/16) so nothing can leak to a real network.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .controllers import Controller, EventRecorder
from .registry import Registry, now
from .store import Change

__all__ = ["ContainerWaiting", "Kubelet", "KubeletHook", "PodHandle", "PodSandbox"]

log = logging.getLogger(__name__)
NODE = "standin-node"


class ContainerWaiting(Exception):
    """Raised by a kubelet hook: a container cannot run. ``reason`` is the container
    state's: ``ImagePullBackOff``, ``ErrImagePull``, ``CrashLoopBackOff``, ..."""

    def __init__(self, reason: str, message: str = "", *, container: str | None = None,
                 exit_code: int = 1) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message, self.container, self.exit_code = (
            reason, message, container, exit_code)


@dataclass
class PodHandle:
    """What a hook returns. ``ports`` maps a containerPort to the 127.0.0.1 port that serves
    it; ``stop`` is awaited when the pod goes away; ``logs`` answers ``pods/log``."""

    ports: Mapping[int, int] = field(default_factory=dict)
    stop: Callable[[], Awaitable[None]] | None = None
    logs: Callable[[], str] | None = None


@dataclass
class PodSandbox:
    """One run of a pod on the node, as the hook sees it."""

    pod: dict[str, Any]
    kubelet: Kubelet
    handle: PodHandle | None = None
    ready: bool = True
    task: asyncio.Task[None] | None = None
    state: str = "creating"  # creating, running, waiting, stopped
    restarts: int = 0

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def container_ports(self) -> list[int]:
        return [p["containerPort"] for c in self.pod["spec"].get("containers", [])
                for p in c.get("ports") or []]

    def set_ready(self, ready: bool = True) -> None:
        """The readiness probe's verdict: flips the Ready condition."""
        self.ready = ready
        if self.state == "running":
            self.kubelet.write_running(self)


KubeletHook = Callable[[PodSandbox], Awaitable[PodHandle]]


def _container_id(uid: str, name: str, restarts: int) -> str:
    return "containerd://" + hashlib.sha256(f"{uid}/{name}/{restarts}".encode()).hexdigest()


def _image_id(image: str) -> str:
    repo = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


class Kubelet(Controller):
    """Scheduler + kubelet: binds pods, runs them through the hook, deletes them."""

    name = "kubelet"

    def __init__(self, registry: Registry, recorder: EventRecorder,
                 hook: KubeletHook | None = None) -> None:
        super().__init__(registry, recorder)
        self.hook = hook
        self.sandboxes: dict[str, PodSandbox] = {}
        self.streams: dict[str, set[Any]] = {}  # pod uid -> open port-forward websockets
        self._terminating: dict[str, asyncio.Task[None]] = {}
        # pod IPs start at a random /24 of 127.244.0.0/16: two test runs on one machine bind
        # their pods' addresses, and must not collide (EADDRINUSE)
        self._ips = 250 * random.SystemRandom().randrange(0, 200)

    # --- informer and work loop ------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        if change.resource.plural == "pods":
            meta = change.obj["metadata"]
            self.enqueue((meta["namespace"], meta["name"]))

    async def reconcile(self, key: tuple[str, str]) -> None:
        ns, name = key
        pods = self.res("pods")
        pod = self.store.peek(pods, ns, name)
        live = {s.uid for s in self.sandboxes.values()
                if s.namespace == ns and s.name == name}
        for uid in live - ({pod["metadata"]["uid"]} if pod else set()):
            await self.stop_sandbox(uid)
        if pod is None:
            return
        uid = pod["metadata"]["uid"]
        if pod["metadata"].get("deletionTimestamp"):
            if uid not in self._terminating:  # containers stop in the background
                self._terminating[uid] = asyncio.create_task(self._terminate(pod))
            return
        if not pod["spec"].get("nodeName"):
            self._bind(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if uid not in self.sandboxes and phase not in ("Succeeded", "Failed"):
            sandbox = PodSandbox(pod=pod, kubelet=self)
            self.sandboxes[uid] = sandbox
            sandbox.task = asyncio.create_task(self._run_pod(sandbox), name=f"pod {ns}/{name}")

    async def _terminate(self, pod: dict[str, Any]) -> None:
        """Graceful deletion: stop the containers (the hook's handle), then remove the pod."""
        pods, uid = self.res("pods"), pod["metadata"]["uid"]
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        try:
            if uid in self.sandboxes:
                for c in pod["spec"].get("containers", []):
                    self.recorder.record(pods, pod, "Normal", "Killing",
                                         f"Stopping container {c['name']}", "kubelet",
                                         host=NODE, field_path=f"spec.containers{{{c['name']}}}")
                await self.stop_sandbox(uid)
            current = self.store.peek(pods, ns, name)
            if current is not None and current["metadata"]["uid"] == uid \
                    and not current["metadata"].get("finalizers"):
                self.store.delete(pods, ns, name)
        finally:
            self._terminating.pop(uid, None)

    def _bind(self, pod: dict[str, Any]) -> None:
        current = self.store.get(self.res("pods"), pod["metadata"]["namespace"],
                                 pod["metadata"]["name"])
        if current is None:
            return
        current["spec"]["nodeName"] = NODE
        status = current.setdefault("status", {})
        status["conditions"] = [{"type": "PodScheduled", "status": "True",
                                 "lastProbeTime": None, "lastTransitionTime": now()}]
        stored = self.store.update(self.res("pods"), current)
        self.recorder.record(self.res("pods"), stored, "Normal", "Scheduled",
                             f"Successfully assigned {pod['metadata']['namespace']}/"
                             f"{pod['metadata']['name']} to {NODE}", "default-scheduler")

    # --- running a pod ---------------------------------------------------------------------

    def _status(self, sandbox: PodSandbox, mutate: Callable[[dict[str, Any]], None]) -> None:
        pods = self.res("pods")
        current = self.store.get(pods, sandbox.namespace, sandbox.name)
        if current is None or current["metadata"]["uid"] != sandbox.uid \
                or current["metadata"].get("deletionTimestamp"):
            return
        status = current.setdefault("status", {})
        mutate(status)
        status["observedGeneration"] = current["metadata"].get("generation", 1)
        self.store.update(pods, current)

    def _base_status(self, sandbox: PodSandbox, status: dict[str, Any], *, phase: str,
                     ready: bool, unready: list[str]) -> None:
        if "podIP" not in status:
            self._ips += 1
            ip = f"127.244.{self._ips // 250}.{self._ips % 250 + 1}"
            status.update({"hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                           "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now()})
        status["phase"] = phase
        stamp = now()
        old = {c["type"]: c for c in status.get("conditions") or []}

        def cond(type_: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
            value = "True" if ok else "False"
            was = old.get(type_)
            c: dict[str, Any] = {"type": type_, "status": value, "lastProbeTime": None,
                                 "lastTransitionTime": was["lastTransitionTime"]
                                 if was and was["status"] == value else stamp}
            if not ok and reason:
                c.update({"reason": reason, "message": message})
            return c

        why = f"containers with unready status: [{' '.join(unready)}]"
        status["conditions"] = [
            cond("PodReadyToStartContainers", True), cond("Initialized", True),
            cond("Ready", ready, "ContainersNotReady", why),
            cond("ContainersReady", ready, "ContainersNotReady", why),
            cond("PodScheduled", True)]
        status.setdefault("qosClass", "BestEffort")

    def _containers(self, sandbox: PodSandbox) -> list[dict[str, Any]]:
        return list(sandbox.pod["spec"].get("containers", []))

    async def _run_pod(self, sandbox: PodSandbox) -> None:
        pods = self.res("pods")
        containers = self._containers(sandbox)
        names = [c["name"] for c in containers]

        def creating(status: dict[str, Any]) -> None:
            self._base_status(sandbox, status, phase="Pending", ready=False, unready=names)
            status["containerStatuses"] = [{
                "name": c["name"], "state": {"waiting": {"reason": "ContainerCreating"}},
                "lastState": {}, "ready": False, "restartCount": sandbox.restarts,
                "image": c["image"], "imageID": "", "started": False} for c in containers]

        self._status(sandbox, creating)
        for c in containers:
            path = f"spec.containers{{{c['name']}}}"
            self.recorder.record(pods, sandbox.pod, "Normal", "Pulling",
                                 f'Pulling image "{c["image"]}"', "kubelet", host=NODE,
                                 field_path=path)
        try:
            handle = await self.hook(sandbox) if self.hook is not None else PodHandle()
        except asyncio.CancelledError:
            raise
        except ContainerWaiting as waiting:
            self.set_waiting(sandbox, waiting.reason, waiting.message,
                             container=waiting.container, exit_code=waiting.exit_code)
            return
        except Exception as exc:
            log.warning("kubelet hook failed for %s/%s: %r", sandbox.namespace, sandbox.name,
                        exc)
            self.set_waiting(sandbox, "CrashLoopBackOff", str(exc))
            return
        sandbox.handle = handle
        sandbox.state = "running"
        for c in containers:
            path = f"spec.containers{{{c['name']}}}"
            for reason, message in (
                    ("Pulled", f'Container image "{c["image"]}" already present on machine'),
                    ("Created", f"Created container: {c['name']}"),
                    ("Started", f"Started container {c['name']}")):
                self.recorder.record(pods, sandbox.pod, "Normal", reason, message, "kubelet",
                                     host=NODE, field_path=path)
        self.write_running(sandbox)

    def write_running(self, sandbox: PodSandbox) -> None:
        containers = self._containers(sandbox)
        started = now()

        def running(status: dict[str, Any]) -> None:
            unready = [] if sandbox.ready else [c["name"] for c in containers]
            self._base_status(sandbox, status, phase="Running", ready=sandbox.ready,
                              unready=unready)
            previous = {s["name"]: s for s in status.get("containerStatuses") or []}
            status["containerStatuses"] = [{
                "name": c["name"],
                "state": {"running": {"startedAt": ((previous.get(c["name"]) or {}).get(
                    "state", {}).get("running") or {}).get("startedAt", started)}},
                "lastState": (previous.get(c["name"]) or {}).get("lastState", {}),
                "ready": sandbox.ready, "restartCount": sandbox.restarts,
                "image": c["image"], "imageID": _image_id(c["image"]),
                "containerID": _container_id(sandbox.uid, c["name"], sandbox.restarts),
                "started": True} for c in containers]

        self._status(sandbox, running)

    def set_waiting(self, sandbox: PodSandbox, reason: str, message: str = "", *,
                    container: str | None = None, exit_code: int = 1) -> None:
        """A container that does not run: the status and the events of that reason."""
        pods = self.res("pods")
        sandbox.state = "waiting"
        containers = self._containers(sandbox)
        target = container or containers[0]["name"]
        spec = next(c for c in containers if c["name"] == target)
        image = spec["image"]
        pod_ref = f"{sandbox.name}_{sandbox.namespace}({sandbox.uid})"
        path = f"spec.containers{{{target}}}"
        pull = reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName")
        if pull:
            detail = message or f'failed to pull and unpack image "{image}": not found'
            for type_, why, text in (
                    ("Warning", "Failed", f'Failed to pull image "{image}": {detail}'),
                    ("Warning", "Failed", "Error: ErrImagePull"),
                    ("Normal", "BackOff", f'Back-off pulling image "{image}"'),
                    ("Warning", "Failed", "Error: ImagePullBackOff")):
                self.recorder.record(pods, sandbox.pod, type_, why, text, "kubelet", host=NODE,
                                     field_path=path)
            state = {"waiting": {"reason": reason,
                                 "message": f'Back-off pulling image "{image}": ErrImagePull: '
                                            f"{detail}"}}
            last: dict[str, Any] = {}
            phase = "Pending"
        elif reason == "CrashLoopBackOff" or reason == "Error":
            sandbox.restarts += 1
            reason = "CrashLoopBackOff"
            self.recorder.record(pods, sandbox.pod, "Warning", "BackOff",
                                 f"Back-off restarting failed container {target} in pod "
                                 f"{pod_ref}", "kubelet", host=NODE, field_path=path)
            state = {"waiting": {"reason": reason,
                                 "message": f"back-off 10s restarting failed "
                                            f"container={target} pod={pod_ref}"}}
            last = {"terminated": {"exitCode": exit_code, "reason": "Error",
                                   "message": message, "startedAt": now(-1),
                                   "finishedAt": now(),
                                   "containerID": _container_id(sandbox.uid, target,
                                                                sandbox.restarts - 1)}}
            if not message:
                del last["terminated"]["message"]
            phase = "Running"
        else:
            self.recorder.record(pods, sandbox.pod, "Warning", "Failed", f"Error: {reason}",
                                 "kubelet", host=NODE, field_path=path)
            state = {"waiting": {"reason": reason, "message": message}}
            last = {}
            phase = "Pending"

        def waiting(status: dict[str, Any]) -> None:
            names = [c["name"] for c in containers]
            self._base_status(sandbox, status, phase=phase, ready=False, unready=names)
            status["containerStatuses"] = [{
                "name": c["name"],
                "state": state if c["name"] == target else {"running": {"startedAt": now()}},
                "lastState": last if c["name"] == target else {},
                "ready": False, "restartCount": sandbox.restarts if c["name"] == target else 0,
                "image": c["image"],
                "imageID": "" if pull and c["name"] == target else _image_id(c["image"]),
                "started": c["name"] != target} for c in containers]

        self._status(sandbox, waiting)

    # --- test controls ---------------------------------------------------------------------

    def sandbox_of(self, namespace: str, name: str) -> PodSandbox | None:
        pod = self.store.peek(self.res("pods"), namespace, name)
        return self.sandboxes.get(pod["metadata"]["uid"]) if pod else None

    async def drop_streams(self, uid: str, *, abrupt: bool = False) -> int:
        """Closes every port-forward websocket of the pod (what an API server or a load
        balancer does to long streams); ``abrupt`` cuts the TCP connection without a close
        frame."""
        live = self.streams.get(uid, set())
        streams = [ws for ws in live if not ws.closed]
        for ws in streams:
            live.discard(ws)
            if abrupt:
                transport = ws._req.transport if ws._req is not None else None
                if transport is not None:
                    transport.abort()
            with contextlib.suppress(Exception):
                await ws.close()
        return len(streams)

    async def stop_sandbox(self, uid: str) -> None:
        sandbox = self.sandboxes.pop(uid, None)
        if sandbox is None:
            return
        sandbox.state = "stopped"
        if sandbox.task is not None and not sandbox.task.done():
            sandbox.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sandbox.task
        await self.drop_streams(uid)
        if sandbox.handle is not None and sandbox.handle.stop is not None:
            try:
                await sandbox.handle.stop()
            except Exception:
                log.exception("stopping pod %s/%s", sandbox.namespace, sandbox.name)

    async def fail(self, namespace: str, name: str, reason: str, message: str = "", *,
                   container: str | None = None, exit_code: int = 1) -> None:
        sandbox = self.sandbox_of(namespace, name)
        if sandbox is None:
            raise LookupError(f"pod {namespace}/{name} is not running on the node")
        if sandbox.task is not None and not sandbox.task.done():
            sandbox.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sandbox.task
        await self.drop_streams(sandbox.uid)
        if sandbox.handle is not None and sandbox.handle.stop is not None:
            await sandbox.handle.stop()
        sandbox.handle = None
        self.set_waiting(sandbox, reason, message, container=container, exit_code=exit_code)

    async def restart(self, namespace: str, name: str) -> None:
        """The kubelet's restart after a back-off: the hook runs again."""
        sandbox = self.sandbox_of(namespace, name)
        if sandbox is None:
            raise LookupError(f"pod {namespace}/{name} is not running on the node")
        if sandbox.handle is not None and sandbox.handle.stop is not None:
            await sandbox.handle.stop()
        sandbox.handle, sandbox.state = None, "creating"
        sandbox.task = asyncio.create_task(self._run_pod(sandbox), name=f"pod {namespace}/{name}")

    async def stop(self) -> None:
        await super().stop()
        for task in list(self._terminating.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for uid in list(self.sandboxes):
            await self.stop_sandbox(uid)
