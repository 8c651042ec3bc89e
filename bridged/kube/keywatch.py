"""The relay's view of the authorized-keys Secret, through the API rather than the mounted volume.

The kubelet refreshes a mounted Secret about once a minute (its sync period plus its cache's
TTL), so a developer who just ran ``bridged connect`` would wait that long to be let in. The
relay instead lists the one Secret and watches it from the list's resourceVersion: a change is
applied the moment the API server sends it. A watch the server ends (its time-out, a restart)
resumes from the last resourceVersion seen; one too old to resume from (410 Gone) lists again;
a dropped connection is retried with a short back-off. While the API cannot be read (no right
yet, e.g. a Role not yet upgraded), the mounted volume stays the source.

Both requests carry ``fieldSelector=metadata.name=NAME``: the Role grants get/list/watch on
that one name (``resourceNames``), and RBAC authorizes a list or a watch restricted by
``resourceNames`` only when the request selects that name with a ``metadata.name`` field
selector (kubernetes.io, "Using RBAC Authorization", "Referring to resources").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass

import aiohttp

from .client import KubeAPI, KubeApiError, rest, watch

log = logging.getLogger(__name__)

#: (the Secret's ``data`` — {} when it does not exist —, its resourceVersion, "list" or "watch")
Apply = Callable[[dict[str, str], str, str], None]


@dataclass(frozen=True)
class KeyWatchSettings:
    #: seconds the API server keeps one watch open (``timeoutSeconds``) before the relay watches
    #: again from where it was: short enough that a connection that died silently (no FIN, a
    #: NAT dropping it) is noticed within minutes, long enough to cost nothing
    watch_seconds: int = 240
    #: seconds, past ``watch_seconds``, the client waits for the stream before calling it dead
    stream_grace_seconds: float = 30.0
    #: seconds before retrying a failed list or watch, doubled per failure up to the maximum:
    #: an API server restart is over in seconds; a missing right may be granted at any time
    retry_seconds: float = 0.5
    retry_max_seconds: float = 30.0


class Gone(Exception):
    """The watch's resourceVersion is older than the API server's event window (410)."""


async def follow_secret(kube: KubeAPI, name: str, apply: Apply, unavailable: Callable[[str], None],
                        settings: KeyWatchSettings = KeyWatchSettings()) -> None:
    """List then watch Secret ``name`` forever, calling ``apply`` with each new state and
    ``unavailable`` (with the reason, one line) when it cannot be read. Cancel to stop."""
    delay = settings.retry_seconds
    while True:
        try:
            version = await _list(kube, name, apply)
            delay = settings.retry_seconds
            while True:
                began = asyncio.get_running_loop().time()
                version = await _watch(kube, name, version, apply, settings)
                if asyncio.get_running_loop().time() - began < settings.retry_seconds:
                    await asyncio.sleep(settings.retry_seconds)  # a server ending at once
        except Gone:
            log.info("watch of Secret %s expired (410 Gone): reading it again", name)
            continue
        except KubeApiError as exc:
            unavailable(f"cannot read Secret {name} through the API: {_reason(exc)}")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            unavailable(f"lost the watch of Secret {name}: {exc or type(exc).__name__}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, settings.retry_max_seconds)


def _selector(name: str) -> str:
    return f"metadata.name={name}"


async def _list(kube: KubeAPI, name: str, apply: Apply) -> str:
    found = await rest(kube, "GET", f"/api/v1/namespaces/{kube.namespace}/secrets",
                       query={"fieldSelector": _selector(name)})
    items = found.get("items") or []
    version = str((found.get("metadata") or {}).get("resourceVersion") or "")
    apply(dict(items[0].get("data") or {}) if items else {}, version, "list")
    return version


async def _watch(kube: KubeAPI, name: str, version: str, apply: Apply,
                 settings: KeyWatchSettings) -> str:
    """One watch stream, until the server ends it; returns the last resourceVersion seen."""
    events = watch(kube, f"/api/v1/namespaces/{kube.namespace}/secrets",
                   {"fieldSelector": _selector(name), "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(settings.watch_seconds)},
                   settings.watch_seconds + settings.stream_grace_seconds)
    try:
        async with aclosing(events):  # (a stream left early is closed now, not when collected)
            async for event in events:
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":  # its object is a Status
                    if obj.get("code") == 410:
                        raise Gone()
                    raise KubeApiError(int(obj.get("code") or 500), str(obj.get("reason") or ""),
                                       json.dumps(obj))
                # a BOOKMARK carries only the version: where to resume from
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED"):
                    apply(dict(obj.get("data") or {}), version, "watch")
                elif kind == "DELETED":
                    apply({}, version, "watch")
    except KubeApiError as exc:
        if exc.status == 410:  # some servers refuse a too-old version before streaming
            raise Gone() from None
        raise
    return version


def _reason(exc: KubeApiError) -> str:
    return f"{exc.status} {exc.status_message or exc.reason}"
