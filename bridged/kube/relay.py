"""Deploying and finding the relay in a namespace: idempotent, safe with other developers.

``ensure_relay`` makes what is missing and never removes what others need: another developer's
key in the authorized-keys Secret is kept (read-modify-write with resourceVersion, retried on
409), an existing relay of the same version is joined as it is, one of another version is
upgraded in place (its pods roll; their host key survives, it lives in a Secret).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from .. import __version__
from ..errors import KubeError
from . import manifests as m
from .client import Kube, translate, update_data

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RelayInfo:
    namespace: str
    host_key: str  # the public key line the relay published
    version: str
    upgraded_from: str | None = None


def _api(kube: Kube, kind: str) -> tuple[Any, Any, Any]:
    """(read, create, replace) for a kind bridged makes."""
    core, apps, rbac = kube.core, kube.apps, kube.rbac
    return {
        "ServiceAccount": (core.read_namespaced_service_account,
                           core.create_namespaced_service_account,
                           core.replace_namespaced_service_account),
        "Role": (rbac.read_namespaced_role, rbac.create_namespaced_role,
                 rbac.replace_namespaced_role),
        "RoleBinding": (rbac.read_namespaced_role_binding, rbac.create_namespaced_role_binding,
                        rbac.replace_namespaced_role_binding),
        "Secret": (core.read_namespaced_secret, core.create_namespaced_secret,
                   core.replace_namespaced_secret),
        "ConfigMap": (core.read_namespaced_config_map, core.create_namespaced_config_map,
                      core.replace_namespaced_config_map),
        "Deployment": (apps.read_namespaced_deployment, apps.create_namespaced_deployment,
                       apps.replace_namespaced_deployment),
    }[kind]


async def _read(kube: Kube, kind: str, name: str) -> Any | None:
    read, _, _ = _api(kube, kind)
    try:
        return await read(name, kube.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise translate(exc, f"cannot read {kind} {name} in {kube.namespace}") from exc


async def _create_if_absent(kube: Kube, kind: str, body: dict[str, Any]) -> bool:
    """Create ``body`` unless it exists; True if created. Reads first: a real API server checks
    RBAC and quotas before AlreadyExists, so joining a relay must need only ``get`` rights."""
    name = body["metadata"]["name"]
    if await _read(kube, kind, name) is not None:
        return False
    _, create, _ = _api(kube, kind)
    try:
        await create(kube.namespace, body)
    except ApiException as exc:
        if exc.status == 409:  # made meanwhile by another developer
            return False
        raise translate(exc, f"cannot create {kind} {name} in {kube.namespace}") from exc
    return True


async def authorize_key(kube: Kube, public_key_line: str, entry: str) -> None:
    """Add one developer's key to the shared Secret, keeping everyone else's."""
    name = m.AUTHORIZED_KEYS_SECRET
    encoded = base64.b64encode(public_key_line.strip().encode() + b"\n").decode()
    for _ in range(3):
        found = await update_data(
            kube, "Secret", name,
            lambda data: None if data.get(entry) == encoded else {**data, entry: encoded})
        if found is not None:
            return
        body = m.empty_secret(name, kube.namespace)
        body["data"] = {entry: encoded}
        if await _create_if_absent(kube, "Secret", body):
            return
        # somebody created it meanwhile: merge into theirs
    raise KubeError(f"Secret {name} kept changing under us; try again")


async def remove_key(kube: Kube, entry: str) -> bool:
    """Remove one developer's key (``bridged disconnect``); other keys are kept."""
    removed = False

    def without(data: dict[str, str]) -> dict[str, str] | None:
        nonlocal removed
        removed = entry in data
        return {k: v for k, v in data.items() if k != entry} if removed else None

    await update_data(kube, "Secret", m.AUTHORIZED_KEYS_SECRET, without)
    return removed


