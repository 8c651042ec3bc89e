"""Issue 9, point 6: load balancing stays as it was without bridged.

kube-proxy balances a Service per connection. The router gives each client connection
upstream connections of its own, so the original pods keep getting their share: here three
replicas behind a round-robin balancer (kube-proxy's IPVS ``rr`` mode) on loopback, 30 client
connections taking turns, each request counted where it landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator

from ..helpers import read_response
from .routerkit import RecordingUpstream, recording_upstreams, router_on


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def round_robin(ports: list[int]) -> AsyncIterator[int]:
    """A per-connection balancer: each new connection goes to the next replica."""
    turn = itertools.cycle(ports)
    tasks: set[asyncio.Task[object]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", next(turn))
        both = asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        tasks.add(both)
        try:
            await both
        finally:
            tasks.discard(both)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_unmatched_requests_of_30_connections_reach_all_three_replicas() -> None:
    replicas = [RecordingUpstream(f"pod-{n}") for n in range(3)]
    alice = RecordingUpstream("alice")
    async with recording_upstreams(alice, *replicas), \
            round_robin([r.port for r in replicas]) as service_port, \
            router_on({"origin": service_port, "alice": alice.port}) as relay:
        clients = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(30)]
        landed: Counter[str] = Counter()
        try:
            for round_ in range(4):  # one request at a time, connections taking turns
                for n, (reader, writer) in enumerate(clients):
                    dev = b"x-dev: alice\r\n" if (n + round_) % 10 == 0 else b""
                    writer.write(b"GET /r%d HTTP/1.1\r\nHost: svc\r\n%b\r\n" % (round_, dev))
                    status, _, body = await asyncio.wait_for(read_response(reader), 10)
                    assert status == 200
                    landed[json.loads(body)["who"]] += 1
        finally:
            for _, writer in clients:
                writer.close()
    assert landed["alice"] == 12  # the developer's requests still go to the developer
    to_pods = {name: n for name, n in landed.items() if name != "alice"}
    total = sum(to_pods.values())
    assert set(to_pods) == {"pod-0", "pod-1", "pod-2"}, to_pods
    assert max(to_pods.values()) <= 0.6 * total, to_pods
