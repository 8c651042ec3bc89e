"""Where bridged keeps things, following the XDG base directory spec.

- state (``$XDG_STATE_HOME/bridged``, default ``~/.local/state/bridged``): the client key, the
  pinned relay host keys, the daemon's log and persisted desired state;
- runtime (``$XDG_RUNTIME_DIR/bridged``, else ``<state>/run``): the control socket. The folder is
  made 0700 so that only this user can reach the socket (the socket itself is 0600 too).
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return _private_dir(Path(base) / "bridged")


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "bridged" if base else state_dir() / "run"
    return _private_dir(path)


def control_socket() -> Path:
    override = os.environ.get("BRIDGED_SOCKET")
    return Path(override) if override else runtime_dir() / "control.sock"


def daemon_log() -> Path:
    return state_dir() / "daemon.log"


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkdir's mode is masked by umask and ignored for existing folders: make sure.
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path
