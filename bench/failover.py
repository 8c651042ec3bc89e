"""Failover: the relay's pod replaced → the first successful new connection through a forward
and through an intercept, with its parts (issue 10, point 2).

On the stand-in cluster of ``tests/kube`` (API server, Deployment and ReplicaSet controllers,
kubelet running the real ``bridged relay``, kube-proxy on loopback ClusterIPs), with a real
daemon process: a forward to a Service that echoes, and a takeover intercept (header
``x-dev: bench``) of a Service whose replica says who it is. Each round deletes the relay pod
(``kubectl delete pod``: graceful; its ReplicaSet makes the next one) and measures:

- ``delete_to_ready``: deletion → the new pod Ready (the store's commit), of which
  ``relay_startup``: the relay process's start → its ready line;
- ``ready_to_connected``: Ready → the daemon's SSH connection to the new pod (stamped by the
  daemon, with what triggered it: ``pod-ready`` is the watch event);
- ``forward_connected_to_first_byte``: that → the first byte echoed through a connection opened
  on the forward the moment the pod was Ready (it waits in the forward for the bridge);
- ``intercept_connected_to_first_request``: that → the first request to the Service's ClusterIP
  answered by the laptop (the intercept registered again, the Service taken over again and
  live); requests are sent every 20 ms, so this one has that resolution.

Times are this machine's ``time.time()`` (the daemon stamps its side with the same clock).

    .venv/bin/python bench/failover.py [--rounds N] [--json]

``--json``: the table, then one JSON object on the last line with stable keys (seconds):
``rounds``, ``delete_to_ready``, ``relay_startup``, ``ready_to_connected``,
``forward_connected_to_first_byte``, ``forward_ready_to_first_byte``,
``intercept_connected_to_first_request``, ``intercept_ready_to_first_request`` (each
``{"median", "max"}``), ``triggers`` (how each reconnect came about), ``samples`` (per round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NS = "bench"
KEYS = ("delete_to_ready", "relay_startup", "ready_to_connected",
        "forward_connected_to_first_byte", "forward_ready_to_first_byte",
        "intercept_connected_to_first_request", "intercept_ready_to_first_request")


async def _first_answer_from(url: str, who: str, within: float) -> float:
    """When a request to ``url`` (header x-dev: bench) was first answered by ``who``."""
    import aiohttp

    # a connection per request, as a new client would: kube-proxy balances connections, so a
    # kept-alive one would stay with the pod it reached first
    connector = aiohttp.TCPConnector(force_close=True)
    async with asyncio.timeout(within), aiohttp.ClientSession(connector=connector) as session:
        while True:
            try:
                async with session.get(url, headers={"x-dev": "bench"},
                                       timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200 and (await response.json())["who"] == who:
                        return time.time()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass  # in flight while the relay went away: the next one counts
            await asyncio.sleep(0.02)


async def run(rounds: int, home: Path) -> dict[str, Any]:
    from bridged.control.client import ControlClient
    from bridged.localrun import DaemonProcess
    from tests.helpers import Daemon
    from tests.kube.apiserver import Context, KubeApiServer
    from tests.kube.failover import RelayPods, delete_pod, echo_on, echo_roundtrip
    from tests.kube.relay_kubelet import RelayKubelet
    from tests.kube.test_intercept_on_kube import Replicas, _identity_app

    kubelet = RelayKubelet(home / "node")
    async with KubeApiServer(kubelet=kubelet, namespaces=[NS], bookmark_interval=1.0,
                             kube_proxy=True) as api:
        kubelet.attach(api)
        kubelet.others = Replicas(api)
        os.environ["KUBECONFIG"] = str(api.write_kubeconfig(home / "kubeconfig", [
            Context("admin", api.admin, NS, auth="cert")]))
        echo_svc = api.apply({"apiVersion": "v1", "kind": "Service",
                              "metadata": {"name": "echo", "namespace": NS},
                              "spec": {"selector": {"app": "echo"}, "ports": [{"port": 7}]}})
        echo = await echo_on(echo_svc["spec"]["clusterIP"], 7)
        labels = {"app": "orders"}
        api.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "orders", "namespace": NS},
                   "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                            "template": {"metadata": {"labels": labels}, "spec": {
                                "containers": [{"name": "app", "image": "orders:1", "ports": [
                                    {"name": "web", "containerPort": 8080}]}]}}}})
        orders = api.apply({"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": "orders", "namespace": NS},
                            "spec": {"selector": labels, "ports": [
                                {"port": 80, "targetPort": "web"}]}})
        url = f"http://{orders['spec']['clusterIP']}/"
        laptop_port = _free_port()
        laptop = await _identity_app("127.0.0.1", laptop_port, "laptop")
        process = await DaemonProcess(home / "laptop").start()
        daemon = Daemon(process, ControlClient(process.socket))
        samples = []
        try:
            await daemon.call("POST", "bridges", {})
            forward = (await daemon.call("POST", "forwards", {"target": "echo"}))["forwards"][0]
            made = await daemon.acli("intercept", "orders", "--port", f"{laptop_port}:80",
                                     "--header", "x-dev=bench", "--via", "takeover")
            assert made.returncode == 0, made.stderr
            await _first_answer_from(url, "laptop", 30)
            await echo_roundtrip(forward["local_port"])
            for _ in range(rounds):
                with RelayPods(api, NS) as pods:
                    old = pods.current()
                    deleted = delete_pod(api, NS, old)
                    new, ready = await pods.next_ready({old}, within=60)
                    (_, first_byte), answered = await asyncio.gather(
                        echo_roundtrip(forward["local_port"], within=60),
                        _first_answer_from(url, "laptop", 60))
                bridge = (await daemon.status())["bridges"][0]
                reconnect = bridge["last_reconnect"]
                at = reconnect["at"]
                samples.append({
                    "pod": new, "trigger": reconnect["trigger"],
                    "delete_to_ready": ready - deleted,
                    "relay_startup": kubelet.startup_seconds.get(new),
                    "ready_to_connected": at - ready,
                    "forward_connected_to_first_byte": first_byte - at,
                    "forward_ready_to_first_byte": first_byte - ready,
                    "intercept_connected_to_first_request": answered - at,
                    "intercept_ready_to_first_request": answered - ready,
                })
                await _settled(daemon)
        finally:
            await process.stop()
            await laptop.cleanup()
            echo.close()
    result: dict[str, Any] = {"rounds": rounds}
    for key in KEYS:
        values = [s[key] for s in samples if s[key] is not None]
        result[key] = {"median": round(statistics.median(values), 3),
                       "max": round(max(values), 3)} if values else None
    result["triggers"] = [s["trigger"] for s in samples]
    result["samples"] = [{k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()}
                         for s in samples]
    return result


async def _settled(daemon: Any) -> None:
    """Until the intercept is active again: the next round starts from a whole state."""
    async with asyncio.timeout(30):
        while True:
            status = await daemon.status()
            if all(i["state"] == "active" for i in status["intercepts"]):
                return
            await asyncio.sleep(0.05)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _table(result: dict[str, Any]) -> str:
    lines = [f"relay pod replaced, {result['rounds']} rounds (seconds)",
             f"{'part':<40} {'median':>8} {'max':>8}"]
    for key in KEYS:
        value = result[key]
        if value is not None:
            lines.append(f"{key:<40} {value['median']:>8.3f} {value['max']:>8.3f}")
    lines.append(f"reconnects triggered by: {', '.join(result['triggers'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="a JSON object on the last line")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        import tests.kube.apiserver  # noqa: F401
    except ImportError:
        print("bench/failover.py: needs the stand-in cluster of tests/kube (a source checkout)",
              file=sys.stderr)
        raise SystemExit(1) from None
    with tempfile.TemporaryDirectory(prefix="bridged-failover-") as tmp:
        result = asyncio.run(run(args.rounds, Path(tmp)))
    print(_table(result))
    if args.json:
        print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
