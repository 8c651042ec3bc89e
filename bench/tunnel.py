"""Benchmark of bridged's data path beside raw loopback TCP and OpenSSH ``ssh -L``, same run.

Paths (each to the same echo/sink server, which runs in its own process on uvloop):

- ``tcp``        plain loopback TCP, the floor;
- ``openssh``    ``ssh -L`` through Debian's ``sshd``, started here on a free port with its own
                 keys and config (aes128-gcm@openssh.com both ways); skipped if sshd is absent;
- ``bridged``    a real relay and daemon (bridged.localrun), tcp carrier, a forward;
- ``bridged-ws`` the same over the websocket carrier;
- ``bridged-kube`` the same over the ``kube`` carrier: the daemon deploys the relay through the
                 stand-in Kubernetes API server of ``tests/kube`` (its own process,
                 ``--serve-kube``, TLS, the ``RelayKubelet`` hook running the real
                 ``bridged relay`` as the pod) and reaches it through the server's
                 ``pods/portforward`` websocket (``v4.channel.k8s.io``); the API server's CPU is
                 reported beside the tunnel's;
- ``python-floor`` no SSH: two Python processes (uvloop, as daemon and relay run) in series,
                 each passing every read on after one AES-GCM operation over it: what any tunnel
                 of two Python processes costs before its protocol adds anything.

Measured, per path: one-stream upload and download and an 8-stream upload (MB/s = bytes / s /
1e6), request/response round trips of 100 bytes (p50/p99, µs), time to open a forwarded stream
(connect + first byte echoed), 1000 concurrent streams (open all, echo one message on each), the
tunnel processes' RSS (VmRSS) after those, and the CPU seconds each tunnel process spent per GB
moved. Load generators use blocking sockets in threads of this process (whose own event loop is
idle meanwhile) and, for the 1000 streams, a private uvloop in a thread.

Usage::

    .venv/bin/python bench/tunnel.py            # full run, a table (about 80 s)
    .venv/bin/python bench/tunnel.py --quick    # shorter
    .venv/bin/python bench/tunnel.py --json     # the table, then one JSON object on the last line
    .venv/bin/python bench/tunnel.py --profile /tmp/prof   # + py-spy of daemon and relay
    .venv/bin/python bench/tunnel.py --paths tcp,bridged-ws,bridged-kube

This is a benchmark, not a test: it never fails on a slow result; it exits non-zero only when a
path cannot be set up or a transfer is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import interpreter

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MiB = 1024 * 1024
CHUNK = 1 * MiB
SSHD = "/usr/sbin/sshd"
CIPHER = "aes128-gcm@openssh.com"
TIMEOUT = 60.0


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# ============================================================================================
# the echo / sink / source server (runs as `tunnel.py --serve` in its own process)
# ============================================================================================
#
# The first byte of a connection chooses what it is:
#   b"E"                 echo everything back;
#   b"S" + u64 N         sink: read N bytes, then answer u64 N;
#   b"D" + u64 N         source: send N bytes.


def serve() -> None:
    import uvloop

    payload = memoryview(os.urandom(CHUNK))
    # one receive buffer for all connections: every read is consumed (or copied) at once
    shared = memoryview(bytearray(CHUNK))

    class Conn(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.view = shared
            self.head = b""
            self.mode = b""
            self.left = 0
            self.total = 0
            self.paused = False

        def connection_made(self, transport: Any) -> None:
            self.t = transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def get_buffer(self, sizehint: int) -> memoryview:
            return self.view

        def buffer_updated(self, n: int) -> None:
            data = self.view[:n]
            if not self.mode:
                self.head += bytes(data)
                need = 1 if self.head[:1] == b"E" else 9
                if len(self.head) < need:
                    return
                self.mode, rest = self.head[:1], self.head[need:]
                if self.mode in (b"S", b"D"):
                    self.left = self.total = int.from_bytes(self.head[1:9], "big")
                if self.mode == b"E":
                    if rest:
                        self.t.write(rest)
                    return
                if self.mode == b"D":
                    self.send_more()
                    return
                data = memoryview(rest)
                n = len(rest)
            if self.mode == b"E":
                self.t.write(bytes(data))
            elif self.mode == b"S":
                self.left -= n
                if self.left <= 0 and self.total:
                    self.t.write(self.total.to_bytes(8, "big"))
                    self.total = 0

        def send_more(self) -> None:
            while self.left > 0 and not self.paused:
                k = min(CHUNK, self.left)
                self.t.write(payload[:k])
                self.left -= k

        def pause_writing(self) -> None:
            self.paused = True
            if self.mode == b"E":
                self.t.pause_reading()

        def resume_writing(self) -> None:
            self.paused = False
            if self.mode == b"E":
                self.t.resume_reading()
            elif self.mode == b"D":
                self.send_more()

        def eof_received(self) -> bool:
            return False

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Conn, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    uvloop.run(main())


def serve_hop(target_port: int) -> None:
    """One hop of the ``python-floor`` path (``tunnel.py --serve-hop PORT``): every connection
    is passed on to ``target_port``, each read sealed once with AES-GCM on its way (the sealed
    copy is dropped: the bytes go on as they came, so the two hops need no framing), with
    back-pressure and half-close both ways."""
    import uvloop
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, nonce = AESGCM(os.urandom(16)), os.urandom(12)

    class Side(asyncio.Protocol):
        def __init__(self) -> None:
            self.t: Any = None
            self.peer: Side | None = None
            self.early: list[bytes] = []  # read before the other side connected
            self.eof = False

        def connection_made(self, transport: Any) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            aead.encrypt(nonce, data, None)  # (the same cost as sealing or opening it)
            if self.peer is None or self.peer.t is None:
                self.early.append(data)
                self.t.pause_reading()
            else:
                self.peer.t.write(data)

        def eof_received(self) -> bool:
            self.eof = True
            if self.peer is not None and self.peer.t is not None:
                self.peer.t.write_eof()
                if self.peer.eof:
                    self.t.close()
                    self.peer.t.close()
            return True

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer is not None and self.peer.t is not None:
                self.peer.t.close()

        def pause_writing(self) -> None:
            if self.peer is not None and self.peer.t is not None:
                self.peer.t.pause_reading()

        def resume_writing(self) -> None:
            if self.peer is not None and self.peer.t is not None:
                self.peer.t.resume_reading()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        connecting: set[asyncio.Task[None]] = set()

        def accepted() -> Side:
            inner, outer = Side(), Side()
            inner.peer, outer.peer = outer, inner

            async def connect() -> None:
                try:
                    await loop.create_connection(lambda: outer, "127.0.0.1", target_port)
                except OSError:
                    if inner.t is not None:
                        inner.t.close()
                    return
                for data in inner.early:
                    outer.t.write(data)
                inner.early.clear()
                if inner.eof:
                    outer.t.write_eof()
                elif inner.t is not None:
                    inner.t.resume_reading()

            task = loop.create_task(connect())
            connecting.add(task)
            task.add_done_callback(connecting.discard)
            return inner

        server = await loop.create_server(accepted, "127.0.0.1", 0, backlog=4096)
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    uvloop.run(main())


class PythonFloor:
    """The ``python-floor`` path: two :func:`serve_hop` processes in series to the server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.hops: list[subprocess.Popen[bytes]] = []

    def start(self) -> Path_:
        port = self.target_port
        for _ in range(2):  # the second hop first: the first one connects to it
            hop = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve-hop", str(port)],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            self.hops.append(hop)
            assert hop.stdout is not None
            port = int(json.loads(hop.stdout.readline())["port"])
        if not echo_works(port):
            raise RuntimeError("the python-floor hops do not echo")
        return Path_("python-floor", port, {"hop1": self.hops[1].pid, "hop2": self.hops[0].pid},
                     note="two Python hops, one AES-GCM operation per read each, no SSH")

    def stop(self) -> None:
        for hop in self.hops:
            hop.terminate()
            hop.wait()


