"""What a relay forwards: every node's frames and presence, in one bundle per interval.

The driver hands over each batch of messages once its session read them and its store holds
what they brought (``Relay.received``); the bundler keeps, of those, the frames and presence
messages the session took without a drop, byte for byte and in the order they came, and
publishes them every ``--interval`` seconds on ``bundles/<relay>`` (docs/PROTOCOL.md §7, §9).

Invariants:
  * Only what the session took without a drop is forwarded, each message as it came (a frame,
    or a presence: signatures still verify), in the order it came (so a new node's presence
    precedes its first frame).
  * Every interval it publishes at least one bundle (of the relay's own presence when nothing
    came): the bundles are the heartbeat nodes watch. A bundle holds at most
    ``MAX_BUNDLE_BYTES``; what waits for the next interval holds at most ``MAX_PENDING_BYTES``
    (beyond that an entry is not forwarded, and counted: nodes fetch it by gap filling).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from seedswarm.daemon.peer.driver import Received, SessionDriver
from seedswarm.protocol.codec import encode_bundle
from seedswarm.protocol.events import Dropped, Kind, Outgoing
from seedswarm.protocol.session import MAX_BUNDLE_BYTES
from seedswarm.protocol.topics import PRESENCE, RECORDS

MAX_PENDING_BYTES = 64 * 1024 * 1024  # forwarded bytes waiting for the next interval, at most


@dataclass(frozen=True, slots=True)
class BundlerStatistics:
    frames_forwarded: int
    presences_forwarded: int
    bundles_published: int
    bytes_forwarded: int
    overflow: int  # entries not forwarded because the pending bundle was full


class Bundler:
    def __init__(
        self, driver: SessionDriver, interval: float, heartbeat: Callable[[], bytes]
    ) -> None:
        """``heartbeat``: the relay's own presence, the entry of a bundle when nothing came."""
        self.driver = driver
        self.interval = interval
        self.me = driver.me
        self._heartbeat = heartbeat
        self._topic = driver.session.topics.bundles(self.me)
        self._pending: deque[tuple[str, bytes]] = deque()
        self._pending_bytes = 0
        self._frames = self._presences = self._bundles = self._bytes = self._overflow = 0

    def take(self, batch: Received) -> None:
        """Keep what the batch brought that is to be forwarded."""
        for topic, payload, events in batch.messages:
            parts = topic.rsplit("/", 2)
            if len(parts) != 3 or parts[1] not in (RECORDS, PRESENCE) or not payload:
                continue
            if any(isinstance(e, Dropped) for e in events):
                continue
            if self._pending_bytes + len(payload) > MAX_PENDING_BYTES:
                self._overflow += 1  # nodes' gap filling fetches it from its author
                continue
            self._pending.append((parts[2], payload))
            self._pending_bytes += len(payload)
            if parts[1] == RECORDS:
                self._frames += 1
            else:
                self._presences += 1

    async def run(self) -> None:
        """Every interval, what came in, in bundles; its own presence when nothing did."""
        while True:
            await asyncio.sleep(self.interval)
            self.flush()

    def flush(self) -> None:
        """Publish what waits (while connected: the broker would take nothing else)."""
        if not self.driver.connected.is_set():
            return
        for bundle in self._bundles_now():
            self.driver.publish([Outgoing(self._topic, bundle, Kind.BUNDLE)])
            self._bundles += 1
            self._bytes += len(bundle)

    def _bundles_now(self) -> list[bytes]:
        out: list[bytes] = []
        entries: list[tuple[str, bytes]] = []
        size = 1
        while self._pending:
            node, payload = self._pending[0]
            cost = 1 + len(node) + 3 + len(payload)
            if entries and size + cost > MAX_BUNDLE_BYTES:
                out.append(encode_bundle(entries))
                entries, size = [], 1
            self._pending.popleft()
            self._pending_bytes -= len(payload)
            entries.append((node, payload))
            size += cost
        if not entries and not out:
            # nothing came: its own presence, the heartbeat nodes watch (bundles have entries)
            entries = [(self.me, self._heartbeat())]
        if entries:
            out.append(encode_bundle(entries))
        return out

    def statistics(self) -> BundlerStatistics:
        return BundlerStatistics(
            frames_forwarded=self._frames,
            presences_forwarded=self._presences,
            bundles_published=self._bundles,
            bytes_forwarded=self._bytes,
            overflow=self._overflow,
        )
