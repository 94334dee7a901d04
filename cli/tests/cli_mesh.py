"""A real mesh for the CLI's tests, on 127.0.0.1 and ports the services bind themselves, started once
per test session.

- the model gateway runs in this process through ``infermesh_model_gateway.testing.start_gateway``
  (real embedded tritonserver), on an event loop of its own thread, so it keeps serving while a
  test blocks in ``main(argv)``; its events land in a list the tests forward to the monitor;
- the data gateway, business center and monitor run as their own processes
  (``python -m infermesh_<service> --config FILE``), stopped by PID afterwards;
- the data gateway serves ``churn6``: the 6 features the churn models were trained on, for
  customers 1..N, from a CSV warehouse materialized into a SQLite online store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infermesh.datagateway.v1 import data_gateway_pb2 as dg
from infermesh.datagateway.v1 import data_gateway_pb2_grpc as dg_grpc
from infermesh.modelgateway.v1 import model_gateway_pb2 as mg
from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_chassis.logs import configure_logging
from infermesh_chassis.ready import wait_ready
from infermesh_cli.__main__ import main
from infermesh_cli.stack import DEMO_API_KEY
from infermesh_model_gateway.testing import ChurnModels, GatewayHarness, start_gateway, train_churn_models

T = TypeVar("T")

CUSTOMERS = 120
ADMIN_KEY = "im-cli-test-admin-key-0123456789"
SCORER_KEY = "im-cli-test-scorer-key-0123456789"
CLI = [sys.executable, "-m", "infermesh_cli"]


def health(address: str) -> str:
    """The standard health status of ``address``, or UNREACHABLE."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


class LoopThread:
    """An event loop in a daemon thread; async servers entered on it serve while the test thread blocks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cli-test-loop", daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()

    def run(self, make: Callable[[], Awaitable[T]], timeout_s: float = 120.0) -> T:
        """Await what ``make()`` returns, created on the loop (a grpc.aio call binds to the loop it is made on)."""

        async def wait() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(wait(), self.loop).result(timeout_s)

    def enter(self, manager: AbstractAsyncContextManager[T]) -> T:
        """Enter an async context manager on the loop; it is exited by :meth:`close`."""
        return self.run(lambda: self._stack.enter_async_context(manager), timeout_s=300)

    def close(self) -> None:
        """Exit what was entered, stop the loop and join the thread."""
        self.run(self._stack.aclose, timeout_s=120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


class ServiceProcess:
    """``python -m <module> --config FILE`` on a port it binds itself (named in its ready file); waits
    for SERVING; stopped by its PID."""

    def __init__(self, module: str, workdir: Path, settings: dict[str, Any], env_prefix: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.module = module
        self.port = 0
        """Its gRPC port, from its ready file once it serves."""
        self.log = workdir / "service.log"
        self.config = workdir / "settings.yaml"
        self.ready_file = workdir / "service.ready"
        base = {
            "grpc": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1, "workers": 1},
            "metrics": {"enabled": False},
            "logging": {"level": "WARNING"},
        }
        self.config.write_text(yaml.safe_dump(base | settings, sort_keys=False))
        self.env_prefix = env_prefix
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """Its gRPC address."""
        return f"127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Start the process (without waiting)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(self.env_prefix)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "--config", str(self.config), "--ready-file", str(self.ready_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait_serving(self, timeout_s: float = 120.0) -> None:
        """Return once its ready file names its port and the health service says SERVING."""
        deadline = time.monotonic() + timeout_s
        assert self.proc is not None
        try:
            self.port = wait_ready(self.ready_file, self.proc.pid, timeout_s, exited=self.proc.poll).grpc_port
        except (ChildProcessError, TimeoutError) as exc:
            raise RuntimeError(f"{self.module} {exc}: {self.log.read_text()[-3000:]}") from None
        while health(self.address) != "SERVING":
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.module} not SERVING after {timeout_s}s: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 30 s) the process this object started."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class Result:
    """What one CLI run printed and returned."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """Stdout parsed as JSON."""
        return json.loads(self.out)


def run_cli(*argv: str) -> Result:
    """``infermesh <argv>`` in this process, through ``main``, with what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        else:
            code = 0
    return Result(code, out.getvalue(), err.getvalue())


