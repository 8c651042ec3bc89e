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


async def _create_if_absent(kube: Kube, kind: str, body: dict[str, Any]) -> bool:
    """Create ``body`` unless it exists; True if created."""
    ns = kube.namespace
    create: Any = {
        "ServiceAccount": kube.core.create_namespaced_service_account,
        "Role": kube.rbac.create_namespaced_role,
        "RoleBinding": kube.rbac.create_namespaced_role_binding,
        "Secret": kube.core.create_namespaced_secret,
        "ConfigMap": kube.core.create_namespaced_config_map,
        "Deployment": kube.apps.create_namespaced_deployment,
    }[kind]
    try:
        await create(ns, body)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise translate(exc, f"cannot create {kind} {body['metadata']['name']} in {ns}") \
            from exc
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
    kube: Kube, *, public_key_line: str, key_entry: str, image: str = m.DEFAULT_IMAGE,
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


async def _ensure_deployment(kube: Kube, image: str, progress: Progress) -> str | None:
    ns = kube.namespace
    body = m.deployment(ns, image)
    if await _create_if_absent(kube, "Deployment", body):
        progress(f"created Deployment {m.RELAY} ({image})")
        return None
    try:
        current = await kube.apps.read_namespaced_deployment(m.RELAY, ns)
    except ApiException as exc:
        raise translate(exc, f"cannot read Deployment {m.RELAY}") from exc
    labels = current.metadata.labels or {}
    if labels.get(m.MANAGED_BY) != "bridged":
        raise KubeError(f"Deployment {m.RELAY} in {ns} exists but was not made by bridged",
                        hint="rename or remove it, bridged will not take it over")
    version = labels.get(m.VERSION_LABEL, "unknown")
    images = [c.image for c in current.spec.template.spec.containers]
    if version == __version__ and images == [image]:
        return None
    progress(f"upgrading relay {version} → {__version__}")
    body["metadata"]["resourceVersion"] = current.metadata.resource_version
    try:
        await kube.apps.replace_namespaced_deployment(m.RELAY, ns, body)  # type: ignore[arg-type]
    except ApiException as exc:
        raise translate(exc, f"cannot upgrade Deployment {m.RELAY}") from exc
    return version


_FATAL_WAITING = {"ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "InvalidImageName",
                  "CreateContainerConfigError", "CreateContainerError"}


async def wait_ready(kube: Kube, progress: Progress, wait_seconds: float) -> None:
    """Until the Deployment's current generation has a Ready pod; fails fast on pods that will
    not start, naming the pod and the reason the kubelet gave."""
    ns = kube.namespace
    deadline = time.monotonic() + wait_seconds
    last = ""
    while True:
        try:
            dep = await kube.apps.read_namespaced_deployment(m.RELAY, ns)
            pods = await kube.core.list_namespaced_pod(ns, label_selector=m.SELECTOR)
        except ApiException as exc:
            raise translate(exc, "cannot watch the relay roll out") from exc
        status = dep.status
        observed = status is not None and status.observed_generation == dep.metadata.generation
        updated = (status.updated_replicas or 0) if status else 0
        available = (status.available_replicas or 0) if status else 0
        for pod in pods.items:
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                waiting = cs.state.waiting if cs.state else None
                if waiting is not None and waiting.reason in _FATAL_WAITING:
                    raise KubeError(
                        f"relay pod {pod.metadata.name} cannot start: {waiting.reason}"
                        + (f": {waiting.message}" if waiting.message else ""),
                        hint="check --relay-image and that the cluster can pull it"
                        if "Image" in waiting.reason else "see kubectl logs of the pod",
                    )
        if observed and updated >= 1 and available >= 1:
            return
        step = f"waiting for the relay: {updated} updated, {available} available"
        if step != last:
            progress(step)
            last = step
        if time.monotonic() > deadline:
            raise KubeError(f"the relay in {ns} was not ready within {wait_seconds:.0f}s "
                            f"({step})", hint="kubectl describe deployment bridged-relay")
        await asyncio.sleep(0.5)


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
