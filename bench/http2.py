"""Unmatched HTTP/2 (h2c, prior knowledge) through bridged's relay router beside nginx.

Paths, all on 127.0.0.1, all hit with the same h2load loads (one load per concurrency shape):

  direct     h2load → origin (nginx, ``listen … http2``, ``return 200 "ok";``): the floor
  nginx-h2   h2load → nginx (``listen … http2``, one worker) → ``grpc_pass`` (nginx's only
             HTTP/2 upstream, a keepalive pool) → origin
  bridged    h2load → relay intercept port (intercept on ``x-dev: bench``, so every stream of
             the load is unmatched) → origin

Every run is checked, not only timed: h2load's started = done = succeeded, no failure, every
status (summary and per-request log) 2xx; the origin's access log grew by at least the
succeeded requests, all of them HTTP/2, and the intercept's local server (the "laptop", an
nginx h2c server answering "dev") got none of them. One request *with* the header says how the
router handled HTTP/2: ``per-stream`` (it reached the laptop) or ``pass-through`` (the whole
connection was spliced to the origin, so it reached the origin).

Prints a table; with ``--json`` one JSON object on the last line (``rps_ratio_vs_nginx``,
``added_p50_ms``, ``router_mode``, ``correct``, ``shapes``, ...). A benchmark, not a test:
targets are reported, never asserted, but a run whose checks fail exits 1.

    .venv/bin/python bench/http2.py [--quick] [--json] [--shapes 1x10,10x10,50x1] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
from benchkit import REPO  # noqa: E402  (also puts the repo on sys.path)

from bridged.control.client import ControlClient  # noqa: E402
from bridged.errors import BridgedError  # noqa: E402
from bridged.localrun import DaemonProcess, RelayProcess  # noqa: E402


def _bench_module(name: str) -> ModuleType:
    """A sibling bench script, imported by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


router = _bench_module("router")
NGINX: str = router.NGINX
start_nginx = router.start_nginx
from benchkit import free_port, log, stop_proc  # noqa: E402

TARGET_RPS_RATIO = 0.5  # issue 11: unmatched streams at ≥ half of nginx's rate
DEV_HEADER = ("x-dev", "bench")
#: "CxM": C connections, M concurrent streams on each
DEFAULT_SHAPES = "1x10,10x10,50x1"
PATHS = ("direct", "nginx-h2", "bridged")
LOG_FORMAT = 'log_format bench "$server_protocol $status";'


# --- nginx --------------------------------------------------------------------------------------


def health_server(port: int) -> str:
    """HTTP/1.1 answer for router.start_nginx's readiness wait (an h2c port refuses HTTP/1.1)."""
    return f"""    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "ok"; }}
    }}"""


def origin_servers(origin: int, laptop: int, health: int, logs: Path) -> str:
    # buffered: a write per request would cost the origin's core (which the proxies share)
    return f"""    {LOG_FORMAT}
    server {{
        listen 127.0.0.1:{origin} http2;
        access_log {logs}/origin.log bench buffer=64k flush=100ms;
        location / {{ default_type text/plain; return 200 "ok"; }}
    }}
    server {{
        listen 127.0.0.1:{laptop} http2;
        access_log {logs}/laptop.log bench;
        location / {{ default_type text/plain; return 200 "dev"; }}
    }}
{health_server(health)}"""


def proxy_servers(port: int, origin: int, health: int, grpc: bool) -> str:
    if grpc:
        location = "grpc_pass grpc://origin;"
    else:  # no HTTP/2 upstream in this nginx: HTTP/1.1 to an HTTP/1.1 origin port
        location = ('proxy_pass http://origin; proxy_http_version 1.1; '
                    'proxy_set_header Connection "";')
    # nginx sends one stream per upstream connection (no multiplexing): enough idle ones kept
    # for every concurrent stream of the loads, each kept for the whole run
    return f"""    upstream origin {{
        server 127.0.0.1:{origin}; keepalive 512; keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{ {location} }}
    }}
{health_server(health)}"""


def nginx_has_grpc() -> bool:
    out = subprocess.run([NGINX, "-V"], capture_output=True, text=True, check=False)
    return "--without-http_grpc_module" not in out.stdout + out.stderr