#: the namespace the bench's kube bridge uses on the stand-in API server
KUBE_NS = "bench"


def serve_kube() -> None:
    """The stand-in Kubernetes API server of ``tests/kube`` (TLS, the ``RelayKubelet`` hook that
    runs the real ``bridged relay`` for the relay Deployment's pods), on uvloop, until stdin
    closes (or SIGTERM). Prints one JSON line on stdout once it listens: the kubeconfig it
    wrote (an ``admin`` context by client certificate, namespace ``KUBE_NS``), its URL and pid.
    The relay pods are child processes of this one. Each ``stats`` line on stdin is answered
    with one JSON line on stdout: the port-forward frames the server saw
    (:data:`tests.kube.portforward.FRAMES`)."""
    import uvloop

    from tests.kube.apiserver import Context, KubeApiServer
    from tests.kube.portforward import FRAMES
    from tests.kube.relay_kubelet import RelayKubelet

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        with tempfile.TemporaryDirectory(prefix="bridged-bench-kube-") as tmp:
            work = Path(tmp)
            kubelet = RelayKubelet(work / "node")
            async with KubeApiServer(tls=True, kubelet=kubelet, namespaces=[KUBE_NS]) as api:
                kubelet.attach(api)
                kubeconfig = api.write_kubeconfig(
                    work / "kubeconfig", [Context("admin", api.admin, KUBE_NS, auth="cert")])
                print(json.dumps({"kubeconfig": str(kubeconfig), "url": api.url,
                                  "namespace": KUBE_NS, "pid": os.getpid()}), flush=True)

                def until_stdin_closes() -> None:
                    for line in sys.stdin:
                        if line.strip() == "stats":
                            counts = asyncio.run_coroutine_threadsafe(
                                _copy(FRAMES), loop).result()
                            print(json.dumps(counts), flush=True)
                    loop.call_soon_threadsafe(stop.set)

                threading.Thread(target=until_stdin_closes, daemon=True).start()
                await stop.wait()

    uvloop.run(main())


async def _copy(counts: dict[str, int]) -> dict[str, int]:
    return dict(counts)


# ============================================================================================
# load generators (blocking sockets; called in threads)
# ============================================================================================


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


_PAYLOAD = memoryview(os.urandom(CHUNK))


def upload(port: int, nbytes: int, barrier: threading.Barrier | None = None
           ) -> tuple[float, float]:
    """Send ``nbytes`` to the sink; (start, end) perf_counter of the transfer."""
    with _connect(port) as s:
        if barrier is not None:
            barrier.wait()
        t0 = time.perf_counter()
        s.sendall(b"S" + nbytes.to_bytes(8, "big"))
        left = nbytes
        while left:
            k = min(CHUNK, left)
            s.sendall(_PAYLOAD[:k])
            left -= k
        got = int.from_bytes(_recv_exact(s, 8), "big")
        t1 = time.perf_counter()
    if got != nbytes:
        raise AssertionError(f"sink counted {got} bytes, sent {nbytes}")
    return t0, t1


def download(port: int, nbytes: int) -> float:
    """Receive ``nbytes`` from the source; seconds."""
    buf = memoryview(bytearray(CHUNK))
    with _connect(port) as s:
        t0 = time.perf_counter()
        s.sendall(b"D" + nbytes.to_bytes(8, "big"))
        left = nbytes
        while left:
            n = s.recv_into(buf, min(CHUNK, left))
            if not n:
                raise ConnectionError(f"source closed with {left} bytes to go")
            left -= n
        return time.perf_counter() - t0


def upload_parallel(port: int, streams: int, per_stream: int) -> float:
    """Aggregate seconds for ``streams`` concurrent uploads (first start to last end)."""
    barrier = threading.Barrier(streams)
    results: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(upload(port, per_stream, barrier))
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=one) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return max(e for _, e in results) - min(s for s, _ in results)


