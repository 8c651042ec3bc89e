"""Hostile HTTP/2 clients (and upstreams) against the relay's HTTP/2 router.

Each attack is made on one client connection while another client's streams (:class:`Victim`:
uploads and downloads larger than a window, with trailers, to all three destinations) are open
through the same router; each test checks (a) the code the offender got (GOAWAY or RST_STREAM,
RFC 9113 / what ``h2`` raises), (b) that the victim's streams all complete intact (hashes of
both bodies, trailers), and (c) what the upstreams actually received from the offender (no
stray stream, nothing beyond what was valid). Upstreams and clients are :mod:`.h2kit`'s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import tracemalloc
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from bridged.relay.router.h2peer import (
    CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS,
    PREMATURE_RESETS,
    STREAM_WINDOW,
)

from .h2kit import (
    ContinuationFrame,
    DataFrame,
    E,
    H2Client,
    HeadersFrame,
    PingFrame,
    RawH2,
    RstStreamFrame,
    S,
    WindowUpdateFrame,
    body_for,
    h2_client,
    pattern,
    pattern_sha,
    raw_client,
    raw_frame,
    sha,
    upstream_name,
    world,
)
from .routerkit import RecordingUpstream, client, recording_upstreams, router_on

MiB = 1024 * 1024
DESTINATIONS = (None, "alice", "bob")  # None: no x-dev header, so the origin


class Victim:
    """A well-behaved client with streams open to every destination during an attack: each
    uploads more than a stream window, with trailers, and is answered (more than a window,
    with trailers) only once :meth:`finish` releases it, after the attack."""

    UP = 300_000
    DOWN = 300_000

    def __init__(self, w: SimpleNamespace, streams: int = 6) -> None:
        self.w = w
        self.n = streams
        self.sids: dict[int, tuple[str, str | None]] = {}

    async def start(self) -> None:
        self.c = await H2Client(self.w.pulse, "victim").open(self.w.port)
        sends = []
        for i in range(self.n):
            tag, dev = f"v{i}", DESTINATIONS[i % 3]
            sid = self.c.start(f"/v/{i}", dev, tag, [(b"x-hold", b"1"), (b"x-trailers", b"1"),
                                                     (b"x-size", str(self.DOWN).encode())])
            self.sids[sid] = (tag, dev)
            sends.append(self.c.send(sid, body_for(tag, self.UP), [(b"x-t", tag.encode())]))
        await asyncio.gather(*sends)
        # every request is whole at its upstream: the victim's streams are open there now
        await self.w.pulse.until(lambda: sum(s.ended for s in self.upstreams()) == self.n,
                                 "the victim's requests to arrive")

    def upstreams(self) -> list:
        return [s for u in self.w.ups.values() for s in u.of("victim")]

    async def finish(self) -> None:
        for u in self.w.ups.values():
            u.release(lambda s: s.h("x-client") == "victim")
        try:
            for sid, (tag, dev) in self.sids.items():
                a = await self.c.answer(sid, f"the victim's answer on stream {sid}")
                assert a.reset is None and a.ended, f"victim stream {sid}: reset {a.reset}"
                assert a.status == 200
                assert a.h("x-who") == upstream_name(dev) and a.h("x-req") == tag
                assert a.h("x-body-sha") == sha(body_for(tag, self.UP)), "upload damaged"
                assert a.h("x-trailers-seen") == f"x-t={tag}", "request trailers lost"
                assert a.body_len == self.DOWN and a.body_sha == pattern_sha(self.DOWN, tag), \
                    "download damaged"
                assert dict(a.trailers or ()) == {b"x-who-trailer": upstream_name(dev).encode(),
                                                  b"grpc-status": b"0"}
            seen = self.upstreams()
            assert sorted(s.h("x-req") for s in seen) == sorted(t for t, _ in
                                                                self.sids.values())
            assert all(s.complete and s.upstream == upstream_name(s.h("x-dev")) for s in seen)
            assert len({(s.upstream, s.conn) for s in seen}) == 3, "one connection each"
        finally:
            await self.c.close()


@contextlib.asynccontextmanager
async def victim_during(w: SimpleNamespace) -> AsyncIterator[Victim]:
    v = Victim(w)
    await v.start()
    try:
        yield v
    except BaseException:
        await v.c.close()
        raise
    await v.finish()


async def cut_off(bad: RawH2, code: int) -> None:
    """``bad`` got GOAWAY with ``code`` and its connection ended."""
    goaway = await bad.until_goaway()
    assert goaway.error_code == code, f"GOAWAY {goaway.error_code}, not {code}"
    await bad.until_closed()


def headers_frame(bad: RawH2, sid: int, headers: list[tuple[bytes, bytes]],
                  end_stream: bool = True) -> HeadersFrame:
    f = HeadersFrame(sid, bad.block(headers))
    f.flags.add("END_HEADERS")
    if end_stream:
        f.flags.add("END_STREAM")
    return f


BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc.test"),
        (b":path", b"/"), (b"x-client", b"bad"), (b"x-dev", b"alice")]


def invalid_frames(bad: RawH2) -> dict[str, tuple[list, int]]:
    """Per attack: what ``bad`` writes (after one valid, held stream 1) and the code it gets."""
    big = b"x" * 4000
    hpack_bomb = bad.encoder.encode([(b"x-big", big)])  # indexed: later one byte each
    hpack_bomb += b"\xbe" * 100  # index 62: the entry just added, 4 KB per byte
    bomb = HeadersFrame(3, bad.block(BASE) + hpack_bomb)
    bomb.flags.add("END_HEADERS")
    bomb.flags.add("END_STREAM")
    flood = [HeadersFrame(3, bad.block(BASE))] + [ContinuationFrame(3, b"") for _ in range(200)]
    huge = [(b"x-huge-%d" % i, b"y" * 4000) for i in range(20)]  # 80 KB decoded
    block = bad.block(BASE + huge)
    listbomb = [HeadersFrame(3, block[:16000])] + [
        ContinuationFrame(3, block[i:i + 16000]) for i in range(16000, len(block), 16000)]
    listbomb[0].flags.add("END_STREAM")
    listbomb[-1].flags.add("END_HEADERS")
    naked = ContinuationFrame(3, bad.block(BASE))
    naked.flags.add("END_HEADERS")
    return {
        "data-on-stream-0": ([raw_frame(0, 0, 0, b"x")], E.PROTOCOL_ERROR),
        "uppercase-name": ([headers_frame(bad, 3, [*BASE, (b"X-Upper", b"1")])],
                           E.PROTOCOL_ERROR),
        "unknown-pseudo-header": ([headers_frame(bad, 3, [*BASE, (b":bogus", b"1")])],
                                  E.PROTOCOL_ERROR),
        "pseudo-after-regular": ([headers_frame(bad, 3, [*BASE[1:], BASE[0]])],
                                 E.PROTOCOL_ERROR),
        "connection-header": ([headers_frame(bad, 3, [*BASE, (b"connection", b"keep-alive")])],
                              E.PROTOCOL_ERROR),
        "frame-too-large": ([DataFrame(1, b"z" * 16385)], E.FRAME_SIZE_ERROR),
        "continuation-flood": (flood, E.PROTOCOL_ERROR),
        "header-list-bomb": (listbomb, E.ENHANCE_YOUR_CALM),
        "hpack-bomb": ([bomb], E.ENHANCE_YOUR_CALM),
        "naked-continuation": ([naked], E.PROTOCOL_ERROR),
    }


ATTACKS = ("data-on-stream-0", "uppercase-name", "unknown-pseudo-header", "pseudo-after-regular",
           "connection-header", "frame-too-large", "continuation-flood", "header-list-bomb",
           "hpack-bomb", "naked-continuation")


@pytest.mark.parametrize("attack", ATTACKS)
async def test_invalid_frames_end_only_the_offender(attack: str) -> None:
    async with world() as w, victim_during(w), raw_client(w.pulse, w.port) as bad:
        # one valid stream first, open at alice while the attack comes
        bad.send(headers_frame(bad, 1, [*BASE, (b"x-hold", b"1")], end_stream=False))
        await w.pulse.until(lambda: w.ups["alice"].of("bad"), "bad's valid stream at alice")
        frames, code = invalid_frames(bad)[attack]
        bad.send(*frames)
        await cut_off(bad, code)
        # alice saw the valid stream, never whole, and nothing else of the offender's
        await w.pulse.until(lambda: w.ups["alice"].conns[-1].lost,
                            "bad's upstream connection to close")
        seen = [s for s in w.all() if s.h("x-client") == "bad"]
        assert [(s.upstream, s.h(":path"), s.ended) for s in seen] == [("alice", "/", False)]


async def test_naked_continuation_as_first_frame() -> None:
    async with world() as w, raw_client(w.pulse, w.port) as bad:
        naked = ContinuationFrame(1, bad.block(BASE))
        naked.flags.add("END_HEADERS")
        bad.send(naked)
        await cut_off(bad, E.PROTOCOL_ERROR)
        assert w.all() == []


# --- flow control abuse ---


def downstream_of(w: SimpleNamespace, c: RawH2 | H2Client) -> Any:
    port = c.writer.get_extra_info("sockname")[1]
    return next(d for d in w.router.downstreams if d.peer[1] == port)


async def held_upload(w: SimpleNamespace, bad: RawH2, sids: list[int]) -> None:
    """Streams to alice whose bodies alice never gives window back for: the relay can pass on
    at most alice's window (65,535 bytes, RFC 9113's initial), and so give back no more."""
    await w.pulse.until(lambda: any(f.type == 0x4 and "ACK" not in f.flags for f in bad.frames),
                        "the relay's SETTINGS")  # acked by bad at once: its windows are in force
    for sid in sids:
        bad.send(headers_frame(bad, sid, [*BASE, (b"x-hold", b"1"), (b"x-noack", b"1")],
                               end_stream=False))
    await w.pulse.until(lambda: len(w.ups["alice"].of("bad")) == len(sids), "bad's streams")


async def test_data_beyond_the_stream_window_is_a_flow_control_error() -> None:
    async with world() as w, victim_during(w), raw_client(w.pulse, w.port) as bad:
        await held_upload(w, bad, [1])
        over = STREAM_WINDOW + 65535 + 32768
        bad.send(*[DataFrame(1, b"d" * 16384) for _ in range(over // 16384 + 1)])
        await cut_off(bad, E.FLOW_CONTROL_ERROR)
        (seen,) = w.ups["alice"].of("bad")
        assert seen.body_len <= 65535 and not seen.ended


async def test_data_beyond_the_connection_window_is_a_flow_control_error() -> None:
    async with world() as w, victim_during(w), raw_client(w.pulse, w.port) as bad:
        sids = [1, 3, 5, 7, 9]
        await held_upload(w, bad, sids)
        each = STREAM_WINDOW - 16384  # within every stream's window, not within their sum
        assert len(sids) * each > CONNECTION_WINDOW + 65535
        bad.send(*[DataFrame(sid, b"d" * 16384) for sid in sids for _ in range(each // 16384)])
        await cut_off(bad, E.FLOW_CONTROL_ERROR)
        assert sum(s.body_len for s in w.ups["alice"].of("bad")) <= 65535


@pytest.mark.parametrize(("frame", "code"), [
    (WindowUpdateFrame(0, window_increment=2**31 - 1).serialize(), E.FLOW_CONTROL_ERROR),
    (raw_frame(0x8, 0, 0, (0).to_bytes(4, "big")), E.PROTOCOL_ERROR),
    (raw_frame(0x8, 0, 1, (0).to_bytes(4, "big")), E.PROTOCOL_ERROR),
], ids=["connection-overflow", "zero-on-connection", "zero-on-stream"])
async def test_bad_window_updates(frame: bytes, code: int) -> None:
    async with world() as w, victim_during(w), raw_client(w.pulse, w.port) as bad:
        await held_upload(w, bad, [1])
        bad.send(frame)
        await cut_off(bad, code)


async def test_window_update_overflow_on_a_stream_resets_it() -> None:
    """RFC 9113 §6.9.1: a stream's window past 2^31-1 is a stream error; the connection and
    its other streams go on."""
    async with world() as w, raw_client(w.pulse, w.port) as bad:
        await held_upload(w, bad, [1, 3])
        bad.send(WindowUpdateFrame(1, window_increment=2**31 - 1))
        await w.pulse.until(lambda: bad.rst(1) is not None or bad.goaway(), "the relay's answer")
        assert bad.rst(1) == E.FLOW_CONTROL_ERROR and bad.goaway() is None
        await w.pulse.until(lambda: w.ups["alice"].of("bad")[0].reset is not None,
                            "the stream's reset at alice")
        assert w.ups["alice"].of("bad")[1].reset is None


# --- a client that never reads ---


#: what the relay may hold for a client that reads nothing, with three streams: a stream
#: window each (what it has not given back), and its transport's buffer above the high mark
HELD_BOUND = 3 * STREAM_WINDOW + 256 * 1024


def relay_buffered(down: object) -> int:
    """Bytes the relay holds for one client connection: stream bodies not passed on yet, and
    its transport's buffer towards the client."""
    h2d = down.h2  # type: ignore[attr-defined]
    if h2d is None:  # not sniffed as HTTP/2 yet
        return 0
    held = sum(len(d) for ex in h2d.streams.values() for half in (ex.request, ex.response)
               for d, _ in half.chunks)
    return held + down.transport.get_write_buffer_size()  # type: ignore[attr-defined]


