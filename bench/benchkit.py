"""What every benchmark needs from the machine: free ports, and the CPU and memory of processes.

Benchmarks run as scripts (``python bench/bench_x.py``), so this module is imported from their own
folder. Memory figures come from ``/proc/<pid>/status`` (``VmHWM`` is the peak resident set).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["children", "cpu_s", "free_port", "peak_rss_mib", "process_name", "status_mib"]


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_mib(pid: int, field: str) -> float:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``...) in MiB; NaN when absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def peak_rss_mib(pid: int) -> float:
    """The process' peak resident set so far, MiB."""
    return status_mib(pid, "VmHWM")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; NaN when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The process' direct children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def process_name(pid: int) -> str:
    """The process' command name (``/proc/<pid>/comm``)."""
    return Path(f"/proc/{pid}/comm").read_text().strip()
