"""The relay's side of host-key publishing, run in the pod before the SSH server starts.

The private key lives in the Secret ``bridged-relay-host-key`` so every replica and every
restart presents the same key; the first replica to start makes it (a concurrent one loses the
409 and takes the winner's). The public key is published in the ConfigMap ``bridged-relay``,
where daemons read it to pin. Both objects were created empty by ``bridged connect``: the relay
only needs get/update on these two names.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import asyncssh
from kubernetes_asyncio.client.exceptions import ApiException

from ..errors import KubeError
from ..keys import public_line, write_private
from .client import Kube, translate

log = logging.getLogger(__name__)
FIELD = "ssh_host_ed25519_key"


async def load_or_publish(kube: Kube, secret: str, configmap: str, path: Path) -> None:
    """Leave the shared host key at ``path`` and publish its public half."""
    ns = kube.namespace
    for _ in range(10):
        try:
            current = await kube.core.read_namespaced_secret(secret, ns)
        except ApiException as exc:
            raise translate(exc, f"cannot read Secret {secret}") from exc
        stored = (current.data or {}).get(FIELD)
        if stored:
            key = asyncssh.import_private_key(base64.b64decode(stored))
            break
        key = asyncssh.generate_private_key("ssh-ed25519", comment="bridged-relay")
        current.data = {FIELD: base64.b64encode(key.export_private_key()).decode()}
        try:
            await kube.core.replace_namespaced_secret(secret, ns, current)
            log.info("made a new host key and stored it in Secret %s", secret)
            break
        except ApiException as exc:
            if exc.status != 409:
                raise translate(exc, f"cannot store the host key in Secret {secret}") from exc
    else:
        raise KubeError(f"Secret {secret} kept changing; cannot settle on a host key")
    write_private(path, key.export_private_key())
    line = public_line(key)
    for _ in range(10):
        try:
            cm = await kube.core.read_namespaced_config_map(configmap, ns)
        except ApiException as exc:
            raise translate(exc, f"cannot read ConfigMap {configmap}") from exc
        if (cm.data or {}).get("host_key") == line:
            return
        cm.data = {**(cm.data or {}), "host_key": line}
        try:
            await kube.core.replace_namespaced_config_map(configmap, ns, cm)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise translate(exc, f"cannot publish the host key in {configmap}") from exc
    raise KubeError(f"ConfigMap {configmap} kept changing; host key not published")