class AccessLog:
    """Lines an nginx server block logged (``$server_protocol $status``) since a mark."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace").splitlines()

    async def wait(self, at_least: int, within: float = 3.0) -> list[str]:
        """The lines since the mark, once there are ``at_least`` (nginx flushes its buffer
        every 100 ms) or the time is up."""
        deadline = time.monotonic() + within
        while True:
            got = self.lines()
            if len(got) >= at_least or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.05)

    async def settle(self, within: float = 3.0) -> list[str]:
        """The lines since the mark once the log stopped growing (two of nginx's flushes)."""
        deadline = time.monotonic() + within
        size = -1
        while time.monotonic() < deadline:
            now = self.path.stat().st_size if self.path.exists() else 0
            if now == size:
                break
            size = now
            await asyncio.sleep(0.2)
        return self.lines()


# --- h2load -------------------------------------------------------------------------------------


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)x(\d+)\s*", part)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise SystemExit(f"bad shape {part!r}: CONNECTIONSxSTREAMS, e.g. {DEFAULT_SHAPES}")
        shapes.append((int(m.group(1)), int(m.group(2))))
    return shapes


def shape_name(conns: int, streams: int) -> str:
    return f"c{conns}m{streams}"


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def parse_h2load(out: str, log_file: Path, sent: int) -> dict[str, Any]:
    """h2load's summary and its per-request log (start µs, status, duration µs): rates and
    latencies, and what is wrong with the run (``problems``; empty: all ``sent`` requests
    answered 2xx; 0: a timed run, only checked for failures)."""
    fin = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (fin and req and codes):
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    total, started, done, ok, failed, errored, timeout = (int(x) for x in req.groups())
    c2xx, c3xx, c4xx, c5xx = (int(x) for x in codes.groups())
    problems = []
    if ok == 0:
        problems.append("no request succeeded")
    if failed or errored or timeout:
        problems.append(f"{failed} failed, {errored} errored, {timeout} timed out")
    if c3xx or c4xx or c5xx:
        problems.append(f"statuses: {c2xx} 2xx, {c3xx} 3xx, {c4xx} 4xx, {c5xx} 5xx")
    if not sent:
        return {"rps": float(fin.group(1)), "problems": problems}
    if not total == started == done == ok == c2xx == sent:
        problems.append(f"{sent} sent: {total} total, {started} started, {done} done, "
                        f"{ok} succeeded, {c2xx} 2xx")
    durations, bad_status = [], 0
    for line in log_file.read_text().splitlines():
        cols = line.split("\t")
        if not 200 <= int(cols[1]) < 300:
            bad_status += 1
        durations.append(int(cols[2]) / 1000)
    if bad_status:
        problems.append(f"{bad_status} requests of the log not 2xx")
    if len(durations) != ok:
        problems.append(f"{len(durations)} requests logged, {ok} succeeded")
    durations.sort()
    return {
        "rps": float(fin.group(1)),
        "p50_ms": round(percentile(durations, 0.50), 3) if durations else None,
        "p99_ms": round(percentile(durations, 0.99), 3) if durations else None,
        "requests": ok,
        "errors": failed + errored + timeout + c3xx + c4xx + c5xx,
        "problems": problems,
    }


async def run_h2load(h2load: str, port: int, conns: int, streams: int, cpus: str | None,
                     log_file: Path, *, requests: int = 0, seconds: int = 0) -> dict[str, Any]:
    """``requests`` of them (counted: every one must succeed), or as many as ``seconds`` allow
    (timed: for warming up and sizing the counted run; the streams still in flight when the
    time is up are cut, so the counts are approximate)."""
    cmd = [h2load, "-t1", f"-c{conns}", f"-m{streams}", "--log-file", str(log_file)]
    cmd += ["-n", str(requests)] if requests else ["-D", str(seconds)]
    cmd.append(f"http://127.0.0.1:{port}/")
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:  # a counted run is sized for ~``seconds``: five times that means something is stuck
        out, _ = await asyncio.wait_for(proc.communicate(), 5 * (seconds or 6) + 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"h2load on port {port} did not finish") from None
    text = out.decode(errors="replace")
    if proc.returncode:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {text[-600:]}")
    return parse_h2load(text, log_file, requests)


