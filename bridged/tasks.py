"""Named, owned, long-lived tasks: every one is logged when it dies, and stopped by its owner.

A task that ends with an exception is logged with its name and traceback at once (not when the
garbage collector notices); ``cancel_all`` cancels and awaits every task still running, so that
an owner's ``close`` leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskSet:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.owner}/{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s died: %s", task.get_name(), exc, exc_info=exc)

    def named(self, name: str) -> asyncio.Task[Any] | None:
        """The running task started with this name, if any."""
        full = f"{self.owner}/{name}"
        return next((t for t in self._tasks if t.get_name() == full and not t.done()), None)

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
