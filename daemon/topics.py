"""MQTT topic names of a run (docs/PROTOCOL.md §5).

<prefix>/<run name>/records/<node>    a node's own frames              QoS 1
<prefix>/<run name>/presence/<node>   retained heartbeat, will on loss QoS 1, retained
<prefix>/<run name>/sync/<node>       wants addressed to the node, and frames answering
                                      the node's own wants             QoS 1
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("records", "presence", "sync")


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    run: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.run}"

    def records(self, node: str) -> str:
        return f"{self.base}/records/{node}"

    def presence(self, node: str) -> str:
        return f"{self.base}/presence/{node}"

    def sync(self, node: str) -> str:
        return f"{self.base}/sync/{node}"

    def subscriptions(self, me: str) -> list[str]:
        return [f"{self.base}/records/+", f"{self.base}/presence/+", self.sync(me)]

    def parse(self, topic: str) -> tuple[str, str] | None:
        """(kind, node) of a topic of this run, or None."""
        head = self.base + "/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 2 or rest[0] not in KINDS or not rest[1]:
            return None
        return rest[0], rest[1]