def write_features(root: Path, models: ChurnModels) -> Path:
    """Definitions of feature service ``churn6`` over a CSV warehouse of customers 1..N; the folder."""
    data = root / "data"
    data.mkdir(parents=True)
    stamp = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    lines = ["customer_id," + ",".join(f"x{i}" for i in range(6)) + ",event_time"]
    for customer in range(1, CUSTOMERS + 1):
        row = models.x[customer - 1]
        lines.append(f"{customer}," + ",".join(repr(float(v)) for v in row) + f",{stamp}")
    (data / "customer_features.csv").write_text("\n".join(lines) + "\n")
    definitions = {
        "project": {"name": "cli-tests", "version": "1", "online_store": "online"},
        "entities": {"customer": {"keys": {"customer_id": "INT64"}, "description": "A customer."}},
        "sources": {
            "online": {"kind": "sqlite", "path": str(root / "online.db"), "timeout": "2s"},
            "warehouse": {"kind": "file", "path": str(data), "format": "csv", "timeout": "5s"},
        },
        "feature_views": {
            "customer_features": {
                "entities": ["customer"],
                "ttl": "3650d",
                "fields": {f"x{i}": "FP64" for i in range(6)},
                "source": "online",
                "fallbacks": ["warehouse"],
                "offline": "warehouse",
                "description": "The churn model's six inputs.",
            }
        },
        "feature_services": {
            "churn6": {
                "description": "Input tensor of the churn models (6 values).",
                "owner": "cli-tests",
                "entities": ["customer"],
                "features": [
                    {"name": f"x{i}", "dtype": "FP32", "field": f"customer_features.x{i}", "default": 0}
                    for i in range(6)
                ],
            }
        },
    }
    folder = root / "definitions"
    folder.mkdir()
    (folder / "features.yaml").write_text(yaml.safe_dump(definitions, sort_keys=False))
    return folder


