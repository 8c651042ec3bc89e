"""What the clients of the router's differential test send: hypothesis strategies for
sequences of valid and hostile HTTP/1.1 requests on several keep-alive connections, and for each
request what the router may do with it (the model the properties are checked against).

Every request carries a unique tag (``x-req: c<connection>-<index>``), so a request an upstream
receives and a response a client reads can both be traced to the exact request they belong to,
and ``x-answer`` tokens saying how its upstream answers (see :mod:`.recording_upstream`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from bridged.relay.router import MAX_HEAD_BYTES

from .recording_upstream import sha256

#: must be answered (unless the connection ended before it, for a reason the model knows)
VALID = "valid"
#: may be answered (then exactly like a valid one) or refused: RFC 9112 lets a server do either
LENIENT = "lenient"
#: must be refused; an upstream may see at most its head (when the fault is in its body)
HOSTILE = "hostile"
#: not HTTP/1.1 at all: refused, or, first on its connection, passed through to the origin
OPAQUE = "opaque"

DEVELOPERS = ("alice", "bob")
TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(32)


def upstream_for(dev: str) -> str:
    """Where the relay's rules send a request with this x-dev ("" for none)."""
    return dev if dev in DEVELOPERS else "origin"


@dataclass(frozen=True)
class Item:
    """One request (or bytes posing as one) a client writes, and what the router may do."""

    kind: str
    tag: str  # its x-req ("" when it has no head)
    dev: str  # its x-dev ("" for none)
    data: bytes  # exactly what is written
    role: str
    body_sha: str | None = None  # the body an upstream must receive, if it gets it whole
    answer: frozenset[str] = frozenset()  # its x-answer tokens
    glued: bool = False  # written in one write with the item before (a smuggling attempt)
    complete: bool = True  # False: the rest never comes (the connection ends waiting for it)
    head_may_pass: bool = False  # HOSTILE with a sound head: it may reach an upstream, unfinished
    client_close: bool = False  # it says Connection: close

    @property
    def owed(self) -> bool:
        """An answer must come, unless the connection ended before it."""
        return self.role == VALID and self.complete

    @property
    def may_end_at(self) -> bool:
        """The connection may end here without an answer to it."""
        return not self.owed

    @property
    def may_end_after(self) -> bool:
        """The connection may end after its answer: it or its upstream said close, or it asked
        to leave HTTP (after a 101 only the new protocol flows; after a refusal the router
        may close)."""
        return "close" in self.answer or self.client_close or self.kind in ("upgrade",)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis prints it
        printer.text(repr(self))

    def __repr__(self) -> str:
        data = self.data if len(self.data) <= 240 else self.data[:240] + b"..."
        flags = "".join(f" {name}" for name in ("glued", "client_close") if getattr(self, name))
        return (f"Item({self.kind} {self.tag or '-'} dev={self.dev or '-'} {self.role}"
                f"{'' if self.complete else ' incomplete'}{flags} "
                f"answer={','.join(sorted(self.answer)) or '-'} {len(self.data)} B: {data!r})")


@dataclass(frozen=True)
class ConnPlan:
    """One client connection: its items, written all at once (pipelined) or one by one
    (each owed answer awaited before the next write)."""

    conn: int
    items: tuple[Item, ...]
    pipelined: bool

    def owed(self, index: int) -> bool:
        """Whether the item at ``index`` is owed an answer: not after non-HTTP bytes (the
        router refuses them, or passes the whole connection through to the origin)."""
        return self.items[index].owed and all(i.role != OPAQUE for i in self.items[:index])

    def writes(self) -> Iterator[tuple[int, ...]]:
        """The indexes of the items written together, write after write."""
        if self.pipelined:
            yield tuple(range(len(self.items)))
            return
        group: list[int] = []
        for index, item in enumerate(self.items):
            if group and not item.glued:
                yield tuple(group)
                group = []
            group.append(index)
        if group:
            yield tuple(group)


@dataclass(frozen=True)
class Scenario:
    """Waves of connections: the connections of a wave run concurrently, a wave starts once
    the one before has ended (so a pooled upstream connection a wave left behind is reused)."""

    waves: tuple[tuple[ConnPlan, ...], ...]

    @property
    def plans(self) -> list[ConnPlan]:
        return [plan for wave in self.waves for plan in wave]


# --- building requests -----------------------------------------------------------------------


def body_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def chunked(body: bytes, size: int, trailers: bytes = b"") -> bytes:
    size = max(size, 1)
    return b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n" + trailers + b"\r\n"


