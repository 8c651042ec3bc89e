"""Who may connect to the relay: public keys from a file or a folder that may change at any time.

In a cluster the keys live in a Secret mounted as a folder (one file per developer, updated by the
kubelet through a symlink swap); locally it is one authorized_keys file. Either way the keys are
re-read when anything under the path changed, checked at each authentication: adding a developer
never needs a relay restart.
"""

from __future__ import annotations

import logging
from pathlib import Path

import asyncssh

log = logging.getLogger(__name__)


class AuthorizedKeys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[object, ...] | None = None
        self._keys: dict[bytes, str] = {}  # public key blob → comment (who)

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(
                p for p in self.path.iterdir() if p.is_file() and not p.name.startswith(".")
            )
        return [self.path] if self.path.exists() else []

    def _current_signature(self) -> tuple[object, ...]:
        sig: list[object] = []
        for p in self._files():
            st = p.stat()  # follows the kubelet's ..data symlink
            sig.append((p.name, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(sig)

    def refresh(self) -> None:
        if not self.path.exists():
            if self._signature != ():
                log.warning("no authorized keys at %s: every daemon is refused until it exists",
                            self.path)
                self._signature, self._keys = (), {}
            return
        signature = self._current_signature()
        if signature == self._signature:
            return
        keys: dict[bytes, str] = {}
        for p in self._files():
            try:
                text = p.read_text()
            except OSError as exc:
                log.warning("cannot read authorized keys %s: %s", p, exc)
                continue
            for n, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                try:
                    key = asyncssh.import_public_key(line)
                except asyncssh.KeyImportError:
                    log.warning("%s:%d: not a public key, skipped", p, n)
                    continue
                keys[key.public_data] = key.get_comment() or p.name
        self._keys = keys
        self._signature = signature
        log.info("authorized keys loaded: %d key(s) from %s", len(keys), self.path)

    def allows(self, key: asyncssh.SSHKey) -> str | None:
        """The key's owner (comment or file name) if it is authorized, else None."""
        try:
            self.refresh()
        except OSError as exc:
            log.warning("cannot read authorized keys at %s: %s", self.path, exc)
        return self._keys.get(key.public_data)