@dataclass
class Mesh:
    """The running services, their addresses, and ways to run the CLI against them."""

    root: Path
    models: ChurnModels
    loop: LoopThread
    gateway: GatewayHarness
    data_gateway: ServiceProcess
    biz_center: ServiceProcess
    monitor: ServiceProcess
    forwarded: int = field(default=0)

    @property
    def addresses(self) -> list[str]:
        """The address options of every service."""
        return [
            "--model-gateway",
            self.gateway.address,
            "--data-gateway",
            self.data_gateway.address,
            "--biz-center",
            self.biz_center.address,
            "--monitor",
            self.monitor.address,
        ]

    def cli(self, *argv: str) -> Result:
        """``infermesh <addresses> <argv>`` in this process, through ``main``."""
        return run_cli(*self.addresses, *argv)

    def cli_process(self, *argv: str, env: dict[str, str] | None = None, timeout_s: float = 240) -> Result:
        """``python -m infermesh_cli <argv>`` as a real process (addresses from ``env`` when given)."""
        argv_full = [*CLI, *argv] if env is not None else [*CLI, *self.addresses, *argv]
        done = subprocess.run(
            argv_full,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env={**os.environ, **(env or {})},
            cwd=self.root,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def forward_events(self) -> int:
        """Send the model gateway's events not sent yet to the monitor; how many were sent."""
        events = self.gateway.sink.events[self.forwarded :]
        if events:
            with grpc.insecure_channel(self.monitor.address) as channel:
                monitor_pb2_grpc.MonitorServiceStub(channel).ReportEvents(
                    monitor_pb2.ReportEventsRequest(events=events), timeout=30
                )
            self.forwarded += len(events)
        return len(events)


def _biz_settings(root: Path, static: dict[str, list[str]]) -> dict[str, Any]:
    digest = lambda key: hashlib.sha256(key.encode()).hexdigest()  # noqa: E731
    return {
        "discovery": {"backend": "static", "static": static},
        "config": {"store_path": str(root / "biz.db"), "watch_interval_s": 0.2},
        "auth": {
            "api_keys": [
                {"name": "admin", "sha256": digest(ADMIN_KEY), "scenes": ["*"], "admin": True},
                {"name": "scorer", "sha256": digest(SCORER_KEY), "scenes": ["churn-score"]},
                {"name": "stack", "sha256": digest(DEMO_API_KEY), "scenes": ["*"], "admin": True},
            ]
        },
        "thrift": {"enabled": False},
        "events": {"flush_interval_s": 0.05, "unit_id_hash_key": "cli-tests-unit-id-hash-key"},
        "client": {"max_attempts": 1, "default_timeout_s": 5},
        "predict": {"exposure_dedup_s": 0},
    }


@contextlib.contextmanager
def running_mesh(root: Path) -> Iterator[Mesh]:
    """Train the models, start every service, deploy churn v1 (production) and v2 (canary), materialize.

    The in-process gateway logs warnings and errors to the real stderr: ``Mesh.cli`` captures
    ``sys.stdout``/``sys.stderr`` (for every thread), which must hold only what the CLI printed.
    """
    configure_logging("cli-tests", "WARNING", stream=sys.__stderr__)
    models = train_churn_models(root / "models", rows=max(2000, CUSTOMERS))
    definitions = write_features(root / "features", models)
    monitor = ServiceProcess(
        "infermesh_monitor",
        root / "monitor",
        {
            "storage": {"chdb_path": str(root / "monitor" / "chdb")},
            "analysis": {"export_interval_s": 1.0, "drift_min_samples": 10, "bootstrap_resamples": 100},
        },
        "MONITOR_",
    )
    data_gateway = ServiceProcess(
        "infermesh_data_gateway",
        root / "data-gateway",
        {"definitions": str(definitions), "definitions_reload_s": 0, "spark": {"master": "local[1]"}},
        "DATA_GATEWAY_",
    )
    started: list[ServiceProcess] = []
    loop = LoopThread()
    try:
        for process in (monitor, data_gateway):
            process.spawn()
            started.append(process)
        monitor.wait_serving()
        gateway = loop.enter(
            start_gateway(
                root / "model-gateway",
                workers=1,
                discovery={"backend": "static", "static": {"monitor": [monitor.address]}},
                rollouts={"tick_s": 0.2, "lease_ttl_s": 5},
                inference={"event_input_sample_rate": 1.0},
            )
        )
        for trained in (models.v1, models.v2):
            loop.run(lambda model=trained: gateway.register_and_deploy("churn", model))
        promote = mg.PromoteModelVersionRequest(model="churn", version=1)
        loop.run(lambda: gateway.control.PromoteModelVersion(promote))
        loop.run(lambda: gateway.control.SetAlias(mg.SetAliasRequest(model="churn", alias="canary", version=2)))
        data_gateway.wait_serving()
        static = {
            "data-gateway": [data_gateway.address],
            "model-gateway": [gateway.address],
            "monitor": [monitor.address],
        }
        biz_center = ServiceProcess(
            "infermesh_biz_center", root / "biz-center", _biz_settings(root / "biz-center", static), "BIZ_CENTER_"
        )
        biz_center.spawn()
        started.append(biz_center)
        with grpc.insecure_channel(data_gateway.address) as channel:
            dg_grpc.DataGatewayServiceStub(channel).MaterializeFeatureView(
                dg.MaterializeFeatureViewRequest(feature_view="customer_features"), timeout=60
            )
        biz_center.wait_serving()
        yield Mesh(root, models, loop, gateway, data_gateway, biz_center, monitor)
    finally:
        try:
            loop.close()
        finally:
            for process in reversed(started):
                process.stop()