def h2_get(curl: str, port: int, headers: tuple[str, ...] = ()) -> tuple[str, str]:
    """One h2c (prior knowledge) GET: (body, "status http-version"); ("", error) on failure."""
    cmd = [curl, "-sS", "-m", "5", "--http2-prior-knowledge",
           "-w", "\n%{http_code} %{http_version}"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{port}/")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        return "", out.stderr.strip() or f"curl exited {out.returncode}"
    body, _, status = out.stdout.rpartition("\n")
    return body, status


async def wait_h2(curl: str, port: int, body: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    got: tuple[str, str] = ("", "")
    while time.monotonic() < deadline:
        got = await asyncio.to_thread(h2_get, curl, port)
        if got == (body, "200 2"):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"127.0.0.1:{port} does not answer h2c with {body!r}: {got}")


async def start_py_spy(pid: int, seconds: int, out: Path) -> asyncio.subprocess.Process:
    """py-spy raw stacks of ``pid`` for about a measured run (as router.py's ``--profile``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
        "--duration", str(max(1, seconds - 1)), "--format", "raw", "--nonblocking", "--rate", "997",
        "-o", str(out), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def stop_py_spy(spy: asyncio.subprocess.Process) -> None:
    try:
        await asyncio.wait_for(spy.wait(), 15)
    except TimeoutError:
        spy.kill()
        await spy.wait()


# --- main ---------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, h2load: str, curl: str,
                 cpus: tuple[str | None, str | None]) -> None:
        self.args, self.tmp, self.h2load, self.curl = args, tmp, h2load, curl
        self.load_cpus, self.server_cpus = cpus
        self.origin_log = AccessLog(tmp / "origin" / "origin.log")
        self.laptop_log = AccessLog(tmp / "origin" / "laptop.log")
        self.problems: list[str] = []
        self.runs = 0

    async def measure(self, path: str, port: int, check_origin: bool,
                      h2_upstream: bool = True, profile_pid: int | None = None
                      ) -> dict[str, dict[str, Any]]:
        """Every shape on ``port``; ``check_origin``: the requests must show in the origin's
        access log (as HTTP/2 when ``h2_upstream``), none in the laptop's; ``profile_pid``:
        py-spy records that process during each measured run (``--profile``)."""
        out = {}
        for conns, streams in self.args.shapes:
            name = shape_name(conns, streams)
            self.runs += 1
            warm = await run_h2load(self.h2load, port, conns, streams, self.load_cpus,
                                    self.tmp / f"warm-{self.runs}.log", seconds=self.args.warmup)
            if warm["problems"]:
                raise RuntimeError(f"{path} {name} warm-up: {'; '.join(warm['problems'])}")
            # as many as the warm-up's rate does in the time, a multiple of the connections
            sent = max(100 * conns * streams, int(warm["rps"] * self.args.seconds))
            sent -= sent % conns
            await self.origin_log.settle()  # the warm-up's last lines are flushed
            self.origin_log.mark()
            self.laptop_log.mark()
            spy = None
            if profile_pid is not None and self.args.profile:
                spy = await start_py_spy(profile_pid, self.args.seconds,
                                         self.args.profile / f"{path}-{name}.txt")
            try:
                r = await run_h2load(self.h2load, port, conns, streams, self.load_cpus,
                                     self.tmp / f"h2load-{self.runs}.log", requests=sent,
                                     seconds=self.args.seconds)
            finally:
                if spy is not None:
                    await stop_py_spy(spy)
            await self.origin_log.wait(sent)
            origin = await self.origin_log.settle()
            r["origin_requests"] = len(origin)
            if check_origin:
                if len(origin) < r["requests"]:
                    r["problems"].append(f"the origin logged {len(origin)} requests, "
                                         f"{r['requests']} succeeded")
                not_h2 = sum(1 for line in origin if not line.startswith("HTTP/2.0 "))
                if h2_upstream and not_h2:
                    r["problems"].append(f"{not_h2} origin requests not HTTP/2")
            laptop = self.laptop_log.lines()
            if laptop:
                r["problems"].append(f"{len(laptop)} unmatched requests reached the laptop")
            self.problems += [f"{path} {name}: {p}" for p in r["problems"]]
            log(f"{path} {name}: {r}")
            out[name] = r
        return out

    async def run(self) -> dict[str, Any]:
        tmp = self.tmp
        grpc = nginx_has_grpc()
        procs: list[subprocess.Popen[bytes]] = []
        paths: dict[str, dict[str, dict[str, Any]]] = {}
        mode = "unknown"
        traffic: dict[str, Any] = {}
        try:
            origin_port, laptop_port, health = free_port(), free_port(), free_port()
            procs.append(start_nginx(tmp / "origin", origin_servers(
                origin_port, laptop_port, health, tmp / "origin"), health, self.server_cpus))
            await wait_h2(self.curl, origin_port, "ok")
            await wait_h2(self.curl, laptop_port, "dev")
            paths["direct"] = await self.measure("direct", origin_port, check_origin=True)

            proxy_port, proxy_health = free_port(), free_port()
            upstream_port = origin_port
            if not grpc:
                log(f"{NGINX} has no grpc module: nginx-h2 proxies over HTTP/1.1")
                upstream_port = health  # the origin's HTTP/1.1 block answers the same "ok"
            procs.append(start_nginx(tmp / "proxy", proxy_servers(
                proxy_port, upstream_port, proxy_health, grpc), proxy_health,
                self.server_cpus))
            await wait_h2(self.curl, proxy_port, "ok")
            paths["nginx-h2"] = await self.measure("nginx-h2", proxy_port, check_origin=grpc,
                                                   h2_upstream=grpc)
            stop_proc(procs.pop())

            paths["bridged"], mode, traffic = await self.bridged(origin_port, laptop_port)
        finally:
            for p in reversed(procs):
                stop_proc(p)
        return self.result(paths, mode, traffic, grpc)

    async def bridged(self, origin_port: int, laptop_port: int
                      ) -> tuple[dict[str, dict[str, Any]], str, dict[str, int]]:
        async with RelayProcess(self.tmp / "relay") as relay, \
                DaemonProcess(self.tmp / "daemon") as daemon:
            client = ControlClient(daemon.socket)

            async def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
                return await asyncio.to_thread(client.request, method, path, body)

            if self.server_cpus:  # the same CPU as the nginx proxy had: like for like
                os.sched_setaffinity(relay.pid, {int(c) for c in self.server_cpus.split(",")})
            status = await call("GET", "status")
            relay.authorize(status["daemon"]["client_key"])
            await call("POST", "bridges", {"url": relay.url})
            port = free_port()
            started = time.time()
            # "protocol": the laptop speaks h2c (the daemon ignores the field before issue 11)
            await call("POST", "intercepts", {
                "remote_port": port, "local_port": laptop_port,
                "headers": ["=".join(DEV_HEADER)], "origin": f"127.0.0.1:{origin_port}",
                "protocol": "h2c"})
            await wait_h2(self.curl, port, "ok")
            self.laptop_log.mark()
            body, how = await asyncio.to_thread(h2_get, self.curl, port, (": ".join(DEV_HEADER),))
            mode = {"dev": "per-stream", "ok": "pass-through"}.get(body, "unknown")
            log(f"a request with {': '.join(DEV_HEADER)}: {body!r} ({how}): {mode}")
            if mode == "unknown":
                self.problems.append(f"bridged: the matched request got {body!r} ({how})")
            out = await self.measure("bridged", port, check_origin=True, profile_pid=relay.pid)
            entries = await call("GET", f"traffic?since={started}")
            traffic = {
                "passed_through": sum(1 for e in entries if e.get("note")),
                "h2_streams": sum(1 for e in entries if e.get("http_version") == "h2"),
            }
            return out, mode, traffic

    def result(self, paths: dict[str, dict[str, dict[str, Any]]], mode: str,
               traffic: dict[str, int], grpc: bool) -> dict[str, Any]:
        shapes = {}
        for conns, streams in self.args.shapes:
            name = shape_name(conns, streams)
            by_path = {p: paths[p][name] for p in PATHS if p in paths}
            direct, nginx, bridged = (by_path.get(p) for p in PATHS)
            assert direct is not None and bridged is not None
            shapes[name] = {
                "connections": conns, "streams_per_connection": streams,
                "paths": by_path,
                "rps_ratio_vs_nginx": round(bridged["rps"] / nginx["rps"], 3) if nginx else None,
                "added_p50_ms": round(bridged["p50_ms"] - direct["p50_ms"], 3),
                "added_p50_ms_vs_nginx":
                    round(bridged["p50_ms"] - nginx["p50_ms"], 3) if nginx else None,
                "nginx_added_p50_ms":
                    round(nginx["p50_ms"] - direct["p50_ms"], 3) if nginx else None,
            }
        ratios = [s["rps_ratio_vs_nginx"] for s in shapes.values()
                  if s["rps_ratio_vs_nginx"] is not None]
        worst = min(ratios) if ratios else None
        return {
            "router_mode": mode,
            "correct": not self.problems,
            "problems": self.problems,
            "shapes": shapes,
            "rps_ratio_vs_nginx": worst,  # the worst shape's
            "added_p50_ms": max(s["added_p50_ms"] for s in shapes.values()),
            "targets": {"rps_ratio_vs_nginx": TARGET_RPS_RATIO},
            "targets_met": {
                "rps_ratio_vs_nginx": None if worst is None else worst >= TARGET_RPS_RATIO},
            "nginx_upstream": "grpc_pass (h2c)" if grpc else "proxy_pass (HTTP/1.1)",
            "relay_traffic": traffic,
            "load": {"seconds": self.args.seconds, "warmup_seconds": self.args.warmup,
                     "threads": 1, "h2load_cpus": self.load_cpus,
                     "server_cpus": self.server_cpus},
        }


def table(r: dict[str, Any]) -> str:
    lines = [f"{'shape':<8} {'path':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'requests':>9} {'origin':>9}  check"]
    for name, s in r["shapes"].items():
        for i, (path, v) in enumerate(s["paths"].items()):
            check = "ok" if not v["problems"] else "FAILED: " + "; ".join(v["problems"])
            lines.append(f"{name if i == 0 else '':<8} {path:<9} {v['rps']:>9.0f} "
                         f"{v['p50_ms']:>8.3f} {v['p99_ms']:>8.3f} {v['requests']:>9} "
                         f"{v['origin_requests']:>9}  {check}")
        ratio = s["rps_ratio_vs_nginx"]
        vs = s["added_p50_ms_vs_nginx"]
        lines.append(f"{'':<8} bridged/nginx rps {'n/a' if ratio is None else f'{ratio:.2f}'}"
                     f", added p50 {s['added_p50_ms']:.3f} ms over direct"
                     f" ({'n/a' if vs is None else f'{vs:+.3f}'} ms vs nginx-h2)")
    met = r["targets_met"]["rps_ratio_vs_nginx"]
    worst = r["rps_ratio_vs_nginx"]
    lines.append(f"worst bridged/nginx rps: {'n/a' if worst is None else f'{worst:.2f}'} "
                 f"(target ≥ {TARGET_RPS_RATIO}"
                 f"{'' if met is None else ', met' if met else ', NOT met'})"
                 f"; router: {r['router_mode']}; nginx upstream: {r['nginx_upstream']}"
                 f"; relay traffic: {r['relay_traffic']}")
    load = r["load"]
    lines.append(f"load: h2load -t1, -D {load['warmup_seconds']} to warm up, then -n sized for "
                 f"~{load['seconds']} s (h2load on cpu {load['h2load_cpus']}, servers on cpu "
                 f"{load['server_cpus']})")
    lines.append("checks: " + ("all passed" if r["correct"] else
                               f"{len(r['problems'])} FAILED (see the check column)"))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object on the last line")
    ap.add_argument("--quick", action="store_true", help="shorter runs (~25 s in all)")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES,
                    help=f"CONNECTIONSxSTREAMS,... (h2load -c, -m; default {DEFAULT_SHAPES})")
    ap.add_argument("--profile", type=Path,
                    help="py-spy record the relay during each bridged run (raw stacks in DIR)")
    args = ap.parse_args()
    if args.profile and not (Path(sys.executable).parent / "py-spy").exists():
        log("--profile needs py-spy in the venv: .venv/bin/pip install py-spy")
        return 2
    args.profile = args.profile.resolve() if args.profile else None
    args.shapes = parse_shapes(args.shapes)
    args.seconds, args.warmup = (1, 1) if args.quick else (3, 1)
    missing = [t for t in ("h2load", "curl") if not shutil.which(t)]
    if missing or not os.access(NGINX, os.X_OK):
        log(f"needs h2load, curl and {NGINX}: apt-get install -y nghttp2-client curl nginx")
        return 2
    taskset = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    cpus = ("1", "0") if taskset else (None, None)  # h2load on one core, servers on the other
    os.chdir(REPO)  # the relay runs ``python -m bridged``: from bench/ it would import h2 here
    tmp = Path(tempfile.mkdtemp(prefix="bridged-h2-bench-"))
    try:
        result = asyncio.run(Bench(args, tmp, str(shutil.which("h2load")),
                                   str(shutil.which("curl")), cpus).run())
    except (RuntimeError, BridgedError, OSError) as exc:
        log(f"h2 bench: {exc}")
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(result), flush=True)
    if args.json:
        print(json.dumps(result), flush=True)
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
