"""Hosts mode's block: written, replaced and removed with the rest of the file kept exactly."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bridged.daemon.hosts import (
    UNPRIVILEGED_ENV,
    Entry,
    HostsFile,
    HostsSettings,
    block_pids,
    names_of,
    remove_blocks,
    with_block,
)
from bridged.errors import ConfigError, RefusedError

ORDERS = Entry("127.13.0.1", names_of("orders", "team-a", "10.0.0.7"))
REDIS = Entry("127.13.0.2", names_of("redis", "team-a", "10.0.0.8"))
USER = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n\n# mine\n10.1.2.3 build-box\n"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_service_has_its_cluster_names_on_one_line() -> None:
    text = with_block(USER, [ORDERS], pid=4242)
    assert text == USER + (
        "# bridged: begin (daemon pid 4242; removed when it stops)\n"
        "127.13.0.1 orders orders.team-a orders.team-a.svc orders.team-a.svc.cluster.local\n"
        "# bridged: end\n")


@pytest.mark.parametrize("original", [
    USER,
    USER.rstrip("\n"),  # no final newline
    USER.replace("\n", "\r\n"),  # CRLF
    USER.replace("\n", "\r\n").rstrip("\r\n"),
    "",
    "10.9.9.9 only-line",
])
def test_removing_the_block_gives_the_file_back_byte_for_byte(original: str) -> None:
    one = with_block(original, [ORDERS], pid=7)
    two = with_block(one, [ORDERS, REDIS], pid=7)  # replaced, not added
    assert two.count("# bridged: begin") == 1 and "127.13.0.2 redis " in two
    assert with_block(two, [ORDERS, REDIS], pid=7) == two  # idempotent
    assert sha(with_block(two, [], pid=7)) == sha(original)
    assert sha(remove_blocks(two)) == sha(original)


def test_a_crlf_file_gets_a_crlf_block() -> None:
    text = with_block(USER.replace("\n", "\r\n"), [ORDERS], pid=7)
    assert text.count("\r\n") == text.count("\n")


def test_the_block_of_a_crashed_daemon_goes_and_a_running_ones_stays() -> None:
    text = with_block(with_block(USER, [ORDERS], pid=111), [REDIS], pid=222)
    assert block_pids(text) == [111, 222]
    left = remove_blocks(text, lambda pid: pid == 111)
    assert block_pids(left) == [222] and "orders" not in left and "redis" in left
    assert sha(remove_blocks(left)) == sha(USER)


def test_a_begin_without_an_end_is_left_alone() -> None:
    text = USER + "# bridged: begin (daemon pid 5; removed when it stops)\n10.0.0.1 kept\n"
    assert remove_blocks(text) == text


def test_an_address_needs_no_name() -> None:
    assert names_of(None, "", "db-0.db.team-a.svc") == ("db-0.db.team-a.svc",)
    with pytest.raises(ConfigError, match="is an address already"):
        names_of(None, "", "10.0.0.7")


def test_the_file_keeps_its_mode_and_the_rest_of_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    original = USER.replace("build-box", "caf\xe9-box").encode("latin-1")  # not UTF-8
    path.write_bytes(original)
    path.chmod(0o644)
    hosts = HostsFile(HostsSettings(path=path), pid=99)
    hosts.add("orders-http", "127.13.0.1", ORDERS.names)
    hosts.add("orders-grpc", "127.13.0.1", ORDERS.names)  # a second port: same line
    assert path.read_bytes().count(b"127.13.0.1 orders ") == 1
    assert path.stat().st_mode & 0o777 == 0o644
    hosts.remove("orders-http")
    assert b"127.13.0.1 orders " in path.read_bytes()
    hosts.remove("orders-grpc")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(original).digest()


def test_addresses_skip_ours_and_those_the_file_names(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text(USER + "127.13.0.1 someone-elses\n")
    hosts = HostsFile(HostsSettings(path=path), pid=99)
    first = next(hosts.candidates())
    assert first == "127.13.0.2"
    hosts.add("a", first, ORDERS.names)
    assert next(hosts.candidates()) == "127.13.0.3"
    assert next(hosts.candidates(preferred="127.13.0.9")) == "127.13.0.9"
    assert next(hosts.candidates(preferred="127.0.0.1")) == "127.13.0.3"  # not ours to take


def test_sweep_removes_dead_daemons_blocks(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    dead = 2**22 + 12345  # above pid_max's default: no such process
    path.write_text(with_block(with_block(USER, [ORDERS], pid=dead), [REDIS], pid=os.getppid()))
    assert HostsFile(HostsSettings(path=path)).sweep() == [dead]
    assert block_pids(path.read_text()) == [os.getppid()]


def test_without_the_right_to_write_it_says_so(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hosts"
    path.write_text(USER)
    path.chmod(0o444)
    monkeypatch.setenv(UNPRIVILEGED_ENV, "1")
    with pytest.raises(RefusedError) as caught:
        HostsFile(HostsSettings(path=path)).check_writable()
    assert str(caught.value) == (f"--hosts needs root to edit {path}: run the daemon as root "
                                 "or use the proxies (bridged run)")
    path.chmod(0o644)
    HostsFile(HostsSettings(path=path)).check_writable()
