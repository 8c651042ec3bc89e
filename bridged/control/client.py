"""The control API's client: what the CLI and VS Code tasks talk to. Standard library only, so
that every CLI command starts fast and imports nothing of the daemon.

If the daemon is not running, :func:`ensure_daemon` starts it in the background (its log goes to
``<state>/daemon.log``) and waits for the line it writes on a pipe once its socket accepts.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import ControlError
from .models import API, error_from_body

#: seconds a request may take: connecting to a relay retries its SSH handshake for up to 15 s
REQUEST_TIMEOUT = 60.0
#: seconds a freshly started daemon has to open its socket
START_TIMEOUT = 15.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("bridged", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    def __init__(self, socket_path: Path | None = None, timeout: float = REQUEST_TIMEOUT) -> None:
        self.path = socket_path or paths.control_socket()
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixConnection(self.path, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            try:
                conn.request(method, f"{API}/{path}", body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise DaemonNotRunning(
                    f"the bridged daemon is not running (no answer on {self.path})",
                    # a command that only reads or undoes state does not start it: a new
                    # daemon would answer with an empty state before it restored the saved one
                    hint="'bridged daemon' or 'bridged service install' starts it; your "
                         "bridges, forwards and intercepts are restored when it does",
                ) from exc
            except TimeoutError as exc:
                raise ControlError(f"the daemon did not answer within {self.timeout:.0f}s") \
                    from exc
            except OSError as exc:
                raise ControlError(f"cannot talk to the daemon on {self.path}: {exc}") from exc
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            raise ControlError(f"the daemon answered HTTP {response.status} with non-JSON") \
                from None
        if response.status >= 400:
            raise error_from_body(response.status, data)
        return data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, body or {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def is_running(self) -> bool:
        try:
            self.get("status")
        except DaemonNotRunning:
            return False
        return True


class DaemonNotRunning(ControlError):
    code = "daemon-not-running"


def ensure_daemon(client: ControlClient) -> None:
    """Start the daemon in the background unless it answers already."""
    if client.is_running():
        return
    log_path = paths.daemon_log()
    read_fd, write_fd = os.pipe()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridged", "daemon", "--ready-fd", str(write_fd)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_fd,),
            start_new_session=True,  # survives the terminal that started it
            env={**os.environ, "BRIDGED_SOCKET": str(client.path)},
        )
    os.close(write_fd)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], deadline - time.monotonic())
            if not ready:
                break
            chunk = os.read(read_fd, 64)
            if not chunk:  # the daemon exited before it was ready
                break
            line += chunk
            if b"\n" in line:
                return
    finally:
        os.close(read_fd)
    code = proc.poll()
    tail = _tail(log_path)
    raise ControlError(
        "the bridged daemon did not start"
        + (f" (exit code {code})" if code is not None else " in time")
        + (f": {tail}" if tail else ""),
        hint=f"see {log_path}",
    )


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][-200:] if lines else ""
