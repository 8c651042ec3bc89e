"""``bridged doctor``'s cluster checks: can this developer use bridged in this namespace?

Each check has a verdict — ``ok``, ``warn`` or ``fail`` — and one line that says what was
found, or what to do. The RBAC rights are asked of the API server itself
(SelfSubjectAccessReview), so the answer holds for every authorizer a cluster may run.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import asdict, dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from ..errors import BridgedError
from . import manifests as m
from .client import Kube, KubeTarget, rest

#: (what it is for, verb, group, resource, subresource) — what the daemon's calls need
RIGHTS = (
    ("find the relay's pods", "list", "", "pods", ""),
    ("reconnect the moment a replaced relay is Ready", "watch", "", "pods", ""),
    ("reach the relay", "create", "", "pods", "portforward"),
    ("join the relay", "get", "apps", "deployments", ""),
    ("add your key", "update", "", "secrets", ""),
    # RBAC lets a user grant only rights they hold: the relay's Role lets it watch the keys
    ("deploy the relay's Role (it watches the keys Secret)", "watch", "", "secrets", ""),
    ("list and expose Services", "list", "", "services", ""),
    ("give back a Service a dead relay took over", "update", "", "services", ""),
    ("read a workload's env and files", "get", "", "configmaps", ""),
)
#: seconds of clock difference with the API server before it is worth a warning (tokens and
#: certificates are checked against the clocks; logs are compared by time)
CLOCK_SKEW_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # ok, warn, fail
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


async def checks(target: KubeTarget) -> list[Check]:
    try:
        kube = await Kube.connect(target)
    except BridgedError as exc:
        return [Check("kubeconfig", "fail", str(exc))]
    found = [Check("kubeconfig", "ok", f"context {kube.context}, namespace {kube.namespace}")]
    async with kube:
        try:
            data, _, headers = await kube.api.call_api(
                "/version", "GET", response_types_map={200: "object"},
                auth_settings=["BearerToken"], _return_http_data_only=False)
        except (ApiException, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            return [*found, Check("API server", "fail", f"not reachable: {reason}")]
        found.append(Check("API server", "ok", f"Kubernetes {data.get('gitVersion', '?')}"))
        found.append(_clock(headers.get("Date")))
        found += [await _right(kube, *right) for right in RIGHTS]
        found.append(await _relay(kube))
        found.append(await _relay_role(kube))
    return found


def _clock(date: str | None) -> Check:
    if not date:
        return Check("clock", "warn", "the API server sent no Date to compare with")
    theirs = email.utils.parsedate_to_datetime(date).timestamp()
    skew = time.time() - theirs
    if abs(skew) > CLOCK_SKEW_SECONDS:
        return Check("clock", "warn", f"{skew:+.0f} s off the API server's clock: "
                                      "tokens may be refused; sync this machine's time")
    return Check("clock", "ok", f"within {CLOCK_SKEW_SECONDS:.0f} s of the API server's")


async def _right(kube: Kube, purpose: str, verb: str, group: str, resource: str,
                 sub: str) -> Check:
    what = f"{verb} {resource}{'/' + sub if sub else ''}"
    attributes = {"namespace": kube.namespace, "verb": verb, "group": group,
                  "resource": resource, **({"subresource": sub} if sub else {})}
    try:
        review = await rest(kube, "POST",
                            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                            {"apiVersion": "authorization.k8s.io/v1",
                             "kind": "SelfSubjectAccessReview",
                             "spec": {"resourceAttributes": attributes}})
    except ApiException as exc:
        return Check(f"RBAC: {what}", "warn", f"could not ask ({exc.reason})")
    status: dict[str, Any] = review.get("status") or {}
    if status.get("allowed"):
        return Check(f"RBAC: {what}", "ok", f"to {purpose}")
    return Check(f"RBAC: {what}", "fail",
                 f"needed to {purpose}; ask your cluster admin for it in {kube.namespace}")


async def _relay(kube: Kube) -> Check:
    path = f"/apis/apps/v1/namespaces/{kube.namespace}/deployments/{m.RELAY}"
    try:
        deployment = await rest(kube, "GET", path)
    except ApiException as exc:
        if exc.status == 404:
            return Check("relay", "ok", "not deployed yet: bridged connect deploys it")
        return Check("relay", "warn", f"cannot read its Deployment ({exc.reason})")
    version = (deployment["metadata"].get("labels") or {}).get(m.VERSION_LABEL, "?")
    ready = (deployment.get("status") or {}).get("readyReplicas") or 0
    if not ready:
        return Check("relay", "fail", f"version {version}, no pod ready: "
                                      f"kubectl -n {kube.namespace} describe deploy {m.RELAY}")
    return Check("relay", "ok", f"version {version}, {ready} pod(s) ready")


async def _relay_role(kube: Kube) -> Check:
    """The relay's Role grants what this version's relay uses: an older one, e.g. without the
    watch of the keys Secret, leaves new keys to the kubelet's refresh (about a minute)."""
    try:
        role = await rest(kube, "GET",
                          f"/apis/rbac.authorization.k8s.io/v1/namespaces/{kube.namespace}"
                          f"/roles/{m.RELAY}")
    except ApiException as exc:
        if exc.status == 404:
            return Check("relay rights", "ok", "no Role yet: bridged connect makes it")
        return Check("relay rights", "warn", f"cannot read Role {m.RELAY} ({exc.reason})")
    have = role.get("rules") or []
    missing = [r for r in m.role(kube.namespace)["rules"] if r not in have]
    if not missing:
        return Check("relay rights", "ok", f"Role {m.RELAY} grants what the relay uses")
    what = "; ".join(f"{'/'.join(r['verbs'])} {','.join(r['resources'])}"
                     + (f" ({','.join(r['resourceNames'])})" if r.get("resourceNames") else "")
                     for r in missing)
    return Check("relay rights", "warn", f"Role {m.RELAY} lacks {what}: bridged connect "
                                         "upgrades an older relay and its Role")
