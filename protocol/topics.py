"""MQTT topic names of a run (docs/PROTOCOL.md §9).

    <prefix>/<run name>/records/<node>         a node's own frames
    <prefix>/<run name>/presence/<node>        retained heartbeat; the will marks the node gone
    <prefix>/<run name>/sync/<to>/<from>       wants from <from> to <to>, and frames that <from>
                                               sends to <to> in answer to <to>'s wants
    <prefix>/<run name>/bundles/<relay>        every node's frames, as a relay forwards them
    <prefix>/<run name>/manifest/<run id>      the manifest itself, retained (by its hash)

Every topic names the node that publishes on it in its last level, so a broker's ACL can
reserve it (Mosquitto: ``pattern write <prefix>/+/sync/+/%u``) and a receiver knows whom to
blame for what arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DecodeError
from .ids import check_node_id, check_run_name

RECORDS = "records"
PRESENCE = "presence"
SYNC = "sync"
BUNDLES = "bundles"


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic filter and how to receive it: QoS 0 for the fan-out topics (gap filling
    recovers a loss, and no acknowledgement per message), and No Local (MQTT 5) where a node
    would otherwise get its own messages back."""

    topic: str
    qos: int
    no_local: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """Where a message came in: its kind and the node the topic says published it."""

    kind: str  # RECORDS, PRESENCE or SYNC
    sender: str  # the publisher named by the topic (a valid node id)
    to: str = ""  # SYNC only: the addressee


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    run: str

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "+#") or self.prefix.startswith("$"):
            raise ValueError(f"topic prefix {self.prefix!r}: no wildcards, no leading $")
        check_run_name(self.run)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.run}"

    def records(self, node: str) -> str:
        return f"{self.base}/{RECORDS}/{node}"

    def presence(self, node: str) -> str:
        return f"{self.base}/{PRESENCE}/{node}"

    def sync(self, to: str, sender: str) -> str:
        return f"{self.base}/{SYNC}/{to}/{sender}"

    def bundles(self, relay: str) -> str:
        return f"{self.base}/{BUNDLES}/{relay}"

    def manifest(self, run_id: bytes) -> str:
        return f"{self.base}/manifest/{run_id.hex()}"

    def subscriptions(
        self, me: str, *, records: bool = True, presence: bool = True, bundles: bool = False
    ) -> list[Subscription]:
        """A node's: its peers' frames and presence (``records``, ``presence``: directly;
        ``bundles``: as relays forward them), and the sync messages addressed to it."""
        subs = [Subscription(f"{self.base}/{SYNC}/{me}/+", 1)]
        if presence:
            subs.append(Subscription(f"{self.base}/{PRESENCE}/+", 0, no_local=True))
        if records:
            subs.append(Subscription(f"{self.base}/{RECORDS}/+", 0, no_local=True))
        if bundles:
            subs.append(Subscription(f"{self.base}/{BUNDLES}/+", 0))
        return subs

    def parse(self, topic: str) -> Route | None:
        """The route of a topic of this run, or None if the topic is not one of ours.

        Raises ``DecodeError`` (``bad_topic``) for a topic of this run whose levels are not
        valid node ids: such a message is dropped under the ``invalid`` sender.
        """
        head = self.base + "/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        try:
            if len(rest) == 2 and rest[0] in (RECORDS, PRESENCE, BUNDLES):
                return Route(rest[0], check_node_id(rest[1]))
            if len(rest) == 3 and rest[0] == SYNC:
                return Route(SYNC, check_node_id(rest[2]), to=check_node_id(rest[1]))
        except DecodeError as exc:
            raise DecodeError(f"topic {topic[:120]!r}: {exc}", reason="bad_topic") from exc
        raise DecodeError(f"topic {topic[:120]!r} is not a seedswarm topic", reason="bad_topic")