async def held_back(w: SimpleNamespace, down: object, conns: Callable[[], list]) -> None:
    """Wait until the relay's writes to the client are paused and every upstream connection
    is out of window for good: still so after two PING round trips, the second sent once the
    first came back (so any WINDOW_UPDATE the router had queued has arrived)."""
    def stalled() -> bool:
        return len(conns()) == 3 and all(c.stalled for c in conns()) and \
            down.h2 is not None and down.h2.write_paused  # type: ignore[attr-defined]

    def over() -> bool:
        return relay_buffered(down) > HELD_BOUND

    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while loop.time() < end:
        await w.pulse.until(lambda: stalled() or over(), "every upstream to be held back",
                            end - loop.time())
        if over():
            return  # the caller's bound says it
        sent = [s.sent for c in conns() for s in c.streams.values()]
        for _ in range(2):
            await asyncio.gather(*(c.round_trip() for c in conns()))
        if stalled() and sent == [s.sent for c in conns() for s in c.streams.values()]:
            return
    raise AssertionError("the upstreams were never held back for good")


async def test_a_client_that_never_reads_holds_the_relay_and_the_upstreams_back() -> None:
    size = 16 * MiB
    tracemalloc.start()
    try:
        async with world() as w, victim_during(w):
            slow = await H2Client(w.pulse, "slow").open(
                w.port, settings={S.INITIAL_WINDOW_SIZE: 2**31 - 1}, window=2**31 - 1 - 65535,
                rcvbuf=4096)  # windows it never needs to give back: only TCP holds the relay
            try:
                slow.reading.clear()
                before = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                sids = {slow.start(f"/big/{i}", dev, f"big{i}", [(b"x-size", b"%d" % size)],
                                   end=True): dev for i, dev in enumerate(DESTINATIONS)}
                conns = lambda: [c for u in w.ups.values() for c in u.conns  # noqa: E731
                                 if any(s.h("x-client") == "slow" for s in c.streams.values())]
                down = downstream_of(w, slow)
                await held_back(w, down, conns)
                assert relay_buffered(down) <= HELD_BOUND, "the relay buffered on"
                grown = tracemalloc.get_traced_memory()[1] - before
                assert grown <= 24 * MiB, f"the relay took {grown / MiB:.0f} MiB"
                sent = sum(s.sent for c in conns() for s in c.streams.values())
                assert sent < size, f"the upstreams sent {sent} bytes to a client that reads none"
                slow.reading.set()  # it reads again: every download completes intact
                for sid, dev in sids.items():
                    a = await slow.answer(sid)
                    assert a.ended and a.reset is None and a.h("x-who") == upstream_name(dev)
                    assert a.body_len == size
                    assert a.body_sha == pattern_sha(size, a.h("x-req") or "")
            finally:
                await slow.close()
    finally:
        tracemalloc.stop()


