"""Unmatched HTTP traffic through bridged's relay router (relay → origin) beside two baselines.

Columns, all on 127.0.0.1, all hit with the same wrk load:

  direct   wrk → origin (nginx, ``return 200 "ok";``, one worker): the floor
  nginx    wrk → nginx reverse proxy (one worker, keepalive upstream) → origin
  router   wrk → relay intercept port (per-request intercept on ``x-dev=nobody``, so every
           request of the load is unmatched) → origin

Prints a table; with ``--json`` one JSON object on the last line (``rps_ratio_vs_nginx``,
``added_p50_ms``, ``relay_cpu_us_per_request``, ...). A benchmark, not a test: targets are
reported, never asserted. One relay process reaches the target (bench/README.md says where its
time goes, and how worker processes would be built for a pod given more cores).

    .venv/bin/python bench/router.py [--quick] [--json] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import benchkit  # (also puts the repo on sys.path)
from benchkit import free_port, log, stop_proc

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess, RelayProcess

NGINX = "/usr/sbin/nginx"
TARGET_RPS_RATIO = 0.5
TARGET_ADDED_P50_MS = 1.0


# --- nginx --------------------------------------------------------------------------------------


def nginx_conf(prefix: Path, server: str) -> str:
    return f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
{server}
}}
"""


def origin_server(port: int) -> str:
    return f"""    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "ok"; }}
    }}"""


def proxy_server(port: int, origin_port: int) -> str:
    return f"""    upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def start_nginx(prefix: Path, server: str, port: int, cpus: str | None) -> subprocess.Popen[bytes]:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, server))
    cmd = [NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=(prefix / "stderr.log").open("ab"))
    wait_http(port, proc, prefix / "error.log")
    return proc


def wait_http(port: int, proc: subprocess.Popen[bytes] | None = None,
              errlog: Path | None = None, within: float = 10.0) -> str:
    deadline = time.monotonic() + within
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = errlog.read_text(errors="replace")[-400:] if errlog and errlog.exists() else ""
            raise RuntimeError(f"nginx exited ({proc.returncode}): {tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                return r.read().decode()
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers HTTP on 127.0.0.1:{port}: {last}")


# --- wrk ----------------------------------------------------------------------------------------

async def run_wrk(wrk: str, port: int, seconds: int, conns: int, cpus: str | None,
                  headers: tuple[str, ...] = ()) -> dict[str, Any]:
    return await benchkit.run_wrk(port, seconds, conns, cpus, headers=headers, wrk=wrk)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_worker(master: subprocess.Popen[bytes]) -> int | None:
    """The pid of a one-worker nginx's worker (what does its proxying)."""
    children = Path(f"/proc/{master.pid}/task/{master.pid}/children")
    with contextlib.suppress(OSError, ValueError):
        return int(children.read_text().split()[0])
    return None


