"""Port choice for the local swarm: the members' and the embedded broker's ports never coincide."""

from __future__ import annotations

import socket

from seedswarm.daemon.broker import free_port, free_ports


def test_free_ports_are_distinct_and_can_be_bound() -> None:
    ports = free_ports(64)
    assert len(set(ports)) == 64
    socks = []
    try:
        for p in ports:  # each one was released and is free to listen on now
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", p))
            s.listen()
        # a port someone listens on is never handed out
        assert not set(free_ports(16)) & set(ports)
        assert free_port() not in ports
    finally:
        for s in socks:
            s.close()
