"""Real relay and daemon processes on this machine, for the demo, the tests and the benchmarks.

Each is an async context manager that starts the process on loopback, waits for the event that
says it is ready (the relay's JSON line; the daemon's ready pipe), and on exit stops it (SIGTERM,
then SIGKILL after a grace period) and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .errors import BridgedError


class ProcessFailed(BridgedError):
    pass


async def stop_process(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM,
                       grace_seconds: float = 10.0) -> int:
    """Send ``sig``, wait up to ``grace_seconds``, then SIGKILL and wait; the exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), grace_seconds)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0


class _Process:
    name = "process"
    proc: asyncio.subprocess.Process | None = None
    grace_seconds = 10.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop and wait; returns the exit code."""
        if self.proc is None:
            return 0
        return await stop_process(self.proc, sig, self.grace_seconds)

    def kill(self) -> None:
        """SIGKILL, like a crash: nothing gets to clean up."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class RelayProcess(_Process):
    """``bridged relay`` on loopback with keys in ``workdir``."""

    name = "relay"

    def __init__(self, workdir: Path, *, ssh_port: int = 0, http_port: int | None = None,
                 token: str | None = None, extra_args: tuple[str, ...] = (),
                 log_path: Path | None = None, python: str = sys.executable) -> None:
        self.workdir = workdir
        #: the interpreter that runs it (a test may wrap it, e.g. in a namespace of its own)
        self.python = python
        self.ssh_port = ssh_port
        self.http_port = http_port
        self.token = token
        self.extra_args = extra_args
        self.log_path = log_path or workdir / "relay.log"
        self.authorized_keys = workdir / "authorized_keys"
        self.host_key_path = workdir / "ssh_host_ed25519_key"
        self.host_key_fingerprint = ""

    def authorize(self, public_key_line: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        existing = self.authorized_keys.read_text() if self.authorized_keys.exists() else ""
        if public_key_line not in existing:
            with self.authorized_keys.open("a") as f:
                f.write(public_key_line.strip() + "\n")

    async def start(self) -> RelayProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.authorized_keys.touch(mode=0o600)
        args = [
            self.python, "-m", "bridged", "relay",
            "--ssh-listen", f"127.0.0.1:{self.ssh_port}",
            "--host-key", str(self.host_key_path),
            "--authorized-keys", str(self.authorized_keys),
            "--intercept-host", "127.0.0.1",
            "--allow-loopback",  # the "cluster" services of local runs live on loopback
            *self.extra_args,
        ]
        if self.http_port is not None:
            args += ["--http-listen", f"127.0.0.1:{self.http_port}"]
        if self.token is not None:
            token_file = self.workdir / "token"
            token_file.write_text(self.token)
            args += ["--token-file", str(token_file)]
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        except TimeoutError:
            line = b""
        if not line:
            await self.stop()
            raise ProcessFailed(f"the relay did not start: {_last_line(self.log_path)}")
        ready: dict[str, Any] = json.loads(line)
        self.ssh_port = int(ready["ssh_port"])
        self.http_port = ready.get("http_port")
        self.host_key_fingerprint = str(ready["host_key"])
        return self

    async def __aenter__(self) -> RelayProcess:
        return await self.start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.ssh_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ssh"


class DaemonProcess(_Process):
    """``bridged daemon`` with its own state and runtime folders under ``home``."""

    name = "daemon"

    def __init__(self, home: Path, *, log_path: Path | None = None,
                 extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None
                 ) -> None:
        self.home = home
        self.log_path = log_path or home / "daemon.log"
        self.extra_args = extra_args
        self.extra_env = extra_env or {}

    @property
    def env(self) -> dict[str, str]:
        """The environment a CLI needs to talk to this daemon."""
        return {
            **os.environ,
            "XDG_STATE_HOME": str(self.home / "state"),
            "XDG_RUNTIME_DIR": str(self.home / "run"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "BRIDGED_SOCKET": str(self.socket),
            **self.extra_env,
        }

    @property
    def socket(self) -> Path:
        return self.home / "run" / "bridged" / "control.sock"

    async def start(self) -> DaemonProcess:
        (self.home / "run").mkdir(parents=True, exist_ok=True, mode=0o700)
        read_fd, write_fd = os.pipe()
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridged", "daemon", "--ready-fd", str(write_fd),
                *self.extra_args,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                pass_fds=(write_fd,), env=self.env,
            )
        finally:
            log.close()
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        try:
            line = await asyncio.wait_for(loop.run_in_executor(None, os.read, read_fd, 64), 30)
        except TimeoutError:
            line = b""
        finally:
            os.close(read_fd)
        if not line.startswith(b"ready"):
            await self.stop()
            raise ProcessFailed(f"the daemon did not start: {_last_line(self.log_path)}")
        return self

    async def __aenter__(self) -> DaemonProcess:
        return await self.start()


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"no log at {path}"
    return lines[-1] if lines else f"nothing in {path}"
