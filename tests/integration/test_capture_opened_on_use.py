"""The daemon opens its capture store on first use, not at start (issue 14: an idle daemon holds
neither sqlite3 nor the database's pages): status does not open it, the first read of the
capture does, with the limits the command line gave, and an unreadable file is still set aside
with nothing lost."""

from __future__ import annotations

from pathlib import Path

from bridged.control.client import ControlClient
from bridged.localrun import DaemonProcess

from ..helpers import Daemon, assert_clean_log


def _sqlite_mapped(pid: int) -> bool:
    return "_sqlite3" in Path(f"/proc/{pid}/maps").read_text()


async def test_the_store_is_opened_by_its_first_reader(tmp_path: Path) -> None:
    home = tmp_path / "laptop"
    state = home / "state" / "bridged"
    state.mkdir(parents=True, mode=0o700)
    process = await DaemonProcess(home, extra_args=("--capture-records", "7")).start()
    try:
        daemon = Daemon(process, ControlClient(process.socket))
        await daemon.status()
        assert not (state / "capture.sqlite").exists()
        assert not _sqlite_mapped(process.pid)
        found = await daemon.call("GET", "capture")
        assert found["records"] == []
        assert found["stats"]["max_records"] == 7
        assert (state / "capture.sqlite").stat().st_mode & 0o077 == 0
        assert _sqlite_mapped(process.pid)
    finally:
        await process.stop()
    assert_clean_log(process.log_path)


async def test_an_unreadable_store_is_set_aside_when_first_used(tmp_path: Path) -> None:
    home = tmp_path / "laptop"
    state = home / "state" / "bridged"
    state.mkdir(parents=True, mode=0o700)
    garbage = b"not a database, " * 512
    (state / "capture.sqlite").write_bytes(garbage)
    process = await DaemonProcess(home).start()
    try:
        daemon = Daemon(process, ControlClient(process.socket))
        await daemon.status()
        assert (state / "capture.sqlite").read_bytes() == garbage  # not touched yet
        assert (await daemon.call("GET", "capture"))["records"] == []
        (aside,) = state.glob("capture.sqlite.unreadable-*")
        assert aside.read_bytes() == garbage  # nothing lost
        assert (await daemon.call("DELETE", "capture")) == {"cleared": 0}
    finally:
        await process.stop()
