"""The daemon as a service: sd_notify, state that survives a crash, a corrupt state file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess, RelayProcess

from ..helpers import Daemon, assert_clean_log, eventually, free_port


class NotifySocket:
    """What systemd listens on for a Type=notify unit: a datagram socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.path = path
        self.messages: list[dict[str, str]] = []

    async def until(self, field: str, within: float = 15) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            for message in self.messages:
                if field in message:
                    self.messages.remove(message)
                    return message
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096),
                                          deadline - loop.time())
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def close(self) -> None:
        self.sock.close()


async def test_systemd_hears_ready_status_watchdog_and_stopping(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    process = DaemonProcess(tmp_path / "laptop", extra_env={
        "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"})
    try:
        await process.start()
        ready = await notify.until("READY")
        assert ready["READY"] == "1" and ready["MAINPID"] == str(process.pid)
        assert ready["STATUS"].startswith("0/0 bridges connected")
        await notify.until("WATCHDOG")  # every 0.1 s: half of WatchdogSec
        await notify.until("WATCHDOG")
        process.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert (await notify.until("STOPPING"))["STOPPING"] == "1"
        assert await asyncio.wait_for(process.proc.wait(), 15) == 0  # type: ignore[union-attr]
    finally:
        await process.stop()
        notify.close()
    assert_clean_log(process.log_path)


async def _roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


def _shape(status: dict) -> dict:
    """What a user compares before and after a restart."""
    return {
        "bridges": sorted((b["name"], b["relay"]) for b in status["bridges"]),
        "forwards": sorted((f["name"], f["remote_host"], f["remote_port"], f["local_port"])
                           for f in status["forwards"]),
        "intercepts": sorted((i["name"], i["id"], i["remote_port"], i["local_port"],
                              tuple(i["matchers"]), i["state"]) for i in status["intercepts"]),
    }


async def test_a_daemon_killed_hard_comes_back_with_everything(
    relay: RelayProcess, tmp_path: Path, echo_server: int
) -> None:
    echo_port = echo_server
    home = tmp_path / "laptop"
    first = Daemon(p := await DaemonProcess(home).start(), ControlClient(p.socket))
    second = None
    try:
        relay.authorize(await first.public_key())
        await first.call("POST", "bridges", {"url": relay.url})
        await first.call("POST", "forwards", {"target": f"127.0.0.1:{echo_port}",
                                              "name": "echo"})
        relay_port = free_port()
        made = await first.acli("intercept", "--relay-port", str(relay_port), "--port",
                                str(echo_port), "--header", "x-dev=me", "--origin",
                                f"127.0.0.1:{echo_port}", "--json")
        assert made.returncode == 0, made.stderr
        before = _shape(await first.status())
        assert before["intercepts"][0][-1] == "active"
        os.kill(first.process.pid, signal.SIGKILL)
        await first.process.proc.wait()  # type: ignore[union-attr]

        second = Daemon(p := await DaemonProcess(home).start(), ControlClient(p.socket))

        async def restored() -> dict | None:
            status = await second.status()
            shape = _shape(status)
            return status if shape == before and not status["restore"]["restoring"] else None

        status = await eventually(restored, within=20, what="the same bridges, forwards and "
                                                            "intercepts")
        assert status["restore"]["problems"] == []
        forward_port = status["forwards"][0]["local_port"]
        payload = os.urandom(256 * 1024)
        assert await _roundtrip(forward_port, payload) == payload
    finally:
        if second is not None:
            await second.process.stop()
        await first.process.stop()


async def test_an_unreadable_state_file_is_kept_aside_and_said(tmp_path: Path) -> None:
    for content in ("{not json", json.dumps({"version": 99, "bridges": []})):
        home = tmp_path / f"laptop-{len(content)}"
        state = home / "state" / "bridged"
        state.mkdir(parents=True, mode=0o700)
        (state / "state.json").write_text(content)
        process = await DaemonProcess(home).start()
        try:
            daemon = Daemon(process, ControlClient(process.socket))
            problems = (await daemon.status())["restore"]["problems"]
            (aside,) = state.glob("state.json.unreadable-*")
            assert aside.read_text() == content  # nothing lost
            assert len(problems) == 1 and str(aside) in problems[0]
            assert ("newer bridged" in problems[0]) == ("99" in content)
            shown = await daemon.acli("status")
            assert str(aside) in shown.stdout + shown.stderr
        finally:
            await process.stop()
