"""The captured records, kept in one SQLite file in the daemon's state folder.

Bounded by count and by bytes (the oldest go first, counted in ``dropped``), kept across
restarts, searched by the inspector's filters. Every call is one small statement or
transaction on the event loop's thread: SQLite answers those in well under a millisecond for
the sizes the bounds allow, which costs less than a thread hop each time.

Header values that are credentials are replaced once more here, whatever the tap did: the file
outlives the session and must never hold a secret (defense in depth, cheap).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..routing.redact import DEFAULT_REDACTED, REDACTED
from .model import Captured, CaptureSettings, Headers, Message

if TYPE_CHECKING:
    import sqlite3

log = logging.getLogger(__name__)

#: records a subscriber may have waiting: past it a slow one loses records, add never waits
SUBSCRIBER_QUEUE = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    intercept TEXT NOT NULL,
    method TEXT NOT NULL,
    status INTEGER NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    replay_of INTEGER NOT NULL,
    size INTEGER NOT NULL,
    head TEXT NOT NULL,
    request_body BLOB NOT NULL,
    response_body BLOB NOT NULL,
    cluster_body BLOB
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_BODIES = ("request", "response", "cluster")


class CaptureStore:
    def __init__(self, path: Path, settings: CaptureSettings | None = None) -> None:
        self.path = path
        self.settings = settings or CaptureSettings()
        self._secret = {n.lower() for n in (*DEFAULT_REDACTED, *self.settings.redact_headers)}
        # imported here: the daemon's API imports to_json, and sqlite3 is ~1.5 MiB of RSS an
        # idle daemon, which opens its store on first use, need not hold (issue 14)
        import sqlite3

        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit; explicit BEGINs
        path.chmod(0o600)  # bodies may hold personal data: this user's only
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, fast
        self._db.executescript(_SCHEMA)
        self._count, self._bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM records").fetchone()
        row = self._db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()
        #: records dropped to keep within the bounds, since the file was made
        self.dropped: int = row[0] if row else 0
        self._subscribers: dict[asyncio.Queue[Captured], int] = {}

    # --- writing ---

    def add(self, c: Captured) -> Captured:
        c = self._scrubbed(c)
        row = _row(c)
        with self._transaction():
            cur = self._db.execute(
                "INSERT INTO records (started, intercept, method, status, target, kind, "
                "replay_of, size, head, request_body, response_body, cluster_body) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)
            self._count += 1
            self._bytes += row[7]
            self._keep_within_bounds()
        stored = dataclasses.replace(c, id=int(cur.lastrowid or 0))
        self._publish(stored)
        return stored

    def update(self, record_id: int, **fields: Any) -> Captured | None:
        """Change a stored record (mirror mode fills in the cluster's answer later)."""
        old = self.get(record_id)
        if old is None:
            return None
        new = self._scrubbed(dataclasses.replace(old, **fields, id=record_id))
        row = _row(new)
        with self._transaction():
            self._db.execute(
                "UPDATE records SET started=?, intercept=?, method=?, status=?, target=?, "
                "kind=?, replay_of=?, size=?, head=?, request_body=?, response_body=?, "
                "cluster_body=? WHERE id=?", (*row, record_id))
            self._bytes += row[7] - _row(old)[7]
            self._keep_within_bounds()
        self._publish(new)
        return new

    def clear(self) -> int:
        with self._transaction():
            n = self._db.execute("DELETE FROM records").rowcount
            self._count = self._bytes = 0
        self._db.execute("VACUUM")  # the bodies' bytes leave the disk too
        return int(n)

    def close(self) -> None:
        self._db.close()

    # --- reading ---

    def get(self, record_id: int) -> Captured | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM records WHERE id=?",
                               (record_id,)).fetchone()
        return _record(row) if row else None

    def list(self, *, before: int = 0, limit: int = 100, intercept: str = "", method: str = "",
             status: int | None = None, path: str = "", text: str = "",
             replay_of: int = 0) -> list[Captured]:
        """Newest first. ``before``: only ids below it (the next page); ``path``: the target
        starts with it; ``text``: a substring (any case) of the target, headers or bodies."""
        where: list[str] = ["1"]
        args: list[Any] = []
        for clause, value, wanted in (
            ("id < ?", before, before > 0),
            ("intercept = ?", intercept, bool(intercept)),
            ("method = ?", method.upper(), bool(method)),
            ("status = ?", status, status is not None),
            ("substr(target, 1, ?) = ?", None, bool(path)),
            ("replay_of = ?", replay_of, replay_of > 0),
        ):
            if not wanted:
                continue
            where.append(clause)
            args += [len(path), path] if value is None else [value]
        if text:
            needle = text.lower()
            where.append("(" + " OR ".join(f"instr(lower(CAST({c} AS TEXT)), ?) > 0" for c in (
                "target", "head", "request_body", "response_body", "cluster_body")) + ")")
            args += [needle] * 5
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM records WHERE {' AND '.join(where)} "
            "ORDER BY id DESC LIMIT ?", [*args, max(0, min(limit, 10_000))]).fetchall()
        return [_record(r) for r in rows]

    def stats(self) -> dict[str, int]:
        return {"records": self._count, "bytes": self._bytes, "dropped": self.dropped,
                "max_records": self.settings.max_records, "max_bytes": self.settings.max_bytes}

    # --- live ---

    def subscribe(self) -> asyncio.Queue[Captured]:
        queue: asyncio.Queue[Captured] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers[queue] = 0
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Captured]) -> None:
        self._subscribers.pop(queue, None)

    def lost(self, queue: asyncio.Queue[Captured]) -> int:
        """Records this subscriber lost because it read too slowly."""
        return self._subscribers.get(queue, 0)

    def _publish(self, c: Captured) -> None:
        for queue in self._subscribers:
            try:
                queue.put_nowait(c)
            except asyncio.QueueFull:
                self._subscribers[queue] += 1

    # --- inside ---

    def _keep_within_bounds(self) -> None:
        """Drop the oldest until both bounds hold (inside the caller's transaction)."""
        s = self.settings
        over = max(0, self._count - s.max_records)
        while over > 0 or self._bytes > s.max_bytes:
            batch = over or max(1, self._count // 100)  # by bytes: a percent at a time
            rows = self._db.execute("SELECT id, size FROM records ORDER BY id LIMIT ?",
                                    (batch,)).fetchall()
            if not rows:
                break
            if not over:  # only as many as the bytes need
                keep, need = [], self._bytes - s.max_bytes
                for rid, size in rows:
                    if need <= 0:
                        break
                    keep.append((rid, size))
                    need -= size
                rows = keep
            self._db.execute("DELETE FROM records WHERE id <= ?", (rows[-1][0],))
            self._count -= len(rows)
            self._bytes -= sum(size for _, size in rows)
            self.dropped += len(rows)
            over = max(0, self._count - s.max_records)
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dropped', ?)",
                         (self.dropped,))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _scrubbed(self, c: Captured) -> Captured:
        def message(m: Message) -> Message:
            return dataclasses.replace(m, headers=self._scrub(m.headers),
                                       trailers=self._scrub(m.trailers))

        return dataclasses.replace(
            c, request=message(c.request), response=message(c.response),
            cluster=message(c.cluster) if c.cluster is not None else None)

    def _scrub(self, headers: Headers) -> Headers:
        return tuple((n, REDACTED if n.lower() in self._secret else v) for n, v in headers)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


