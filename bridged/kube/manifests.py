"""The objects bridged creates in a namespace, as plain dicts (pure: no I/O, no client).

Every object carries ``app.kubernetes.io/managed-by=bridged`` and the version that made it, so
``bridged clean`` finds exactly what is ours and an older relay is recognised as such.

The relay's rights (Role ``bridged-relay``), each for one reason:
- ``secrets`` get/update on ``bridged-relay-host-key`` only: the relay keeps its SSH host key
  there, so restarts and rolling updates keep the key the daemons pinned;
- ``configmaps`` get/update on ``bridged-relay`` only: the relay publishes its public host key
  there for daemons to pin.
Both objects are created (empty) by ``bridged connect``, so the relay needs no ``create`` right,
which RBAC could not restrict by name.
- ``services`` get/list/update/create/delete: the takeover redirect points an intercepted
  Service at the relay and back (update), keeps the original pods reachable through a shadow
  Service (create/delete), and at start-up finds takeovers a dead relay left (list). The
  Services to intercept are the developers' choice, so the right cannot name them.
- ``httproutes`` and ``grpcroutes`` (Gateway API) and ``ciliumenvoyconfigs``
  get/list/create/update/delete: the gateway and cilium redirects (a gRPC port gets a
  GRPCRoute); rights on kinds a cluster does not serve are harmless.
- ``endpointslices`` get/list: a whole-port (``--tcp``) takeover is live once the Service's
  slices — what kube-proxy programs from — list only the relay (its bytes cannot carry a probe).
- ``secrets`` get/list/watch on ``bridged-authorized-keys`` only: the relay follows the
  developers' keys through the API, so a new key works at once instead of when the kubelet
  next refreshes the mounted copy (about a minute). RBAC lets a list or a watch restricted by
  ``resourceNames`` through only when it selects that name (``fieldSelector=metadata.name=``),
  which the relay's requests do. The Secret is also mounted: the relay's keys while the API
  cannot be read.
"""

from __future__ import annotations

from typing import Any

from .. import __version__

RELAY = "bridged-relay"
HOST_KEY_SECRET = "bridged-relay-host-key"
AUTHORIZED_KEYS_SECRET = "bridged-authorized-keys"
PUBLISHED_CONFIGMAP = "bridged-relay"
SSH_PORT = 2222
HTTP_PORT = 8080
#: where the release workflow (.github/workflows/release.yml) pushes the relay image, built
#: for amd64 and arm64 on every version tag; public, so a cluster pulls it without a secret
IMAGE_REPOSITORY = "ghcr.io/bridged-dev/relay"
#: the relay of this package's version: the one place the default reference is computed (the
#: release workflow checks its tag against it); ``bridged connect --relay-image`` overrides it
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"

MANAGED_BY = "app.kubernetes.io/managed-by"
VERSION_LABEL = "app.kubernetes.io/version"
NAME_LABEL = "app.kubernetes.io/name"
SELECTOR = f"{NAME_LABEL}={RELAY},{MANAGED_BY}=bridged"


def labels(version: str = __version__) -> dict[str, str]:
    return {NAME_LABEL: RELAY, MANAGED_BY: "bridged", VERSION_LABEL: version}


def _meta(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels()}


def service_account(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(RELAY, namespace),
            "automountServiceAccountToken": True}


def role(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": _meta(RELAY, namespace),
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [HOST_KEY_SECRET],
             "verbs": ["get", "update"]},
            {"apiGroups": [""], "resources": ["configmaps"],
             "resourceNames": [PUBLISHED_CONFIGMAP], "verbs": ["get", "update"]},
            # list/watch restricted by resourceNames are allowed only for requests that select
            # that name (fieldSelector=metadata.name=…): the relay's list and watch do
            # (kubernetes.io, Using RBAC Authorization, "Referring to resources")
            {"apiGroups": [""], "resources": ["secrets"],
             "resourceNames": [AUTHORIZED_KEYS_SECRET], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["services"],
             "verbs": ["get", "list", "update", "create", "delete"]},
            {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"],
             "verbs": ["get", "list", "update", "create", "delete"]},
            {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["grpcroutes"],
             "verbs": ["get", "list", "update", "create", "delete"]},
            {"apiGroups": ["cilium.io"], "resources": ["ciliumenvoyconfigs"],
             "verbs": ["get", "list", "update", "create", "delete"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
             "verbs": ["get", "list"]},
        ],
    }


