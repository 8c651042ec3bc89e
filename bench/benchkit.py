"""What the bench scripts share: free ports, progress lines, stopping processes, wrk's output.

The scripts are run as ``python bench/NAME.py``, so this folder is first on ``sys.path`` and
they import this module by its name; the repository's root is added for ``bridged``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def interpreter() -> str:
    """The Python the measured processes run, as a table's heading names it: bridged's cost is
    mostly the interpreter's, and builds differ (on one machine a pyenv build without PGO/LTO
    took ~1.5x the CPU of Debian's python3.11 for the same work)."""
    import platform

    return f"{platform.python_implementation()} {platform.python_version()} ({sys.base_prefix})"


def stop_proc(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 5 s; a process that ended already is left alone."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def ms(text: str) -> float:
    """wrk's durations (``812.00us``, ``1.20ms``, ``2.00s``, ``1.01m``) in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    """wrk's report (``--latency``): rate, p50, p99, errors; and, when present, the maximum,
    the request count and the ``CHECK seen= bad= first=`` line a checking Lua script prints."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and p50 and p99):
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result: dict[str, Any] = {
        "rps": float(rps.group(1)),
        "p50_ms": round(ms(p50.group(1)), 3),
        "p99_ms": round(ms(p99.group(1)), 3),
        "errors": (int(non2xx.group(1)) if non2xx else 0)
        + (sum(int(x) for x in sock.groups()) if sock else 0),
    }
    lat = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out, re.M)
    if lat:
        result["max_ms"] = round(ms(lat.group(1)), 3)
    total = re.search(r"^\s*(\d+) requests in", out, re.M)
    if total:
        result["requests"] = int(total.group(1))
    check = re.search(r"^CHECK seen=(\d+) bad=(\d+) first=(.*)$", out, re.M)
    if check:
        result["checked"] = int(check.group(1))
        result["wrong"] = int(check.group(2))
        result["first_wrong"] = json.loads(check.group(3)) if check.group(3) != '""' else ""
    return result


async def run_wrk(port: int, seconds: int, conns: int, cpus: str | None, *,
                  headers: tuple[str, ...] = (), script: Path | None = None,
                  wrk: str = "wrk") -> dict[str, Any]:
    """One wrk run against 127.0.0.1:``port`` (pinned to ``cpus``), its report parsed."""
    cmd = [wrk, "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{port}/")
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 15)
    if proc.returncode:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out.decode(errors='replace')}")
    return parse_wrk(out.decode())


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TCP echo server's connection handler (asyncio.start_server)."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def tcp_bridge(relay: Any, daemon: Any) -> Any:
    """Authorize ``daemon`` at ``relay`` (bridged.localrun processes) and connect them over
    the tcp carrier; returns the daemon's control API as ``await call(method, path, body)``."""
    from bridged.control.client import ControlClient

    client = ControlClient(daemon.socket)

    async def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(client.request, method, path, body)

    status = await call("GET", "status")
    relay.authorize(status["daemon"]["client_key"])
    await call("POST", "bridges", {"url": relay.url})
    return call