# --- SETTINGS ---


async def test_more_streams_than_allowed_are_refused() -> None:
    async with world() as w, victim_during(w), raw_client(w.pulse, w.port) as bad:
        await w.pulse.until(lambda: any(f.type == 0x4 and "ACK" not in f.flags
                                        for f in bad.frames), "the relay's SETTINGS")
        sids = list(range(1, 2 * (MAX_CONCURRENT_STREAMS + 1), 2))
        bad.send(*[headers_frame(bad, sid, [*BASE, (b"x-hold", b"1")]) for sid in sids])
        await w.pulse.until(lambda: bad.rst(sids[-1]) is not None or bad.goaway(),
                            "the relay to refuse the stream over the limit")
        goaway = bad.goaway()
        if goaway is not None:  # h2 makes it a connection error
            assert goaway.error_code == E.PROTOCOL_ERROR
        else:
            assert bad.rst(sids[-1]) in (E.REFUSED_STREAM, E.PROTOCOL_ERROR)
        assert len(w.ups["alice"].of("bad")) <= MAX_CONCURRENT_STREAMS


async def test_a_client_may_use_all_its_concurrent_streams() -> None:
    async with world() as w, h2_client(w.pulse, w.port, "busy") as c:
        await w.pulse.until(lambda: c.conn.remote_settings.max_concurrent_streams
                            == MAX_CONCURRENT_STREAMS, "the relay's SETTINGS")
        sids = {c.start(f"/{i}", DESTINATIONS[i % 3], f"b{i}", [(b"x-hold", b"1"),
                                                                (b"x-size", b"1000")], end=True): i
                for i in range(MAX_CONCURRENT_STREAMS)}
        await w.pulse.until(lambda: sum(len(u.of("busy")) for u in w.ups.values())
                            == MAX_CONCURRENT_STREAMS, "all streams open at once upstream")
        for u in w.ups.values():
            u.release()
        for sid, i in sids.items():
            a = await c.answer(sid)
            assert a.ended and a.h("x-req") == f"b{i}" and a.body_sha == pattern_sha(1000, f"b{i}")
        assert c.goaway is None


