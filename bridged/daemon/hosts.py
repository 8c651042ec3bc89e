"""Hosts mode: cluster names in the hosts file, for clients that ignore proxies.

``bridged expose … --hosts`` gives each exposed Service its own loopback address (127.x.y.z;
the whole of 127/8 is loopback on Linux) and writes its cluster names there, in one marked
block of the hosts file::

    # bridged: begin (daemon pid 4242; removed when it stops)
    127.13.0.1 orders orders.team-a orders.team-a.svc orders.team-a.svc.cluster.local
    # bridged: end

The rest of the file is kept byte for byte (line endings, a missing final newline). The block
goes when its last forward goes, when the daemon stops, and — after a kill -9 — at the next
start, which removes the blocks of daemons that no longer run (:meth:`HostsFile.sweep`).

The text functions are pure; :class:`HostsFile` reads and writes (atomically, keeping the
file's mode).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, RefusedError
from ..fsutil import write_bytes
from ..workload.rewrites import service_names

log = logging.getLogger(__name__)

BEGIN = "# bridged: begin"
END = "# bridged: end"
#: set (to anything) by tests to be refused as a user would be: root may write any file
UNPRIVILEGED_ENV = "BRIDGED_HOSTS_UNPRIVILEGED"
#: where the daemon edits names (tests give a file of their own)
HOSTS_FILE_ENV = "BRIDGED_HOSTS_FILE"

_PID = re.compile(r"daemon pid (\d+)")


def default_hosts_file() -> Path:
    return Path(os.environ.get(HOSTS_FILE_ENV) or "/etc/hosts")


@dataclass(frozen=True)
class HostsSettings:
    #: the file the names go to: /etc/hosts, the file every resolver reads first
    path: Path = field(default_factory=default_hosts_file)
    #: where Services get their addresses: a /16 of 127/8 clear of 127.0.0.1, Debian's
    #: 127.0.1.1 and systemd-resolved's 127.0.0.53 (65,534 Services)
    network: str = "127.13.0.0/16"


@dataclass(frozen=True)
class Entry:
    address: str
    names: tuple[str, ...]


# --- the text, pure ---


def newline_of(text: str) -> str:
    """The file's line ending (that of its first line): a block in a CRLF file is CRLF."""
    first = text.find("\n")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"


def render_block(entries: Iterable[Entry], pid: int, newline: str = "\n") -> str:
    lines = [f"{BEGIN} (daemon pid {pid}; removed when it stops)"]
    lines += [" ".join((e.address, *e.names)) for e in entries]
    lines.append(END)
    return "".join(line + newline for line in lines)


def block_pids(text: str) -> list[int | None]:
    """The daemon pid of each block in ``text`` (None: a begin line without one)."""
    return [pid for pid, _, _ in _blocks(text.splitlines(keepends=True))]


