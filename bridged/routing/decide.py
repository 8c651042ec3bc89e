"""The router's decision for one request: which intercept gets it, or the original pods.

Pure and per request (a keep-alive connection may carry requests for different developers).
When several rules match, the one with more matchers wins (the more specific), then the one
registered first: the same request always goes to the same place.
"""

from __future__ import annotations

from collections.abc import Iterable

# Route and ORIGIN live beside the rules (a rule keeps its route); they are imported from here
from .rules import ORIGIN, RequestHead, Route, Rule

#: the route of every request no rule matches (one object: a Route is immutable)
TO_ORIGIN = Route(ORIGIN)


def decide(head: RequestHead, rules: Iterable[Rule]) -> Route:
    best: Rule | None = None
    for rule in rules:
        if not rule.matches(head):
            continue
        if best is None or (len(rule.tests), -rule.order) > (len(best.tests), -best.order):
            best = rule
    return best.route if best is not None else TO_ORIGIN
