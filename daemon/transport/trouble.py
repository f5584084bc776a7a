"""Broker trouble in words: what a failed connection means and what to do about it.

A node that cannot reach its broker keeps trying (mqtt.py's one reconnection loop), so the
first thing its user sees must be the reason and the fix, within seconds, not a silent table
of zeros: ``explain`` turns aiomqtt's and the socket's errors into one line, and ``probe`` (a
plain TCP connect) lets a command say it before it spends seconds loading a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from seedswarm.daemon.settings import BrokerAddress

PROBE_TIMEOUT_S = 3.0

_REFUSED = ("refused", "errno 111", "connect call failed", "errno 61")
_NO_HOST = ("name or service not known", "nodename nor servname", "name resolution", "errno -2")
_NO_ROUTE = ("no route to host", "network is unreachable", "errno 113", "errno 101")
_LOGIN = ("not authori", "bad user name or password", "return code 4", "return code 5")


def explain(address: BrokerAddress, error: str, *, timeout_s: float | None = None) -> str:
    """One line: what went wrong reaching the broker at ``address``, and the fix."""
    url = address.display()
    low = error.lower()
    if any(k in low for k in _REFUSED):
        return (
            f"nothing accepts connections at {url} (connection refused): start a broker there "
            f"(seedswarm broker --port {address.port}, or Mosquitto) or pass the right --broker "
            "URL; retrying"
        )
    if any(k in low for k in _NO_HOST):
        return f"{address.host!r} is not a host name this machine knows: check --broker {url}; retrying"
    if any(k in low for k in _NO_ROUTE):
        return f"no network route to {url}: check --broker and the network; retrying"
    if "timed out" in low or "timeout" in low:
        within = f" within {timeout_s:g} s" if timeout_s else ""
        return (
            f"{url} accepted the connection but sent no MQTT answer{within}: is it an MQTT "
            "broker, and is it overloaded? retrying"
        )
    if any(k in low for k in _LOGIN):
        return f"{url} refused the login: check --username and --password ({error}); retrying"
    if "ssl" in low or "certificate" in low:
        return f"TLS with {url} failed: check --ca-file and the URL's host name ({error}); retrying"
    return f"cannot connect to {url}: {error}; retrying"


async def probe(address: BrokerAddress, wait_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None if something accepts TCP connections at ``address`` (whether it speaks MQTT is
    the transport's to find), else ``explain``'s line. ``memory://`` needs no probe."""
    if address.scheme == "memory":
        return None
    try:
        async with asyncio.timeout(wait_s):
            _, writer = await asyncio.open_connection(address.host, address.port)
    except TimeoutError:
        return (
            f"{address.display()} did not accept a connection within {wait_s:g} s: check "
            "--broker and the network (a firewall?); retrying"
        )
    except (OSError, socket.gaierror) as exc:
        return explain(address, str(exc))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None