async def measure(wrk: str, port: int, args: argparse.Namespace, cpus: str | None,
                  profile_pid: int | None = None, profile_out: Path | None = None,
                  cpu_pid: int | None = None) -> dict[str, Any]:
    """One wrk run (after a warm-up); with ``cpu_pid``, also that process's CPU time per
    request (``cpu_us_per_request``): steadier than req/s on a machine that others share."""
    await run_wrk(wrk, port, args.warmup, args.connections, cpus)  # warm caches/connections
    spy = None
    if profile_pid is not None and profile_out is not None:
        py_spy = Path(sys.executable).parent / "py-spy"
        spy = await asyncio.create_subprocess_exec(
            str(py_spy), "record", "--pid", str(profile_pid), "--duration",
            str(max(1, args.seconds - 1)), "--format", "raw", "--nonblocking",
            "-o", str(profile_out), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
    try:
        before = cpu_seconds(cpu_pid) if cpu_pid is not None else 0.0
        result = await run_wrk(wrk, port, args.seconds, args.connections, cpus)
        if cpu_pid is not None and result["requests"]:
            result["cpu_us_per_request"] = round(
                (cpu_seconds(cpu_pid) - before) * 1e6 / result["requests"], 2)
        return result
    finally:
        if spy is not None:
            try:
                await asyncio.wait_for(spy.wait(), 15)
            except TimeoutError:
                spy.kill()
                await spy.wait()


# --- main ---------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    have_nginx = os.access(NGINX, os.X_OK)
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk not found: apt-get install -y wrk (the load generator is required)")
    taskset = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    wrk_cpus = "1" if taskset else None
    server_cpus = "0" if taskset else None  # nginx proxy and relay both off wrk's core

    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, Any] | None] = {"direct": None, "nginx": None, "router": None}
    origin_server_py: asyncio.Server | None = None
    try:
        origin_port = free_port()
        if have_nginx:
            procs.append(start_nginx(tmp / "origin", origin_server(origin_port), origin_port,
                                     server_cpus))
        else:
            log(f"{NGINX} not found (apt-get install -y nginx): the nginx column is skipped and "
                "the origin is a Python asyncio server, which will be the bottleneck")
            origin_server_py = await _py_origin(origin_port)

        results["direct"] = await measure(wrk, origin_port, args, wrk_cpus)
        log(f"direct: {results['direct']}")

        if have_nginx:
            proxy_port = free_port()
            procs.append(start_nginx(tmp / "proxy", proxy_server(proxy_port, origin_port),
                                     proxy_port, server_cpus))
            results["nginx"] = await measure(wrk, proxy_port, args, wrk_cpus,
                                             cpu_pid=nginx_worker(procs[-1]))
            log(f"nginx: {results['nginx']}")
            stop_proc(procs.pop())

        async with RelayProcess(tmp / "relay") as relay, \
                DaemonProcess(tmp / "daemon") as daemon:
            client = ControlClient(daemon.socket)

            async def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
                return await asyncio.to_thread(client.request, method, path, body)

            if server_cpus:  # the same CPU as the nginx proxy had: like for like
                os.sched_setaffinity(relay.pid, {int(c) for c in server_cpus.split(",")})
            status = await call("GET", "status")
            relay.authorize(status["daemon"]["client_key"])
            await call("POST", "bridges", {"url": relay.url})
            port = free_port()
            await call("POST", "intercepts", {
                "remote_port": port, "local_port": origin_port, "headers": ["x-dev=nobody"],
                "origin": f"127.0.0.1:{origin_port}"})
            body = await asyncio.to_thread(wait_http, port)
            if body.strip() != "ok":
                raise RuntimeError(f"the router answered {body!r}, not the origin's 'ok'")
            profile = None
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                profile = args.profile / "relay.txt"
            results["router"] = await measure(wrk, port, args, wrk_cpus,
                                              relay.pid if profile else None, profile,
                                              cpu_pid=relay.pid)
            log(f"router: {results['router']}")
            if profile:
                log(f"relay profile (py-spy raw stacks): {profile}")
    finally:
        for p in reversed(procs):
            stop_proc(p)
        if origin_server_py is not None:
            origin_server_py.close()

    direct, nginx, router = results["direct"], results["nginx"], results["router"]
    assert direct is not None and router is not None
    ratio = round(router["rps"] / nginx["rps"], 3) if nginx else None
    added = round(router["p50_ms"] - direct["p50_ms"], 3)
    return {
        "paths": results,
        "rps_ratio_vs_nginx": ratio,
        "added_p50_ms": added,
        "nginx_added_p50_ms": round(nginx["p50_ms"] - direct["p50_ms"], 3) if nginx else None,
        # CPU time per request of the relay and of the nginx proxy's worker (the origin's
        # excluded): what the ratio comes from, steadier than req/s on a shared machine
        "relay_cpu_us_per_request": router.get("cpu_us_per_request"),
        "nginx_cpu_us_per_request": nginx.get("cpu_us_per_request") if nginx else None,
        "targets": {"rps_ratio_vs_nginx": TARGET_RPS_RATIO, "added_p50_ms": TARGET_ADDED_P50_MS},
        "targets_met": {
            "rps_ratio_vs_nginx": None if ratio is None else ratio >= TARGET_RPS_RATIO,
            "added_p50_ms": added <= TARGET_ADDED_P50_MS,
        },
        "load": {"connections": args.connections, "seconds": args.seconds, "threads": 1,
                 "wrk_cpus": wrk_cpus, "nginx_cpus": server_cpus,
                 "python": benchkit.interpreter()},
    }


async def _py_origin(port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                             b"Content-Type: text/plain\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


def _met(ok: bool | None) -> str:
    return "" if ok is None else ", met" if ok else ", NOT met"


def table(r: dict[str, Any]) -> str:
    lines = [f"{'path':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
             f" {'cpu us/req':>10}"]
    for name, v in r["paths"].items():
        if v is None:
            lines.append(f"{name:<8} {'skipped':>10}")
        else:
            cpu = v.get("cpu_us_per_request")
            lines.append(f"{name:<8} {v['rps']:>10.0f} {v['p50_ms']:>8.3f} {v['p99_ms']:>8.3f}"
                         f" {v['errors']:>7} {'' if cpu is None else f'{cpu:.1f}':>10}")
    ratio = r["rps_ratio_vs_nginx"]
    met = r["targets_met"]
    lines.append(
        f"router/nginx rps: {'n/a' if ratio is None else f'{ratio:.2f}'} "
        f"(target ≥ {TARGET_RPS_RATIO}{_met(met['rps_ratio_vs_nginx'])})"
        f"; router added p50: {r['added_p50_ms']:.3f} ms (target ≤ {TARGET_ADDED_P50_MS}"
        f"{_met(met['added_p50_ms'])})")
    load = r["load"]
    lines.append(f"load: wrk -t1 -c{load['connections']} -d{load['seconds']}s "
                 f"(wrk on cpu {load['wrk_cpus']}, nginx on cpu {load['nginx_cpus']}); "
                 f"relay on {load.get('python', '?')}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object on the last line")
    ap.add_argument("--quick", action="store_true", help="shorter runs (~20 s in all)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--profile", type=Path, help="py-spy record the relay during its load")
    args = ap.parse_args()
    args.seconds, args.warmup = (2, 1) if args.quick else (5, 2)
    tmp = Path(tempfile.mkdtemp(prefix="bridged-router-bench-"))
    try:
        result = asyncio.run(bench(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(result), flush=True)
    if args.json:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
