"""Mirror mode: does copying a client's requests to a laptop slow the client? (issue 12)

The deployment's shape, every part a process of its own on 127.0.0.1: a real relay and a real
daemon (``bridged.localrun``), the origin (nginx, one worker, ``return 200 "origin"``), the
laptop's service (this script with ``--serve-laptop``: aiohttp, answers ``laptop`` at once or
after ``--delay`` seconds, counts what it gets), and wrk pinned to the other CPU. Scenarios,
each the same wrk load (``-t1 -c<connections>``, a warm-up run then the measured one):

  none     wrk → origin: no intercept at all, the floor
  header   wrk → relay → origin: a header intercept (``x-dev=bench``) the load does not carry,
           so the router decides and sends each request to the origin: the baseline
  fast     wrk → relay → origin with ``x-dev: bench``, which a *mirror* intercept matches:
           each request is also copied to the laptop, which answers at once
  slow     the same, the laptop answering each copy after 1 s
  down     the same, nothing listening on the laptop's port

Every response is checked (a wrk Lua script: 2xx and the origin's body, none the laptop's), the
origin's access log must have grown by at least the requests wrk completed, the laptop must
get no request in ``header`` and only marked copies (``x-bridged-mirror``) in the mirror
scenarios. A failed check is shown and the script exits 1. A benchmark, not a test: slow
numbers are reported, never asserted.

    .venv/bin/python bench/mirror.py [--quick] [--json] [--connections C] [--profile DIR]

``--json``: the table, then one JSON object on the last line; its keys are in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import benchkit
from benchkit import free_port, log, stop_proc

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess, RelayProcess

NGINX = "/usr/sbin/nginx"
SCENARIOS = ("none", "header", "fast", "slow", "down")
MIRRORS = ("fast", "slow", "down")
ORIGIN_BODY = "origin"
LAPTOP_BODY = "laptop"
MIRROR_HEADER = "x-bridged-mirror"
#: seconds the slow laptop takes to answer a copy (the issue's "slow")
SLOW_SECONDS = 1.0
#: seconds the counts (laptop's, daemon's drops) may take to settle after the load: the relay
#: tells drops twice a second and a slow copy ends a second after it was sent
SETTLE_SECONDS = 5.0

# Counts every answer that is not a 2xx with the origin's body, per wrk thread; done() prints
# the totals on one line the script parses.
WRK_CHECK_LUA = """
seen, bad, first = 0, 0, ""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  seen = seen + 1
  if status < 200 or status > 299 or body ~= "@ORIGIN@" then
    bad = bad + 1
    if first == "" then first = status .. " " .. string.sub(body or "", 1, 60) end
  end
end
function done(summary, latency, requests)
  local s, b, f = 0, 0, ""
  for _, t in ipairs(threads) do
    s = s + t:get("seen"); b = b + t:get("bad")
    if f == "" then f = t:get("first") end
  end
  io.write(string.format("CHECK seen=%d bad=%d first=%q\\n", s, b, f))