def round_trips(port: int, count: int, size: int = 100, warmup: int = 200) -> list[float]:
    """Ping-pong ``size``-byte messages on one connection; µs per round trip."""
    msg = os.urandom(size)
    out: list[float] = []
    with _connect(port) as s:
        s.sendall(b"E")
        for i in range(warmup + count):
            t0 = time.perf_counter()
            s.sendall(msg)
            got = 0
            while got < size:
                chunk = s.recv(size - got)
                if not chunk:
                    raise ConnectionError("echo closed")
                got += len(chunk)
            if i >= warmup:
                out.append((time.perf_counter() - t0) * 1e6)
    return out


def open_times(port: int, count: int) -> list[float]:
    """µs from connect() to the first byte echoed, one fresh connection at a time."""
    out: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"Ex")
        if s.recv(1) != b"x":
            raise ConnectionError("no echo")
        out.append((time.perf_counter() - t0) * 1e6)
        s.close()
    return out


def concurrent(port: int, n: int, on_all_open: Callable[[], Any]) -> dict[str, Any]:
    """Open ``n`` streams at once, echo 32 bytes on each; ``on_all_open`` runs (while all are
    still open) after the last echo. Runs a private uvloop in the calling thread."""
    import uvloop

    async def main() -> dict[str, Any]:
        msg = b"E" + b"m" * 32
        writers: list[asyncio.StreamWriter] = []
        failures: list[str] = []

        async def one() -> float:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writers.append(writer)
                writer.write(msg)
                await reader.readexactly(32)
            except (OSError, asyncio.IncompleteReadError) as exc:
                failures.append(type(exc).__name__)
            return time.perf_counter()

        t0 = time.perf_counter()
        ends = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), TIMEOUT)
        seconds = max(ends) - t0
        ends_sorted = sorted(e - t0 for e in ends)
        extra = on_all_open()
        for w in writers:
            w.close()
        for w in writers:
            with contextlib.suppress(OSError):
                await w.wait_closed()
        return {"seconds": seconds, "p50_seconds": ends_sorted[len(ends_sorted) // 2],
                "failures": len(failures), "after": extra}

    return uvloop.run(main())


# ============================================================================================
# /proc helpers
# ============================================================================================


def rss_mib(pid: int, field: str = "VmRSS") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, cpu seconds) of one process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _precise_cpu(pid: int, fallback: float) -> float:
    """CPU seconds of all threads of ``pid`` from schedstat (ns), else the tick-based value."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        return fallback


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (sshd forks a child per connection)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                stats[int(entry)] = st
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += _precise_cpu(p, stats[p][1])
        todo += [c for c, (pp, _) in stats.items() if pp == p]
    return total


def machine_busy() -> float:
    """CPU seconds all CPUs of the machine spent busy since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(f) - f[3] - f[4]) / _TICK