async def ensure_relay(
    kube: Kube, *, public_key_line: str, key_entry: str, image: str | None = None,
    progress: Progress = lambda step: None, wait_seconds: float = 180.0,
) -> RelayInfo:
    ns = kube.namespace
    progress(f"checking the relay in namespace {ns}")
    for kind, body in (
        ("ServiceAccount", m.service_account(ns)),
        ("Role", m.role(ns)),
        ("RoleBinding", m.role_binding(ns)),
        ("Secret", m.empty_secret(m.HOST_KEY_SECRET, ns)),
        ("ConfigMap", m.published_configmap(ns)),
    ):
        if await _create_if_absent(kube, kind, body):
            progress(f"created {kind} {body['metadata']['name']}")
    await authorize_key(kube, public_key_line, key_entry)
    upgraded_from = await _ensure_deployment(kube, image, progress)
    await wait_ready(kube, progress, wait_seconds)
    host_key = await _published_host_key(kube, progress, wait_seconds)
    return RelayInfo(ns, host_key, __version__, upgraded_from)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


async def _ensure_deployment(kube: Kube, image: str | None,
                             progress: Progress) -> str | None:
    """Create the relay, or upgrade one made by an *older* bridged (or to an image asked for
    explicitly). A newer relay is joined as it is: developers with different versions must
    not restart the relay, and everyone's intercepts with it, on every connect."""
    ns = kube.namespace
    body = m.deployment(ns, image or m.DEFAULT_IMAGE)
    if await _create_if_absent(kube, "Deployment", body):
        progress(f"created Deployment {m.RELAY} ({image or m.DEFAULT_IMAGE})")
        return None
    for _ in range(5):
        current = await _read(kube, "Deployment", m.RELAY)
        if current is None:
            raise KubeError(f"Deployment {m.RELAY} disappeared while connecting; try again")
        labels = current.metadata.labels or {}
        if labels.get(m.MANAGED_BY) != "bridged":
            raise KubeError(f"Deployment {m.RELAY} in {ns} exists but was not made by bridged",
                            hint="rename or remove it, bridged will not take it over")
        version = labels.get(m.VERSION_LABEL, "0")
        images = [c.image for c in current.spec.template.spec.containers]
        older = _version_tuple(version) < _version_tuple(__version__)
        if not older and (image is None or images == [image]):
            return None
        progress(f"upgrading the relay {version} → {__version__}" if older
                 else f"switching the relay to image {image}")
        # our spec, but what others set on the object stays: labels, annotations, scale
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        body["metadata"]["labels"] = {**labels, **body["metadata"]["labels"]}
        body["metadata"]["annotations"] = current.metadata.annotations or {}
        body["spec"]["replicas"] = current.spec.replicas
        try:
            await kube.apps.replace_namespaced_deployment(m.RELAY, ns, body)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status == 409:  # the controller wrote status meanwhile: read again
                continue
            raise translate(exc, f"cannot upgrade Deployment {m.RELAY}") from exc
        await _update_role(kube)
        return version
    raise KubeError(f"Deployment {m.RELAY} kept changing; try again")


async def _update_role(kube: Kube) -> None:
    """A newer relay may need other rights: bring the Role to what this version needs."""
    wanted = m.role(kube.namespace)
    current = await _read(kube, "Role", m.RELAY)
    if current is None:
        await _create_if_absent(kube, "Role", wanted)
        return
    wanted["metadata"]["resourceVersion"] = current.metadata.resource_version
    try:
        await kube.rbac.replace_namespaced_role(m.RELAY, kube.namespace, wanted)  # type: ignore[arg-type]
    except ApiException as exc:
        raise translate(exc, f"cannot update Role {m.RELAY}") from exc


_FATAL_WAITING = {"ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "InvalidImageName",
                  "CreateContainerConfigError", "CreateContainerError"}
#: the kubelet's reasons for an image it could not fetch (not one it cannot parse)
_PULL_FAILED = {"ImagePullBackOff", "ErrImagePull"}