def head(method: str, target: str, tag: str, dev: str, answer: frozenset[str],
         *extra: bytes, eol: bytes = b"\r\n") -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: svc.test", b"x-req: " + tag.encode()]
    if dev:
        lines.append(b"x-dev: " + dev.encode())
    if answer:
        lines.append(b"x-answer: " + ",".join(sorted(answer)).encode())
    lines += extra
    return eol.join(lines) + eol + eol


devs = st.sampled_from(["", "alice", "bob", "carol"])
#: how the upstream answers an ordinary request
answers = st.sampled_from([frozenset(), frozenset({"chunked"}), frozenset(),
                           frozenset({"chunked"}), frozenset({"close"}),
                           frozenset({"chunked", "close"})])
#: how it answers an upgrade request: switch, or refuse and go on with HTTP
upgrade_answers = st.sampled_from([frozenset(), frozenset({"101"}), frozenset({"refuse400"}),
                                   frozenset({"close"}), frozenset({"refuse400", "close"}),
                                   frozenset({"chunked"})])
#: mostly small bodies; sometimes past a socket buffer, so the router's back-pressure works
sizes = st.one_of(st.integers(0, 2_000), st.integers(100_000, 400_000))


@st.composite
def valid_item(draw: st.DrawFn, tag: str) -> Item:
    kind = draw(st.sampled_from(["get", "post-cl", "post-chunked", "expect", "absolute",
                                 "client-close"]))
    dev, answer = draw(devs), draw(answers)
    if kind in ("get", "absolute", "client-close"):
        target = f"http://svc.test/{tag}?q=1" if kind == "absolute" else f"/{tag}"
        extra = (b"Connection: close",) if kind == "client-close" else ()
        return Item(kind, tag, dev, head("GET", target, tag, dev, answer, *extra), VALID,
                    sha256(b""), answer, client_close=kind == "client-close")
    body = body_of(draw(sizes), draw(st.integers(0, 2**16)))
    if kind == "post-chunked":
        trailers = draw(st.sampled_from([b"", b"x-trailer: t\r\n"]))
        data = head("POST", f"/{tag}", tag, dev, answer, b"Transfer-Encoding: chunked") \
            + chunked(body, draw(st.integers(1, 70_000)), trailers)
    else:
        if kind == "expect":
            answer |= draw(st.sampled_from([frozenset({"continue"}), frozenset()]))
        extra = (b"Expect: 100-continue",) if kind == "expect" else ()
        data = head("POST", f"/{tag}", tag, dev, answer, *extra,
                    b"Content-Length: %d" % len(body)) + body
    return Item(kind, tag, dev, data, VALID, sha256(body), answer)


@st.composite
def smuggled_item(draw: st.DrawFn, tag: str) -> Item:
    """Bytes glued behind an upgrade or a CONNECT: a whole request, or a POST whose
    Content-Length would swallow what comes next on the upstream connection."""
    if draw(st.booleans()):
        length = draw(st.integers(1, 200))
        dev = draw(devs)
        return Item("swallow", tag, dev, head("POST", "/capture", tag, dev, frozenset(),
                                             b"Content-Length: %d" % length),
                    VALID, None, glued=True, complete=False)
    item = draw(valid_item(tag))
    return Item(item.kind, item.tag, item.dev, item.data, item.role, item.body_sha,
                item.answer, glued=True, client_close=item.client_close)


HOSTILE_KINDS = ("cl+te", "two-cl", "bad-chunk", "te-gzip", "nul", "huge-head",
                 "huge-trailers", "connect")
BAD_CHUNKS = (b"zz\r\nab\r\n0\r\n\r\n", b"-1\r\nab\r\n0\r\n\r\n", b"2\r\nabcd\r\n0\r\n\r\n")