def tcp_counters() -> dict[str, int]:
    """Kernel TCP counters of this network namespace that say SYNs were dropped and retried."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
            return {k: table.get(k, 0) for k in ("ListenOverflows", "TCPSynRetrans")}
    return {}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


# ============================================================================================
# the paths
# ============================================================================================


@dataclass
class Path_:
    name: str
    port: int
    #: tunnel processes: label -> pid (RSS and CPU are read from these)
    procs: dict[str, int] = field(default_factory=dict)
    note: str = ""
    #: labels whose CPU is their own process's alone, not their descendants' too (the stand-in
    #: API server: the relay pod is its child and has a column of its own)
    solo: frozenset[str] = frozenset()
    #: websocket carriers: counters of the messages (frames) each side sent and received, read
    #: once the path is quiet; label -> {messages_out, bytes_out, messages_in, bytes_in}
    frames: Callable[[], dict[str, dict[str, int]]] | None = None

    def cpu(self, label: str) -> float:
        pid = self.procs[label]
        if label in self.solo:
            st = _stat(pid)
            return _precise_cpu(pid, st[1]) if st is not None else 0.0
        return tree_cpu(pid)


#: the daemon writes its carrier's message counters here (``BRIDGED_CARRIER_STATS``)
STATS_FILE = "carrier-stats.json"


def daemon_counts(path: Path) -> dict[str, int]:
    """The daemon's carrier counters, once it has written the last of them (it writes them when
    no message has passed for 50-100 ms; the caller has stopped moving bytes)."""
    time.sleep(0.2)
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {"messages_out": 0, "bytes_out": 0, "messages_in": 0, "bytes_in": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def echo_works(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(b"Eok")
            return _recv_exact(s, 2) == b"ok"
    except OSError:
        return False


class OpenSSH:
    """sshd on 127.0.0.1 with its own host key, client key, config; and ``ssh -N -L``."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        self.dir = workdir
        self.target_port = target_port
        self.sshd: subprocess.Popen[bytes] | None = None
        self.ssh: subprocess.Popen[bytes] | None = None

    def start(self) -> Path_:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                           check=True, stdin=subprocess.DEVNULL)
        shutil.copy(d / "client_key.pub", d / "authorized_keys")
        os.chmod(d / "authorized_keys", 0o600)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privsep directory
        port = free_port()
        (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
PermitOpen any
UseDNS no
Compression no
Ciphers {CIPHER}
ClientAliveInterval 0
LogLevel ERROR
""")
        log_file = (d / "sshd.log").open("ab")
        self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                                     stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        log_file.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(4) == b"SSH-":
                        break
            except OSError:
                pass
            if self.sshd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(d / 'sshd.log').read_text()[-300:]}")
            time.sleep(0.05)
        local = free_port()
        log_file = (d / "ssh.log").open("ab")
        self.ssh = subprocess.Popen(
            ["ssh", "-F", "/dev/null", "-N", "-T", "-x", "-a",
             "-L", f"127.0.0.1:{local}:127.0.0.1:{self.target_port}",
             "-p", str(port), "-i", str(d / "client_key"),
             "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", f"Ciphers={CIPHER}", "-o", "Compression=no", "-o", "ControlMaster=no",
             "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
             f"{getpass.getuser()}@127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        log_file.close()
        deadline = time.monotonic() + 15
        while not echo_works(local):
            if self.ssh.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ssh -L did not come up: {(d / 'ssh.log').read_text()[-300:]}")
            time.sleep(0.05)
        return Path_("openssh", local, {"ssh": self.ssh.pid, "sshd": self.sshd.pid},
                     note=f"OpenSSH ssh -L via sshd, {CIPHER}")

    def stop(self) -> None:
        for p in (self.ssh, self.sshd):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


class Bridged:
    """A real relay and daemon (bridged.localrun) and one forward to the server."""

    def __init__(self, workdir: Path, target_port: int, carrier: str) -> None:
        self.dir = workdir
        self.target_port = target_port
        self.carrier = carrier
        self.relay: Any = None
        self.daemon: Any = None

    async def start(self) -> Path_:
        from bridged.control.client import ControlClient
        from bridged.localrun import DaemonProcess, RelayProcess

        token = secrets.token_hex(16) if self.carrier == "ws" else None
        self.relay = RelayProcess(self.dir / "relay", http_port=0 if token else None, token=token)
        await self.relay.start()
        stats = self.dir / STATS_FILE
        self.daemon = DaemonProcess(self.dir / "daemon",
                                    extra_env={"BRIDGED_CARRIER_STATS": str(stats)})
        await self.daemon.start()
        client = ControlClient(self.daemon.socket)

        async def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            return await asyncio.to_thread(client.request, method, path, body)

        status = await call("GET", "status")
        self.relay.authorize(status["daemon"]["client_key"])
        body: dict[str, Any] = {"url": self.relay.url if token is None else self.relay.ws_url}
        if token:
            body["token"] = token
        await call("POST", "bridges", body)
        fwd = await call("POST", "forwards", {"target": f"127.0.0.1:{self.target_port}",
                                             "name": "bench"})
        port = int(fwd["forwards"][0]["local_port"])
        if not await asyncio.to_thread(echo_works, port):
            raise RuntimeError(f"bridged {self.carrier} forward does not echo")
        name = "bridged" if self.carrier == "tcp" else "bridged-ws"
        return Path_(name, port, {"daemon": self.daemon.pid, "relay": self.relay.pid},
                     note=f"bridged, {self.carrier} carrier",
                     frames=None if self.carrier == "tcp" else
                     lambda: {"daemon": daemon_counts(stats)})

    async def stop(self) -> None:
        for p in (self.daemon, self.relay):
            if p is not None:
                with contextlib.suppress(Exception):
                    await p.stop()


def kube_standin_missing() -> str | None:
    """Why the stand-in API server cannot run here (None: it can)."""
    if not (ROOT / "tests" / "kube" / "apiserver.py").exists():
        return f"{ROOT / 'tests' / 'kube'} not found (a source checkout has it)"
    try:
        import tests.kube.apiserver
        import tests.kube.relay_kubelet  # noqa: F401
    except ImportError as exc:
        return f"the stand-in API server does not import: {exc}"
    return None


class BridgedKube:
    """The stand-in API server (``--serve-kube``, a process of its own), a daemon whose
    KUBECONFIG points at it, ``POST /v1/bridges {}`` (deploys the relay, whose pod the server's
    kubelet hook runs as a real ``bridged relay`` child process, and connects through the
    server's ``pods/portforward`` websocket), and one forward to the server."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        self.dir = workdir
        self.target_port = target_port
        self.server: subprocess.Popen[bytes] | None = None
        self.daemon: Any = None

    def _start_server(self) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        log_file = (self.dir / "apiserver.log").open("ab")
        self.server = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-kube"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, cwd=ROOT)
        log_file.close()
        assert self.server.stdout is not None
        line = self.server.stdout.readline()
        if not line:
            self.server.wait(10)
            raise RuntimeError("the stand-in API server did not start: "
                               + (self.dir / "apiserver.log").read_text()[-500:])
        return dict(json.loads(line))

    def frames(self) -> dict[str, dict[str, int]]:
        """The daemon's carrier counters and the port-forward frames the API server saw, in the
        daemon's terms (``out``: daemon to API server)."""
        out = {"daemon": daemon_counts(self.dir / STATS_FILE)}
        assert self.server is not None and self.server.stdin is not None
        assert self.server.stdout is not None
        self.server.stdin.write(b"stats\n")
        self.server.stdin.flush()
        seen = json.loads(self.server.stdout.readline())
        out["apiserver"] = {"messages_out": seen["frames_in"], "bytes_out": seen["bytes_in"],
                            "messages_in": seen["frames_out"], "bytes_in": seen["bytes_out"]}
        return out

    def _relay_pid(self) -> int:
        """The relay pod's process: the server's child running ``bridged relay``."""
        assert self.server is not None
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            st = _stat(int(entry))
            if st is None or st[0] != self.server.pid:
                continue
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if b"bridged" in argv and b"relay" in argv:
                    return int(entry)
        raise RuntimeError("no relay process under the stand-in API server")

    async def start(self) -> Path_:
        from bridged.control.client import ControlClient
        from bridged.localrun import DaemonProcess

        info = await asyncio.to_thread(self._start_server)
        kubeconfig = str(info["kubeconfig"])

        class KubeDaemon(DaemonProcess):
            @property
            def env(self) -> dict[str, str]:
                return {**super().env, "KUBECONFIG": kubeconfig}

        self.daemon = KubeDaemon(
            self.dir / "daemon",
            extra_env={"BRIDGED_CARRIER_STATS": str(self.dir / STATS_FILE)})
        await self.daemon.start()
        # deploying the relay (objects, a pod, the relay starting) takes a few seconds
        client = ControlClient(self.daemon.socket, timeout=120)

        async def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            return await asyncio.to_thread(client.request, method, path, body)

        bridge = await call("POST", "bridges", {})
        if bridge.get("state") != "connected":
            raise RuntimeError(f"the kube bridge is {bridge.get('state')!r}: {bridge}")
        fwd = await call("POST", "forwards", {"target": f"127.0.0.1:{self.target_port}",
                                             "name": "bench"})
        port = int(fwd["forwards"][0]["local_port"])
        if not await asyncio.to_thread(echo_works, port):
            raise RuntimeError("bridged kube forward does not echo")
        relay = await asyncio.to_thread(self._relay_pid)
        assert self.server is not None
        return Path_("bridged-kube", port,
                     {"daemon": self.daemon.pid, "relay": relay, "apiserver": self.server.pid},
                     note=f"bridged, kube carrier via the stand-in API server {info['url']}",
                     solo=frozenset({"apiserver"}), frames=self.frames)

    async def stop(self) -> None:
        if self.daemon is not None:
            with contextlib.suppress(Exception):
                await self.daemon.stop()
        server = self.server
        if server is not None and server.poll() is None:
            assert server.stdin is not None
            with contextlib.suppress(OSError):
                server.stdin.close()  # the server stops its pods and exits
            try:
                await asyncio.to_thread(server.wait, 20)
            except subprocess.TimeoutExpired:
                server.kill()
                await asyncio.to_thread(server.wait)


# ============================================================================================
# the run
# ============================================================================================


@dataclass
class Plan:
    reps: int
    upload_bytes: int
    parallel_streams: int
    parallel_bytes_each: int
    rtt_count: int
    open_count: int
    concurrent_n: int
    concurrent_reps: int
    #: round trips and stream opens are cheap and the noisiest (CPU placement): more repetitions
    latency_reps: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(reps=1, upload_bytes=64 * MiB, parallel_streams=8,
                       parallel_bytes_each=16 * MiB, rtt_count=1000, open_count=50,
                       concurrent_n=1000, concurrent_reps=1, latency_reps=2)
        return cls(reps=3, upload_bytes=256 * MiB, parallel_streams=8,
                   parallel_bytes_each=64 * MiB, rtt_count=2000, open_count=200,
                   concurrent_n=1000, concurrent_reps=2, latency_reps=5)


async def measure(paths: list[Path_], plan: Plan, profile_dir: Path | None
                  ) -> dict[str, dict[str, Any]]:
    res: dict[str, dict[str, Any]] = {p.name: {"note": p.note} for p in paths}
    samples: dict[str, dict[str, list[float]]] = {p.name: {} for p in paths}
    cpu: dict[str, dict[str, float]] = {p.name: {k: 0.0 for k in p.procs} for p in paths}
    moved: dict[str, int] = {p.name: 0 for p in paths}

    def add(p: Path_, key: str, value: float) -> None:
        samples[p.name].setdefault(key, []).append(value)

    # websocket messages (frames) and payload bytes: the daemon's sends during the 1-stream
    # uploads ("up") and its receives during the downloads ("down"), per counting side
    frame_sums: dict[str, dict[str, list[int]]] = {p.name: {} for p in paths}

    def count_frames(p: Path_, before: dict[str, dict[str, int]] | None, way: str
                     ) -> dict[str, dict[str, int]] | None:
        if p.frames is None:
            return None
        now = p.frames()
        if before is not None:
            field = "out" if way == "up" else "in"
            for side, c in now.items():
                acc = frame_sums[p.name].setdefault(f"{side}_{way}", [0, 0])
                acc[0] += c[f"messages_{field}"] - before[side][f"messages_{field}"]
                acc[1] += c[f"bytes_{field}"] - before[side][f"bytes_{field}"]
        return now

    busy0, ours0, wall0 = machine_busy(), tree_cpu(os.getpid()), time.monotonic()
    for p in paths:
        res[p.name]["idle_rss_mib"] = {k: rss_mib(pid) for k, pid in p.procs.items()}

    # throughput: interleave the paths in each repetition so drifts hit all alike
    for rep in range(plan.reps):
        for p in paths:
            before = {k: p.cpu(k) for k in p.procs}
            f0 = await asyncio.to_thread(count_frames, p, None, "")
            t0, t1 = await asyncio.to_thread(upload, p.port, plan.upload_bytes)
            add(p, "upload_mbps", plan.upload_bytes / (t1 - t0) / 1e6)
            f1 = await asyncio.to_thread(count_frames, p, f0, "up")
            secs = await asyncio.to_thread(download, p.port, plan.upload_bytes)
            add(p, "download_mbps", plan.upload_bytes / secs / 1e6)
            await asyncio.to_thread(count_frames, p, f1, "down")
            total = plan.parallel_streams * plan.parallel_bytes_each
            secs = await asyncio.to_thread(upload_parallel, p.port, plan.parallel_streams,
                                           plan.parallel_bytes_each)
            add(p, "parallel_mbps", total / secs / 1e6)
            for k in p.procs:
                cpu[p.name][k] += p.cpu(k) - before[k]
            moved[p.name] += 2 * plan.upload_bytes + total
        log(f"throughput repetition {rep + 1}/{plan.reps} done")

    # CPU µs each tunnel process spends per round trip / per stream (open, echo, close): far
    # steadier than the wall-clock latencies, which depend on where the scheduler puts things
    lat_cpu: dict[str, dict[str, list[float]]] = {p.name: {} for p in paths}
    for _ in range(plan.latency_reps):
        for p in paths:
            before = {k: p.cpu(k) for k in p.procs}
            rtts = await asyncio.to_thread(round_trips, p.port, plan.rtt_count, 100, 200)
            mid = {k: p.cpu(k) for k in p.procs}
            add(p, "rtt_p50_us", pct(rtts, 50))
            add(p, "rtt_p99_us", pct(rtts, 99))
            opens = await asyncio.to_thread(open_times, p.port, plan.open_count)
            await asyncio.sleep(0.05)  # the last close reaches the tunnel
            end = {k: p.cpu(k) for k in p.procs}
            add(p, "open_p50_us", pct(opens, 50))
            add(p, "open_p99_us", pct(opens, 99))
            for k in p.procs:
                lat_cpu[p.name].setdefault(f"rtt_{k}", []).append(
                    (mid[k] - before[k]) * 1e6 / (plan.rtt_count + 200))
                lat_cpu[p.name].setdefault(f"open_{k}", []).append(
                    (end[k] - mid[k]) * 1e6 / plan.open_count)
    log("round trips and stream opens done")

    for _ in range(plan.concurrent_reps):
        for p in paths:
            def after(p: Path_ = p) -> dict[str, float | None]:
                return {k: rss_mib(pid) for k, pid in p.procs.items()}

            before_c = tcp_counters()
            out = await asyncio.to_thread(concurrent, p.port, plan.concurrent_n, after)
            after_c = tcp_counters()
            for k, v in after_c.items():
                key = f"concurrent_{k}"
                res[p.name][key] = res[p.name].get(key, 0) + v - before_c.get(k, 0)
            add(p, "concurrent_seconds", out["seconds"])
            add(p, "concurrent_p50_seconds", out["p50_seconds"])
            res[p.name]["concurrent_failures"] = (
                res[p.name].get("concurrent_failures", 0) + out["failures"])
            res[p.name]["rss_after_concurrent_mib"] = out["after"]
            await asyncio.sleep(0.5)  # let the tunnel close the streams
    log(f"{plan.concurrent_n} concurrent streams done")

    for p in paths:
        for key, values in samples[p.name].items():
            res[p.name][key] = median(values)
        if frame_sums[p.name]:
            res[p.name]["frames"] = {
                k: {"frames": n, "bytes_per_frame": round(b / n) if n else None}
                for k, (n, b) in sorted(frame_sums[p.name].items())}
            for way in ("up", "down"):
                res[p.name][f"bytes_per_frame_{way}"] = (
                    res[p.name]["frames"][f"daemon_{way}"]["bytes_per_frame"])
        gb = moved[p.name] / 1e9
        res[p.name]["cpu_seconds_per_gb"] = {k: round(v / gb, 3) for k, v in cpu[p.name].items()}
        tunnel = [k for k in ("daemon", "relay", "ssh", "sshd") if k in p.procs]
        if tunnel:
            res[p.name]["tunnel_cpu_seconds_per_gb"] = sum(cpu[p.name][k] for k in tunnel) / gb
        res[p.name]["cpu_us_per_round_trip"] = {
            k: round(median(lat_cpu[p.name][f"rtt_{k}"]), 1) for k in p.procs}
        res[p.name]["cpu_us_per_stream"] = {
            k: round(median(lat_cpu[p.name][f"open_{k}"]), 1) for k in p.procs}
        res[p.name]["peak_rss_mib"] = {k: rss_mib(pid, "VmHWM") for k, pid in p.procs.items()}

    # CPU the rest of the machine used meanwhile (other jobs make every number noisy)
    other = (machine_busy() - busy0) - (tree_cpu(os.getpid()) - ours0)
    res["_meta"] = {"other_load_cpus": round(max(0.0, other) / (time.monotonic() - wall0), 2)}

    if profile_dir is not None:
        await asyncio.to_thread(profile, paths, plan, profile_dir)
    return res


def profile(paths: list[Path_], plan: Plan, out: Path) -> None:
    """py-spy record of the tunnel processes during one long upload and one download per path
    (blocking: run it in a thread)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        log("py-spy not found: pip install py-spy (skipping --profile)")
        return
    out.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if not p.name.startswith("bridged"):
            continue
        for direction in ("upload", "download"):
            spies = []
            for label, pid in p.procs.items():
                base = out / f"{p.name}-{direction}-{label}"
                spies.append(subprocess.Popen(
                    [spy, "record", "--pid", str(pid), "--rate", "500",
                     "--format", "raw", "-o", f"{base}.txt"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)  # py-spy attaches
            nbytes = 4 * plan.upload_bytes
            if direction == "upload":
                upload(p.port, nbytes)
            else:
                download(p.port, nbytes)
            for s in spies:
                s.send_signal(signal.SIGINT)
            for s in spies:
                s.wait(30)
            log(f"profiled {p.name} {direction}: {out}/{p.name}-{direction}-*.txt")
    for f in sorted(out.glob("*.txt")):
        f.with_suffix(".top").write_text(summarize_raw(f))


#: leaf frames py-spy reports for a thread that is waiting, not working
_IDLE_LEAVES = ("Runner.run (asyncio/runners.py", "_worker (concurrent/futures/thread.py",
                "run (uvloop/__init__.py", "select (selectors.py", "wait (threading.py",
                "serve_kube.<locals>.main.<locals>.until_stdin_closes (")


def summarize_raw(path: Path, top: int = 30) -> str:
    """Self and inclusive shares per function of the *working* samples in py-spy's raw output."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if not frames or not count.isdigit():
            continue
        n = int(count)
        if frames[-1].startswith(_IDLE_LEAVES):
            idle += n
            continue
        total += n
        self_t[frames[-1]] = self_t.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    lines = [f"{path.name}: {total} working samples ({idle} idle ones left out)", "", "self:"]
    for f, n in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / max(total, 1):5.1f}%  {f}")
    lines += ["", "inclusive:"]
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / max(total, 1):5.1f}%  {f}")
    return "\n".join(lines) + "\n"