def _image_of(pod: Any, status: Any) -> str:
    """The reference the pod asked for: the spec's (a status may show a resolved digest)."""
    for container in pod.spec.containers if pod.spec else ():
        if container.name == status.name:
            return str(container.image)
    return str(status.image)


def _registry_of(image: str) -> str:
    """The registry a reference is pulled from, by the container runtimes' rule: a first
    component with a '.' or ':' (or ``localhost``) names one, anything else is Docker Hub."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def image_pull_error(pod: str, image: str, reason: str, detail: str | None) -> KubeError:
    """What a user reads when the cluster cannot pull the relay: the image, why, and both ways
    out — an image of their own in a registry the cluster reaches, or that registry's access.
    One line: the kubelet's message can span lines (a runtime's wrapped error)."""
    why = " ".join(detail.split()) if detail else ""
    return KubeError(
        f"relay pod {pod} cannot start: {reason}: the relay image {image} cannot be pulled"
        + (f" ({why})" if why else ""),
        hint=f"push it to a registry your cluster can pull from with `bridged relay-image build "
             f"--tag REGISTRY/relay:{__version__} --push` and pass `--relay-image "
             f"REGISTRY/relay:{__version__}` to bridged connect, or check the cluster's access "
             f"to {_registry_of(image)}",
    )


def rollout_state(dep: Any) -> tuple[bool, str, str | None]:
    """kubectl's rollout-status rule: (done, what to show, fatal reason or None)."""
    status, spec = dep.status, dep.spec
    if status is None or (status.observed_generation or 0) < (dep.metadata.generation or 0):
        return False, "waiting for the rollout to start", None
    for cond in status.conditions or ():
        if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
            return False, "", f"the rollout exceeded its deadline: {cond.message}"
        if cond.type == "ReplicaFailure" and cond.status == "True":
            return False, "", f"pods cannot be created: {cond.message}"
    want = spec.replicas if spec.replicas is not None else 1
    updated = status.updated_replicas or 0
    total = status.replicas or 0
    available = status.available_replicas or 0
    if updated < want:
        return False, f"{updated} of {want} relay pods updated", None
    if total > updated:
        return False, f"{total - updated} old relay pods terminating", None
    if available < updated:
        return False, f"{available} of {updated} relay pods available", None
    return True, "ready", None


async def wait_ready(kube: Kube, progress: Progress, wait_seconds: float) -> None:
    """Until the Deployment's rollout is complete (kubectl rollout status's rule); fails fast
    on pods of the new revision that will not start, and on failed rollouts, naming the pod
    or condition and the reason."""
    ns = kube.namespace
    deadline = time.monotonic() + wait_seconds
    last = ""
    while True:
        try:
            dep = await kube.apps.read_namespaced_deployment(m.RELAY, ns)
            pods = await kube.core.list_namespaced_pod(ns, label_selector=m.SELECTOR)
        except ApiException as exc:
            raise translate(exc, "cannot watch the relay roll out") from exc
        done, step, fatal = rollout_state(dep)
        if fatal:
            raise KubeError(f"the relay in {ns} cannot roll out: {fatal}",
                            hint="kubectl describe deployment bridged-relay")
        template_labels = dep.spec.template.metadata.labels or {}
        template_images = [c.image for c in dep.spec.template.spec.containers]
        for pod in pods.items:
            if pod.metadata.deletion_timestamp is not None:
                continue
            labels = pod.metadata.labels or {}
            if labels.get(m.VERSION_LABEL) != template_labels.get(m.VERSION_LABEL):
                continue  # an old revision's pod: its troubles are not this rollout's
            if pod.spec and [c.image for c in pod.spec.containers] != template_images:
                # the same version's previous image (`--relay-image` switched away from one
                # the cluster could not pull): its pod goes, its pull failure is not news
                continue
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                waiting = cs.state.waiting if cs.state else None
                if waiting is None or waiting.reason not in _FATAL_WAITING:
                    continue
                if waiting.reason in _PULL_FAILED:
                    raise image_pull_error(pod.metadata.name, _image_of(pod, cs),
                                           waiting.reason, waiting.message)
                raise KubeError(
                    f"relay pod {pod.metadata.name} cannot start: {waiting.reason}"
                    + (f": {waiting.message}" if waiting.message else ""),
                    hint="check --relay-image" if "Image" in waiting.reason
                    else "see kubectl logs of the pod",
                )
        if done:
            return
        if step != last:
            progress(f"waiting for the relay: {step}")
            last = step
        if time.monotonic() > deadline:
            raise KubeError(f"the relay in {ns} was not ready within {wait_seconds:.0f}s "
                            f"({step})", hint="kubectl describe deployment bridged-relay")
        await asyncio.sleep(0.5)


