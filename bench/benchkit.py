"""What every benchmark needs from the machine: free ports, the CPU and memory of processes, a load
driver, and bare pass-through proxies (the floor of a Python gRPC hop).

Benchmarks run as scripts (``python bench/bench_x.py``), so this module is imported from their own
folder. CPU times, resident sets and process trees come from psutil; the peak resident set of another
process (``VmHWM``), which psutil does not report, from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import psutil

from infermesh_chassis.testing import free_port

__all__ = [
    "WORKERS_CHANNELS",
    "children",
    "cpu_s",
    "drive",
    "free_port",
    "peak_rss_mib",
    "process_name",
    "rss_mib",
    "run_s",
    "spread_channels",
    "start_bare_proxies",
    "stop_processes",
    "workers_figures",
]

WORKERS_CHANNELS = 8
"""Connections a client opens to a service run with several workers: the kernel hands each connection
to one worker, so one channel would load one worker only."""


def spread_channels(address: str, count: int = WORKERS_CHANNELS) -> list[grpc.aio.Channel]:
    """``count`` channels to ``address``, each with its own connection (no shared subchannel pool)."""
    return [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


def workers_figures(service: str, rps: dict[int, float]) -> dict[str, object]:
    """The JSON fields of ``service``'s throughput by worker count: ``<service>_rps_workers_<n>``, the
    ratio of 2 workers to 1, and the cores this machine lets the processes use."""
    figures: dict[str, object] = {f"{service}_rps_workers_{n}": round(value) for n, value in sorted(rps.items())}
    figures[f"{service}_workers_ratio"] = round(rps[2] / rps[1], 3)
    figures["workers_cores"] = len(os.sched_getaffinity(0))
    return figures


def rss_mib(pid: int) -> float:
    """The process' resident set now, MiB; NaN when it is gone."""
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        return float("nan")


def peak_rss_mib(pid: int) -> float:
    """The process' peak resident set so far (``VmHWM``), MiB; NaN when it is gone.

    psutil reports no peak for another process, so this one figure is read from ``/proc``.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; NaN when it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return float("nan")
    return times.user + times.system


def run_s(pid: int) -> float:
    """Seconds a process has run on a CPU so far, to the nanosecond (the scheduler's own account, summed
    over its threads: ``/proc/<pid>/task/*/schedstat``); NaN when it is gone. :func:`cpu_s` counts in
    clock ticks (10 ms), too coarse for windows of a second compared to within a percent."""
    try:
        return (
            sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9
        )
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")


def children(pid: int) -> list[int]:
    """The process' direct children."""
    return [child.pid for child in psutil.Process(pid).children()]


def process_name(pid: int) -> str:
    """The process' command name."""
    return psutil.Process(pid).name()


async def drive(
    call: Callable[[int], Awaitable[object]],
    concurrency: int,
    *,
    warmup_s: float = 1.0,
    duration_s: float = 4.0,
    tolerate: tuple[type[BaseException], ...] = (),
) -> dict[str, float]:
    """A closed loop: ``concurrency`` callers each call ``call(n)`` (``n`` counts up per caller) back to
    back for ``warmup_s`` + ``duration_s``; throughput and latency percentiles over the measured part.
    Exceptions in ``tolerate`` are counted as errors; any other one stops the run."""
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = time.monotonic() + warmup_s + duration_s

    async def caller(offset: int) -> None:
        nonlocal errors
        n = offset
        while time.monotonic() < stop_at:
            n += concurrency
            began = time.perf_counter()
            try:
                await call(n)
            except tolerate:
                errors += 1
                continue
            if measuring:
                latencies.append(time.perf_counter() - began)

    callers = [asyncio.ensure_future(caller(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup_s)
    measuring = True
    began = time.monotonic()
    await asyncio.gather(*callers)
    elapsed = time.monotonic() - began
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": errors,
    }


def start_bare_proxies(
    upstream: str, hops: int = 1, timeout_s: float = 30
) -> list[tuple[subprocess.Popen[bytes], str]]:
    """``hops`` bare pass-through proxies (``bare_proxy.py``) chained in front of ``upstream``, each its
    own process; the last one in the list is the entry. Stop them with :func:`stop_processes`."""
    chain: list[tuple[subprocess.Popen[bytes], str]] = []
    target = upstream
    for _ in range(hops):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("bare_proxy.py")), "--port", str(port), "--upstream", target]
        )
        chain.append((process, f"127.0.0.1:{port}"))
        target = chain[-1][1]
    deadline = time.monotonic() + timeout_s
    for process, address in chain:
        while True:
            if process.poll() is not None:
                stop_processes([p for p, _ in chain])
                raise RuntimeError(f"bare proxy {address} exited with {process.returncode}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", int(address.rsplit(":", 1)[1]))) == 0:
                    break
            if time.monotonic() > deadline:
                stop_processes([p for p, _ in chain])
                raise RuntimeError(f"bare proxy {address} did not listen within {timeout_s} s")
            time.sleep(0.1)
    return chain


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the processes and wait for them (kill after 10 s)."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
