"""SSH keys on both ends: private keys made on first use, and the daemon's pinned relay host keys.

Pinning is trust-on-first-use per relay address, like OpenSSH's known_hosts but in a file of our
own (``<state>/known_relays.json``) so that a user's ~/.ssh is never touched. A relay that later
shows another key is refused with a message that names the file to edit.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncssh

from .errors import ConfigError
from .fsutil import write_bytes


def load_or_create_key(path: Path, comment: str | None = None) -> asyncssh.SSHKey:
    """The ed25519 private key at ``path``; made (mode 0600) if the file does not exist. The
    comment names its owner in the relay's logs (default: user@host)."""
    if path.exists():
        try:
            return asyncssh.read_private_key(str(path))
        except (OSError, asyncssh.KeyImportError) as exc:
            raise ConfigError(f"cannot read the SSH key {path}: {exc}") from exc
    if comment is None:
        import getpass
        import socket

        comment = f"{getpass.getuser()}@{socket.gethostname()}"
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    write_private(path, key.export_private_key())
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to a 0600 file (never visible with wider permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_bytes(path, data, 0o600)


def public_line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode().strip()


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


class PinnedHostKeys:
    """Relay address → the host key seen on first contact."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read pinned relay keys {self.path}: {exc}") from exc
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def get(self, relay: str) -> str | None:
        return self._load().get(relay)

    def pin(self, relay: str, key: asyncssh.SSHKey) -> None:
        pins = self._load()
        pins[relay] = public_line(key)
        write_private(self.path, (json.dumps(pins, indent=2, sort_keys=True) + "\n").encode())

    def forget(self, relay: str) -> bool:
        pins = self._load()
        if pins.pop(relay, None) is None:
            return False
        write_private(self.path, (json.dumps(pins, indent=2, sort_keys=True) + "\n").encode())
        return True

    def check(self, relay: str, key: asyncssh.SSHKey) -> tuple[bool, str | None]:
        """(accepted, pinned key line if it differs). Pins on first contact."""
        pinned = self.get(relay)
        if pinned is None:
            self.pin(relay, key)
            return True, None
        try:
            expected = asyncssh.import_public_key(pinned)
        except asyncssh.KeyImportError:
            return False, pinned
        if expected.public_data == key.public_data:
            return True, None
        return False, pinned
