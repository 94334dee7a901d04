"""The ready file: how a process tells whoever started it which ports it bound.

A service binds its own ports (port 0 where none is configured: the kernel picks a free one) and,
once serving, writes :class:`Ready` as JSON to the path of its ``ready_file`` setting: first to a
temporary name beside it, then renamed, so a reader sees the whole file or none. The starter
(the local stack, a test) waits for the file of the process it started (:func:`wait_ready`: the pid
must match, so a file left by an earlier process is never taken) and dials the ports it names,
never a port it guessed. The process removes the file when it stops.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Ready", "ReadyTimeout", "read_ready", "remove_ready", "wait_ready", "write_ready"]


@dataclass(frozen=True, slots=True)
class Ready:
    """What a serving process reports."""

    service: str
    pid: int
    host: str
    grpc_port: int
    metrics_port: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    """Other listeners the service bound, by name (the business center's ``thrift``...)."""

    @property
    def address(self) -> str:
        """``host:grpc_port``."""
        return f"{self.host}:{self.grpc_port}"


class ReadyTimeout(TimeoutError):
    """No ready file from the process within the time given."""


def write_ready(path: Path, ready: Ready) -> None:
    """Write ``ready`` to ``path`` atomically (a temporary file in the same directory, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(ready)))
    os.replace(temporary, path)


def read_ready(path: Path) -> Ready | None:
    """The ready file at ``path``, or None when there is none."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return Ready(**data)


def remove_ready(path: Path, pid: int) -> None:
    """Remove the ready file at ``path`` if process ``pid`` wrote it (a successor's file stays)."""
    ready = read_ready(path)
    if ready is not None and ready.pid == pid:
        path.unlink(missing_ok=True)


def wait_ready(
    path: Path, pid: int, timeout_s: float, *, exited: Callable[[], int | None] = lambda: None, poll_s: float = 0.05
) -> Ready:
    """The ready file process ``pid`` writes at ``path``, once it is there.

    Raises :class:`ReadyTimeout` after ``timeout_s``, and ``ChildProcessError`` as soon as
    ``exited()`` returns an exit code (the process died before it was ready).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        ready = read_ready(path)
        if ready is not None and ready.pid == pid:
            return ready
        code = exited()
        if code is not None:
            raise ChildProcessError(f"exited with {code} before it was ready")
        if time.monotonic() > deadline:
            raise ReadyTimeout(f"no ready file at {path} after {timeout_s:.0f}s")
        time.sleep(poll_s)
