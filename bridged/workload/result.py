"""What the kubelet would give a container: :class:`EnvResult`, a tuple of :class:`EnvVar`.

Shared by the kubelet's rules (:mod:`.kubelet`, which builds it), the rewrites
(:mod:`.rewrites`, which make its service addresses local) and the output formats
(:mod:`.formats`, which write it). Pure: plain data.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EnvResult", "EnvVar", "SkippedKeys"]


@dataclass(frozen=True)
class EnvVar:
    """One variable of the container's environment.

    ``source``: where the value came from: ``env``, ``configmap/NAME``, ``secret/NAME``,
    ``configmap/NAME:KEY``, ``secret/NAME:KEY``, ``fieldRef:PATH``, ``resourceFieldRef:RES``,
    ``service/NAME``. ``secret``: the value holds Secret data (from a Secret, or expanded from a
    variable that does). ``unknown``: why the value could not be known here (it is then "").
    ``rewritten_from``: the value before a rewrite made a service address local.
    """

    name: str
    value: str
    source: str
    secret: bool = False
    unknown: str | None = None
    rewritten_from: str | None = None


@dataclass(frozen=True)
class SkippedKeys:
    """Keys of an ``envFrom`` source that the kubelet skips (its InvalidEnvironmentVariableNames
    Warning event); ``message`` is the event's message."""

    kind: str  # "configMap" | "secret"
    name: str
    keys: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class EnvResult:
    """What the kubelet would give the container, in a stable order (``envFrom`` keys sorted per
    source, then ``env`` in order, then Service variables)."""

    container: str
    vars: tuple[EnvVar, ...]
    skipped: tuple[SkippedKeys, ...] = ()
    warnings: tuple[str, ...] = ()
    source: str = ""  # where the spec and the pod fields came from, for humans

    def as_dict(self) -> dict[str, str]:
        return {v.name: v.value for v in self.vars}

    def get(self, name: str) -> EnvVar | None:
        return next((v for v in self.vars if v.name == name), None)

    @property
    def secret_names(self) -> tuple[str, ...]:
        """Variables whose values hold Secret data: a file of them must be private."""
        return tuple(v.name for v in self.vars if v.secret)

    @property
    def has_secrets(self) -> bool:
        return any(v.secret for v in self.vars)

    @property
    def unknown(self) -> dict[str, str]:
        return {v.name: v.unknown for v in self.vars if v.unknown is not None}

    @property
    def rewritten(self) -> dict[str, tuple[str, str]]:
        return {v.name: (v.rewritten_from, v.value) for v in self.vars
                if v.rewritten_from is not None}