# ============================================================================================
# output
# ============================================================================================

ROWS = [
    ("upload_mbps", "upload 1 stream, MB/s", "{:.0f}", "higher"),
    ("parallel_mbps", "upload 8 streams, MB/s (aggregate)", "{:.0f}", "higher"),
    ("download_mbps", "download 1 stream, MB/s", "{:.0f}", "higher"),
    ("rtt_p50_us", "round trip 100 B p50, µs", "{:.0f}", "lower"),
    ("rtt_p99_us", "round trip 100 B p99, µs", "{:.0f}", "lower"),
    ("open_p50_us", "open stream p50 (connect+echo), µs", "{:.0f}", "lower"),
    ("open_p99_us", "open stream p99, µs", "{:.0f}", "lower"),
    ("concurrent_seconds", "1000 concurrent: all open+echoed, s", "{:.3f}", "lower"),
    ("concurrent_p50_seconds", "1000 concurrent: half done by, s", "{:.3f}", "lower"),
    ("tunnel_cpu_seconds_per_gb", "tunnel CPU s/GB (daemon+relay | ssh+sshd)", "{:.2f}", "lower"),
    ("bytes_per_frame_up", "websocket bytes/frame up (1-stream upload)", "{:.0f}", "higher"),
    ("bytes_per_frame_down", "websocket bytes/frame down (1-stream download)", "{:.0f}",
     "higher"),
]


