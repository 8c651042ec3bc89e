"""Idle RSS of the daemon and the relay, and which imports it goes to (issue 14).

A real relay and daemon (``bridged.localrun``, tcp carrier) as ``tunnel.py`` starts them: the
daemon connects, gets one forward (echoed once), and both are left until they are idle (no CPU
spent for a while); then their ``VmRSS`` is read from ``/proc``.

``--imports`` also says where that memory comes from: both processes run with
``PYTHONPROFILEIMPORTTIME=1`` (the interpreter writes ``-X importtime`` lines to their logs), and
the top-level modules each imported are then imported again, in the same order, in a fresh
interpreter of their own, reading ``VmRSS`` after each: the RSS each package adds (what it pulls
in with it counts for it), and its cumulative import time. (The traced run's own RSS is not the
figure: tracing costs nothing in RSS, but the numbers printed first come from an untraced run.)

``--pod``: the relay alone, started as its pod starts it (``tests/pod_relay.py``: the
Deployment's arguments — host key in a Secret, the keys' Secret watched, ``--redirect-services``
— as its service account, against the stand-in API server), idle once its key watch is open.

    .venv/bin/python bench/idle_rss.py [--json] [--pod] [--imports [--top N]]

``--json`` prints one JSON object on the last line:
``{"daemon_rss_idle_mib": ..., "relay_rss_idle_mib": ...}`` (and ``imports`` with ``--imports``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchkit import REPO, echo, tcp_bridge

GOALS_MIB = {"daemon": 45.0, "relay": 60.0}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def until_idle(pids: list[int], quiet: float = 1.0, limit: float = 20.0) -> None:
    """Until none of ``pids`` spent CPU for ``quiet`` seconds (or ``limit`` passed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last = [cpu_ticks(p) for p in pids]
    quiet_since = loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        now = [cpu_ticks(p) for p in pids]
        if now != last:
            last, quiet_since = now, loop.time()
        elif loop.time() - quiet_since >= quiet:
            return


async def measure(workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Start both, connect, forward, echo once, wait for idle: RSS and the log paths."""
    from bridged.localrun import DaemonProcess, RelayProcess

    saved = dict(os.environ)
    os.environ.update(env)  # the relay inherits this process's environment
    try:
        relay = RelayProcess(workdir / "relay")
        daemon = DaemonProcess(workdir / "daemon", extra_env=env)
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[1]
        async with relay, daemon:
            os.environ.clear()
            os.environ.update(saved)
            call = await tcp_bridge(relay, daemon)
            fwd = await call("POST", "forwards", {"target": f"127.0.0.1:{target}",
                                                 "name": "bench"})
            port = int(fwd["forwards"][0]["local_port"])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping")
            await reader.readexactly(4)
            writer.close()
            await until_idle([daemon.pid, relay.pid])
            rss = {"daemon": rss_mib(daemon.pid), "relay": rss_mib(relay.pid)}
        server.close()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {"rss": rss, "logs": {"daemon": daemon.log_path, "relay": relay.log_path}}


async def measure_pod(workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """The relay as its pod runs it (see ``--pod``), at rest: RSS and the log path."""
    from tests.kube.apiserver import KubeApiServer
    from tests.pod_relay import NS, start_pod_relay, stop

    async with KubeApiServer(namespaces=[NS]) as api:
        proc, _ = await start_pod_relay(api, workdir, env)
        try:
            log_path = workdir / "relay.log"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while "(list" not in log_path.read_text(errors="replace"):  # the keys were read
                if loop.time() > deadline:
                    raise RuntimeError("the relay's key watch did not start")
                await asyncio.sleep(0.1)
            await until_idle([proc.pid])
            rss = {"relay": rss_mib(proc.pid)}
        finally:
            await stop(proc)
    return {"rss": rss, "logs": {"relay": log_path}}


def imported(log: Path) -> list[tuple[str, int]]:
    """Every module a process imported, in the order ``-X importtime`` wrote them (a module
    after what it imports), with its own import time in µs."""
    out: list[tuple[str, int]] = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        self_us, _, name = line.removeprefix("import time:").split("|", 2)
        if self_us.strip().isdigit():  # (not the header line)
            out.append((name.strip(), int(self_us)))
    return out


def package_of(module: str) -> str:
    """What a module's cost is counted under: its top-level package; bridged's own by module."""
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[0] == "bridged" else parts[0]


_PROBE = """
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
def load(name, rows):
    global before
    try:
        __import__(name)
    except BaseException as exc:
        rows.append([name, 0.0, repr(exc)])
        return
    now = rss()
    rows.append([name, now - before, ""])
    before = now
rows = []
base = before = rss()
names = json.loads(sys.argv[1])
# A submodule whose package is not imported yet waits for the package's own line (later, in
# post-order): importing it first would run the package's __init__ and count all that imports
# (other packages too) as the submodule's. What is still missing at the end is imported then.
for last_pass in (False, True):
    for name in names:
        parent = name.rpartition(".")[0]
        if name in sys.modules or (parent and parent not in sys.modules and not last_pass):
            continue
        load(name, rows)
print(json.dumps({"base": base, "rows": rows}))
"""


def import_costs(log: Path) -> dict[str, Any]:
    """RSS added by what the process that wrote ``log`` imported, by package: the same
    modules imported again in that order (leaves first) in a fresh interpreter."""
    seen = imported(log)
    micros: dict[str, int] = {}
    for name, us in seen:
        micros[name] = micros.get(name, 0) + us
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(micros))], cwd=REPO,
                         capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout)
    packages: dict[str, dict[str, Any]] = {}

    def row(name: str) -> dict[str, Any]:
        return packages.setdefault(package_of(name), {"rss_mib": 0.0, "import_ms": 0.0,
                                                      "modules": 0})

    for name, us in micros.items():
        row(name)["import_ms"] += us / 1000
        row(name)["modules"] += 1
    for name, mib, err in probe["rows"]:
        row(name)["rss_mib"] += mib
        if err:
            row(name).setdefault("errors", []).append(f"{name}: {err}")
    for row in packages.values():
        row["rss_mib"], row["import_ms"] = round(row["rss_mib"], 2), round(row["import_ms"], 1)
    return {"interpreter_mib": round(probe["base"], 1), "modules": len(micros),
            "packages": packages}


def print_costs(label: str, costs: dict[str, Any], top: int) -> None:
    rows = sorted(costs["packages"].items(), key=lambda kv: -kv[1]["rss_mib"])
    total = sum(r["rss_mib"] for _, r in rows)
    print(f"\n{label}: interpreter {costs['interpreter_mib']:.1f} MiB, imports {total:.1f} MiB "
          f"({costs['modules']} modules); largest (MiB, own import ms, modules):")
    for name, r in rows[:top]:
        err = f"  ({len(r['errors'])} failed: {r['errors'][0]})" if "errors" in r else ""
        print(f"  {r['rss_mib']:7.2f} {r['import_ms']:8.1f} {r['modules']:5d}  {name}{err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--imports", action="store_true",
                        help="also the RSS each top-level import adds, per process")
    parser.add_argument("--pod", action="store_true",
                        help="the relay alone, as its pod runs it (against a stand-in API)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    run = measure_pod if args.pod else measure
    with tempfile.TemporaryDirectory() as tmp:
        plain = asyncio.run(run(Path(tmp) / "plain", {}))
        result: dict[str, Any] = {f"{k}_rss_idle_mib": round(v, 1)
                                  for k, v in plain["rss"].items()}
        for k, v in plain["rss"].items():
            print(f"{k:<7} idle VmRSS {v:6.1f} MiB (goal ≤ {GOALS_MIB[k]:.0f})"
                  + (" — as its pod runs it" if args.pod else ""))
        if args.imports:
            traced = asyncio.run(run(Path(tmp) / "traced", {"PYTHONPROFILEIMPORTTIME": "1"}))
            costs = {k: import_costs(log) for k, log in traced["logs"].items()}
            for k, c in costs.items():
                print_costs(k, c, args.top)
            result["imports"] = costs
    if args.json:
        print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