async def published_host_key(kube: Kube) -> str:
    """The relay's public host key as it published it; the API's authentication is what makes
    it trustworthy (whoever can write that ConfigMap already controls the relay)."""
    cm = await _read(kube, "ConfigMap", m.PUBLISHED_CONFIGMAP)
    key = (cm.data or {}).get("host_key") if cm is not None else None
    if not key:
        raise KubeError("the relay has not published its host key",
                        hint="bridged connect redeploys it; kubectl logs deploy/bridged-relay")
    return str(key).strip()


async def _published_host_key(kube: Kube, progress: Progress, wait_seconds: float) -> str:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            cm = await kube.core.read_namespaced_config_map(m.PUBLISHED_CONFIGMAP, kube.namespace)
        except ApiException as exc:
            raise translate(exc, f"cannot read ConfigMap {m.PUBLISHED_CONFIGMAP}") from exc
        key = (cm.data or {}).get("host_key")
        if key:
            return str(key).strip()
        if time.monotonic() > deadline:
            raise KubeError("the relay did not publish its host key",
                            hint="see kubectl logs deploy/bridged-relay")
        progress("waiting for the relay's host key")
        await asyncio.sleep(0.5)


async def remove_relay(kube: Kube) -> list[str]:
    """Delete every object ``ensure_relay`` makes, if it carries our label; idempotent, and it
    works when the relay is gone or broken. Returns what was deleted."""
    core, apps, rbac = kube.core, kube.apps, kube.rbac
    objects: list[tuple[str, str, Any, Any]] = [
        ("Deployment", m.RELAY, apps.read_namespaced_deployment,
         apps.delete_namespaced_deployment),
        ("RoleBinding", m.RELAY, rbac.read_namespaced_role_binding,
         rbac.delete_namespaced_role_binding),
        ("Role", m.RELAY, rbac.read_namespaced_role, rbac.delete_namespaced_role),
        ("ServiceAccount", m.RELAY, core.read_namespaced_service_account,
         core.delete_namespaced_service_account),
        ("Secret", m.AUTHORIZED_KEYS_SECRET, core.read_namespaced_secret,
         core.delete_namespaced_secret),
        ("Secret", m.HOST_KEY_SECRET, core.read_namespaced_secret,
         core.delete_namespaced_secret),
        ("ConfigMap", m.PUBLISHED_CONFIGMAP, core.read_namespaced_config_map,
         core.delete_namespaced_config_map),
    ]
    ns = kube.namespace
    deleted = []
    for kind, name, read, delete in objects:
        try:
            obj = await read(name, ns)
        except ApiException as exc:
            if exc.status == 404:
                continue
            raise translate(exc, f"cannot read {kind} {name}") from exc
        if (obj.metadata.labels or {}).get(m.MANAGED_BY) != "bridged":
            continue  # not ours: leave it
        try:  # Background: the Deployment's pods go with it
            await delete(name, ns, body={"propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status != 404:
                raise translate(exc, f"cannot delete {kind} {name}") from exc
        deleted.append(f"{kind}/{name}")
    return deleted