async def test_the_clients_window_and_frame_size_are_respected() -> None:
    """A client's SETTINGS_INITIAL_WINDOW_SIZE bounds what it is sent until it gives window
    back. (SETTINGS_MAX_FRAME_SIZE cannot be set below its default, 16,384: the frames are
    checked against it all the same.)"""
    async with world() as w, raw_client(w.pulse, w.port, settings={
            S.INITIAL_WINDOW_SIZE: 1000, S.MAX_FRAME_SIZE: 16384}) as small:
        small.auto_window = False
        small.send(small.request_headers(1, "/w", "bob", [(b"x-size", b"100000"),
                                                         (b"x-req", b"w")]))
        await w.pulse.until(lambda: w.ups["bob"].streams and w.ups["bob"].streams[0].sent
                            == 100000, "bob to send all (the relay holds it)")
        await w.pulse.until(lambda: len(small.data(1)) >= 1000, "the first window's bytes")
        small.send(PingFrame(0, opaque_data=b"roundtrp"))
        await w.pulse.until(lambda: any(f.type == 0x6 and "ACK" in f.flags
                                        for f in small.frames), "PING ACK")
        assert len(small.data(1)) == 1000, "more than the client's stream window"
        small.send(WindowUpdateFrame(1, window_increment=5000))
        await w.pulse.until(lambda: len(small.data(1)) >= 6000, "the next window's bytes")
        small.send(PingFrame(0, opaque_data=b"second!!"))
        await w.pulse.until(lambda: sum(f.type == 0x6 and "ACK" in f.flags
                                        for f in small.frames) == 2, "PING ACK")
        assert len(small.data(1)) == 6000
        small.send(WindowUpdateFrame(1, window_increment=100000),  # more than the rest
                   WindowUpdateFrame(0, window_increment=100000))
        await w.pulse.until(lambda: small.ended(1), "the end of the answer")
        assert small.data(1) == pattern(100000, "w")
        assert all(len(f.data) <= 16384 for f in small.frames if isinstance(f, DataFrame))


