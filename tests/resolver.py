"""A process's own resolver files, for tests: the process runs in a mount namespace of its own
whose /etc/hosts (and nsswitch.conf: files only, so no DNS query ever leaves the machine) the
test writes. The relay of the policy and proxy tests, the stand-in cluster's relay pod (its
"cluster DNS"), and a daemon that must resolve only what the test says, run in one."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from bridged.localrun import RelayProcess

from .helpers import assert_clean_log

#: what the files hold before a test writes its own
HOSTS = "127.0.0.1 localhost\n"

#: the relay runs in this, with its own resolver files bind-mounted over /etc's ($0: their
#: folder); unshare and sh exec, so the relay keeps the process id RelayProcess signals
WRAPPER = """#!/bin/sh
exec unshare --mount --propagation private -- sh -c '
  mount --bind "$0/hosts" /etc/hosts &&
  mount --bind "$0/host.conf" /etc/host.conf &&
  mount --bind "$0/nsswitch.conf" /etc/nsswitch.conf &&
  exec "$@"' {folder} {python} "$@"
"""


class Resolver:
    """The relay's resolver files. Rewritten in place: a bind mount follows the file's inode,
    and glibc reads /etc/hosts on every lookup (no cache runs here)."""

    def __init__(self, folder: Path, hosts: str = HOSTS) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        (folder / "host.conf").write_text("multi on\n")
        (folder / "nsswitch.conf").write_text("hosts: files\n")
        self.hosts(hosts)
        self.wrapper = folder.parent / "in-namespace"
        self.wrapper.write_text(WRAPPER.format(folder=folder, python=sys.executable))
        self.wrapper.chmod(0o755)

    def hosts(self, text: str) -> None:
        with (self.folder / "hosts").open("r+" if (self.folder / "hosts").exists() else "w") as f:
            f.seek(0)
            f.write(text)
            f.truncate()

    def lookup(self, name: str) -> list[str]:
        """The addresses the relay's getaddrinfo gives for ``name``, in order."""
        probe = ("import socket, sys; print(' '.join(dict.fromkeys(a[4][0] for a in "
                 "socket.getaddrinfo(sys.argv[1], 80, type=socket.SOCK_STREAM))))")
        done = subprocess.run([str(self.wrapper), "-c", probe, name], capture_output=True,
                              text=True, timeout=30)
        if done.returncode != 0:
            raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
        return done.stdout.split()




@contextlib.asynccontextmanager
async def relay_resolving_with(resolver: Resolver, folder: Path,
                               deny: str) -> AsyncIterator[RelayProcess]:
    """A local relay (loopback allowed, ``deny`` denied) whose resolver is ``resolver``'s; its
    log is clean at the end."""
    relay = RelayProcess(folder, extra_args=("--deny", deny), python=str(resolver.wrapper))
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()
    assert_clean_log(relay.log_path)
