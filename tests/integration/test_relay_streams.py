"""Issue 10, point 5: the relay's memory fits its pod. Every channel's receive window is taken
from one budget and given back when the channel closes — also when its destination refused
it — so many streams into slow destinations cannot buffer the relay out of memory."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from bridged.config import TunnelSettings
from bridged.localrun import RelayProcess

from ..helpers import Daemon, eventually, free_port, relay_stats


async def test_windows_come_from_one_budget_and_are_given_back(
    relay: RelayProcess, bridge: Daemon, echo_server: int,
) -> None:
    closed_port = free_port()  # nothing listens: the relay's connect is refused
    made = await bridge.call("POST", "forwards", {"target": f"127.0.0.1:{echo_server}"})
    echo_local = made["forwards"][0]["local_port"]
    made = await bridge.call("POST", "forwards", {"target": f"127.0.0.1:{closed_port}"})
    refused_local = made["forwards"][0]["local_port"]
    budget = TunnelSettings().relay_window_budget_bytes
    async with relay_stats(relay) as stats:
        streams = [await asyncio.open_connection("127.0.0.1", echo_local) for _ in range(60)]
        for reader, writer in streams:  # each one carried: an echo through the relay
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        seen = await stats()
        assert seen["streams"] >= 60
        # 60 streams at the usual 2 MiB would be 120 MiB: they share the budget instead (a
        # stream past it still gets the smallest window)
        most = budget + seen["streams"] * TunnelSettings().smallest_window_bytes
        assert seen["windows_granted_bytes"] <= most < 60 * TunnelSettings().window_bytes
        for _, writer in streams:
            writer.close()
        for _ in range(3):  # refused by the destination: the window comes back all the same
            reader, writer = await asyncio.open_connection("127.0.0.1", refused_local)
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

        async def all_back() -> bool:
            now = await stats()
            return now["streams"] == 0 and now["windows_granted_bytes"] == 0

        await eventually(all_back, within=10, what="every window given back")


async def test_past_max_streams_a_new_stream_is_refused_with_the_reason(
    tmp_path: Path, daemon: Daemon, echo_server: int,
) -> None:
    async with RelayProcess(tmp_path / "relay", extra_args=("--max-streams", "2")) as relay:
        relay.authorize(await daemon.public_key())
        await daemon.call("POST", "bridges", {"url": relay.url})
        made = await daemon.call("POST", "forwards", {"target": f"127.0.0.1:{echo_server}"})
        local, name = made["forwards"][0]["local_port"], made["forwards"][0]["name"]
        held = [await asyncio.open_connection("127.0.0.1", local) for _ in range(2)]
        for reader, writer in held:
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        with pytest.raises(ConnectionError):  # an error, never a clean end
            # (the reset may even beat the connect's completion, on a loaded machine)
            reader, writer = await asyncio.open_connection("127.0.0.1", local)
            try:
                writer.write(b"ping")
                data = await asyncio.wait_for(reader.read(), 10)
                assert data, "a clean end of stream instead of an error"
            finally:
                writer.close()

        async def reason() -> str:
            status = await daemon.call("GET", "status")
            forward = next(f for f in status["forwards"] if f["name"] == name)
            return str(forward["last_error"])

        assert "the relay carries 2 streams at most" in \
            await eventually(reason, within=10, what="the refusal's reason in status")
        for _, w in held:
            w.close()
