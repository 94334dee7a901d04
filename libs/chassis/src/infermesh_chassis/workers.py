"""Several worker processes serving one port: the parent that supervises them, and what each worker shares.

gRPC Python is not fork-safe, so the parent never creates a gRPC object: it starts each worker with
multiprocessing's ``spawn`` (a fresh interpreter), and every worker builds its own server bound with
``SO_REUSEPORT`` to the same address (grpc's ``examples/python/multiprocessing``). With port 0 the parent
first binds a ``SO_REUSEPORT`` socket on port 0 and keeps it open (bound, never listening, so it takes no
connections) while the workers bind the port the kernel gave it: every worker serves that one port.

What the workers of one instance share lives in the instance directory the parent creates:

- ``workers.up``: one byte per worker, 1 while that worker serves. A worker writes its own byte once
  its server started; the parent clears it when the worker dies. Each worker's health service reports
  NOT_SERVING while any byte is 0 (:class:`WorkerSlot`), so the instance is SERVING only with all up.
- ``prometheus/``: prometheus_client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, set in the
  environment the workers are spawned with, before they import prometheus_client). The parent serves the
  one ``/metrics`` of the instance, summing every worker's files; a dead worker's live gauges are removed.
- ``ports-<i>.json``: the other listeners worker ``i`` reported (the parent puts worker 0's in the ready file).

The parent registers the instance in discovery once, writes the ready file once all workers serve, and
restarts a worker that dies (doubling backoff). SIGTERM/SIGINT: the parent deregisters, removes the ready
file and sends SIGTERM to every worker, each drains its calls for the grace period, and the parent exits
after the last one. Each worker asks the kernel for SIGTERM when the parent dies (``PR_SET_PDEATHSIG``),
so a parent killed with SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import mmap
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from infermesh_chassis.logs import get_logger

__all__ = [
    "MULTIPROC_ENV",
    "Supervisor",
    "SupervisorCollector",
    "WorkerFailed",
    "WorkerSlot",
    "read_reported_ports",
    "reserve_port",
    "set_parent_death_signal",
]

_log = get_logger("infermesh_chassis.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_UP_FILE = "workers.up"
_PR_SET_PDEATHSIG = 1
_RESTART_BACKOFF_S = 0.5
_RESTART_BACKOFF_MAX_S = 10.0
_STABLE_AFTER_S = 10.0
"""A worker that served this long before dying is restarted after the first backoff again."""
_EXIT_MARGIN_S = 10.0
"""Time beyond the grace period a worker gets to run its cleanups before the parent kills it."""


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind ``host:port`` (0: a free port) with ``SO_REUSEPORT`` and hold it; yield the port.

    The socket never listens, so it takes no connection; the workers bind the same port with
    ``SO_REUSEPORT`` while it is held, and nothing else on the machine can take the port meanwhile.
    """
    address = _unbracket(host) or "0.0.0.0"
    family, kind, proto, _, sockaddr = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def set_parent_death_signal(parent_pid: int) -> None:
    """Ask the kernel to send SIGTERM to this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    A parent that already died before the request was made is caught by comparing the parent pid.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _open_up_map(instance_dir: Path, count: int) -> mmap.mmap:
    fd = os.open(instance_dir / _UP_FILE, os.O_RDWR)
    try:
        return mmap.mmap(fd, count)
    finally:
        os.close(fd)


class WorkerSlot:
    """One worker's view of the instance: its index and whether every worker serves."""

    def __init__(self, instance_dir: Path, index: int, count: int) -> None:
        self.instance_dir = instance_dir
        self.index = index
        self.count = count
        self._up = _open_up_map(instance_dir, count)

    def all_up(self) -> bool:
        """Whether every worker of the instance serves now."""
        return self._up[: self.count] == b"\x01" * self.count

    def mark_up(self, up: bool) -> None:
        """Report this worker serving (or not)."""
        self._up[self.index] = 1 if up else 0

    def write_ports(self, ports: dict[str, int]) -> None:
        """Publish the other listeners this worker bound, for the parent's ready file."""
        temporary = self.instance_dir / f".ports-{self.index}.tmp"
        temporary.write_text(json.dumps(ports))
        os.replace(temporary, self.instance_dir / f"ports-{self.index}.json")


def read_reported_ports(instance_dir: Path, index: int = 0) -> dict[str, int]:
    """The listeners worker ``index`` reported (empty when it reported none)."""
    try:
        return {str(k): int(v) for k, v in json.loads((instance_dir / f"ports-{index}.json").read_text()).items()}
    except FileNotFoundError:
        return {}


@dataclass
class _Worker:
    index: int
    process: Any = None
    started_at: float = 0.0
    failures: int = 0
    restart: asyncio.TimerHandle | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class WorkerFailed(Exception):
    """A worker exited before the instance first served: the instance cannot start."""

    def __init__(self, index: int, exitcode: int) -> None:
        super().__init__(f"worker {index} exited with {exitcode} before the instance served")
        self.exitcode = exitcode


