"""The one place a peer's transport is chosen, by the broker URL's scheme.

    mqtt://host:port, mqtts://host:port   MqttTransport (mqtt.py), a real broker
    memory://NAME                         MemoryTransport (memory.py), the process's bus NAME

A node, a relay and a simulated node each ask for a ``TransportFactory`` here and call it once
with their ``TransportSpec``; no other module constructs a transport.
"""

from __future__ import annotations

from seedswarm.daemon.settings import BrokerAddress

from .base import Transport, TransportFactory, TransportSpec
from .memory import MemoryBus
from .mqtt import MqttTransport


def transport_factory(
    address: BrokerAddress, *, version: str = "auto", ca_file: str = "", keepalive: int = 60
) -> TransportFactory:
    """What makes the transport to ``address``; ``version``, ``ca_file`` and ``keepalive``
    are MQTT's (the MQTT version to speak, the CA of an ``mqtts`` broker, the keep-alive)."""
    if address.scheme == "memory":
        return MemoryBus.named(address.host).factory

    def mqtt(spec: TransportSpec) -> Transport:
        return MqttTransport(address, spec, version=version, ca_file=ca_file, keepalive=keepalive)

    return mqtt


def keepalive_for(presence_interval: float) -> int:
    """MQTT keep-alive: as slow as the heartbeat allows, for few bytes, but at most a minute,
    so that a vanished peer's will comes within 1.5 minutes."""
    return int(min(60.0, max(5.0, presence_interval)))