def fmt_procs(d: dict[str, Any] | None, unit: str = "") -> str:
    if not d:
        return "-"
    return " ".join(f"{k} {v:.1f}{unit}" if isinstance(v, float) else f"{k} -"
                    for k, v in d.items())


#: ratio columns of the table: (numerator path, denominator path, heading)
RATIOS = [("bridged", "openssh", "bridged/openssh"), ("bridged-kube", "bridged-ws", "kube/ws")]


def table(res: dict[str, dict[str, Any]]) -> str:
    names = [n for n in res if not n.startswith("_")]
    ratios = [(a, b, h) for a, b, h in RATIOS if a in res and b in res]
    head = ["metric", *names, *(h for _, _, h in ratios)]
    rows = [head]
    for key, label, f, _ in ROWS:
        row = [label]
        for n in names:
            v = res[n].get(key)
            row.append(f.format(v) if isinstance(v, (int, float)) else "-")
        for a_name, b_name, _ in ratios:
            a, b = res[a_name].get(key), res[b_name].get(key)
            row.append(f"{a / b:.2f}x" if a and b else "-")
        rows.append(row)
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(head))]
    lines = []
    for i, cells in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j])
                               for j, c in enumerate(cells)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    w = max(len(n) for n in names)
    for n in names:
        r = res[n]
        if not r.get("cpu_seconds_per_gb"):
            continue
        lines.append(f"{n:<{w}} CPU s/GB: {fmt_procs(r.get('cpu_seconds_per_gb'))};  "
                     f"CPU µs per round trip: {fmt_procs(r.get('cpu_us_per_round_trip'))}, "
                     f"per stream (open+echo+close): {fmt_procs(r.get('cpu_us_per_stream'))}")
        lines.append(f"{'':<{w}} RSS MiB idle: {fmt_procs(r.get('idle_rss_mib'))}, with 1000 open: "
                     f"{fmt_procs(r.get('rss_after_concurrent_mib'))}, peak: "
                     f"{fmt_procs(r.get('peak_rss_mib'))}"
                     + (f";  failed streams: {r['concurrent_failures']}"
                        if r.get("concurrent_failures") else ""))
        if r.get("frames"):
            lines.append(f"{'':<{w}} websocket frames (count, payload bytes/frame): " + ", ".join(
                f"{k} {v['frames']} x {v['bytes_per_frame']}" for k, v in r["frames"].items()))
    drops = [f"{n} {r.get('concurrent_ListenOverflows', 0)}/{r.get('concurrent_TCPSynRetrans', 0)}"
             for n, r in res.items() if not n.startswith("_")]
    lines.append("1000 concurrent, kernel listen-queue overflows / SYN retransmits (all reps): "
                 + ", ".join(drops))
    return "\n".join(lines)


