"""The daemon's persisted desired state: what the user asked for, restored after a restart.

One JSON document, ``$XDG_STATE_HOME/bridged/state.json``, 0600: the bridges (their relay URL,
or kube context/namespace), forwards and intercepts with their ids (so a restarted daemon
re-attaches to its own intercepts inside the relay's resume window), and what ``bridged up``
applied. Written atomically: a temp file in the same folder, fsync, rename, fsync of the
folder — a crash leaves the old state or the new, never half of one. A file that cannot be
read (corrupt, or from a newer bridged) is moved aside, never silently dropped, and the daemon
says where it went.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        #: set when a file could not be read and was moved aside: the message for status
        self.problem = ""

    def load(self) -> dict[str, Any]:
        """The saved state, or an empty one (a bad file is set aside, see :attr:`problem`)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return _empty()
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("version"), int):
                raise ValueError("not a bridged state document")
            if data["version"] > VERSION:
                raise ValueError(f"written by a newer bridged (state version {data['version']},"
                                 f" this one reads {VERSION})")
            if not isinstance(data.get("bridges"), list):
                raise ValueError("no list of bridges")
            return data
        except ValueError as exc:
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            self.path.rename(aside)
            self.problem = (f"the saved state could not be read ({exc}); it was kept as "
                            f"{aside} and the daemon started empty")
            log.error("%s", self.problem)
            return _empty()

    def save(self, state: dict[str, Any]) -> None:
        data = {**state, "version": VERSION, "saved_at": time.time()}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _empty() -> dict[str, Any]:
    return {"version": VERSION, "bridges": []}
