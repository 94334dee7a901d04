"""A real NATS server (JetStream, temp store, free port) and a real monitor (chdb in a temp dir).

The monitor used by most tests runs in this process, in a thread with its own event loop (chdb
allows one session per process, so the whole session shares it; tests keep apart by using their
own model names). Tests talk to it over gRPC like any client. :class:`MonitorProcess` runs a
monitor as a separate process, for tests that kill and restart it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infermesh.common.v1 import common_pb2, events_pb2
from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_chassis.app import Runtime
from infermesh_chassis.events import EVENT_SCHEMA_VERSION
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.ready import wait_ready
from infermesh_monitor.__main__ import add_servicers
from infermesh_monitor.service import Monitor
from infermesh_monitor.settings import Settings

UNIT_HASH_KEY = "im-monitor-tests-unit-id-hash-key"
"""The mesh's unit-id hash key in these tests (a monitor refuses to start without one)."""

T = TypeVar("T")


class MonitorThread:
    """The monitor served from a thread of this process, with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.address = ""
        self.metrics: Metrics | None = None
        self.monitor: Monitor | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="monitor", daemon=True)

    def start(self) -> None:
        """Start and wait until it serves."""
        self._thread.start()
        if not self._ready.wait(120) or self._error is not None:
            raise RuntimeError(f"monitor did not start: {self._error!r}")

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runtime = Runtime.create(self.settings)
        try:
            self.monitor = await Monitor.open(self.settings, runtime.metrics)
            runtime.on_stop(self.monitor.close)
            add_servicers(runtime, self.monitor)
            await runtime.server.start()
            self.address = runtime.server.address
            self.metrics = runtime.metrics
            self._ready.set()
            await self._stop.wait()
        finally:
            await runtime.close()

    def stop(self) -> None:
        """Stop serving and close the store."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the monitor's event loop (its store lives there) and return its result."""
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the monitor's registry (0 when absent)."""
        assert self.metrics is not None
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


class MonitorProcess:
    """``python -m infermesh_monitor`` with a settings file; killed and restarted by PID.

    It binds a port of its choice at its first start (read from its ready file) and that port again
    at every restart."""

    def __init__(self, workdir: Path, **settings: Any) -> None:
        self.port = 0
        self.config = workdir / "monitor.yaml"
        self.log = workdir / "monitor.log"
        self.ready_file = workdir / "monitor.ready"
        base = {
            "grpc": {"host": "127.0.0.1", "port": 0, "grace_period_s": 2},
            "metrics": {"enabled": False},
            "storage": {"chdb_path": str(workdir / "chdb")},
            "logging": {"level": "INFO"},
            "events": {"unit_id_hash_key": UNIT_HASH_KEY},
        }
        for key, value in settings.items():
            base[key] = {**base.get(key, {}), **value}
        self.settings = base
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """Its gRPC address."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> None:
        """Start (on the port of the first start, if any) and wait until the health service says SERVING."""
        self.settings["grpc"]["port"] = self.port
        self.config.write_text(yaml.safe_dump(self.settings))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
        argv = [sys.executable, "-m", "infermesh_monitor", "--config", str(self.config)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--ready-file", str(self.ready_file)], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + timeout_s
        try:
            self.port = wait_ready(self.ready_file, self.proc.pid, timeout_s, exited=self.proc.poll).grpc_port
        except (ChildProcessError, TimeoutError) as exc:
            raise RuntimeError(f"monitor {exc}: {self.log.read_text()[-2000:]}") from None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"monitor exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with grpc.insecure_channel(self.address) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.2)
        raise TimeoutError(f"monitor not SERVING after {timeout_s}s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no drain, no acknowledgement of what is in hand."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        """SIGTERM and wait for the graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


def inference_event(
    model: str,
    version: int,
    latency_ms: float,
    *,
    at: float | None = None,
    source: str = "model-gateway",
    **fields: Any,
) -> events_pb2.Event:
    """An inference event as a service would emit it, timestamped ``at`` (default now)."""
    event = events_pb2.Event(
        event_id=uuid.uuid4().hex,
        schema_version=EVENT_SCHEMA_VERSION,
        source=events_pb2.EventSource(service=source, instance="test"),
        request_id=fields.pop("request_id", uuid.uuid4().hex),
        inference=events_pb2.InferenceEvent(model=model, model_version=version, latency_ms=latency_ms, **fields),
    )
    event.time.FromNanoseconds(round((time.time() if at is None else at) * 1e9))
    return event


def number(value: float) -> common_pb2.Value:
    """A numeric Value."""
    return common_pb2.Value(double_value=value)


async def until(predicate: Any, timeout_s: float = 30.0, interval_s: float = 0.1) -> None:
    """Wait until the async ``predicate()`` is true."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(interval_s)


async def stored_count(stub: monitor_pb2_grpc.MonitorServiceStub, model: str) -> int:
    """Inference events of ``model`` stored in the last hour (QueryStats)."""
    reply = await stub.QueryStats(
        monitor_pb2.QueryStatsRequest(window=monitor_pb2.STATS_WINDOW_1H, filter=monitor_pb2.StatsFilter(model=model))
    )
    return sum(row.count for row in reply.rows)


async def rows_written(stub: monitor_pb2_grpc.MonitorServiceStub, model: str, feature: str = "x") -> int:
    """Rows written for ``model``'s sampled ``feature`` in the last hour, duplicates included.

    ``feature_samples`` is a plain MergeTree: unlike the event tables it never collapses a
    duplicate, so this counts every insert of an event that carried the feature.
    """
    now = time.time()
    window = common_pb2.TimeRange()
    window.start_time.FromNanoseconds(round((now - 3600) * 1e9))
    window.end_time.FromNanoseconds(round((now + 60) * 1e9))
    reply = await stub.GetDriftReport(
        monitor_pb2.GetDriftReportRequest(
            model=model, model_version=1, window=window, baseline=monitor_pb2.DriftBaseline(window=window)
        )
    )
    return sum(entry.current_count for entry in reply.features if entry.name == feature)
