"""A peer's broker connection: the ``Transport`` seam (base.py), MQTT behind it (mqtt.py), an
in-process bus (memory.py), and the one place that picks between them by URL (choose.py)."""

from .base import INCOMING_QUEUE, Transport, TransportFactory, TransportSpec, TransportStatistics
from .choose import keepalive_for, transport_factory

__all__ = [
    "INCOMING_QUEUE",
    "Transport",
    "TransportFactory",
    "TransportSpec",
    "TransportStatistics",
    "keepalive_for",
    "transport_factory",
]