async def test_an_answer_that_fills_the_clients_window_exactly_still_ends() -> None:
    """The end may come as an empty DATA frame, which takes no window: it must not wait for
    window the client owes nobody (found by this suite: flow() returned first)."""
    async with world() as w, raw_client(w.pulse, w.port, settings={
            S.INITIAL_WINDOW_SIZE: 100000}) as small:
        small.auto_window = False
        small.send(WindowUpdateFrame(0, window_increment=100000))
        small.send(small.request_headers(1, "/w", "bob", [(b"x-size", b"100000"),
                                                         (b"x-req", b"w")]))
        await w.pulse.until(lambda: small.ended(1), "the end of the answer", seconds=3)
        assert small.data(1) == pattern(100000, "w")


async def test_a_frame_header_announcing_too_much_is_refused_at_once() -> None:
    """h2 checks a frame's length only once the whole frame came: up to 16 MiB buffered per
    connection before FRAME_SIZE_ERROR, unless the router looks at the header itself."""
    async with world() as w, raw_client(w.pulse, w.port) as bad:
        header = raw_frame(0x0, 0, 1, b"")
        bad.send((0xFFFFFF).to_bytes(3, "big") + header[3:] + b"z" * 20000)  # 16 MiB said
        goaway = await w.pulse.until(bad.goaway, "GOAWAY", seconds=3)
        assert goaway.error_code == E.FRAME_SIZE_ERROR


