"""What the worker processes of one gateway instance share, through files in its instance directory.

An instance may serve its port from several worker processes (the chassis' ``grpc.workers``). They
share one set of embedded Triton workers and must agree on them, and on the routing state:

- **One owner of the Triton children.** Worker process 0 starts the embedded ``tritonserver``
  processes, supervises and restarts them, reconciles (loads and warms up) the registry's versions
  onto them, and publishes what it knows of each (address, down or reloading, restarts, models
  ready during a reload) in ``triton.json`` (:class:`SharedTriton`). The other processes follow that
  file and use the same Triton servers as workers of their own pools: they never start, load at
  start, or restart them, so a restart, its reload and its warm-up happen once per instance, and
  the replica states and ``worker_restarts`` they answer are the owner's. A follower that sees the
  owner's process gone marks the workers down at once (they die with it) until a new owner, started
  by the instance's parent, publishes their new addresses; the new owner carries the restart count on.
- **Read your writes across the port.** A change made through one process (a deploy, traffic,
  a rollout step) is announced in ``generation`` (:class:`RouterSync`); every process reloads its
  router when it sees a newer one and acknowledges it in ``router-<index>.json``, and the process
  that made the change answers only once every live sibling has acknowledged it (bounded), so the
  next call on the shared port, whichever process takes it, sees the change.

Files are replaced atomically (written aside, renamed), so a reader never sees half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from infermesh_chassis.logs import get_logger

__all__ = ["RouterSync", "SharedTriton", "SharedWorker", "TritonState", "pid_alive"]

_log = get_logger("infermesh_model_gateway.instance")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie its parent has not reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False
    except psutil.AccessDenied:
        return True


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(json.dumps(payload, sort_keys=True))
    staging.replace(path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class SharedWorker:
    """One embedded Triton worker as its owner publishes it."""

    id: str
    address: str
    """Its gRPC address (the last process' while it is down; empty before the owner started it)."""
    down: str
    """Why its process is down and being restarted; empty while it serves."""
    reloading: bool
    """A new process runs and the owner is loading its versions."""
    restarts: int
    """Times its process was restarted after it died (this instance's count, across owners)."""
    ready_models: tuple[str, ...]
    """What the owner has loaded on it so far while it reloads (followers do not probe it then)."""


@dataclass(frozen=True)
class TritonState:
    """``triton.json``: the owner's process id, whether it finished starting, and its workers."""

    owner_pid: int
    started: bool
    workers: tuple[SharedWorker, ...]

    def worker(self, worker_id: str) -> SharedWorker | None:
        """One published worker by id."""
        return next((w for w in self.workers if w.id == worker_id), None)


class SharedTriton:
    """``triton.json`` in the instance directory (see the module docstring)."""

    def __init__(self, instance_dir: Path) -> None:
        self.path = instance_dir / "triton.json"
        self._written: TritonState | None = None
        self._seen: tuple[tuple[int, int, int], TritonState | None] = ((0, 0, 0), None)

    def publish(self, state: TritonState) -> None:
        """Replace the file with ``state`` (nothing when it says what the file already says)."""
        if state != self._written:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.path, asdict(state))
            self._written = state

    def read(self) -> TritonState | None:
        """What the file says now (None before an owner wrote it); parsed again only when it changed."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._seen[0]:
            return self._seen[1]
        raw = _read(self.path)
        state = None
        if raw is not None:
            workers = tuple(
                SharedWorker(**{**w, "ready_models": tuple(w.get("ready_models", ()))}) for w in raw.get("workers", ())
            )
            state = TritonState(int(raw["owner_pid"]), bool(raw["started"]), workers)
        self._seen = (stamp, state)
        return state


class RouterSync:
    """``generation`` and ``router-<index>.json`` in the instance directory (see the module docstring)."""

    def __init__(self, instance_dir: Path, worker_index: int, worker_count: int) -> None:
        self._dir = instance_dir
        self._index = worker_index
        self._count = worker_count
        self._announced = instance_dir / "generation"

    def announced(self) -> int:
        """The newest generation a process of this instance announced (-1: none yet)."""
        raw = _read(self._announced)
        return int(raw["generation"]) if raw is not None else -1

    def acknowledge(self, generation: int) -> None:
        """Say that this process routes by ``generation`` now."""
        _write_atomic(self._dir / f"router-{self._index}.json", {"pid": os.getpid(), "generation": generation})

    async def announce(self, generation: int, timeout_s: float, poll_s: float) -> None:
        """Tell the siblings about ``generation`` and wait (up to ``timeout_s``) until each live one
        routes by it; a sibling that is gone or being restarted loads a fresh snapshot when it starts."""
        if self._count <= 1:
            return
        if generation > self.announced():
            _write_atomic(self._announced, {"generation": generation})
        self.acknowledge(generation)
        deadline = time.monotonic() + timeout_s
        while True:
            behind = [i for i in range(self._count) if i != self._index and self._behind(i, generation)]
            if not behind:
                return
            if time.monotonic() >= deadline:
                _log.warning("router_sync_timeout", generation=generation, behind=behind)
                return
            await asyncio.sleep(poll_s)

    def _behind(self, index: int, generation: int) -> bool:
        raw = _read(self._dir / f"router-{index}.json")
        if raw is None:
            return False
        with contextlib.suppress(KeyError, ValueError, TypeError):
            return int(raw["generation"]) < generation and pid_alive(int(raw["pid"]))
        return False
