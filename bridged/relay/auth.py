"""Who may connect to the relay: public keys from a file or a folder that may change at any time,
or from the authorized-keys Secret read through the Kubernetes API.

In a cluster the keys live in a Secret. The relay follows it through the API (list + watch of
that one object, :mod:`bridged.kube.keywatch`) when it may, so a new developer's key works the
moment ``bridged connect`` writes it and a removed key is refused at once; the same Secret is
mounted as a folder (one file per developer, updated by the kubelet through a symlink swap,
about a minute late), the source while the API cannot be read. Locally it is one
authorized_keys file. Files are re-read when anything under the path changed, checked at each
authentication: adding a developer never needs a relay restart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncssh

from ..tasks import TaskSet

log = logging.getLogger(__name__)

#: seconds the relay's start waits for the Secret's first read before it declares itself ready
#: on the mounted keys (the API may be slow to answer right after a pod starts; it goes on
#: trying in the background)
FIRST_READ_SECONDS = 5.0

#: a Secret follower: (apply, unavailable) → runs until cancelled (see keywatch.follow_secret)
SecretFollower = Callable[[Callable[[dict[str, str], str, str], None], Callable[[str], None]],
                          Coroutine[Any, Any, None]]


class AuthorizedKeys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[object, ...] | None = None
        self._keys: dict[bytes, str] = {}  # public key blob → comment (who)
        self._follower: SecretFollower | None = None
        self._secret_name = ""
        #: the Secret's keys as last read through the API; None: not read (the files count)
        self._secret_keys: dict[bytes, str] | None = None
        self._secret_read = asyncio.Event()
        self._unavailable_reason = ""
        #: the Secret's changes applied, per way it came ("list", "watch"): what tests and
        #: the log show to tell a watched change from the kubelet's copy
        self.secret_changes: dict[str, int] = {"list": 0, "watch": 0}

    @property
    def source(self) -> str:
        """Where the keys checked now come from: ``secret NAME`` or the path."""
        return f"secret {self._secret_name}" if self._secret_keys is not None else str(self.path)

    def follow_secret(self, name: str, follower: SecretFollower) -> None:
        """Take the keys from Secret ``name`` through the API (``follower`` reads it) from
        :meth:`start` on; the files stay the source until it was read, and whenever it cannot
        be."""
        self._secret_name, self._follower = name, follower

    async def start(self, tasks: TaskSet) -> None:
        self.refresh()
        if self._follower is None:
            return
        tasks.start(self._follower(self.apply_secret, self.secret_unavailable),
                    name="authorized-keys-secret")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._secret_read.wait(), FIRST_READ_SECONDS)

    def apply_secret(self, data: dict[str, str], version: str, how: str) -> None:
        """The Secret's ``data`` (base64 values, one developer's key file each) as it is now."""
        keys: dict[bytes, str] = {}
        for entry, value in sorted(data.items()):
            try:
                text = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, ValueError):
                log.warning("Secret %s: %s is not base64 text, skipped", self._secret_name, entry)
                continue
            keys.update(self._parse(text, f"Secret {self._secret_name}/{entry}", entry))
        self._secret_keys = keys
        self._unavailable_reason = ""
        self._secret_read.set()
        self.secret_changes[how] = self.secret_changes.get(how, 0) + 1
        log.info("authorized keys from Secret %s (%s, resourceVersion %s): %d key(s)",
                 self._secret_name, how, version, len(keys))

    def secret_unavailable(self, reason: str) -> None:
        """The Secret cannot be read now: say so once per reason. Keys already read stay (at
        worst as late as the mounted copy would be); before the first read, the files count."""
        self._secret_read.set()  # the start waits no longer: the files serve meanwhile
        if reason != self._unavailable_reason:
            self._unavailable_reason = reason
            fallback = ("keeping the keys last read" if self._secret_keys is not None
                        else f"using the mounted keys at {self.path}, which the kubelet "
                             "refreshes about once a minute")
            log.warning("%s; %s", reason, fallback)

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
            keys.update(self._parse(text, str(p), p.name))
        self._keys = keys
        self._signature = signature
        log.info("authorized keys loaded: %d key(s) from %s", len(keys), self.path)

    @staticmethod
    def _parse(text: str, where: str, owner: str) -> dict[bytes, str]:
        keys: dict[bytes, str] = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                key = asyncssh.import_public_key(line)
            except asyncssh.KeyImportError:
                log.warning("%s:%d: not a public key, skipped", where, n)
                continue
            keys[key.public_data] = key.get_comment() or owner
        return keys

    def allows(self, key: asyncssh.SSHKey) -> str | None:
        """The key's owner (comment or file name) if it is authorized, else None."""
        if self._secret_keys is not None:
            return self._secret_keys.get(key.public_data)
        try:
            self.refresh()
        except OSError as exc:
            log.warning("cannot read authorized keys at %s: %s", self.path, exc)
        return self._keys.get(key.public_data)