# --- PING ---


async def test_ping_is_answered_with_its_data() -> None:
    async with world() as w, raw_client(w.pulse, w.port) as c:
        c.send(PingFrame(0, opaque_data=b"\x01bridged"))
        ack = await w.pulse.until(lambda: next((f for f in c.frames if isinstance(f, PingFrame)
                                                and "ACK" in f.flags), None), "PING ACK")
        assert ack.opaque_data == b"\x01bridged"


async def test_a_ping_flood_from_a_client_that_does_not_read_is_bounded() -> None:
    async with world() as w, victim_during(w), raw_client(w.pulse, w.port, rcvbuf=4096) as bad:
        bad.reading.clear()
        await w.pulse.until(lambda: w.router.downstreams[-1].h2 is not None, "HTTP/2")
        down = downstream_of(w, bad)
        batch = b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(1000))
        for _ in range(2000):  # 34 MB of PINGs at most, 34 MB of ACKs owed
            bad.writer.write(batch)
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(bad.writer.drain(), 0.5)
            if "h2-client-full" in down.paused_for:
                break
        assert "h2-client-full" in down.paused_for, "the relay read on from a client reading none"
        assert down.transport.get_write_buffer_size() <= 1 * MiB
        bad.reading.set()  # it reads again: the connection still works
        bad.send(bad.request_headers(1, "/after", "bob", [(b"x-req", b"after")]))
        await w.pulse.until(lambda: bad.ended(1) or bad.closed, "the answer after the flood",
                            seconds=60)
        assert bad.headers[1][0] == (b":status", b"200")


# --- rapid reset ---


async def test_rapid_reset_gets_enhance_your_calm() -> None:
    async with world() as w, victim_during(w), raw_client(w.pulse, w.port) as bad:
        sid = 1
        for _ in range(100):  # 5,000 streams at most
            frames = []
            for _ in range(50):
                frames += [headers_frame(bad, sid, BASE), RstStreamFrame(sid, error_code=E.CANCEL)]
                sid += 2
            bad.send(*frames)
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(bad.writer.drain(), 2)
            if bad.goaway() or bad.closed:
                break
        await cut_off(bad, E.ENHANCE_YOUR_CALM)
        assert len(w.ups["alice"].of("bad")) <= 2 * PREMATURE_RESETS


async def test_a_client_that_cancels_a_few_streams_is_not_cut_off() -> None:
    async with world() as w, h2_client(w.pulse, w.port, "polite") as c:
        sids = [c.start(f"/{i}", DESTINATIONS[i % 3], f"p{i}", [(b"x-hold", b"1")], end=True)
                for i in range(30)]
        await w.pulse.until(lambda: sum(len(u.of("polite")) for u in w.ups.values()) == 30,
                            "all streams upstream")
        cancelled = sids[::6]
        for sid in cancelled:
            c.reset(sid)
        await w.pulse.until(lambda: sum(s.reset is not None for u in w.ups.values()
                                        for s in u.of("polite")) == len(cancelled),
                            "the cancels upstream")
        for u in w.ups.values():
            u.release()
        for sid in sids:
            if sid not in cancelled:
                a = await c.answer(sid)
                assert a.ended and a.status == 200
        assert c.goaway is None and not c.closed


# --- RST_STREAM and GOAWAY passed on ---


@pytest.mark.parametrize("code", [E.CANCEL, E.INTERNAL_ERROR, E.ENHANCE_YOUR_CALM])
async def test_a_client_reset_reaches_the_upstream_with_its_code(code: int) -> None:
    async with world() as w, h2_client(w.pulse, w.port, "c") as c:
        sid = c.start("/r", "bob", "r", [(b"x-hold", b"1")])
        keep = c.start("/k", "bob", "k", [(b"x-hold", b"1")])
        await c.send(sid, b"part of a body", end=False)
        await c.send(keep, b"whole")
        await w.pulse.until(lambda: len(w.ups["bob"].of("c")) == 2, "both streams at bob")
        c.reset(sid, code)
        (seen,) = await w.pulse.until(lambda: [s for s in w.ups["bob"].of("c")
                                               if s.reset is not None], "the reset at bob")
        assert (seen.h("x-req"), seen.reset, seen.ended) == ("r", code, False)
        w.ups["bob"].release()
        a = await c.answer(keep)
        assert a.ended and a.h("x-body-sha") == sha(b"whole")


