"""The relay's memory (RSS) at rest and under the loads its pod limit must hold, on loopback.

A real relay and daemon (``bridged.localrun``, tcp carrier), and in this process the clients
and servers. Rows, each measured after the load is in place (RSS of the relay process):

  idle              one daemon connected, one forward, one per-request intercept
  router idle 5000  5000 client connections opened to the intercepted port and left idle
                    (past ``--max-connections`` they are refused: counted)
  streams 2000      2000 forwarded streams open at once through ``expose``, each echoed once
  slow 200          200 forwarded streams pushing 8 MiB each into a server that never reads:
                    what the relay buffers for clients faster than their destinations

Prints a table; ``--json`` prints one JSON object on the last line with stable keys:
``rss_mib`` (row → MiB), ``refused`` (row → connections refused), ``limit_mib`` (the pod's
memory limit, from the manifest), ``fits`` (row → RSS below the limit).

    .venv/bin/python bench/relay_memory.py [--json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import tempfile
from pathlib import Path
from typing import Any

from benchkit import echo, tcp_bridge  # (also puts the repository on sys.path)

from bridged.kube import manifests
from bridged.localrun import DaemonProcess, RelayProcess

MiB = 1024 * 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def limit_mib() -> float:
    """The relay pod's memory limit, as bridged deploys it."""
    container = manifests.deployment("bench")["spec"]["template"]["spec"]["containers"][0]
    return float(container["resources"]["limits"]["memory"].removesuffix("Mi"))


async def settle(pid: int, seconds: float = 1.0) -> float:
    """RSS once it stops moving (GC, buffers drained), sampled for ``seconds``."""
    last = rss_mib(pid)
    for _ in range(int(seconds / 0.1)):
        await asyncio.sleep(0.1)
        last = max(last, rss_mib(pid))
    return last


async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    with contextlib.suppress(ConnectionError):
        await reader.read()  # (never returns while paused: the test ends it)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    scale = 0.2 if args.quick else 1.0
    rows: dict[str, float] = {}
    refused: dict[str, int] = {}
    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    sink_server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    sink_port = sink_server.sockets[0].getsockname()[1]
    held: list[asyncio.StreamWriter] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with RelayProcess(Path(tmp) / "relay") as relay, \
                DaemonProcess(Path(tmp) / "daemon") as daemon:
            call = await tcp_bridge(relay, daemon)

            async def expose(target_port: int) -> int:
                made = await call("POST", "forwards", {"target": f"127.0.0.1:{target_port}"})
                return int(made["forwards"][0]["local_port"])

            echo_local, sink_local = await expose(echo_port), await expose(sink_port)
            port = free_port()
            await call("POST", "intercepts", {
                "remote_port": port, "local_port": echo_port, "headers": ["x-dev=nobody"],
                "origin": f"127.0.0.1:{echo_port}"})
            rows["idle"] = await settle(relay.pid)

            # 5000 idle client connections to the router
            n = int(5000 * scale)
            opened = []
            for _ in range(n):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                opened.append((reader, writer))
            await asyncio.sleep(0.5)
            refused["router idle 5000"] = sum(1 for r, _ in opened if r.at_eof() or r._buffer)  # type: ignore[attr-defined]
            rows["router idle 5000"] = await settle(relay.pid)
            for _, writer in opened:
                writer.close()
            await asyncio.sleep(1.0)

            # 2000 concurrent forwarded streams
            n = int(2000 * scale)

            async def stream() -> asyncio.StreamWriter:
                reader, writer = await asyncio.open_connection("127.0.0.1", echo_local)
                writer.write(b"x" * 100)
                await reader.readexactly(100)
                return writer

            streams = await asyncio.gather(*(stream() for _ in range(n)),
                                           return_exceptions=True)
            refused["streams 2000"] = sum(isinstance(s, BaseException) for s in streams)
            rows["streams 2000"] = await settle(relay.pid)
            for s in streams:
                if isinstance(s, asyncio.StreamWriter):
                    s.close()
            await asyncio.sleep(1.0)

            # 200 slow destinations: 8 MiB pushed into each
            n = int(200 * scale)
            payload = b"y" * (8 * MiB)

            async def push() -> None:
                _, writer = await asyncio.open_connection("127.0.0.1", sink_local)
                held.append(writer)
                writer.write(payload)
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await asyncio.wait_for(writer.drain(), 10)

            await asyncio.gather(*(push() for _ in range(n)), return_exceptions=True)
            rows["slow 200"] = await settle(relay.pid, 2.0)
            for writer in held:
                writer.transport.abort()
    echo_server.close()
    sink_server.close()
    limit = limit_mib()
    return {"rss_mib": {k: round(v, 1) for k, v in rows.items()}, "refused": refused,
            "limit_mib": limit, "fits": {k: v < limit for k, v in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a fifth of each load")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(f"{'load':<18} {'relay RSS MiB':>14} {'refused':>8}  (pod limit "
          f"{result['limit_mib']:.0f} MiB)")
    for row, mib in result["rss_mib"].items():
        print(f"{row:<18} {mib:>14.1f} {result['refused'].get(row, 0):>8}"
              f"{'' if result['fits'][row] else '  OVER THE LIMIT'}")
    if args.json:
        print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
