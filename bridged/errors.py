"""One small error hierarchy for the whole tool.

Third-party errors (asyncssh, aiohttp, OSError, kubernetes) are translated into these at one seam
each, with ``raise ... from``, so that the CLI can print ``str(error)`` as a one-line message and
never a traceback. Each class carries the exit code the CLI uses and, where useful, a hint that
tells the user what to do next.
"""

from __future__ import annotations


class BridgedError(Exception):
    """Base of every error bridged raises on purpose."""

    exit_code = 1
    #: a short machine-readable name, stable for ``--json`` output and the control API
    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(BridgedError):
    """Bad input: an address, a spec, a flag, a file. The user must change what they typed."""

    exit_code = 2
    code = "bad-input"


class CarrierError(BridgedError):
    """The byte stream to the relay could not be opened or was lost."""

    code = "carrier"


class SessionError(BridgedError):
    """The SSH session with the relay failed: authentication, host key, protocol."""

    code = "session"


class HostKeyMismatch(SessionError):
    """The relay presented a host key other than the one pinned on first contact."""

    code = "host-key-changed"


class RefusedError(BridgedError):
    """The relay or daemon refused a request (destination denied, intercept taken, ...)."""

    code = "refused"


class NotFound(BridgedError):
    """A named bridge, forward or intercept does not exist."""

    code = "not-found"


class Conflict(BridgedError):
    """The thing asked for already exists or is held by somebody else (port in use, ...)."""

    code = "conflict"


class KubeError(BridgedError):
    """The Kubernetes API refused or failed a request."""

    code = "kube"


class ControlError(BridgedError):
    """The daemon's control API could not be reached or answered nonsense."""

    code = "control"


class ProtocolError(BridgedError):
    """A peer spoke the control protocol wrongly (bad JSON, unknown version)."""

    code = "protocol"


#: error classes by ``code``, so an error that crossed the control API becomes the same class again
BY_CODE: dict[str, type[BridgedError]] = {
    cls.code: cls
    for cls in (
        BridgedError,
        ConfigError,
        CarrierError,
        SessionError,
        HostKeyMismatch,
        RefusedError,
        NotFound,
        Conflict,
        KubeError,
        ControlError,
        ProtocolError,
    )
}


def from_code(code: str, message: str, hint: str | None = None) -> BridgedError:
    """Rebuild an error received as ``{"code", "message", "hint"}``."""
    return BY_CODE.get(code, BridgedError)(message, hint=hint)