def role_binding(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": _meta(RELAY, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RELAY},
        "subjects": [{"kind": "ServiceAccount", "name": RELAY, "namespace": namespace}],
    }


def empty_secret(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(name, namespace), "data": {}}


def published_configmap(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(PUBLISHED_CONFIGMAP,
                                                                        namespace), "data": {}}


def deployment(namespace: str, image: str = DEFAULT_IMAGE, replicas: int = 1) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/healthz", "port": HTTP_PORT}}
    # Ready is what a replaced relay's daemons wait for (they watch the pod): probed every
    # second, a relay up 0.8 s after start is Ready within ~2 s, not up to 5 s later; liveness
    # stays patient (a relay restoring Services on its way down is busy, not dead)
    readiness = {**probe, "periodSeconds": 1, "initialDelaySeconds": 0, "timeoutSeconds": 1,
                 "failureThreshold": 2}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(RELAY, namespace),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {NAME_LABEL: RELAY, MANAGED_BY: "bridged"}},
            # one relay at a time: a relay redirects Services to itself and, when it starts,
            # undoes what a dead one left; two overlapping would undo each other's work
            "strategy": {"type": "Recreate"},
            "template": {
                # the relay reaches the original pods itself: a mesh would send its requests
                # to the Service's routes, i.e. back to the relay (sidecar and ambient modes)
                "metadata": {"labels": {**labels(), "sidecar.istio.io/inject": "false",
                                        "istio.io/dataplane-mode": "none"},
                             "annotations": {"sidecar.istio.io/inject": "false",
                                             "linkerd.io/inject": "disabled"}},
                "spec": {
                    "serviceAccountName": RELAY,
                    "automountServiceAccountToken": True,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "runAsGroup": 10001, "fsGroup": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "relay",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": [
                            # SSH on loopback only: the API server's port-forward dials it
                            # inside the pod; nothing else in the cluster can reach it
                            "--ssh-listen", f"127.0.0.1:{SSH_PORT}",
                            "--http-listen", f"0.0.0.0:{HTTP_PORT}",
                            "--host-key", "/var/run/bridged/ssh_host_ed25519_key",
                            "--host-key-secret", HOST_KEY_SECRET,
                            "--publish-configmap", PUBLISHED_CONFIGMAP,
                            "--authorized-keys", "/etc/bridged/authorized-keys",
                            "--authorized-keys-secret", AUTHORIZED_KEYS_SECRET,
                            "--redirect-services",
                        ],
                        "ports": [{"name": "ssh", "containerPort": SSH_PORT},
                                  {"name": "http", "containerPort": HTTP_PORT}],
                        # kubernetes-asyncio alone is ~36 MiB of the relay's ~100 MiB at rest
                        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                                      "limits": {"memory": "256Mi"}},
                        "securityContext": {"readOnlyRootFilesystem": True,
                                            "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                        "readinessProbe": readiness,
                        "livenessProbe": {**probe, "periodSeconds": 5,
                                          "initialDelaySeconds": 5, "failureThreshold": 6},
                        "volumeMounts": [
                            {"name": "authorized-keys", "mountPath": "/etc/bridged/authorized-keys",
                             "readOnly": True},
                            {"name": "run", "mountPath": "/var/run/bridged"},
                        ],
                    }],
                    "volumes": [
                        {"name": "authorized-keys",
                         "secret": {"secretName": AUTHORIZED_KEYS_SECRET, "defaultMode": 0o440}},
                        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                    ],
                },
            },
        },
    }


def key_entry_name(fingerprint: str, user: str) -> str:
    """The authorized-keys Secret's data key for one developer's public key: stable per key,
    readable, and a valid Secret key (alphanumerics, '-', '_', '.')."""
    import hashlib

    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    safe_user = "".join(c if c.isalnum() or c in "-_." else "-" for c in user)[:40] or "user"
    return f"{safe_user}-{digest}.pub"