def summary(res: dict[str, dict[str, Any]], seconds: float, quick: bool,
            skipped: dict[str, str]) -> dict[str, Any]:
    b = res.get("bridged", {})
    o = res.get("openssh")

    def ratio(key: str) -> float | None:
        if not o or not b.get(key) or not o.get(key):
            return None
        return round(b[key] / o[key], 3)

    rss = (b.get("rss_after_concurrent_mib") or {}).get("daemon")
    out: dict[str, Any] = {
        "throughput_ratio_vs_openssh": ratio("upload_mbps"),
        "rtt_p50_ratio_vs_openssh": ratio("rtt_p50_us"),
        "concurrent_1000_seconds": round(b["concurrent_seconds"], 3)
        if "concurrent_seconds" in b else None,
        "daemon_rss_mib": round(rss, 1) if rss is not None else None,
        "parallel_ratio_vs_openssh": ratio("parallel_mbps"),
        "download_ratio_vs_openssh": ratio("download_mbps"),
        "rtt_p99_ratio_vs_openssh": ratio("rtt_p99_us"),
        "open_p50_ratio_vs_openssh": ratio("open_p50_us"),
        "open_stream_p50_ratio_vs_openssh": ratio("open_p50_us"),
        "cpu_per_gb_ratio_vs_openssh": ratio("tunnel_cpu_seconds_per_gb"),
        "python": interpreter(),
    }
    idle = b.get("idle_rss_mib") or {}
    for proc in ("daemon", "relay"):
        v = idle.get(proc)
        out[f"{proc}_rss_idle_mib"] = round(v, 1) if v is not None else None
    k, ws = res.get("bridged-kube", {}), res.get("bridged-ws", {})

    def vs_ws(key: str) -> float | None:
        if not k.get(key) or not ws.get(key):
            return None
        return round(k[key] / ws[key], 3)

    # the kube carrier beside the plain websocket one: its own overhead (port-forward framing,
    # one more hop through an API server), not the stand-in's speed, is what carries over
    out["kube_throughput_ratio_vs_ws"] = vs_ws("upload_mbps")
    out["kube_rtt_p50_ratio_vs_ws"] = vs_ws("rtt_p50_us")
    out["kube_download_ratio_vs_ws"] = vs_ws("download_mbps")
    out["kube_parallel_ratio_vs_ws"] = vs_ws("parallel_mbps")
    out["kube_cpu_per_gb_ratio_vs_ws"] = vs_ws("tunnel_cpu_seconds_per_gb")
    out["kube_apiserver_cpu_seconds_per_gb"] = (
        k.get("cpu_seconds_per_gb") or {}).get("apiserver")
    # mean payload bytes per websocket message (frame), daemon to relay during the 1-stream
    # uploads and back during the downloads, as the daemon counts them; the API server's own
    # count of the kube path beside them
    for name, r in (("kube", k), ("ws", ws)):
        for way in ("up", "down"):
            out[f"{name}_bytes_per_frame_{way}"] = r.get(f"bytes_per_frame_{way}")
    for way in ("up", "down"):
        out[f"kube_apiserver_bytes_per_frame_{way}"] = (
            (k.get("frames") or {}).get(f"apiserver_{way}") or {}).get("bytes_per_frame")
    tp, rt = out["throughput_ratio_vs_openssh"], out["rtt_p50_ratio_vs_openssh"]
    cs, dr = out["concurrent_1000_seconds"], out["daemon_rss_mib"]
    out["targets_met"] = {
        "throughput_ratio_ge_0.9": None if tp is None else tp >= 0.9,
        "rtt_p50_ratio_le_1.5": None if rt is None else rt <= 1.5,
        "concurrent_1000_lt_0.5s": None if cs is None else cs < 0.5,
        "daemon_rss_lt_100mib": None if dr is None else dr < 100,
    }

    def rounded(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 3)
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        return v

    meta = res.get("_meta", {})
    out["other_load_cpus"] = meta.get("other_load_cpus")
    out["paths"] = {n: rounded(r) for n, r in res.items() if not n.startswith("_")}
    out["skipped"] = skipped
    out["quick"] = quick
    out["cpus"] = os.cpu_count()
    out["seconds"] = round(seconds, 1)
    return out


