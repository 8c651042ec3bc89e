"""Mirror mode: a client's latency through the relay while its requests are copied to a laptop
that is fast, slow (answers after 1 s), or down — beside no mirror at all (issue 12).

One run, in-process, on loopback: a real relay (its SSH server, router and mirror senders), an
SSH session standing for the daemon (its remote forward is the laptop's channel), an origin
that answers at once, and a small keep-alive client (``--connections`` connections, each
sending its requests one after another). Each scenario registers one intercept of the relay
port: ``none`` a header intercept no request matches (the router decides, nothing is copied);
``fast``, ``slow`` and ``down`` a mirror of every request, its laptop answering at once,
after 1 s, or not listening. Mirroring must not show in the client's latency.

    .venv/bin/python bench/mirror.py [--requests N] [--connections C] [--json]

``--json``: the table, then one JSON object on the last line with stable keys: ``requests``,
``connections``, and per scenario (``none``, ``fast``, ``slow``, ``down``) ``p50_ms``,
``p99_ms``, ``max_ms``, ``copies_received`` (by the laptop), ``dropped`` (by reason).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/h2.py would shadow the h2 package the router imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncssh  # noqa: E402

from bridged import protocol  # noqa: E402
from bridged.keys import load_or_create_key  # noqa: E402
from bridged.relay.policy import DestinationPolicy  # noqa: E402
from bridged.relay.server import Relay, RelaySettings  # noqa: E402

SCENARIOS = ("none", "fast", "slow", "down")
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def http_server(delay: float, seen: list[int]) -> AsyncIterator[int]:
    """Answers each request (heads only: the bench sends no bodies) after ``delay``."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                seen[0] += 1
                if delay:
                    await asyncio.sleep(delay)
                writer.write(ANSWER)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(Exception):  # (3.12 waits for its handlers: bounded)
            await asyncio.wait_for(server.wait_closed(), 2)


async def client(port: int, n: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /bench HTTP/1.1\r\nhost: shop\r\nx-dev: nobody-matches\r\n\r\n"
    try:
        for _ in range(n):
            started = time.perf_counter()
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def scenario(name: str, tmp: Path, requests: int, connections: int) -> dict[str, Any]:
    key = load_or_create_key(tmp / "dev_key", comment="bench")
    (tmp / "authorized_keys").write_text(key.export_public_key().decode())
    settings = RelaySettings(host_key=tmp / "host_key", authorized_keys=tmp / "authorized_keys",
                             ssh_port=0, intercept_host="127.0.0.1",
                             policy=DestinationPolicy.parse(allow_loopback=True))
    origin_seen, laptop_seen = [0], [0]
    port = free_port()
    async with http_server(0, origin_seen) as origin, \
            http_server(1.0 if name == "slow" else 0, laptop_seen) as laptop, \
            Relay(settings) as relay:
        conn = await asyncssh.connect("127.0.0.1", relay.ssh_port, client_keys=[key],
                                      known_hosts=None, username="bench")
        try:
            writer, reader, _ = await conn.open_session(subsystem=protocol.SUBSYSTEM,
                                                        encoding=None)
            matchers = (protocol.Matcher("header", "equals", "x-dev", "alice"),) \
                if name == "none" else ()
            claim = protocol.InterceptClaim("bench", port, mode="http", matchers=matchers,
                                            mirror=name != "none",
                                            origin=f"127.0.0.1:{origin}")
            for msg in (protocol.Hello(id=1), protocol.Register(id=2, claim=claim)):
                writer.write(protocol.encode(msg))
                answer = protocol.decode(await asyncio.wait_for(reader.readline(), 30))
                assert isinstance(answer, protocol.Ok), answer
            await conn.forward_remote_port(claim.listen_host, port, "127.0.0.1",
                                           free_port() if name == "down" else laptop)
            latencies: list[float] = []
            await asyncio.wait_for(asyncio.gather(*(
                client(port, requests // connections, latencies)
                for _ in range(connections))), 300)
            dropped = relay.ports[port].counters.snapshot().get("mirror_dropped", {})
        finally:
            conn.close()
            await conn.wait_closed()
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {"p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
            "max_ms": round(ms[-1], 3), "copies_received": laptop_seen[0],
            "dropped": dropped}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.requests < args.connections or args.connections < 1:
        parser.error("--requests must be at least --connections, and both positive")
    out: dict[str, Any] = {"requests": args.requests, "connections": args.connections}
    with tempfile.TemporaryDirectory() as tmp:
        for name in SCENARIOS:
            out[name] = await scenario(name, Path(tmp), args.requests, args.connections)
    print(f"{'scenario':<10}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'copies':>9}  dropped")
    for name in SCENARIOS:
        r = out[name]
        print(f"{name:<10}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['max_ms']:>10.3f}"
              f"{r['copies_received']:>9}  {r['dropped'] or '-'}")
    if args.json:
        print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    asyncio.run(main())