def remove_blocks(text: str, which: Callable[[int | None], bool] = lambda pid: True) -> str:
    """``text`` without the blocks whose daemon pid ``which`` accepts (default: all). A
    begin without an end is left alone: what follows it is not ours to drop."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    last = 0
    for pid, start, stop in _blocks(lines):
        out += lines[last:start]
        last = stop
        if not which(pid):
            out += lines[start:stop]
        elif not lines[stop - 1].endswith("\n") and out and out[-1].endswith("\n"):
            # the block ended the file without a newline: the newline before it was ours
            out[-1] = out[-1].removesuffix("\n").removesuffix("\r")
    out += lines[last:]
    return "".join(out)


def with_block(text: str, entries: Iterable[Entry], pid: int) -> str:
    """``text`` with daemon ``pid``'s block (replaced if there was one) holding ``entries``,
    at the end; without it when there are none. The rest of the text is unchanged."""
    entries = list(entries)
    kept = remove_blocks(text, lambda p: p == pid)
    if not entries:
        return kept
    newline = newline_of(kept)
    block = render_block(entries, pid, newline)
    if kept and not kept.endswith("\n"):
        # no final newline: ours goes before the block and the block ends without one, so
        # that removing the block gives the file back exactly (see remove_blocks)
        return kept + newline + block.removesuffix(newline)
    return kept + block


def _blocks(lines: list[str]) -> Iterator[tuple[int | None, int, int]]:
    """(pid, first line, line after the end) of each complete block."""
    i = 0
    while i < len(lines):
        if lines[i].startswith(BEGIN):
            for j in range(i + 1, len(lines)):
                if lines[j].rstrip("\r\n") == END:
                    match = _PID.search(lines[i])
                    yield (int(match.group(1)) if match else None), i, j + 1
                    i = j
                    break
                if lines[j].startswith(BEGIN):
                    break
        i += 1


def names_of(service: str | None, namespace: str, remote_host: str) -> tuple[str, ...]:
    """The names a forward answers in the hosts file: a Service's cluster names, else the host
    it was given (a name: an address needs no name)."""
    if service:
        return service_names(service, namespace) if namespace else (service,)
    try:
        ipaddress.ip_address(remote_host)
    except ValueError:
        return (remote_host,)
    raise ConfigError(f"--hosts gives names an address, and {remote_host} is an address "
                      "already: expose a Service or a host name")


# --- the file ---


class HostsFile:
    """This daemon's block in the hosts file: which forward made which line."""

    def __init__(self, settings: HostsSettings | None = None, pid: int | None = None) -> None:
        self.settings = settings or HostsSettings()
        self.path = self.settings.path
        self.pid = pid or os.getpid()
        self.network = ipaddress.ip_network(self.settings.network)
        #: names → their entry, and the forwards that keep it (a Service's ports share it)
        self.entries: dict[tuple[str, ...], Entry] = {}
        self.users: dict[tuple[str, ...], set[str]] = {}

    def check_writable(self) -> None:
        """Refuse before anything changes: no listener, no line, when the file cannot be
        written."""
        if not _may_write(self.path):
            raise RefusedError(f"--hosts needs root to edit {self.path}: run the daemon as "
                               "root or use the proxies (bridged run)")

    def address_of(self, names: tuple[str, ...]) -> str | None:
        entry = self.entries.get(names)
        return entry.address if entry else None

    def candidates(self, preferred: str = "") -> Iterator[str]:
        """Addresses a new entry may take: ``preferred`` first (the one a restored forward
        had), then the network's, skipping those in use here or named in the file."""
        taken = {e.address for e in self.entries.values()} | self._addresses_in_file()
        if preferred and preferred not in taken and self._ours(preferred):
            yield preferred
        for address in self.network.hosts():
            if str(address) not in taken:
                yield str(address)

    def is_ours(self, address: str) -> bool:
        return self._ours(address)

    def add(self, forward: str, address: str, names: tuple[str, ...]) -> None:
        entry = self.entries.get(names)
        if entry is not None and entry.address != address:
            raise ConfigError(f"{names[0]} has {entry.address} in {self.path} already")
        self.entries[names] = Entry(address, names)
        self.users.setdefault(names, set()).add(forward)
        try:
            self._write()
        except BaseException:
            self._forget(forward)
            raise

    def remove(self, forward: str) -> None:
        if self._forget(forward):
            self._write()

    def clear(self) -> None:
        """This daemon's block out of the file (its forwards gone, or the daemon stopping)."""
        if self.entries:
            self.entries.clear()
            self.users.clear()
            self._write()

    def sweep(self) -> list[int | None]:
        """Remove the blocks of daemons that no longer run (killed hard: nobody removed
        theirs) and this one's; the pids whose blocks went. Blocks of running daemons stay."""
        try:
            text = self._read()
        except FileNotFoundError:
            return []
        gone = [p for p in block_pids(text) if p == self.pid or not _running(p)]
        if gone:
            self.check_writable()
            self._replace(remove_blocks(text, lambda p: p in gone))
            log.info("hosts: removed the block%s of daemon pid %s from %s",
                     "s" if len(gone) > 1 else "", ", ".join(str(p) for p in gone), self.path)
        return gone

    def _forget(self, forward: str) -> bool:
        for names, users in list(self.users.items()):
            if forward in users:
                users.discard(forward)
                if not users:
                    del self.users[names], self.entries[names]
                return True
        return False

    def _write(self) -> None:
        try:
            text = self._read()
        except FileNotFoundError:
            text = ""
        self._replace(with_block(text, self.entries.values(), self.pid))

    def _read(self) -> str:
        # bytes as they are: no newline translation, no decoding error on a stray byte
        return self.path.read_bytes().decode("utf-8", "surrogateescape")

    def _replace(self, text: str) -> None:
        target = self.path.resolve()  # a symlinked /etc/hosts stays a symlink
        try:
            mode = stat.S_IMODE(target.stat().st_mode)
        except FileNotFoundError:
            mode = 0o644
        data = text.encode("utf-8", "surrogateescape")
        try:
            write_bytes(target, data, mode)
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EXDEV):
                raise
            # a bind-mounted hosts file (containers) cannot be renamed over: write in place
            with open(target, "r+b") as f:
                f.write(data)
                f.truncate()

    def _addresses_in_file(self) -> set[str]:
        try:
            text = remove_blocks(self._read(), lambda p: p == self.pid)
        except FileNotFoundError:
            return set()
        return {line.split()[0] for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")}

    def _ours(self, address: str) -> bool:
        try:
            return ipaddress.ip_address(address) in self.network
        except ValueError:
            return False


def _may_write(path: Path) -> bool:
    target = path.resolve()
    if not os.environ.get(UNPRIVILEGED_ENV):
        return os.access(target, os.W_OK) if target.exists() else \
            os.access(target.parent, os.W_OK)
    # as a user would be refused: by the permission bits alone (root's access ignores them)
    try:
        st = target.stat()
    except FileNotFoundError:
        return False
    uid, gids = os.geteuid(), {os.getegid(), *os.getgroups()}
    bit = stat.S_IWUSR if st.st_uid == uid else stat.S_IWGRP if st.st_gid in gids \
        else stat.S_IWOTH
    return bool(st.st_mode & bit)


def _running(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's daemon
    return True