@pytest.mark.parametrize("code", [E.REFUSED_STREAM, E.INTERNAL_ERROR, E.CANCEL])
async def test_an_upstream_reset_reaches_the_client_with_its_code(code: int) -> None:
    async with world() as w, h2_client(w.pulse, w.port, "c") as c:
        sid = c.start("/r", "alice", "r", [(b"x-reset", str(code).encode())], end=True)
        other = c.start("/o", None, "o", end=True)
        assert (await c.answer(sid)).reset == code
        assert (await c.answer(other)).h("x-who") == "origin"


async def test_an_upstream_goaway_refuses_only_the_streams_it_did_not_take() -> None:
    async with world() as w, h2_client(w.pulse, w.port, "c") as c:
        sids = [c.start(f"/{i}", "bob", f"g{i}", [(b"x-hold", b"1")], end=True)
                for i in range(4)]
        await w.pulse.until(lambda: len(w.ups["bob"].of("c")) == 4, "the streams at bob")
        w.ups["bob"].goaway(0, last_stream_id=3)  # took bob's streams 1 and 3
        for sid in sids[2:]:
            assert (await c.answer(sid)).reset == E.REFUSED_STREAM
        w.ups["bob"].release(lambda s: s.sid <= 3)
        for i, sid in enumerate(sids[:2]):
            a = await c.answer(sid)
            assert a.ended and a.reset is None and a.h("x-req") == f"g{i}"
        after = c.start("/after", "bob", "after", end=True)
        a = await c.answer(after)
        assert a.ended and a.h("x-conn") == "1", "a new stream opens a fresh connection"
        assert c.goaway is None


async def test_trailers_pass_both_ways() -> None:
    async with world() as w, h2_client(w.pulse, w.port, "c") as c:
        sid = c.start("/t", "alice", "t", [(b"x-trailers", b"1"), (b"te", b"trailers")])
        await c.send(sid, b"body" * 50000, [(b"x-checksum", b"abc"), (b"x-more", b"1")])
        a = await c.answer(sid)
        (seen,) = w.ups["alice"].of("c")
        assert seen.trailers == [(b"x-checksum", b"abc"), (b"x-more", b"1")]
        assert seen.body_sha == sha(b"body" * 50000)
        assert a.trailers == [(b"x-who-trailer", b"alice"), (b"grpc-status", b"0")]


