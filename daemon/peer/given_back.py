"""Records the session gave back, counted and said in the node's log: a third party's copies
once their author is back (the rule of an open run), or a repair, loudly: a copy held here
contradicted its author's own word, so something between (a relay, or a third party) altered
it (docs/PROTOCOL.md §9)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from seedswarm.protocol.events import Retracted, SessionStatistics

log = logging.getLogger("seedswarm.peer")


class GivenBack:
    def __init__(self, me: str) -> None:
        self.me = me
        self.records = 0  # records given back (the holder deleted them)
        self._repairs = 0  # the session's repairs, as of the last batch that gave back

    def report(self, retracted: Sequence[Retracted], stats: SessionStatistics) -> None:
        """A stored batch gave back ``retracted``; ``stats``: the session's, after it."""
        records = sum(len(r.records) for r in retracted)
        self.records += records
        nodes = ", ".join(sorted({r.node for r in retracted}))
        if stats.repairs > self._repairs:
            self._repairs = stats.repairs
            log.error(
                "%s: REPAIR: held records of %s with other bytes than their author's own word "
                "says; gave back %d records and fetches them again from their author (distrusted "
                "relays: %s)",
                self.me, nodes, records, stats.distrusted or "none",
            )  # fmt: skip
        else:
            log.info(
                "%s: gave back %d records of %s (a third party's copies: their author is back)",
                self.me, records, nodes,
            )  # fmt: skip
