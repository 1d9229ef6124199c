"""The one network helper axolab needs: a free TCP port for a process group's rendezvous.
Torch-free and dependency-free, so every layer (parallel, launch, perfmodel) may import it."""

from __future__ import annotations

import socket


def free_port(host: str = "") -> int:
    """A port no socket on ``host`` ("" = every interface) is bound to right now. Another
    process may still take it before the caller binds it; rendezvous then fails loudly."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