@pytest.mark.parametrize("garbage", [
    pytest.param(b"", id="invalid-frame"),
    pytest.param(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n", id="http1-answer"),
])
async def test_an_upstream_that_breaks_http2_fails_only_its_streams(garbage: bytes) -> None:
    """(An HTTP/1.1 answer reads as a frame header announcing some 4.7 MB: it must not leave
    the streams waiting for those bytes.)"""
    async with world() as w, h2_client(w.pulse, w.port, "c") as c:
        waiting = c.start("/w", "bob", "w", [(b"x-hold", b"1")], end=True)
        begun = c.start("/b", "bob", "b", [(b"x-partial", b"1")], end=True)
        other = c.start("/o", "alice", "o", [(b"x-hold", b"1"), (b"x-size", b"100000")],
                        end=True)
        await w.pulse.until(lambda: c.answers[begun].headers is not None and
                            len(w.ups["bob"].of("c")) == 2 and w.ups["alice"].of("c"),
                            "every stream upstream, one answer begun")
        w.ups["bob"].garble(garbage)
        a = await c.answer(waiting)
        assert a.status == 502 and a.ended
        assert (await c.answer(begun)).reset == E.INTERNAL_ERROR
        w.ups["alice"].release()
        a = await c.answer(other)
        assert a.ended and a.body_sha == pattern_sha(100000, "o")


# --- h2c upgrade ---

UPGRADE_HEAD = b"GET /up HTTP/1.1\r\nHost: svc.test\r\nx-dev: alice\r\nx-client: up\r\nx-req: u"


async def test_h2c_upgrade_accepted_by_the_router() -> None:
    async with world(h2c_upgrade=lambda: True) as w:
        c = H2Client(w.pulse, "up")
        try:
            assert (await c.open_upgraded(w.port, UPGRADE_HEAD)).startswith(b"HTTP/1.1 101")
            a = await c.answer(1)
            assert a.ended and a.status == 200 and a.h("x-who") == "alice"
            (seen,) = w.ups["alice"].of("up")
            assert seen.h(":path") == "/up" and seen.complete
        finally:
            await c.close()


async def test_after_an_h2c_upgrade_the_connection_goes_on_as_http2() -> None:
    """The upgrade request paused reading (as a request behind an unanswered one): after the
    101 it must go on, or nothing past the first read is ever read."""
    async with world(h2c_upgrade=lambda: True) as w:
        c = H2Client(w.pulse, "up")
        try:
            assert (await c.open_upgraded(w.port, UPGRADE_HEAD)).startswith(b"HTTP/1.1 101")
            await c.answer(1)
            sid = c.start("/next", "bob", "n", end=True)
            a = await c.answer(sid)
            assert a.ended and a.h("x-who") == "bob"
        finally:
            await c.close()


async def test_h2c_upgrade_goes_to_the_destination_by_default() -> None:
    alice = RecordingUpstream("alice")
    async with recording_upstreams(alice), router_on({"alice": alice.port}) as r, \
            client(r.port) as (reader, writer):
        settings = base64.urlsafe_b64encode(b"\x00\x03\x00\x00\x00\x64").rstrip(b"=")
        writer.write(UPGRADE_HEAD + b"\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        (seen,) = alice.requests
        assert seen.headers["upgrade"] == "h2c" and seen.path == "/up"


async def spent_for_good(w: SimpleNamespace, c: H2Client, sid: int) -> None:
    """Wait until ``c``'s window on ``sid`` is 0 and stays so over two PING round trips."""
    for _ in range(1000):
        await w.pulse.until(lambda: c.conn.local_flow_control_window(sid) == 0,
                            "the window to close")
        for _ in range(2):
            n = len(c.pings)
            c.ping(b"%08d" % n)
            await w.pulse.until(lambda: len(c.pings) > n, "PING ACK")  # noqa: B023
        if c.conn.local_flow_control_window(sid) == 0:
            return
    raise AssertionError("the window never closed for good")


async def test_an_empty_data_flood_towards_an_upstream_that_does_not_read_is_bounded() -> None:
    """Empty DATA frames take no flow-control window (CVE-2019-9518): the windows that bound
    what the relay holds for a stream do not bound them. Once the stream's upstream stops
    reading, a client sending them must not grow the relay without end."""
    tracemalloc.start()
    try:
        async with world(rcvbuf=4096) as w, h2_client(w.pulse, w.port, "bad") as bad:
            w.ups["bob"].window = 2**30  # so the relay's writes to bob, not windows, fill up
            sid = bad.start("/flood", "bob", "flood")
            await w.pulse.until(lambda: w.ups["bob"].of("bad"), "the stream at bob")
            w.ups["bob"].stop_reading()
            upload = asyncio.ensure_future(bad.send(sid, b"u" * 64 * MiB, end=False))
            try:
                # the relay's writes to bob are full, and bad's window is spent for good
                await spent_for_good(w, bad, sid)
                before = tracemalloc.get_traced_memory()[0]
                batch = DataFrame(sid, b"").serialize() * 10000
                for i in range(15):  # 150,000 frames, 1.4 MB: some 10 MiB if each is kept
                    n = len(bad.pings)
                    bad.writer.write(batch + PingFrame(0, opaque_data=b"%08d" % i).serialize())
                    with contextlib.suppress(AssertionError):  # no answer: it stopped reading
                        await w.pulse.until(lambda: len(bad.pings) > n or bad.closed,  # noqa: B023
                                            "PING ACK", seconds=3)
                    if len(bad.pings) == n or bad.closed:
                        break
                grown = tracemalloc.get_traced_memory()[0] - before
                assert grown < 2 * MiB, f"the relay took {grown / MiB:.0f} MiB for empty frames"
            finally:
                upload.cancel()
                with contextlib.suppress(asyncio.CancelledError, AssertionError):
                    await upload  # (its window never came back: that was the point)
    finally:
        tracemalloc.stop()
