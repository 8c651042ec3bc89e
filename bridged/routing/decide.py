"""The router's decision for one request: which intercept gets it, or the original pods.

Pure and per request (a keep-alive connection may carry requests for different developers).
When several rules match, the one with more matchers wins (the more specific), then the one
registered first: the same request always goes to the same place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .rules import RequestHead, Rule

ORIGIN = "origin"


@dataclass(frozen=True)
class Route:
    """Where a request goes: an intercept id, or :data:`ORIGIN` (the Service's own pods)."""

    target: str

    @property
    def to_origin(self) -> bool:
        return self.target == ORIGIN


def decide(head: RequestHead, rules: Iterable[Rule]) -> Route:
    best: Rule | None = None
    for rule in rules:
        if not rule.matches(head):
            continue
        if best is None or (len(rule.tests), -rule.order) > (len(best.tests), -best.order):
            best = rule
    return Route(best.intercept_id if best is not None else ORIGIN)
