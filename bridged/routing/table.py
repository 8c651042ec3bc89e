"""The intercept table: which session holds which intercept, and until when.

Rules:
- an intercept without matchers holds its port exclusively: refused while others hold the port,
  and others are refused while it holds it;
- the same intercept id registered again by the same owner (a daemon that reconnected, with the
  same key) replaces its old holding, whatever session held it; the same id from another owner
  is refused: ids are not secrets (other daemons may learn them);
- a different exclusive holder can only be pushed out with ``overwrite``;
- a holding whose lease was not renewed by ``expires_at`` routes nothing and is removed by
  :meth:`InterceptTable.expire`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import InterceptClaim
from .rules import BadMatcher, Rule


@dataclass
class Holding:
    claim: InterceptClaim
    session: str
    expires_at: float
    #: who holds it across sessions: the fingerprint of the key the session authenticated with
    owner: str = ""
    #: the claim's matchers, compiled when it was granted (never per request)
    rule: Rule | None = None
    #: seconds the holding stays reserved after its lease ended (its daemon may come back)
    resume_seconds: float = 0.0

    @property
    def released_at(self) -> float:
        return self.expires_at + self.resume_seconds

    @property
    def port(self) -> int:
        return self.claim.port


class TableConflict(Exception):
    """The claim cannot be granted; the message says by whom it is blocked, or what is wrong
    with its matchers."""


class InterceptTable:
    def __init__(self) -> None:
        self._by_id: dict[str, Holding] = {}
        self._next_order = 0  # registration order, for rules equally specific
        #: each port's holdings, kept until a holding comes or goes: the router asks for
        #: them on every request, the table changes when a developer comes or goes
        self._ports: dict[int, tuple[Holding, ...]] = {}
        self._mirrors: dict[int, tuple[Holding, ...]] = {}  # the same, mirrors only

    def __len__(self) -> int:
        return len(self._by_id)

    def holdings(self) -> list[Holding]:
        return list(self._by_id.values())

    def get(self, intercept_id: str) -> Holding | None:
        return self._by_id.get(intercept_id)

    def on_port(self, port: int) -> list[Holding]:
        return list(self.at_port(port))

    def at_port(self, port: int) -> tuple[Holding, ...]:
        """:meth:`on_port`, without a copy: what the router reads per request."""
        held = self._ports.get(port)
        if held is None:
            held = self._ports[port] = tuple(h for h in self._by_id.values() if h.port == port)
        return held

    def mirrors_at(self, port: int) -> tuple[Holding, ...]:
        """The mirror intercepts of ``port`` (usually none: the router asks per request)."""
        held = self._mirrors.get(port)
        if held is None:
            held = self._mirrors[port] = tuple(h for h in self.at_port(port) if h.claim.mirror)
        return held

    def _changed(self) -> None:
        """A holding came or went: the ports' lists are made again when next asked for."""
        self._ports.clear()
        self._mirrors.clear()

    def claim(
        self, session: str, claim: InterceptClaim, *, now: float, ttl: float,
        overwrite: bool = False, owner: str = "", resume: float = 0.0,
    ) -> tuple[Holding, list[Holding]]:
        """Grant ``claim`` to ``session``; returns the holding and the holdings it displaced."""
        self.expire(now)  # an expired holding blocks nobody, swept or not
        try:
            rule = Rule.compile(claim.id, claim.matchers, order=self._next_order)
        except BadMatcher as exc:
            raise TableConflict(f"intercept {claim.id!r}: {exc}") from None
        previous = self._by_id.get(claim.id)
        if previous is not None and previous.owner != owner:
            raise TableConflict(f"intercept {claim.id!r} belongs to another developer")
        others = [h for h in self.on_port(claim.port) if h.claim.id != claim.id]
        blocking = [h for h in others if h.claim.exclusive or claim.exclusive]
        if blocking and not overwrite:
            holder = blocking[0]
            what = "the whole port" if holder.claim.exclusive else "per-request matchers"
            if holder.expires_at <= now:
                hours = (holder.released_at - now) / 3600
                raise TableConflict(
                    f"port {claim.port} is reserved for a developer who disconnected "
                    f"({what}, intercept {holder.claim.id!r}, for {hours:.1f} h more); "
                    "use --overwrite to take it over")
            raise TableConflict(
                f"port {claim.port} is already intercepted ({what}, intercept "
                f"{holder.claim.id!r}); leave it first, or use --overwrite to take it over"
            )
        displaced = []
        for h in blocking:
            displaced.append(self._by_id.pop(h.claim.id))
        if previous is not None and previous.port != claim.port:
            displaced.append(previous)
        if previous is not None and previous.rule is not None and previous.port == claim.port:
            # re-attaching keeps its place among equally specific rules
            rule = Rule(rule.intercept_id, rule.matchers, rule.tests, previous.rule.order)
        else:
            self._next_order += 1
        holding = Holding(claim, session, now + ttl, owner, rule, resume)
        self._by_id[claim.id] = holding
        self._changed()
        return holding, displaced

    def release(self, session: str, intercept_id: str) -> Holding | None:
        holding = self._by_id.get(intercept_id)
        if holding is None or holding.session != session:
            return None
        self._changed()
        return self._by_id.pop(intercept_id)

    def renew(self, session: str, ids: tuple[str, ...], *, now: float, ttl: float) -> list[str]:
        """Extend the leases of ``ids``; returns the ids this session does not hold (lost),
        and those whose lease had lapsed: not routed meanwhile, their redirect may be undone
        (a Service given back), so the daemon registers them again — its reservation lets it
        take them back, and the registration redirects again what must be."""
        lost = []
        for intercept_id in ids:
            holding = self._by_id.get(intercept_id)
            if holding is None or holding.session != session or holding.expires_at <= now:
                lost.append(intercept_id)
            else:
                holding.expires_at = now + ttl
        return lost

    def drop_session(self, session: str, now: float = 0.0) -> list[Holding]:
        """The session is gone: its holdings stop routing at once; those with a resume window
        stay reserved for their owner, the others are released. Returns all of them."""
        gone = [h for h in self._by_id.values() if h.session == session]
        for h in gone:
            if h.resume_seconds > 0:
                h.expires_at = min(h.expires_at, now)
            else:
                del self._by_id[h.claim.id]
                self._changed()
        return gone

    def expire(self, now: float) -> list[Holding]:
        """Release holdings whose lease and resume window have both ended."""
        gone = [h for h in self._by_id.values() if h.released_at <= now]
        for h in gone:
            del self._by_id[h.claim.id]
            self._changed()
        return gone

    def rules(self, port: int, now: float) -> list[Rule]:
        """The live per-request rules of ``port``, for :func:`~bridged.routing.decide.decide`:
        a lapsed lease routes nothing even before it is swept."""
        return [h.rule for h in self.on_port(port)
                if h.rule is not None and h.expires_at > now]

    def route_port(self, port: int, now: float) -> Holding | None:
        """The live exclusive holder of a whole-port intercept, if any."""
        for h in self.on_port(port):
            if h.claim.exclusive and h.expires_at > now:
                return h
        return None
