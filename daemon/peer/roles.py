"""What the session driver (driver.py) asks of the roles built on it: where frames are kept
(``Holder``), what a role adds (``Role``: its presence, and what it hears of each stored batch,
``Received``), and how the driver is set up (``DriverConfig``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from seedswarm.daemon.store.log_store import Stored
from seedswarm.daemon.transport import INCOMING_QUEUE
from seedswarm.protocol.events import Event, FrameAccepted, Outgoing, Retracted


class Holder(Protocol):
    """Where a peer keeps the frames it accepted, as the driver uses it: the node's and the
    relay's SQLite log (``store.StoreThread``, durable) or a simulated node's memory."""

    async def append(self, frames: Sequence[Stored]) -> None:
        """Keep these frames (their bytes as received); durable when this returns."""
        ...

    async def retract(self, node: str, first: int) -> None:
        """Give back ``node``'s provisional frames from ``first`` on."""
        ...

    async def frames_for(self, node: str, first: int, count: int) -> list[bytes]:
        """Kept frame bodies that together cover ``[first, first + count)`` of ``node``."""
        ...


@dataclass(frozen=True, slots=True)
class Received:
    """One batch of messages, read by the session and stored: what a role hears of it."""

    messages: Sequence[tuple[str, bytes, Sequence[Event]]]  # (topic, payload, its events)
    accepted: Sequence[FrameAccepted]
    retracted: Sequence[Retracted]
    ends: dict[str, int]  # next seq of each other node whose prefix the batch moved


class Role(Protocol):
    """What a role adds to the driver (see the module docstring)."""

    def presence(self, *, alive: bool) -> Outgoing:
        """The role's heartbeat (``Session.presence`` with what it reports of itself)."""
        ...

    def received(self, batch: Received) -> None:
        """A batch was read and what it brought is stored (called on the event loop)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverConfig:
    presence_interval: float = 60.0  # seconds between heartbeats (presence also goes out when due)
    fill_gaps: bool = True  # ask for what is missing and notice silent peers (tick)
    incoming_queue: int = INCOMING_QUEUE  # messages the transport reads ahead of the inbox
    # a filter in front of the inbox: the payload to read (maybe another one), or None to
    # leave the message unread (a simulated light node reads little of what it gets)
    admit: Callable[[str, bytes], bytes | None] | None = None
