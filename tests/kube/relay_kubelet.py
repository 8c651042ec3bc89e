"""A kubelet hook that runs the real ``bridged relay`` for the pods of bridged's Deployment.

What a node would do for the pod, done on loopback:
- the container's args are run as ``python -m bridged relay``, with its in-pod paths mapped
  into a folder of the test and its listen addresses moved to free loopback ports (the pod's
  containerPorts map to them, so ``pods/portforward`` reaches the relay's SSH server);
- the Secret volume with the authorized keys is written as files and kept in sync while the
  pod runs, as the kubelet does (faster than its minute, so tests need not wait);
- the process talks to the API server as the pod's service account (a token user), through a
  kubeconfig: what in-cluster config would give it;
- Ready when the relay prints its ready line; the pod fails if the process exits early;
- with ``cluster_dns``, the process runs as in a pod of its namespace (``POD_NAMESPACE``) with
  the cluster's DNS: a mount namespace whose resolver reads only a hosts file of the cluster's
  names (:mod:`.cluster_dns`), rewritten on every change of a Service or pod, so a Service
  made after the relay started resolves too, and no DNS query leaves the machine.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bridged.localrun import stop_process

from ..resolver import Resolver
from .apiserver import Context, KubeApiServer, PodHandle, PodSandbox
from .cluster_dns import hosts_for
from .store import Change


def cluster_dns_unavailable() -> str | None:
    """Why the relay cannot have the cluster's DNS here (a skip's reason), or None."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs unshare(1) and mount(8) to give the relay pod the cluster's DNS"
    if not all(Path(f"/etc/{f}").exists() for f in ("hosts", "host.conf", "nsswitch.conf")):
        return "needs /etc/hosts, /etc/host.conf and /etc/nsswitch.conf to mount over"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"no mount namespace for the relay pod's resolver (needs root): " \
               f"{done.stderr.strip()}"
    return None


class RelayKubelet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.api: KubeApiServer | None = None
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        #: the image the pods may run; any other is ImagePullBackOff
        self.pullable: set[str] | None = None
        #: when set, every relay container crashes at start (CrashLoopBackOff)
        self.crash: str | None = None
        #: runs every other pod (the application's); None: they run and serve nothing
        self.others: Any = None
        #: more arguments for the relay (settings a test shortens)
        self.extra_args: list[str] = []
        #: seconds from each relay process's start to its ready line, by pod
        self.startup_seconds: dict[str, float] = {}
        #: run the relay with the cluster's DNS (see the module's docstring); tests that set it
        #: skip where :func:`cluster_dns_unavailable` says why not
        self.cluster_dns = False

    def attach(self, api: KubeApiServer) -> None:
        self.api = api

    async def __call__(self, sandbox: PodSandbox) -> PodHandle:
        from .apiserver import ContainerWaiting

        assert self.api is not None
        pod = sandbox.pod
        labels = pod["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/name") != "bridged-relay":
            return await self.others(sandbox) if self.others is not None else PodHandle()
        container = pod["spec"]["containers"][0]
        if self.pullable is not None and container["image"] not in self.pullable:
            raise ContainerWaiting("ImagePullBackOff",
                                   f'Back-off pulling image "{container["image"]}"')
        if self.crash is not None:
            raise ContainerWaiting("CrashLoopBackOff", self.crash)
        ns = sandbox.namespace
        home = self.root / sandbox.name
        (home / "run").mkdir(parents=True, exist_ok=True)
        keys = home / "authorized-keys"
        keys.mkdir(exist_ok=True)
        sa = pod["spec"].get("serviceAccountName", "default")
        user = self.api.add_user(f"system:serviceaccount:{ns}:{sa}",
                                 ("system:serviceaccounts", f"system:serviceaccounts:{ns}"))
        kubeconfig = self.api.write_kubeconfig(home / "kubeconfig",
                                               [Context("in-cluster", user, ns)])
        args = [_map(a, home) for a in container.get("args", [])]
        # the test's "cluster services" live on loopback; the pod's IP is a loopback address
        # too (127.244.x.y): intercepted Services reach the relay there, as in a pod
        current = self.api.get("pods", ns, sandbox.name) or pod
        pod_ip = (current.get("status") or {}).get("podIP") or "127.0.0.1"
        args += ["--allow-loopback", "--intercept-host", pod_ip, *self.extra_args]
        secret_name = next(v["secret"]["secretName"] for v in pod["spec"]["volumes"]
                           if "secret" in v)
        sync = asyncio.create_task(self._sync_secret(ns, secret_name, keys))
        self._write_keys(ns, secret_name, keys)
        python, env = sys.executable, {"PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig),
                                       "HOME": str(home)}
        unlisten = None
        if self.cluster_dns:
            python, unlisten = self._with_cluster_dns(home, ns)
            env["POD_NAMESPACE"] = ns  # the downward API's, as the relay's manifest sets it
        log = (home / "relay.log").open("ab")
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            python, "-m", "bridged", "relay", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
            env=env,
        )
        log.close()
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            sync.cancel()
            if unlisten is not None:
                unlisten()
            await proc.wait()
            tail = (home / "relay.log").read_text().strip().splitlines()[-1:]
            raise ContainerWaiting("CrashLoopBackOff", tail[0] if tail else "exited")
        ready = json.loads(line)
        self.startup_seconds[sandbox.name] = time.monotonic() - started
        self.processes[sandbox.name] = proc

        async def stop() -> None:
            sync.cancel()
            if unlisten is not None:
                unlisten()
            await stop_process(proc)

        return PodHandle(ports={2222: int(ready["ssh_port"]), 8080: int(ready["http_port"])},
                         stop=stop, logs=lambda: (home / "relay.log").read_text())

    def _with_cluster_dns(self, home: Path, ns: str) -> tuple[str, Any]:
        """The wrapper that runs Python in the pod's resolver, and how to stop updating it."""
        assert self.api is not None
        api = self.api
        folder = home / "resolver"
        if folder.exists():  # the pod's container again (a restart): a fresh resolver
            shutil.rmtree(folder)
        resolver = Resolver(folder)
        resolver.hosts(hosts_for(api, ns))

        def on_change(change: Change) -> None:
            if change.resource.plural in ("services", "pods"):
                resolver.hosts(hosts_for(api, ns))

        return str(resolver.wrapper), api.store.listen(on_change)

    def _write_keys(self, ns: str, name: str, folder: Path) -> None:
        assert self.api is not None
        secret: dict[str, Any] = self.api.get("secrets", ns, name) or {}
        data = secret.get("data") or {}
        for entry, value in data.items():
            path = folder / entry
            content = base64.b64decode(value)
            if not path.exists() or path.read_bytes() != content:
                path.write_bytes(content)
        for path in folder.iterdir():
            if path.name not in data:
                path.unlink()

    async def _sync_secret(self, ns: str, name: str, folder: Path) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(0.1)  # the kubelet's volume sync, sped up
                self._write_keys(ns, name, folder)


def _map(arg: str, home: Path) -> str:
    """In-pod paths into the test's folder; listen addresses onto free loopback ports."""
    if arg.startswith("/var/run/bridged"):
        return str(home / "run") + arg[len("/var/run/bridged"):]
    if arg.startswith("/etc/bridged/authorized-keys"):
        return str(home / "authorized-keys")
    if arg in ("127.0.0.1:2222", "0.0.0.0:8080"):
        return "127.0.0.1:0"
    return arg
