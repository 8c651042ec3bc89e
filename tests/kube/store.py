"""The object store: etcd's part of the API server, with the watch cache's event window.

Semantics followed (https://kubernetes.io/docs/reference/using-api/api-concepts/):

- one ``resourceVersion`` counter for the whole store (etcd's revision), a decimal string on
  the wire, bumped by every write; an update that changes nothing is not written (no new
  ``resourceVersion``, no watch event), like ``GuaranteedUpdate``;
- a DELETED event carries the object's last state with the ``resourceVersion`` of the delete;
- the store keeps a window of past events (the watch cache): a watch can start from any
  ``resourceVersion`` inside it; older ones are answered with an ``Expired`` (410) error,
  "too old resource version: R (C)"; :meth:`Store.compact` moves the window forward as etcd
  compaction does; lists at an exact past version (``resourceVersionMatch=Exact``, continue
  tokens) are served from the window the same way;
- watchers see events in commit order; a watcher with a selector sees an object that starts
  to match as ADDED and one that stops matching as DELETED (the cacher's behaviour).

Stored objects are never mutated in place: every write stores a new dict, readers get copies.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import conflict, expired, not_found
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector, field_set

__all__ = ["Change", "Store", "Watcher"]

Key = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Change:
    """One committed write: ``obj`` is the state after it (the last state for DELETED)."""

    rv: int
    resource: ResourceType
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


def _key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


def _without_rv(obj: dict[str, Any]) -> dict[str, Any]:
    meta = dict(obj.get("metadata") or {})
    meta.pop("resourceVersion", None)
    return {**obj, "metadata": meta}


@dataclass(eq=False)
class Watcher:
    """One watch: the changes of one resource (in one namespace) that pass its selectors."""

    resource: ResourceType
    namespace: str | None
    labels: LabelSelector = field(default_factory=LabelSelector)
    fields: FieldSelector = field(default_factory=FieldSelector)
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = field(default_factory=asyncio.Queue)
    closed: bool = False

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(
            field_set(self.resource.plural, obj))

    def offer(self, change: Change) -> None:
        if self.closed or change.resource != self.resource:
            return
        if change.type == "ADDED":
            if self.matches(change.obj):
                self.queue.put_nowait(("ADDED", change.obj))
        elif change.type == "DELETED":
            if self.matches(change.old or change.obj):
                self.queue.put_nowait(("DELETED", change.obj))
        else:
            was, now = self.matches(change.old), self.matches(change.obj)
            if was and now:
                self.queue.put_nowait(("MODIFIED", change.obj))
            elif now:
                self.queue.put_nowait(("ADDED", change.obj))
            elif was:
                self.queue.put_nowait(("DELETED", change.obj))

    def close(self) -> None:
        """Ends the watch stream (the server side going away)."""
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class Store:
    """All objects of all resources, the event window, the watchers and the listeners."""

    def __init__(self, window: int = 10_000) -> None:
        self.rv = 1
        self.window = window
        self._objects: dict[ResourceType, dict[Key, dict[str, Any]]] = {}
        self._base: dict[ResourceType, dict[Key, dict[str, Any]]] = {}
        self._base_rv = 1
        self._log: list[Change] = []
        self._watchers: set[Watcher] = set()
        self._listeners: list[Callable[[Change], None]] = []
        self._rv_waiters: list[tuple[int, asyncio.Future[None]]] = []

    # --- reads -----------------------------------------------------------------------------

    def get(self, res: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self._objects.get(res, {}).get((namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def peek(self, res: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object itself: read-only, for the stand-in's own controllers."""
        return self._objects.get(res, {}).get((namespace or "", name))

    def items(self, res: ResourceType, namespace: str | None = None) -> list[dict[str, Any]]:
        """Current objects (not copies: read-only), sorted like etcd keys."""
        objs = self._objects.get(res, {})
        return [objs[k] for k in sorted(objs) if namespace is None or k[0] == namespace]

    def list_at(self, res: ResourceType, namespace: str | None,
                rv: int | None) -> list[dict[str, Any]]:
        """The objects as they were at ``rv`` (None: now); 410 outside the window."""
        if rv is None or rv >= self.rv:
            return [copy.deepcopy(o) for o in self.items(res, namespace)]
        if rv < self._base_rv:
            raise expired(f"too old resource version: {rv} ({self._base_rv})")
        state = dict(self._base.get(res, {}))
        for change in self._log:
            if change.rv > rv:
                break
            if change.resource == res:
                if change.type == "DELETED":
                    state.pop(_key(change.obj), None)
                else:
                    state[_key(change.obj)] = change.obj
        return [copy.deepcopy(state[k]) for k in sorted(state)
                if namespace is None or k[0] == namespace]

    # --- writes ----------------------------------------------------------------------------

    def create(self, res: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        key = _key(obj)
        objs = self._objects.setdefault(res, {})
        if key in objs:
            from .errors import already_exists
            raise already_exists(res.group, res.plural, key[1])
        self.rv += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self.rv)
        objs[key] = stored
        self._commit(Change(self.rv, res, "ADDED", stored, None))
        return copy.deepcopy(stored)

    def update(self, res: ResourceType, obj: dict[str, Any],
               expect_rv: str | None = None) -> dict[str, Any]:
        """Writes ``obj`` over the current object; ``expect_rv``, when given, must be the
        current ``resourceVersion``, else 409 Conflict (optimistic concurrency)."""
        key = _key(obj)
        objs = self._objects.setdefault(res, {})
        old = objs.get(key)
        if old is None:
            raise not_found(res.group, res.plural, key[1])
        if expect_rv and expect_rv != old["metadata"]["resourceVersion"]:
            raise conflict(res.group, res.plural, key[1])
        if _without_rv(obj) == _without_rv(old):
            return copy.deepcopy(old)
        self.rv += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self.rv)
        objs[key] = stored
        self._commit(Change(self.rv, res, "MODIFIED", stored, old))
        return copy.deepcopy(stored)

    def delete(self, res: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        objs = self._objects.setdefault(res, {})
        old = objs.pop((namespace or "", name), None)
        if old is None:
            raise not_found(res.group, res.plural, name)
        self.rv += 1
        last = copy.deepcopy(old)
        last["metadata"]["resourceVersion"] = str(self.rv)
        self._commit(Change(self.rv, res, "DELETED", last, old))
        return copy.deepcopy(last)

    def _commit(self, change: Change) -> None:
        self._log.append(change)
        if len(self._log) > self.window:
            self._fold(self._log[len(self._log) // 2].rv)
        for watcher in list(self._watchers):
            watcher.offer(change)
        for listener in list(self._listeners):
            listener(change)
        for rv, future in list(self._rv_waiters):
            if rv <= self.rv:
                self._rv_waiters.remove((rv, future))
                if not future.done():
                    future.set_result(None)

    async def wait_for_rv(self, rv: int, within: float) -> bool:
        """Waits until the store reaches ``rv`` (the watch cache waiting for a too-large
        ``resourceVersion``, 3 s on a real server); False if it did not in time."""
        if rv <= self.rv:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (rv, future)
        self._rv_waiters.append(entry)
        try:
            await asyncio.wait_for(future, within)
            return True
        except TimeoutError:
            return False
        finally:
            if entry in self._rv_waiters:
                self._rv_waiters.remove(entry)

    # --- the event window ------------------------------------------------------------------

    def _fold(self, upto: int) -> None:
        """Forgets the events up to ``upto`` (folding them into the base state)."""
        keep: list[Change] = []
        for change in self._log:
            if change.rv <= upto:
                objs = self._base.setdefault(change.resource, {})
                if change.type == "DELETED":
                    objs.pop(_key(change.obj), None)
                else:
                    objs[_key(change.obj)] = change.obj
            else:
                keep.append(change)
        self._log = keep
        self._base_rv = max(self._base_rv, upto)

    def compact(self, upto: int | None = None) -> int:
        """Like etcd compaction: watches and exact lists from before ``upto`` (default: now)
        get 410 Expired from now on. Returns the compacted revision."""
        self._fold(self.rv if upto is None else upto)
        return self._base_rv

    @property
    def oldest_rv(self) -> int:
        return self._base_rv

    # --- watchers and listeners ------------------------------------------------------------

    def watch(self, watcher: Watcher, since: int | None) -> None:
        """Starts ``watcher``: the events after ``since`` (None: none; the caller sends the
        initial state), then every later one. Raises 410 Expired if ``since`` is too old."""
        if since is not None:
            if since < self._base_rv:
                raise expired(f"too old resource version: {since} ({self._base_rv})")
            for change in self._log:
                if change.rv > since:
                    watcher.offer(change)
        self._watchers.add(watcher)

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watchers(self) -> None:
        for watcher in list(self._watchers):
            watcher.close()
        self._watchers.clear()

    def listen(self, listener: Callable[[Change], None]) -> Callable[[], None]:
        """Calls ``listener`` synchronously for every commit (the controllers' informers)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
