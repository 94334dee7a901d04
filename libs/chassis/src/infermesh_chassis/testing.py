"""Helpers for tests of the mesh.

:func:`free_port` is the one helper for a test that truly needs a port number before anything binds
it (a port a client must find closed, a setting that cannot be 0). Everything else binds port 0 and
reads the port back: a server's ``port`` after start, or a process's ready file
(:mod:`infermesh_chassis.ready`). A number picked here can be taken by anyone before it is used.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago (see the module docstring)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
