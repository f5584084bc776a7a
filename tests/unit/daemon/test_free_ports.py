"""Port choice for the local swarm: the members' and the embedded broker's ports never coincide."""

from __future__ import annotations

import socket

from seedswarm.daemon.launch.broker import free_ports


def test_free_ports_are_distinct_and_released() -> None:
    # many at once: if a socket were released before all were chosen, bind(0) would soon hand
    # its port out again and the set would come out short
    ports = free_ports(500)
    assert len(set(ports)) == 500
    socks = []
    try:
        for p in ports:  # each one was released and is free to listen on now
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", p))
            s.listen()
    finally:
        for s in socks:
            s.close()