_COLUMNS = "id, head, request_body, response_body, cluster_body"


def _row(c: Captured) -> tuple[Any, ...]:
    head = json.dumps(to_json(c, bodies=False), separators=(",", ":"))
    bodies = [c.request.body, c.response.body, c.cluster.body if c.cluster else None]
    size = len(head) + sum(len(b) for b in bodies if b)
    return (c.started, c.intercept, c.method, c.status, c.target, c.kind, c.replay_of, size,
            head, *bodies)


def _record(row: tuple[Any, ...]) -> Captured:
    rid, head, *bodies = row
    data = json.loads(head)
    for side, body in zip(_BODIES, bodies, strict=True):
        if data.get(side) is not None:
            data[side]["body_bytes"] = bytes(body or b"")
    return dataclasses.replace(from_json(data), id=int(rid))


# --- JSON: the database's head column, the control API and the inspector ---


def to_json(c: Captured, *, bodies: bool = True) -> dict[str, Any]:
    """A record as JSON. A body is ``body`` (text) when it is UTF-8, else ``body_base64``."""
    out = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    for side in _BODIES:
        m: Message | None = getattr(c, side)
        out[side] = None if m is None else _message_json(m, bodies)
    return out


def _message_json(m: Message, bodies: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"headers": [list(h) for h in m.headers], "size": m.size,
                           "truncated": m.truncated, "trailers": [list(h) for h in m.trailers]}
    if bodies:
        try:
            out["body"] = m.body.decode()
        except UnicodeDecodeError:
            out["body_base64"] = base64.b64encode(m.body).decode()
    return out


def from_json(data: dict[str, Any]) -> Captured:
    names = {f.name for f in dataclasses.fields(Captured)}
    values = {k: v for k, v in data.items() if k in names}
    for side in _BODIES:
        m = values.get(side)
        if m is not None:
            values[side] = _message(m)
    return Captured(**values)


def _message(m: dict[str, Any]) -> Message:
    if "body_bytes" in m:
        body = m["body_bytes"]
    elif "body_base64" in m:
        body = base64.b64decode(m["body_base64"])
    else:
        body = str(m.get("body", "")).encode()
    return Message(headers=_headers(m.get("headers") or ()), body=body,
                   size=int(m.get("size", len(body))), truncated=bool(m.get("truncated")),
                   trailers=_headers(m.get("trailers") or ()))


def _headers(pairs: Iterable[Any]) -> Headers:
    return tuple((str(n), str(v)) for n, v in pairs)


def open_store(path: Path, settings: CaptureSettings | None = None) -> CaptureStore:
    """The store at ``path``; a file SQLite cannot read (a crash mid-write on a disk that lied,
    another program's file) is set aside, not fatal: the daemon goes on with an empty one."""
    import sqlite3

    try:
        return CaptureStore(path, settings)
    except sqlite3.DatabaseError as exc:
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        log.warning("capture database %s unreadable (%s): moved to %s, starting empty",
                    path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            extra = Path(f"{path}{suffix}")
            if extra.exists():
                extra.rename(f"{aside}{suffix}")
        return CaptureStore(path, settings)
