"""What one node knows of the run's relays, and whether it follows them (sans-IO).

Theory of operation
-------------------
A relay (docs/PROTOCOL.md §9, *Relays*) bundles every node's frames and presence, so a node
that follows one listens to one topic instead of every node's. Following it is trusting it like
the broker, so a node follows only a relay that

  * the run names (manifest ``relays``): any other client's bundle is a third party's copy;
  * said it relays (its presence) and whose bundles keep coming (``relay_timeout``);
  * has not been caught, within ``distrust_for``, either *dropping* (a followed relay must bring
    each own frame back within ``relay_echo`` seconds of when it became durable, which
    ``check`` measures) or *altering* (an own frame comes back changed, or an author's word
    contradicts records the relay brought: ``delivered`` remembers who brought what).

``RelayWatch`` holds that state and decides; the session feeds it what it reads and turns its
verdicts into ``Dropped`` events. Nothing here reads a clock: time comes in as ``now``.

Invariants:
  * A relay is followed only while ``trusted``; ``distrust`` forgets everything measured of it,
    so a relay that is trusted again (after ``distrust_for``) is checked afresh, like the first
    time.
  * ``check`` holds the own-record marks of the last ``4 * relay_echo`` seconds only (at least
    the newest): its memory does not grow with the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Late:
    """A followed relay that did not carry own records ``echoed``..``end - 1`` back in time."""

    relay: str
    echoed: int
    end: int


class RelayWatch:
    """The relays one node may follow, is following, and has caught."""

    def __init__(
        self,
        allowed: Iterable[str],
        *,
        relay_timeout: float,
        relay_echo: float,
        distrust_for: float,
    ) -> None:
        self.allowed = frozenset(allowed)  # the relays the run names
        self.relay_timeout = relay_timeout
        self.relay_echo = relay_echo
        self.distrust_for = distrust_for
        self._bundle_at: dict[str, float] = {}  # relay -> when its last bundle came
        self._distrusted: dict[str, tuple[float, str]] = {}  # relay -> (until, why)
        self._followed_since: dict[str, float] = {}  # relay -> when this node began to follow
        self._echoed: dict[str, int] = {}  # relay -> end of own records seen in its bundles
        self._own_at: list[tuple[int, float]] = []  # (own records durable, since when)
        self._delivered_by: dict[str, set[str]] = {}  # node -> relays that brought its records

    def trusted(self, relay: str, now: float) -> bool:
        """A relay the run names and that has not been caught (or whose time out is over)."""
        if relay not in self.allowed:
            return False
        caught = self._distrusted.get(relay)
        if caught is not None and now >= caught[0]:
            del self._distrusted[relay]  # a second chance, checked like the first
            caught = None
        return caught is None

    def bundle_came(self, relay: str, now: float) -> None:
        """A bundle of ``relay``, a node that said it relays."""
        self._bundle_at[relay] = now

    def up(self, now: float, alive: Callable[[str], bool]) -> list[str]:
        """The relays to follow now: trusted, ``alive`` (their presence), bundles coming."""
        up = sorted(
            r
            for r, at in self._bundle_at.items()
            if now - at < self.relay_timeout and self.trusted(r, now) and alive(r)
        )
        for r in up:
            self._followed_since.setdefault(r, now)
        for r in [r for r in self._followed_since if r not in up]:
            del self._followed_since[r]
            self._echoed.pop(r, None)
        return up

    def echoed(self, relay: str, end: int) -> None:
        """``relay`` carried own records up to ``end`` back, unaltered."""
        self._echoed[relay] = max(self._echoed.get(relay, 0), end)

    def delivered(self, node: str, relay: str) -> None:
        """``relay`` brought records of ``node``: it is to blame if its author contradicts them."""
        self._delivered_by.setdefault(node, set()).add(relay)

    def blame(self, node: str) -> list[str]:
        """The relays that brought ``node``'s records, now that its author contradicted them."""
        return sorted(self._delivered_by.pop(node, set()))

    def distrust(self, relay: str, now: float, reason: str) -> None:
        """Stop following ``relay`` for ``distrust_for`` seconds, and forget what was measured."""
        self._distrusted[relay] = (now + self.distrust_for, reason)
        self._bundle_at.pop(relay, None)
        self._followed_since.pop(relay, None)
        self._echoed.pop(relay, None)

    def check(self, own_stored: int, now: float) -> list[Late]:
        """Followed relays that did not bring an own frame back within ``relay_echo`` seconds of
        when it became durable (``own_stored``: own records durable now)."""
        if not self._own_at or self._own_at[-1][0] != own_stored:
            self._own_at.append((own_stored, now))
        out = []
        for relay, since in list(self._followed_since.items()):
            echoed = self._echoed.get(relay, 0)
            late = [
                end
                for end, at in self._own_at
                if end > echoed and since < at <= now - self.relay_echo
            ]
            if late:
                out.append(Late(relay, echoed, late[-1]))
        horizon = now - 4 * self.relay_echo
        keep = [x for x in self._own_at if x[1] >= horizon]
        self._own_at = keep or self._own_at[-1:]
        return out

    def distrusted(self) -> dict[str, str]:
        """Relay -> why it is not followed, for the relays caught and not yet forgiven."""
        return {r: why for r, (_, why) in sorted(self._distrusted.items())}