class Supervisor:
    """The parent of ``count`` workers of one instance (see the module docstring).

    ``target(index, *args)`` is what each spawned worker runs; it must be importable by reference
    (a module-level function) since the worker is a fresh interpreter.
    """

    def __init__(
        self,
        instance_dir: Path,
        count: int,
        target: Callable[..., None],
        args: tuple[Any, ...],
        *,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.instance_dir = instance_dir
        self.count = count
        self._target = target
        self._args = args
        self._grace_s = grace_s
        self._clock = clock
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(index) for index in range(count)]
        self._stopping = False
        self._served = False
        self.restarts = 0
        """Workers started again after dying."""
        self._failed: WorkerFailed | None = None
        self._changed = asyncio.Event()
        (instance_dir / _UP_FILE).write_bytes(b"\x00" * count)
        self._up = _open_up_map(instance_dir, count)

    @property
    def pids(self) -> list[int]:
        """Pids of the workers alive now."""
        return [w.process.pid for w in self._workers if w.process is not None and w.process.exitcode is None]

    def up_count(self) -> int:
        """Workers serving now."""
        return sum(self._up[: self.count])

    def start(self) -> None:
        """Spawn every worker."""
        for worker in self._workers:
            self._spawn(worker)

    def _spawn(self, worker: _Worker) -> None:
        worker.restart = None
        if self._stopping:
            return
        process = self._context.Process(
            target=self._target, args=(worker.index, *self._args), name=f"worker-{worker.index}"
        )
        process.start()
        worker.process, worker.started_at = process, self._clock()
        worker.exited = asyncio.Event()
        asyncio.get_running_loop().add_reader(process.sentinel, self._on_exit, worker, process)
        _log.info("worker_started", worker=worker.index, pid=process.pid)

    def _on_exit(self, worker: _Worker, process: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(process.sentinel)
        process.join()
        self._up[worker.index] = 0
        _mark_dead(process.pid)
        worker.exited.set()
        self._changed.set()
        code = process.exitcode
        if self._stopping:
            _log.info("worker_stopped", worker=worker.index, pid=process.pid, exitcode=code)
            return
        if not self._served:
            self._failed = WorkerFailed(worker.index, code if code else 1)
            _log.error("worker_failed_at_start", worker=worker.index, pid=process.pid, exitcode=code)
            return
        lived = self._clock() - worker.started_at
        worker.failures = 1 if lived >= _STABLE_AFTER_S else worker.failures + 1
        delay = min(_RESTART_BACKOFF_S * 2 ** (worker.failures - 1), _RESTART_BACKOFF_MAX_S)
        _log.warning("worker_died", worker=worker.index, pid=process.pid, exitcode=code, restart_in_s=delay)
        worker.restart = loop.call_later(delay, self._respawn, worker)

    def _respawn(self, worker: _Worker) -> None:
        if not self._stopping:
            self.restarts += 1
        self._spawn(worker)

    async def wait_all_up(self, stopping: asyncio.Event, poll_s: float = 0.02) -> bool:
        """Wait until every worker serves (True), or ``stopping`` is set (False).

        Raises :class:`WorkerFailed` when a worker exits first.
        """
        while not stopping.is_set():
            if self._failed is not None:
                raise self._failed
            if self.up_count() == self.count:
                self._served = True
                return True
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), poll_s)
        return False

    async def stop(self) -> None:
        """SIGTERM every worker, wait for each to drain and exit (SIGKILL past the grace period and a margin)."""
        self._stopping = True
        live = []
        for worker in self._workers:
            if worker.restart is not None:
                worker.restart.cancel()
                worker.restart = None
            if worker.process is not None and worker.process.exitcode is None and not worker.exited.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
                live.append(worker)
        waits = [worker.exited.wait() for worker in live]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self._grace_s + _EXIT_MARGIN_S)
        except TimeoutError:
            for worker in live:
                if not worker.exited.is_set():
                    _log.error("worker_killed", worker=worker.index, pid=worker.process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.process.pid, signal.SIGKILL)
            await asyncio.gather(*(worker.exited.wait() for worker in live))
        self._up.close()


class SupervisorCollector(Collector):
    """The parent's own figures in the instance's /metrics: workers configured, serving, restarted."""

    def __init__(self, prefix: str, supervisor: Supervisor) -> None:
        self._prefix = prefix
        self._supervisor = supervisor

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        supervisor = self._supervisor
        yield GaugeMetricFamily(
            f"{self._prefix}_worker_processes", "Worker processes of this instance.", supervisor.count
        )
        yield GaugeMetricFamily(
            f"{self._prefix}_worker_processes_up", "Worker processes serving now.", supervisor.up_count()
        )
        yield CounterMetricFamily(
            f"{self._prefix}_worker_process_restarts",
            "Worker processes started again after dying.",
            supervisor.restarts,
        )


def _mark_dead(pid: int) -> None:
    """Drop a dead worker's live gauges from the multiprocess directory (its counters stay counted)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)
