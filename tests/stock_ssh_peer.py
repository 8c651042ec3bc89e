"""asyncssh as shipped (bridged's patches NOT applied), as the far end of an interop test.

    python tests/stock_ssh_peer.py serve CIPHER REKEY_BYTES
        an SSH server on 127.0.0.1 port 0 whose every direct-tcpip channel echoes what it
        reads, EOF included; prints {"port", "host_key", "client_key"} (OpenSSH formats) on
        one line, then serves until stdin closes.
    python tests/stock_ssh_peer.py echo-through PORT HOST_KEY_PUB CLIENT_KEY CIPHER REKEY_BYTES SEED
        an SSH client: opens channels, sends random sizes (from SEED), checks each echo, and
        prints {"sha256": [one per channel]} of what came back.

It never imports bridged, so its packet layer is the one asyncssh ships.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
from typing import Any

import asyncssh


def sizes(seed: int) -> list[list[int]]:
    """Per channel, the sizes of its writes: tiny, odd, at and past the packet and window."""
    rng = random.Random(seed)
    edges = [1, 15, 16, 17, 255, 32767, 32768, 32769, 262143, 262144, 262145, 2 * 1024 * 1024 + 3]
    return [[rng.choice(edges) if rng.random() < 0.4 else rng.randint(1, 600_000)
             for _ in range(rng.randint(8, 24))] for _ in range(4)]


def payload(seed: int, channel: int, n: int, size: int) -> bytes:
    return random.Random(f"{seed}/{channel}/{n}").randbytes(size)


async def echo_server(handler: Any = None, **options: Any) -> tuple[Any, Any, Any]:
    """An SSH server on 127.0.0.1 port 0 whose every direct-tcpip channel echoes what it
    reads, EOF included (or runs ``handler(reader, writer)``): (server, host key, client
    key). ``options`` go to asyncssh.listen. (The interop tests run it in their own,
    patched, process too.)"""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")

    async def echo(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
        while data := await reader.read(1 << 20):
            writer.write(data)
        writer.write_eof()
        await writer.drain()
        writer.close()

    class Server(asyncssh.SSHServer):  # type: ignore[misc]
        def connection_requested(self, *args: Any) -> Any:
            return handler or echo

    options.setdefault("compression_algs", None)
    server = await asyncssh.listen(
        "127.0.0.1", 0, server_factory=Server, server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()),
        encoding=None, **options)
    return server, host_key, client_key


async def serve(cipher: str, rekey_bytes: int) -> None:
    server, host_key, client_key = await echo_server(encryption_algs=[cipher],
                                                     rekey_bytes=rekey_bytes)
    print(json.dumps({"port": server.get_port(),
                      "host_key": host_key.export_public_key().decode(),
                      "client_key": client_key.export_private_key().decode()}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()
    await server.wait_closed()


async def echo_through(port: int, host_key: str, client_key: str, cipher: str,
                       rekey_bytes: int, seed: int) -> None:
    known = asyncssh.import_known_hosts(f"[127.0.0.1]:{port} {host_key}")
    async with asyncssh.connect(
            "127.0.0.1", port, username="t", known_hosts=known, agent_path=None, config=None,
            client_keys=[asyncssh.import_private_key(client_key)], encryption_algs=[cipher],
            compression_algs=None, rekey_bytes=rekey_bytes) as conn:

        async def one(i: int, plan: list[int]) -> str:
            reader, writer = await conn.open_connection("x", 1, encoding=None)
            sent = hashlib.sha256()

            async def write() -> None:
                for n, size in enumerate(plan):
                    data = payload(seed, i, n, size)
                    sent.update(data)
                    writer.write(data)
                    await writer.drain()
                writer.write_eof()

            got = hashlib.sha256()
            task = asyncio.ensure_future(write())
            while data := await reader.read(1 << 20):
                got.update(data)
            await task
            writer.close()
            assert got.hexdigest() == sent.hexdigest(), f"channel {i}: echo differs"
            return got.hexdigest()

        hashes = await asyncio.gather(*(one(i, p) for i, p in enumerate(sizes(seed))))
    print(json.dumps({"sha256": hashes}), flush=True)


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "serve":
        asyncio.run(serve(args[0], int(args[1])))
    else:
        port, host_key, client_key, cipher, rekey, seed = args
        asyncio.run(echo_through(int(port), host_key, client_key, cipher, int(rekey), int(seed)))


if __name__ == "__main__":
    main()