def start_server() -> tuple[subprocess.Popen[bytes], int]:
    """The echo/sink/source server in its own process; (process, port)."""
    server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert server.stdout is not None
    return server, int(json.loads(server.stdout.readline())["port"])


def openssh_installed() -> bool:
    return Path(SSHD).exists() and shutil.which("ssh") is not None


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    plan = Plan.make(args.quick)
    wanted = args.paths.split(",")
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bridged-bench-") as tmp:
        work = Path(tmp)
        server, target = await asyncio.to_thread(start_server)
        paths: list[Path_] = []
        openssh: OpenSSH | None = None
        floor: PythonFloor | None = None
        bridges: list[Bridged | BridgedKube] = []
        try:
            if "tcp" in wanted:
                paths.append(Path_("tcp", target, {"server": server.pid}, "loopback TCP"))
            if "openssh" in wanted:
                if not await asyncio.to_thread(openssh_installed):
                    msg = (f"{SSHD} or ssh not found: skipping the OpenSSH column "
                           "(apt-get install -y openssh-server openssh-client)")
                    log(msg)
                    skipped["openssh"] = msg
                else:
                    openssh = OpenSSH(work / "openssh", target)
                    paths.append(await asyncio.to_thread(openssh.start))
            if "python-floor" in wanted:
                floor = PythonFloor(target)
                paths.append(await asyncio.to_thread(floor.start))
            for carrier, name in (("tcp", "bridged"), ("ws", "bridged-ws")):
                if name in wanted:
                    b = Bridged(work / name, target, carrier)
                    bridges.append(b)
                    paths.append(await b.start())
            if "bridged-kube" in wanted:
                missing = await asyncio.to_thread(kube_standin_missing)
                if missing:
                    msg = f"{missing}: skipping the bridged-kube column"
                    log(msg)
                    skipped["bridged-kube"] = msg
                else:
                    kb = BridgedKube(work / "bridged-kube", target)
                    bridges.append(kb)
                    paths.append(await kb.start())
            log("paths ready: " + ", ".join(f"{p.name} on :{p.port}" for p in paths))
            res = await measure(paths, plan, Path(args.profile) if args.profile else None)
        finally:
            for tunnel in bridges:
                await tunnel.stop()
            if openssh is not None:
                openssh.stop()
            if floor is not None:
                floor.stop()
            server.terminate()
            server.wait()
    elapsed = time.monotonic() - started
    print(f"bridged tunnel benchmark ({'quick' if args.quick else 'full'}, "
          f"{os.cpu_count()} CPUs, {elapsed:.0f}s); medians of {plan.reps} repetitions "
          f"({plan.latency_reps} for latencies, {plan.concurrent_reps} for 1000 concurrent); "
          f"daemon and relay on {interpreter()}")
    print(table(res))
    other = res.get("_meta", {}).get("other_load_cpus")
    if other is not None:
        print(f"other load on the machine during the run: {other:.2f} CPUs"
              + ("  (NOISY: numbers are not reliable)" if other > 0.15 else ""))
    out = summary(res, elapsed, args.quick, skipped)
    print()
    print("targets: " + ", ".join(f"{k} {'ok' if v else ('-' if v is None else 'MISSED')}"
                                  for k, v in out["targets_met"].items()))
    if args.json:
        print(json.dumps(out))
    return 0


PATHS = ("tcp", "openssh", "python-floor", "bridged", "bridged-ws", "bridged-kube")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer bytes and repetitions")
    ap.add_argument("--json", action="store_true", help="one JSON object on the last line")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help=f"comma-separated subset of {','.join(PATHS)}")
    ap.add_argument("--profile", metavar="DIR",
                    help="after the measurements, py-spy record the bridged processes during a "
                    "long upload and download into DIR (raw stacks and a .top summary)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-kube", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-hop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return 0
    if args.serve_hop:
        serve_hop(args.serve_hop)
        return 0
    if args.serve_kube:
        serve_kube()
        return 0
    unknown = [n for n in args.paths.split(",") if n not in PATHS]
    if unknown:
        ap.error(f"unknown path(s) {', '.join(unknown)}: choose from {','.join(PATHS)}")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
