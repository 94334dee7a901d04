"""The local mesh: every service as its own process on 127.0.0.1, with static discovery.

:class:`LocalStack` picks free ports, writes one settings file per service (each knows every
other's address), starts the processes with their logs under the stack's directory, waits
until each answers the standard health check, and stops them with SIGTERM (SIGKILL only for
a process that outlives its grace period). Its state file lets another command (``status``,
``down``) find the processes again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["SERVICES", "LocalStack", "ServiceProcess", "ServiceSpec", "StackError"]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """How to run one service of the mesh."""

    name: str
    module: str
    env_prefix: str


SERVICES = (
    ServiceSpec("monitor", "infermesh_monitor", "MONITOR_"),
    ServiceSpec("model-gateway", "infermesh_model_gateway", "MODEL_GATEWAY_"),
    ServiceSpec("data-gateway", "infermesh_data_gateway", "DATA_GATEWAY_"),
    ServiceSpec("biz-center", "infermesh_biz_center", "BIZ_CENTER_"),
)
"""In start order: those others report to or call come first."""


class StackError(Exception):
    """The stack could not be started or found; the message says what to do."""


@dataclass(slots=True)
class ServiceProcess:
    """One running service of the stack."""

    name: str
    pid: int
    port: int
    metrics_port: int
    log: str

    @property
    def address(self) -> str:
        """``127.0.0.1:port`` of its gRPC server."""
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """Whether the process still exists (and is not a zombie)."""
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"

    def rss_mib(self) -> float | None:
        """Resident memory in MiB, or None when the process is gone."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except FileNotFoundError:
            return None
        return None


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_status(address: str, timeout_s: float = 1.0) -> str:
    """SERVING, NOT_SERVING, ... or UNREACHABLE, from the standard health service."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


class LocalStack:
    """The mesh as local processes under ``workdir`` (see the module docstring)."""

    def __init__(self, workdir: Path, services: tuple[ServiceSpec, ...] = SERVICES) -> None:
        self.workdir = workdir
        self.services = services
        self.state_file = workdir / "state.json"
        self.processes: list[ServiceProcess] = []
        self._popen: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def attach(cls, workdir: Path) -> LocalStack:
        """The stack a previous ``start`` left running, from its state file."""
        stack = cls(workdir)
        if not stack.state_file.exists():
            raise StackError(f"no local stack is running (no {stack.state_file}); start one with `infermesh up`")
        stack.processes = [ServiceProcess(**p) for p in json.loads(stack.state_file.read_text())["processes"]]
        return stack

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every service and wait until all are SERVING; on failure stop what started."""
        if self.state_file.exists():
            leftover = LocalStack.attach(self.workdir)
            if any(p.alive() for p in leftover.processes):
                raise StackError(f"a local stack is already running from {self.workdir}; stop it with `infermesh down`")
            self.state_file.unlink()
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        ports = {spec.name: (free_port(), free_port()) for spec in self.services}
        static = {name: [f"127.0.0.1:{grpc_port}"] for name, (grpc_port, _) in ports.items()}
        try:
            for spec in self.services:
                self._spawn(spec, *ports[spec.name], static)
            self._write_state()
            for process in self.processes:
                self._wait_serving(process, timeout_s)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, spec: ServiceSpec, port: int, metrics_port: int, static: dict[str, list[str]]) -> None:
        config = self.workdir / f"{spec.name}.yaml"
        settings = {
            "grpc": {"host": "127.0.0.1", "port": port, "grace_period_s": 5},
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
            "discovery": {"backend": "static", "static": static},
        }
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        log = self.workdir / "logs" / f"{spec.name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(spec.env_prefix)}
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", spec.module, "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._popen[spec.name] = popen
        self.processes.append(ServiceProcess(spec.name, popen.pid, port, metrics_port, str(log)))

    def _write_state(self) -> None:
        self.state_file.write_text(json.dumps({"processes": [asdict(p) for p in self.processes]}, indent=2))

    def _wait_serving(self, process: ServiceProcess, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while health_status(process.address, timeout_s=0.5) != "SERVING":
            popen = self._popen.get(process.name)
            if popen is not None and popen.poll() is not None:
                raise StackError(f"{process.name} exited with {popen.returncode}: {self._tail(process)}")
            if time.monotonic() > deadline:
                raise StackError(f"{process.name} not SERVING after {timeout_s:.0f}s: {self._tail(process)}")
            time.sleep(0.1)

    @staticmethod
    def _tail(process: ServiceProcess, lines: int = 5) -> str:
        text = Path(process.log).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or f"(nothing logged; see {process.log})"

    def stop(self, grace_s: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every process (in reverse start order), SIGKILL after ``grace_s``; exit codes by name."""
        for process in reversed(self.processes):
            if process.alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        codes: dict[str, int | None] = {}
        for process in reversed(self.processes):
            popen = self._popen.get(process.name)
            while process.alive() and time.monotonic() < deadline:
                if popen is not None and popen.poll() is not None:
                    break
                time.sleep(0.05)
            if process.alive() and (popen is None or popen.poll() is None):
                os.kill(process.pid, signal.SIGKILL)
            codes[process.name] = popen.wait(timeout=5) if popen is not None else None
        self.state_file.unlink(missing_ok=True)
        return codes
