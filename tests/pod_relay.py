"""``bridged relay`` started as its pod starts it, against the stand-in API server: the
Deployment's own arguments (host key kept in a Secret, the keys' Secret watched, Services
redirected), as the pod's service account, the in-pod paths mapped into a folder.

Used where the pod's relay, not a local one, is the subject: what it imports
(tests/unit/test_lean_imports.py) and its idle RSS (``bench/idle_rss.py --pod``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bridged.kube import manifests as m
from bridged.localrun import stop_process

from .kube.apiserver import Context, KubeApiServer
from .kube.relay_kubelet import _map

NS = "team-a"


async def start_pod_relay(api: KubeApiServer, home: Path, env: dict[str, str] | None = None,
                          namespace: str = NS) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """The objects ``bridged connect`` makes (but the Deployment), then the relay process as
    the kubelet would run the Deployment's container; returns it and its ready line."""
    for obj in (m.service_account(namespace), m.role(namespace), m.role_binding(namespace),
                m.empty_secret(m.HOST_KEY_SECRET, namespace),
                m.empty_secret(m.AUTHORIZED_KEYS_SECRET, namespace),
                m.published_configmap(namespace)):
        api.apply(obj)
    user = api.add_user(f"system:serviceaccount:{namespace}:{m.RELAY}",
                        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}"))
    (home / "run").mkdir(parents=True, exist_ok=True)
    (home / "authorized-keys").mkdir(exist_ok=True)
    kubeconfig = api.write_kubeconfig(home / "kubeconfig", [Context("in-cluster", user, namespace)])
    container = m.deployment(namespace)["spec"]["template"]["spec"]["containers"][0]
    args = [_map(a, home) for a in container["args"]]
    args += ["--allow-loopback", "--intercept-host", "127.0.0.1"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridged", "relay", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=(home / "relay.log").open("ab"),
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig), "HOME": str(home),
             **(env or {})})
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line:
        await proc.wait()
        raise RuntimeError(f"the relay exited: {(home / 'relay.log').read_text()[-2000:]}")
    return proc, json.loads(line)


async def stop(proc: asyncio.subprocess.Process) -> None:
    await stop_process(proc)