end
""".replace("@ORIGIN@", ORIGIN_BODY)


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_children(pid: int) -> list[int]:
    """``pid`` and its children (nginx's master and its worker)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (all CPUs; not idle, not iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Noise:
    """CPUs (on average) that processes other than the bench's used during a run: on a shared
    machine the numbers mean little above ~0.15."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.started = time.monotonic()
        self.busy = machine_busy_seconds()
        self.ours = self._ours()

    def _ours(self) -> float:
        # wrk (and py-spy) are counted once waited for: RUSAGE_CHILDREN
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = resource.getrusage(resource.RUSAGE_SELF)
        return (sum(cpu_seconds(p) for p in self.pids) + children.ru_utime
                + children.ru_stime + own.ru_utime + own.ru_stime)

    def cpus(self) -> float:
        wall = time.monotonic() - self.started
        other = (machine_busy_seconds() - self.busy) - (self._ours() - self.ours)
        return round(max(0.0, other) / wall, 3)


# --- the laptop's service (a process of its own) -----------------------------------------------


def serve_laptop(delay: float) -> None:
    """Answers ``laptop`` to every request (after ``delay`` s), counts them (marked as mirror
    copies or not), and answers its counts on ``GET /__bench/count``. Prints ``{"port": P}``,
    then runs until its stdin closes."""
    from aiohttp import web

    counts = {"copies": 0, "unmarked": 0}

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/__bench/count" and MIRROR_HEADER not in request.headers:
            return web.json_response(counts)
        counts["copies" if MIRROR_HEADER in request.headers else "unmarked"] += 1
        await request.read()
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text=LAPTOP_BODY)

    async def run() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        print(json.dumps({"port": port}), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.buffer.read)  # until stdin closes
        await asyncio.wait_for(runner.cleanup(), 5)

    asyncio.run(run())


class Laptop:
    """The laptop's service in a process of its own, pinned to ``cpus``."""

    def __init__(self, delay: float, cpus: str | None) -> None:
        self.delay = delay
        self.cpus = cpus
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aenter__(self) -> Laptop:
        cmd = [sys.executable, __file__, "--serve-laptop", "--delay", str(self.delay)]
        if self.cpus:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError("the laptop's server did not start")
        self.port = int(json.loads(line)["port"])
        return self

    def counts(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__bench/count",
                                    timeout=5) as r:
            return dict(json.loads(r.read()))

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --- nginx, the origin --------------------------------------------------------------------------


def nginx_conf(prefix: Path, port: int) -> str:
    return f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "{ORIGIN_BODY}"; }}
    }}
}}
"""


def start_origin(prefix: Path, port: int, cpus: str | None) -> subprocess.Popen[bytes]:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port))
    cmd = [NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=(prefix / "stderr.log").open("ab"))
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited ({proc.returncode}): "
                               f"{(prefix / 'error.log').read_text(errors='replace')[-400:]}")
        if get(port) == ORIGIN_BODY:
            return proc
        if time.monotonic() > deadline:
            raise RuntimeError(f"nginx does not answer on 127.0.0.1:{port}")
        time.sleep(0.05)


def get(port: int, headers: dict[str, str] | None = None) -> str | None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return None


def lines_of(path: Path) -> int:
    with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return 0


# --- wrk ----------------------------------------------------------------------------------------


async def run_wrk(script: Path, port: int, seconds: int, conns: int, cpus: str | None,
                  headers: tuple[str, ...]) -> dict[str, Any]:
    result = await benchkit.run_wrk(port, seconds, conns, cpus, headers=headers, script=script)
    if "checked" not in result or "requests" not in result:
        raise RuntimeError(f"wrk's output lacks the Lua check's line: {result}")
    return result


async def py_spy(pid: int, seconds: int, out: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
        "--duration", str(max(1, seconds - 1)), "--rate", "250", "--format", "raw",
        "--nonblocking",
        "-o", str(out), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


# --- the run ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        two = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
        #: CPU 0 is the cluster (relay, origin); CPU 1 the world outside it (the client's
        #: load, and the laptop: daemon and its service), so the laptop's work competes with
        #: the client's load generator, not with the relay it must not slow
        self.cluster_cpus = "0" if two else None
        self.outside_cpus = "1" if two else None
        self.script = tmp / "check.lua"
        self.script.write_text(WRK_CHECK_LUA)
        self.problems: list[str] = []
        self.origin_pids: list[int] = []

    def problem(self, scenario: str, what: str) -> None:
        self.problems.append(f"{scenario}: {what}")
        log(f"CHECK FAILED {scenario}: {what}")

    async def load(self, name: str, port: int, headers: tuple[str, ...], origin_log: Path,
                   relay_pid: int | None, pids: list[int]) -> dict[str, Any]:
        """The warm-up and the measured wrk runs, both checked; the measured one's numbers."""
        args = self.args
        before = lines_of(origin_log)
        warm = await run_wrk(self.script, port, args.warmup, args.connections,
                             self.outside_cpus, headers)
        spy = None
        if args.profile and relay_pid is not None:
            spy = await py_spy(relay_pid, args.seconds, args.profile / f"relay-{name}.txt")
        cpu0 = cpu_seconds(relay_pid) if relay_pid else 0.0
        noise = Noise(pids)
        try:
            r = await run_wrk(self.script, port, args.seconds, args.connections,
                              self.outside_cpus, headers)
        finally:
            if spy is not None:
                try:
                    await asyncio.wait_for(spy.wait(), 15)
                except TimeoutError:
                    spy.kill()
                    await spy.wait()
        r["other_cpus"] = noise.cpus()
        if relay_pid:
            r["relay_cpu_us_per_request"] = round(
                (cpu_seconds(relay_pid) - cpu0) / max(1, r["requests"]) * 1e6, 1)
        # one connection, one request after another: the relay is not saturated, so this is
        # the latency a request pays on its path, with the copies' work beside it on the loop
        light = await run_wrk(self.script, port, args.light_seconds, 1, self.outside_cpus,
                              headers)
        r.update({f"light_{k}": light[k] for k in ("rps", "p50_ms", "p99_ms", "max_ms")})
        sent = warm["requests"] + r["requests"] + light["requests"]
        r["requests_sent"] = sent  # warm-up, measured and light, all checked
        for run in (warm, r, light):
            if run["wrong"] or run["errors"]:
                self.problem(name, f"{run['wrong']} answers not 2xx '{ORIGIN_BODY}' (first: "
                                   f"{run['first_wrong']!r}), {run['errors']} wrk errors")
            if run["checked"] < run["requests"]:
                self.problem(name, f"wrk checked {run['checked']} of {run['requests']} answers")
        served = lines_of(origin_log) - before
        r["origin_served"] = served
        if served < sent:
            self.problem(name, f"the origin served {served} requests, wrk completed {sent}")
        return r

    async def run(self) -> dict[str, Any]:
        if not os.access(NGINX, os.X_OK) or not shutil.which("wrk"):
            raise SystemExit("bench/mirror.py needs nginx and wrk: apt-get install -y nginx wrk")
        if self.args.profile:
            self.args.profile.mkdir(parents=True, exist_ok=True)
        results: dict[str, dict[str, Any]] = {}
        origin_port = free_port()
        origin_dir = self.tmp / "origin"
        origin = start_origin(origin_dir, origin_port, self.cluster_cpus)
        origin_log = origin_dir / "access.log"
        try:
            self.origin_pids = with_children(origin.pid)
            results["none"] = await self.load("none", origin_port, (), origin_log, None,
                                              self.origin_pids)
            log(f"none: {short(results['none'])}")
            async with RelayProcess(self.tmp / "relay") as relay, \
                    DaemonProcess(self.tmp / "daemon") as daemon:
                client = ControlClient(daemon.socket)

                async def call(method: str, path: str, body: dict[str, Any] | None = None
                               ) -> Any:
                    return await asyncio.to_thread(client.request, method, path, body)

                if self.cluster_cpus:
                    os.sched_setaffinity(relay.pid, {int(self.cluster_cpus)})
                if self.outside_cpus:
                    os.sched_setaffinity(daemon.pid, {int(self.outside_cpus)})
                relay.authorize((await call("GET", "status"))["daemon"]["client_key"])
                await call("POST", "bridges", {"url": relay.url})
                for name in SCENARIOS[1:]:
                    results[name] = await self.scenario(name, call, relay, daemon,
                                                        origin_port, origin_log)
                    log(f"{name}: {short(results[name])}")
        finally:
            stop_proc(origin)
            if self.args.profile:  # the logs beside the stacks: what the relay said meanwhile
                for part in ("relay/relay.log", "daemon/daemon.log"):
                    with contextlib.suppress(OSError):
                        shutil.copy(self.tmp / part, self.args.profile)
        return self.summary(results)

    async def scenario(self, name: str, call: Any, relay: RelayProcess,
                       daemon: DaemonProcess, origin_port: int, origin_log: Path
                       ) -> dict[str, Any]:
        mirror = name in MIRRORS
        port = free_port()
        body = {"name": f"bench-{name}", "remote_port": port, "headers": ["x-dev=bench"],
                "origin": f"127.0.0.1:{origin_port}", "mirror": mirror}
        async with contextlib.AsyncExitStack() as stack:
            laptop: Laptop | None = None
            if name == "down":
                body["local_port"] = free_port()  # nothing listens there
            else:
                laptop = await stack.enter_async_context(
                    Laptop(SLOW_SECONDS if name == "slow" else 0.0, self.outside_cpus))
                body["local_port"] = laptop.port
            await call("POST", "intercepts", body)
            try:
                # the load carries the header in the mirror scenarios only: each request is
                # copied; in "header" none matches, the router sends all to the origin
                headers = ("x-dev: bench",) if mirror else ()
                answer = await asyncio.to_thread(
                    get, port, {"x-dev": "bench"} if mirror else None)
                if answer != ORIGIN_BODY:
                    self.problem(name, f"the first request got {answer!r}, not the origin's")
                daemon_cpu0 = cpu_seconds(daemon.pid)
                pids = [*self.origin_pids, relay.pid, daemon.pid,
                        *([laptop.pid] if laptop is not None else [])]
                r = await self.load(name, port, headers, origin_log, relay.pid, pids)
                r["daemon_cpu_seconds"] = round(cpu_seconds(daemon.pid) - daemon_cpu0, 2)
                r["requests_sent"] += 1  # the first request, also copied
                counts, dropped = await self.settled(name, call, laptop)
            finally:
                await call("DELETE", f"intercepts/bench-{name}")
        r["copies_received"] = counts["copies"]
        r["dropped"] = dropped
        if counts["unmarked"]:
            self.problem(name, f"the laptop got {counts['unmarked']} requests not marked "
                               f"{MIRROR_HEADER}")
        if not mirror and counts["copies"]:
            self.problem(name, f"the laptop got {counts['copies']} copies without a mirror")
        if name == "fast" and not counts["copies"]:
            self.problem(name, "no copy reached the laptop")
        if name == "down" and not dropped.get("laptop unreachable"):
            self.problem(name, "no copy counted as dropped: laptop unreachable")
        return r

    async def settled(self, name: str, call: Any, laptop: Laptop | None
                      ) -> tuple[dict[str, int], dict[str, int]]:
        """The laptop's counts and the daemon's drops once they stop moving (bounded)."""
        last: tuple[Any, ...] = ()
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            counts = (await asyncio.to_thread(laptop.counts) if laptop is not None
                      else {"copies": 0, "unmarked": 0})
            status = await call("GET", "status")
            [intercept] = [i for i in status["intercepts"] if i["name"] == f"bench-{name}"]
            dropped = dict(intercept.get("mirror_dropped") or {})
            now = (counts, dropped)
            if now == last or time.monotonic() > deadline:
                return counts, dropped
            last = now
            await asyncio.sleep(0.6)  # the relay tells drops every 0.5 s: two equal looks

    def summary(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        base = results["header"]
        for r in results.values():
            r["rps_ratio_vs_header"] = round(r["rps"] / base["rps"], 3)
            r["p50_ratio_vs_header"] = round(r["p50_ms"] / base["p50_ms"], 3)
            r["p99_ratio_vs_header"] = round(r["p99_ms"] / base["p99_ms"], 3)
            r["light_p50_ratio_vs_header"] = round(r["light_p50_ms"] / base["light_p50_ms"], 3)
            r["light_p99_ratio_vs_header"] = round(r["light_p99_ms"] / base["light_p99_ms"], 3)
        return {
            **results,
            "connections": self.args.connections,
            "seconds": self.args.seconds,
            "correct": not self.problems,
            "problems": self.problems,
            "load": {"tool": "wrk", "threads": 1, "connections": self.args.connections,
                     "seconds": self.args.seconds, "warmup_seconds": self.args.warmup,
                 "light_connections": 1, "light_seconds": self.args.light_seconds,
                     "wrk_cpus": self.outside_cpus, "relay_cpus": self.cluster_cpus,
                     "origin_cpus": self.cluster_cpus, "laptop_cpus": self.outside_cpus},
        }


def short(r: dict[str, Any]) -> str:
    return (f"{r['rps']:.0f} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"
            + (f", copies {r['copies_received']}, dropped {r['dropped']}"
               if "dropped" in r else ""))


def table(out: dict[str, Any]) -> str:
    lines = [f"{'scenario':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
             f"{'rps/hdr':>8}{'p50/hdr':>8}{'p99/hdr':>8}{'c1 p50':>8}{'c1 p99':>8}{'c1/hdr':>7}"
             f"{'relay µs/req':>13}{'sent':>8}"
             f"{'copies':>8}{'other':>7}  dropped"]
    for name in SCENARIOS:
        r = out[name]
        cpu = r.get("relay_cpu_us_per_request")
        lines.append(
            f"{name:<9}{r['rps']:>9.0f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['max_ms']:>9.1f}"
            f"{r['rps_ratio_vs_header']:>8.2f}{r['p50_ratio_vs_header']:>8.2f}"
            f"{r['p99_ratio_vs_header']:>8.2f}{r['light_p50_ms']:>8.3f}{r['light_p99_ms']:>8.3f}"
            f"{r['light_p50_ratio_vs_header']:>7.2f}{'-' if cpu is None else f'{cpu:.0f}':>13}"
            f"{r['requests_sent']:>8}{r.get('copies_received', '-'):>8}"
            f"{r['other_cpus']:>7.2f}  "
            f"{', '.join(f'{k}: {v}' for k, v in r.get('dropped', {}).items()) or '-'}")
    load = out["load"]
    lines.append(f"load: wrk -t1 -c{load['connections']} -d{load['seconds']}s after "
                 f"{load['warmup_seconds']}s warm-up, then c1 = -c1 -d{load['light_seconds']}s "
                 f"(p50/p99 ms, p50 ÷ header's); wrk, daemon and laptop on cpu "
                 f"{load['wrk_cpus']}, relay and origin on cpu {load['relay_cpus']}; "
                 f"sent = requests of warm-up and measured run (each checked); other = CPUs "
                 f"other processes used meanwhile (noisy above ~0.15)")
    lines.append("checks: all passed" if out["correct"]
                 else "checks FAILED:\n  " + "\n  ".join(out["problems"]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object on the last line")
    ap.add_argument("--quick", action="store_true", help="shorter runs (~45 s in all)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--profile", type=Path, help="py-spy record the relay in each scenario")
    ap.add_argument("--serve-laptop", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--delay", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_laptop:
        serve_laptop(args.delay)
        return
    if args.connections < 1:
        ap.error("--connections must be positive")
    if args.profile and not (Path(sys.executable).parent / "py-spy").exists():
        ap.error("--profile needs py-spy in the venv: .venv/bin/pip install py-spy")
    args.seconds, args.warmup, args.light_seconds = (3, 1, 2) if args.quick else (8, 2, 4)
    tmp = Path(tempfile.mkdtemp(prefix="bridged-mirror-bench-"))
    try:
        out = asyncio.run(Bench(args, tmp).run())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(out), flush=True)
    if args.json:
        print(json.dumps(out, sort_keys=True), flush=True)
    if not out["correct"]:
        sys.exit(1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
