"""The capture store: bounded, kept across restarts, searched, live, and never a secret on disk."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from bridged.capture.model import Captured, CaptureSettings, Message
from bridged.capture.store import CaptureStore, from_json, to_json
from bridged.routing.redact import REDACTED


def record(n: int = 0, **kw: object) -> Captured:
    values: dict[str, object] = {
        "intercept": "orders", "started": 1_700_000_000.0 + n, "method": "GET",
        "target": f"/items/{n}?q=1", "authority": "orders:8080", "status": 200,
        "duration_ms": 1.5,
        "request": Message(headers=(("host", "orders:8080"), ("x-n", str(n)))),
        "response": Message(headers=(("content-type", "application/json"),),
                            body=b'{"n": %d}' % n, size=8),
    }
    values.update(kw)
    return Captured(**values)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "capture.sqlite"


def test_add_get_roundtrip_keeps_every_field(db: Path) -> None:
    store = CaptureStore(db)
    binary = bytes(range(256))
    original = record(1, method="POST", http_version="2", grpc_method="pkg.Svc/Get",
                      grpc_status=5, client="10.0.0.7:5555", kind="mirror", cluster_status=201,
                      request=Message(headers=(("content-type", "application/grpc"),),
                                      body=binary, size=9999, truncated=True,
                                      trailers=(("x-t", "1"),)),
                      cluster=Message(body=b"cluster's", size=9))
    stored = store.add(original)
    assert stored.id > 0
    assert store.get(stored.id) == dataclasses.replace(original, id=stored.id)
    assert from_json(to_json(stored)) == stored  # the API's JSON carries binary bodies too
    assert store.get(stored.id + 1) is None
    store.close()


def test_bounded_by_count_drops_the_oldest_and_counts(db: Path) -> None:
    store = CaptureStore(db, CaptureSettings(max_records=5))
    ids = [store.add(record(n)).id for n in range(12)]
    kept = [c.id for c in store.list(limit=100)]
    assert kept == ids[-5:][::-1]
    assert store.dropped == 7
    assert store.stats()["records"] == 5
    store.close()


def test_bounded_by_bytes_drops_the_oldest(db: Path) -> None:
    store = CaptureStore(db, CaptureSettings(max_bytes=50_000))
    ids = [store.add(record(n, response=Message(body=b"x" * 10_000, size=10_000))).id
           for n in range(20)]
    kept = [c.id for c in store.list(limit=100)]
    assert 3 <= len(kept) <= 4  # 10 kB and a head each, under 50 kB
    assert kept == ids[-len(kept):][::-1]  # the newest, in order
    assert store.stats()["bytes"] <= 50_000
    assert store.dropped == 20 - len(kept)
    store.close()


def test_a_restart_keeps_records_bounds_and_drop_count(db: Path) -> None:
    store = CaptureStore(db, CaptureSettings(max_records=3))
    for n in range(5):
        store.add(record(n))
    before = store.list()
    store.close()
    again = CaptureStore(db, CaptureSettings(max_records=3))
    assert again.list() == before
    assert again.dropped == 2
    added = again.add(record(9))
    assert added.id > before[0].id  # ids are never given twice
    assert [c.id for c in again.list()] == [added.id, before[0].id, before[1].id]
    again.close()


def test_clear_empties_and_says_how_many(db: Path) -> None:
    store = CaptureStore(db)
    for n in range(4):
        store.add(record(n))
    assert store.clear() == 4
    assert store.list() == []
    assert store.stats()["records"] == 0
    store.close()


def test_update_fills_in_the_cluster_answer(db: Path) -> None:
    store = CaptureStore(db)
    stored = store.add(record(1, kind="mirror"))
    updated = store.update(stored.id, cluster=Message(body=b"theirs", size=6), cluster_status=503)
    assert updated is not None and updated.cluster_status == 503
    assert store.get(stored.id) == updated
    assert store.update(stored.id + 100, status=1) is None
    store.close()


def test_list_filters(db: Path) -> None:
    store = CaptureStore(db)
    a = store.add(record(1, intercept="orders", method="GET", status=200, target="/api/a"))
    b = store.add(record(2, intercept="users", method="POST", status=500, target="/api/b",
                         request=Message(headers=(("x-dev", "Alice"),), body=b'{"k":"NeedLe"}')))
    c = store.add(record(3, intercept="users", method="GET", status=404, target="/other?x=1"))
    r = store.add(record(4, kind="replay", replay_of=b.id, target="/api/b"))

    def ids(**kw: object) -> list[int]:
        return [x.id for x in store.list(**kw)]  # type: ignore[arg-type]

    assert ids() == [r.id, c.id, b.id, a.id]
    assert ids(intercept="users") == [c.id, b.id]
    assert ids(method="post") == [b.id]
    assert ids(status=404) == [c.id]
    assert ids(path="/api/") == [r.id, b.id, a.id]
    assert ids(text="needle") == [b.id]  # a body, any case
    assert ids(text="alice") == [b.id]  # a header value
    assert ids(text="x=1") == [c.id]  # the query
    assert ids(replay_of=b.id) == [r.id]
    assert ids(before=c.id, limit=1) == [b.id]
    assert ids(text="%") == []  # no LIKE wildcards: a substring is a substring
    store.close()


def test_secrets_never_reach_the_file(db: Path) -> None:
    secret = "Bearer sk-live-5up3r-s3cret-t0ken"
    extra = "team-pass-77c1"
    store = CaptureStore(db, CaptureSettings(redact_headers=("x-team-secret",)))
    stored = store.add(record(1, request=Message(headers=(
        ("Authorization", secret), ("X-Team-Secret", extra), ("x-dev", "alice")))))
    store.update(stored.id, response=Message(headers=(("Set-Cookie", f"s={extra}"),)))
    got = store.get(stored.id)
    assert got is not None
    assert dict(got.request.headers) == {"Authorization": REDACTED, "X-Team-Secret": REDACTED,
                                         "x-dev": "alice"}
    store.close()
    files = b"".join(f.read_bytes() for f in db.parent.glob(db.name + "*"))  # and its WAL
    assert b"alice" in files  # the record is there: the grep reads the right bytes
    assert secret.encode() not in files and extra.encode() not in files


def test_the_file_is_private(db: Path) -> None:
    CaptureStore(db).close()
    assert db.stat().st_mode & 0o077 == 0


async def test_subscribers_get_live_records_and_updates(db: Path) -> None:
    store = CaptureStore(db)
    queue = store.subscribe()
    added = store.add(record(1))
    assert await asyncio.wait_for(queue.get(), 2) == added
    updated = store.update(added.id, status=201)
    assert await asyncio.wait_for(queue.get(), 2) == updated
    store.unsubscribe(queue)
    store.add(record(2))
    assert queue.empty()
    store.close()


async def test_a_slow_subscriber_loses_records_and_never_blocks_add(db: Path) -> None:
    from bridged.capture.store import SUBSCRIBER_QUEUE

    store = CaptureStore(db)
    slow = store.subscribe()  # never read
    live = store.subscribe()
    got: list[int] = []

    async def read() -> None:
        while len(got) < SUBSCRIBER_QUEUE + 50:
            got.append((await live.get()).id)

    reader = asyncio.create_task(read())
    began = time.monotonic()
    for n in range(SUBSCRIBER_QUEUE + 50):
        store.add(record(n))
        if n % 100 == 0:
            await asyncio.sleep(0)  # the live reader keeps up
    await asyncio.wait_for(reader, 5)
    assert time.monotonic() - began < 10
    assert slow.qsize() == SUBSCRIBER_QUEUE
    assert store.lost(slow) == 50
    assert store.lost(live) == 0 and len(got) == SUBSCRIBER_QUEUE + 50
    store.close()
