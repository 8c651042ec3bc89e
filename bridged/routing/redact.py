"""Which request headers may be shown: secrets are replaced before anything leaves the router.

The traffic log shows each intercepted request's headers (what a developer debugging a
routing rule needs to see). Credentials in them must not reach a screen, a log file or a JSON
dump: the relay redacts before it sends an event, the daemon again before it shows one (each
with its own configurable list, the defaults below always included).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: always redacted: credentials and session tokens, by name (case-insensitive)
DEFAULT_REDACTED = ("authorization", "proxy-authorization", "cookie", "set-cookie",
                    "x-api-key", "x-auth-token", "x-csrf-token")
REDACTED = "[redacted]"
#: at most this many headers, each value at most this long, in one traffic event
MAX_HEADERS = 64
MAX_VALUE = 512


def redact(headers: Iterable[Sequence[str]], extra: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(name, value) pairs with the values of secret headers replaced, long values cut."""
    secret = {n.lower() for n in (*DEFAULT_REDACTED, *extra)}
    out = []
    for name, value in list(headers)[:MAX_HEADERS]:
        if name.lower() in secret:
            value = REDACTED
        elif len(value) > MAX_VALUE:
            value = value[:MAX_VALUE] + "…"
        out.append((name, value))
    return out