def hostile(kind: str, tag: str, dev: str = "", variant: int = 0) -> Item:
    """A request the router must refuse (``variant``: which bad chunk)."""
    if kind == "connect":
        return Item(kind, tag, dev, head("CONNECT", "svc.test:443", tag, dev, frozenset()),
                    HOSTILE)
    post = "POST", f"/{tag}", tag, dev, frozenset()
    data = {
        "cl+te": lambda: head(*post, b"Content-Length: 6", b"Transfer-Encoding: chunked")
        + b"0\r\n\r\nG",
        "two-cl": lambda: head(*post, b"Content-Length: 3", b"Content-Length: 30") + b"abc",
        "bad-chunk": lambda: head(*post, b"Transfer-Encoding: chunked") + BAD_CHUNKS[variant],
        "te-gzip": lambda: head(*post, b"Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n",
        "nul": lambda: head(*post, b"x-nul: a\x00b", b"Content-Length: 0"),
        "huge-head": lambda: head(*post, b"x-pad: " + b"p" * (2 * MAX_HEAD_BYTES),
                                  b"Content-Length: 0"),
        # trailers are part of the head's budget (issue 9, point 3)
        "huge-trailers": lambda: head(*post, b"Transfer-Encoding: chunked")
        + chunked(b"ab", 2, b"".join(b"x-t%d: %b\r\n" % (i, b"t" * 1000)
                                     for i in range(2 * MAX_HEAD_BYTES // 1000))),
    }[kind]()
    return Item(kind, tag, dev, data, HOSTILE,
                head_may_pass=kind in ("bad-chunk", "huge-trailers"))


@st.composite
def hostile_item(draw: st.DrawFn, tag: str) -> Item:
    return hostile(draw(st.sampled_from(HOSTILE_KINDS)), tag, draw(devs),
                   draw(st.integers(0, len(BAD_CHUNKS) - 1)))


@st.composite
def lenient_item(draw: st.DrawFn, tag: str) -> Item:
    kind = draw(st.sampled_from(["obs-fold", "bare-lf"]))
    dev, answer = draw(devs), draw(answers)
    if kind == "obs-fold":
        data = head("GET", f"/{tag}", tag, dev, answer, b"x-fold: a\r\n folded")
    else:
        data = head("GET", f"/{tag}", tag, dev, answer, eol=b"\n")
    return Item(kind, tag, dev, data, LENIENT, sha256(b""), answer)


@st.composite
def opaque_item(draw: st.DrawFn, tag: str) -> Item:
    # (HTTP/2's preface is not opaque since issue 11: its streams are routed, and fuzzed by
    # test_h2_fuzz)
    kind = draw(st.sampled_from(["tls-hello", "garbage"]))
    if kind == "garbage":  # a first byte no request line starts with
        data = draw(st.sampled_from([b"\x00", b"\x16", b"\xff", b" "])) + draw(st.binary(
            max_size=64))
    else:
        data = TLS_HELLO
    return Item(kind, "", "", data, OPAQUE)


@st.composite
def upgrade_item(draw: st.DrawFn, tag: str) -> Item:
    """A websocket upgrade request, maybe with a body (its length says where it ends)."""
    dev, answer = draw(devs), draw(upgrade_answers)
    body = body_of(draw(st.sampled_from([0, 0, 1, 40])), draw(st.integers(0, 2**16)))
    length = (b"Content-Length: %d" % len(body),) if body else ()
    return Item("upgrade", tag, dev, head(
        "GET", f"/{tag}", tag, dev, answer, b"Connection: Upgrade", b"Upgrade: websocket",
        b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        *length) + body, VALID, sha256(body), answer)


@st.composite
def conn_items(draw: st.DrawFn, conn: int) -> tuple[Item, ...]:
    """A connection's items; an upgrade or a CONNECT may have a request glued behind it."""
    count = draw(st.integers(1, 6))
    items: list[Item] = []
    while len(items) < count:
        tag = f"c{conn}-{len(items)}"
        pick = draw(st.sampled_from(["valid", "valid", "upgrade", "hostile", "lenient",
                                     "opaque"]))
        if pick == "valid":
            items.append(draw(valid_item(tag)))
        elif pick == "upgrade":
            items.append(draw(upgrade_item(tag)))
        elif pick == "hostile":
            items.append(draw(hostile_item(tag)))
        elif pick == "lenient":
            items.append(draw(lenient_item(tag)))
        else:
            items.append(draw(opaque_item(tag)))
        if items[-1].kind in ("upgrade", "connect") and draw(st.booleans()):
            items.append(draw(smuggled_item(f"c{conn}-{len(items)}")))
            if not items[-1].complete:
                break  # what the client wrote next would be its body: its own affair
    return tuple(items)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    count = draw(st.integers(2, 4))
    waves: list[list[ConnPlan]] = [[]]
    for conn in range(count):
        if conn and draw(st.booleans()):  # this one starts once the ones before ended
            waves.append([])
        waves[-1].append(ConnPlan(conn, draw(conn_items(conn)), draw(st.booleans())))
    return Scenario(tuple(tuple(wave) for wave in waves))
