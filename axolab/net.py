"""The one network helper axolab needs: a free TCP port for a process group's rendezvous.
Torch-free and dependency-free, so every layer (parallel, launch, perfmodel) may import it."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST_PORT = 20000
"""Ports are drawn from LOWEST_PORT up to the start of the kernel's ephemeral range."""


def _ephemeral_start(default: int = 32768) -> int:
    """First port of the range the kernel hands out to outgoing connections and to bind(0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "") -> int:
    """A port no socket on ``host`` ("" = every interface) is bound to right now, drawn below
    the ephemeral range: a rendezvous port is bound seconds after it is chosen (once the ranks
    have started), and a port from the ephemeral range can meanwhile be taken by any outgoing
    connection on the machine, such as another job's gloo ranks connecting to each other.
    Another process may still bind it explicitly first; rendezvous then fails loudly."""
    top = _ephemeral_start()
    if top - LOWEST_PORT >= 100:
        draw = random.SystemRandom()  # not the seeded module state: jobs start together
        for _ in range(200):
            port = draw.randrange(LOWEST_PORT, top)
            if _bindable(host, port):
                return port
    with socket.socket() as s:  # no range below the ephemeral one: let the kernel pick
        s.bind((host, 0))
        return s.getsockname()[1]
