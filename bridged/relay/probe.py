"""Is a redirect live? The relay asks the cluster the way a client would.

After a takeover the Service's EndpointSlices are rewritten by the EndpointSlice controller and
then programmed by kube-proxy on every node: for a second or two, new connections to the
ClusterIP still reach the original pods. An intercept is answered only once its traffic really
arrives, so the relay connects to the Service's ClusterIP itself, sends a request carrying a
one-time nonce (header :data:`HEADER`), and waits for the router to see that nonce arrive at
its own listener (:meth:`Probes.arrived`, called by the router before routing). A probe that
lands on an original pod gets whatever the application answers (a 404): harmless.

What this proves and what it does not:

- kube-proxy balances per connection, so each probe is a new connection, and several in a row
  must arrive (:attr:`ProbeSettings.consecutive`): while a Service's endpoints are still mixed
  (a slice rewritten before another, a node half-programmed) one arrival can be luck; three in a
  row with three old replicas still listed would be luck with odds of 1 in 64.
- kube-proxy translates a ClusterIP on the *client's* node: the probe observes the relay's node.
  Every node's kube-proxy watches the same EndpointSlices and applies them within about the same
  time, but a node that lags (overloaded, partitioned) is not seen.
- Connections a client opened before the redirect (keep-alive pools) keep reaching the old pods
  until they reconnect: nothing the relay does can move an established connection.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..config import format_host_port
from ..errors import RefusedError

#: the header the relay's own probes carry; the router answers them itself (204)
HEADER = "x-bridged-probe"
PATH = "/.well-known/bridged-probe"
#: bytes of an answer read to describe it (its status line is all we show)
ANSWER_BYTES = 1024


@dataclass(frozen=True)
class ProbeSettings:
    """How long and how hard the relay checks that a redirect is live."""

    #: seconds the redirect has to become live before the intercept is refused and the Service
    #: restored. Real clusters take 1-2 s (EndpointSlice controller, then kube-proxy's sync,
    #: whose minimum interval is 1 s); 30 s covers a busy control plane without leaving a
    #: developer to wonder for minutes (the daemon waits 50 s for the relay's answer).
    deadline_seconds: float = 30.0
    #: probes in a row that must arrive, each on a new connection (see the module's text)
    consecutive: int = 3
    #: seconds before the first retry after a probe that did not arrive, doubled each time up
    #: to ``max_retry_seconds``: a fast cluster is seen live within 0.1 s, a slow one is not
    #: hammered (a probe a second costs the original pods nothing worth counting)
    first_retry_seconds: float = 0.05
    max_retry_seconds: float = 1.0
    #: seconds one probe may take (connect, send, read the answer's first line): a ClusterIP
    #: answers within milliseconds; an application that never answers must not stall the loop
    attempt_seconds: float = 2.0
    #: seconds a restored Service's EndpointSlices have to stop listing the relay, while the
    #: relay still passes the Service's new connections on to the original pods (a restore is
    #: as slow to take effect as a takeover); then the shadow goes whatever they list
    drain_seconds: float = 10.0
    #: seconds after the slices changed before the relay stops passing on: kube-proxy programs
    #: each node from them within its minimum sync period (1 s by default)
    settle_seconds: float = 1.0


class Probes:
    """The nonces the relay is waiting for. The router calls :meth:`arrived` for every request
    with :data:`HEADER`; a nonce nobody expects is routed as usual (a forged header costs
    nothing), an expected one is answered by the router and counted here."""

    def __init__(self) -> None:
        self._expected: dict[str, asyncio.Future[None]] = {}

    def expect(self) -> tuple[str, Awaitable[None]]:
        """A new nonce, and what completes when it arrives."""
        nonce = secrets.token_urlsafe(18)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._expected[nonce] = future
        return nonce, future

    def arrived(self, nonce: str) -> bool:
        future = self._expected.pop(nonce.strip(), None)
        if future is None:
            return False
        if not future.done():
            future.set_result(None)
        return True

    def forget(self, nonce: str) -> None:
        future = self._expected.pop(nonce, None)
        if future is not None and not future.done():
            future.cancel()

    def __len__(self) -> int:
        return len(self._expected)


class NotLive(RefusedError):
    """The redirect did not become live in time."""


async def until_live(probes: Probes, service: str, host: str, port: int,
                     settings: ProbeSettings, *, host_header: str = "",
                     on_probe: Callable[[int], None] | None = None) -> int:
    """Probe ``host:port`` (the Service's ClusterIP) until ``settings.consecutive`` probes in a
    row arrive at the relay; the number of probes sent. :class:`NotLive` names the Service
    and what the probes met instead, when ``settings.deadline_seconds`` run out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.deadline_seconds
    address = format_host_port(host, port)
    in_a_row, sent, delay = 0, 0, settings.first_retry_seconds
    met: Counter[str] = Counter()
    while True:
        arrived, outcome = await _probe(probes, host, port, host_header or address,
                                        min(settings.attempt_seconds,
                                            max(0.05, deadline - loop.time())))
        sent += 1
        if on_probe is not None:
            on_probe(sent)
        if arrived:
            in_a_row += 1
            if in_a_row >= settings.consecutive:
                return sent
            continue  # the next one at once: a live redirect costs milliseconds
        in_a_row = 0
        met[outcome] += 1
        if loop.time() + delay > deadline:
            seen = ", ".join(f"{what} ({n} times)" for what, n in met.most_common(3))
            raise NotLive(
                f"Service {service} did not send its traffic to the relay within "
                f"{settings.deadline_seconds:g} s: {sent} probes to its ClusterIP {address} "
                f"met {seen} (kube-proxy has not applied the redirect; is it running?)")
        await asyncio.sleep(delay)
        delay = min(delay * 2, settings.max_retry_seconds)


async def _probe(probes: Probes, host: str, port: int, host_header: str,
                 within: float) -> tuple[bool, str]:
    """One probe on a new connection: did it arrive, and if not, what answered."""
    nonce, arrival = probes.expect()
    request = (f"GET {PATH} HTTP/1.1\r\nHost: {host_header}\r\n{HEADER}: {nonce}\r\n"
               "user-agent: bridged-relay-probe\r\nconnection: close\r\n\r\n").encode()
    writer = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            first = await reader.readline()
        outcome = first[:ANSWER_BYTES].decode("latin-1").strip()[:80] or \
            "a connection closed without an answer"
        outcome = f"an answer {outcome!r}" if first.strip() else outcome
    except TimeoutError:
        outcome = f"no answer within {within:.1f} s"
    except ConnectionRefusedError:
        outcome = "connection refused"
    except OSError as exc:
        outcome = f"an error ({exc.strerror or type(exc).__name__})"
    finally:
        if writer is not None:
            writer.close()
        # the router calls arrived() before it answers: by now an arrival is recorded
        arrived = isinstance(arrival, asyncio.Future) and arrival.done() \
            and not arrival.cancelled()
        probes.forget(nonce)
    return arrived, outcome


async def connects(host: str, port: int, within: float = 2.0) -> str:
    """"" when a TCP connection to ``host:port`` opens (closed at once, nothing sent), else
    what happened instead."""
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no connection within {within:.1f} s"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    writer.close()
    return ""


async def connects_within(host: str, port: int, settings: ProbeSettings) -> str:
    """Retry :func:`connects` with the probes' backoff until one opens (``""``) or the
    deadline passes (what the last attempt met)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.deadline_seconds
    delay = settings.first_retry_seconds
    while True:
        seen = await connects(host, port, settings.attempt_seconds)
        if not seen or loop.time() + delay > deadline:
            return seen
        await asyncio.sleep(delay)
        delay = min(delay * 2, settings.max_retry_seconds)
