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

from ..errors import KubeError
from ..keys import public_line, write_private
from .client import KubeAPI, update_data

log = logging.getLogger(__name__)
FIELD = "ssh_host_ed25519_key"


async def load_or_publish(kube: KubeAPI, secret: str, configmap: str, path: Path) -> None:
    """Leave the shared host key at ``path`` and publish its public half."""

    def keep_or_make(data: dict[str, str]) -> dict[str, str] | None:
        if data.get(FIELD):
            return None  # another replica, or an earlier start, made it
        key = asyncssh.generate_private_key("ssh-ed25519", comment="bridged-relay")
        log.info("making a new host key, kept in Secret %s", secret)
        return {**data, FIELD: base64.b64encode(key.export_private_key()).decode()}

    data = await update_data(kube, "Secret", secret, keep_or_make)
    if data is None:
        raise KubeError(f"Secret {secret} is missing", hint="run bridged connect again")
    key = asyncssh.import_private_key(base64.b64decode(data[FIELD]))
    write_private(path, key.export_private_key())
    line = public_line(key)
    published = await update_data(
        kube, "ConfigMap", configmap,
        lambda d: None if d.get("host_key") == line else {**d, "host_key": line})
    if published is None:
        raise KubeError(f"ConfigMap {configmap} is missing", hint="run bridged connect again")
