"""Content repair (sans-IO): whose version vector to ask for, and what its digests mean.

Theory of operation
-------------------
Presence carries a digest of everything a node holds (``held_digest``); a version vector
(``Vv``) carries, per author, how many records the sender holds and a digest of their bytes
(docs/PROTOCOL.md §9, *Vv requests* and *Repair*). Two nodes that hold the same records with
other bytes cannot both be right, and only the author's own word decides which copy is:

  * ``vv_targets``: at most one request every ``vv_every`` seconds in all for what peers hold
    (to the live peer whose digest differs from ours, asked longest ago, then by this node's
    own order of its peers, so that a peer whose presence changes is not asked by every node
    at once), and one to each *suspect*: an author whose records a peer holds with other bytes
    than ours.
  * ``compare``: a vv's digests against our log, over the records both hold. A mismatch with
    the author's own vv means our copy goes (the session repairs); with anyone else's, the
    author becomes a suspect and is asked. An author that holds more of its records than we
    do is taken at its word once our log reaches that count (``due``).

``ContentRepair`` holds the suspects, those words and the request pacing; the session owns the
log and the peer table, feeds them in, and acts on the ``Verdict``s (counts, repairs, blames
the relays that brought a contradicted copy).

Invariants:
  * At most one request to non-suspects per ``vv_every`` seconds, and none to a peer asked
    within ``vv_every``: what a swarm sends for repair does not grow with what peers show.
  * The words kept are bounded by ``max_words`` (a flood of made-up authors starts afresh).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .log import OrderedLog
from .messages import Vv
from .peers import Peer
from .vv import held_digest


@dataclass(frozen=True, slots=True)
class Verdict:
    """A comparison of ``node``'s records with a peer's copy: ``by_author`` when the peer is
    ``node`` itself (its word decides)."""

    node: str
    agrees: bool
    by_author: bool


class ContentRepair:
    """The suspects, the authors' words not yet comparable, and the pacing of vv requests."""

    def __init__(self, me: str, *, vv_every: float, peer_timeout: float, max_words: int) -> None:
        self.me = me
        self.vv_every = vv_every
        self.peer_timeout = peer_timeout
        self.max_words = max_words
        self._suspects: dict[str, float] = {}  # node -> when its own vv was last asked for
        # node -> (next seq, content) of its own vv, where it held more of its records than
        # this node does: compared once this node's log reaches that seq (due)
        self._words: dict[str, tuple[int, bytes]] = {}
        self._vv_at = -1e18  # when a peer was last asked for its vv (suspects aside)

    def vv_targets(
        self, now: float, peers: Mapping[str, Peer], held: Mapping[str, tuple[int, bytes]]
    ) -> list[str]:
        """The peers to ask for their vv now (marked as asked).

        The one for what peers hold: a live peer whose held digest differs from ours (it holds
        more, or as much but other records or other bytes) and that holds a record, not asked
        within ``vv_every``; among those that hold at least as many records as this node, if
        any (they may hold what it lacks), else among the rest (while the swarm steps, no
        presence shows as many records as this node holds by the time it is read, and other
        bytes are found all the same: compared over the records both hold). Of them, the one
        asked longest ago, then by ``Peer.spread``."""
        ours, mine = sum(s for s, _ in held.values()), held_digest(held)
        timeout, every = self.peer_timeout, self.vv_every
        targets: list[str] = []
        if now - self._vv_at >= every:
            more: tuple[float, bytes, str] | None = None  # holds at least as many as we do
            fewer: tuple[float, bytes, str] | None = None
            for name, p in peers.items():
                pr = p.presence
                if not p.alive(now, timeout) or not pr.held_total or pr.held_digest == mine:
                    continue
                if now - p.vv_asked < every:
                    continue
                key = (p.vv_asked, p.spread, name)
                if pr.held_total >= ours:
                    if more is None or key < more:
                        more = key
                elif fewer is None or key < fewer:
                    fewer = key
            pick = more or fewer
            if pick is not None:
                targets, self._vv_at = [pick[2]], now
        for node, asked in list(self._suspects.items()):
            peer = peers.get(node)
            if peer is None or not peer.alive(now, timeout) or node in targets:
                continue
            if now - max(asked, peer.vv_asked) >= every:
                targets.append(node)
                self._suspects[node] = now
        for t in targets:
            peers[t].vv_asked = now
        return targets

    def compare(self, msg: Vv, log: OrderedLog) -> list[Verdict]:
        """``msg``'s digests against ``log``, over the records both hold (the shorter prefix:
        a digest of a prefix is computed from the log). An author's word on more of its
        records than ``log`` holds waits (``due``)."""
        out: list[Verdict] = []
        for node, end in msg.held.items():
            if node == self.me:
                continue
            word = msg.content[node]
            ours = log.next_seq(node)
            if end > ours:
                if node == msg.sender:
                    if node not in self._words and len(self._words) >= self.max_words:
                        self._words.clear()  # a flood of made-up authors: start afresh
                    self._words[node] = (end, word)
                continue
            mine = log.content(node) if end == ours else log.content_at(node, end)
            out.append(Verdict(node, word == mine, node == msg.sender))
        return out

    def due(self, log: OrderedLog) -> list[Verdict]:
        """Authors' words on more records than ``log`` held then, now that it holds them."""
        out: list[Verdict] = []
        for node, (end, word) in list(self._words.items()):
            if log.next_seq(node) >= end:
                del self._words[node]
                out.append(Verdict(node, log.content_at(node, end) == word, True))
        return out

    def repair_now(self, v: Verdict) -> bool:
        """Whether ``v`` means our copy of ``v.node``'s records must go now (its author
        contradicts it); otherwise note what it means for the suspects."""
        if v.agrees:
            if v.by_author:
                self._suspects.pop(v.node, None)  # its author agrees with our copy
            return False
        if v.by_author:
            return True
        self._suspects.setdefault(v.node, -1e18)
        return False

    def repaired(self, node: str) -> None:
        """Our copy of ``node``'s records is gone: nothing is pending about it."""
        self._suspects.pop(node, None)
        self._words.pop(node, None)
