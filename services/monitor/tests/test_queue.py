"""Events through NATS JetStream: from real service calls, across a queue outage, across a monitor crash."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
from monitor_support import MonitorProcess, number, rows_written, stored_count, until

from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_chassis import context as ctx
from infermesh_chassis.app import Runtime
from infermesh_chassis.events import EventEmitter, EventSource, NatsSink
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import EventSettings, ServiceSettings
from infermesh_chassis.testing import NatsServer

SERVICE = "test.Scoring"


class Inference:
    """An inference event of version 1 of ``model``, with one sampled input ``x``."""

    __slots__ = ("latency_ms", "model", "scores", "x")
    KIND: ClassVar[str] = "inference"

    def __init__(self, model: str, latency_ms: float, x: float, scores: Mapping[str, float] | None = None) -> None:
        self.model = model
        self.latency_ms = latency_ms
        self.x = x
        self.scores = scores

    def fields(self) -> Mapping[str, Any]:
        return {
            "model": self.model,
            "model_version": 1,
            "latency_ms": self.latency_ms,
            "scores": self.scores,
            "sampled_inputs": {"x": number(self.x)},
        }


class ScoringService:
    """A chassis service whose one RPC 'scores' a request and emits an inference event, as a gateway does."""

    def __init__(self, runtime: Runtime, model: str) -> None:
        self._emitter = runtime.event_emitter()
        self._model = model
        self._source = EventSource("model-gateway", "scoring-1")
        self.latencies: list[float] = []
        self.request_ids: list[str] = []

    async def score(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        began = time.perf_counter()
        value = float(len(request))
        latency_ms = (time.perf_counter() - began) * 1000 + value
        self.latencies.append(latency_ms)
        self.request_ids.append(ctx.current_request_id() or "")
        self._emitter.emit(self._source, Inference(self._model, latency_ms, value, {"value": value}))
        return request

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {"Score": grpc.unary_unary_rpc_method_handler(self.score)})


async def test_events_from_real_service_calls_arrive_and_are_queryable(stub, nats_server: NatsServer, tmp_path) -> None:
    model = f"calls-{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings(
        service_name="scoring",
        events={"transport": "nats", "nats_url": nats_server.url, "flush_interval_s": 0.05, "spool_dir": tmp_path},
        metrics={"enabled": False},
    )
    runtime = Runtime.create(settings)
    service = ScoringService(runtime, model)
    runtime.server.add_generic_handlers([service.handler()], SERVICE)
    await runtime.server.start()
    try:
        async with grpc.aio.insecure_channel(runtime.server.address) as channel:
            score = channel.unary_unary(f"/{SERVICE}/Score")
            for i in range(200):
                await score(b"x" * (1 + i % 20), timeout=5, metadata=(("x-request-id", f"req-{model}-{i}"),))
        await until(lambda: _count_is(stub, model, 200))
    finally:
        await runtime.close()

    assert service.request_ids == [f"req-{model}-{i}" for i in range(200)]
    reply = await stub.QueryStats(
        monitor_pb2.QueryStatsRequest(
            window=monitor_pb2.STATS_WINDOW_5M,
            group_by=[monitor_pb2.STATS_DIMENSION_MODEL_VERSION],
            filter=monitor_pb2.StatsFilter(model=model),
        )
    )
    [row] = reply.rows
    assert (row.group.model, row.group.model_version, row.count) == (model, 1, 200)
    assert row.p50_latency_ms == np.percentile(service.latencies, 50)
    assert row.p99_latency_ms == np.percentile(service.latencies, 99)


async def _count_is(stub, model: str, expected: int) -> bool:
    count = await stored_count(stub, model)
    assert count <= expected, f"{count} events stored, more than the {expected} sent"
    return count == expected


async def test_queue_outage_every_event_arrives_exactly_once(stub, nats_server: NatsServer, tmp_path) -> None:
    """NATS stops while a service emits; batches spool to disk and replay, in order, when it returns."""
    model = f"outage-{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings(
        service_name="outage-svc",
        events={
            "transport": "nats",
            "nats_url": nats_server.url,
            "flush_interval_s": 0.02,
            "batch_size": 50,
            "spool_dir": tmp_path / "spool",
            "spool_fsync": False,
            "nats_connect_timeout_s": 0.5,
            "nats_publish_timeout_s": 0.5,
        },
        metrics={"enabled": False},
    )
    runtime = Runtime.create(settings)
    emitter = runtime.event_emitter()

    source = EventSource("model-gateway", "outage-1")

    def emit(n: int) -> None:
        for i in range(n):
            emitter.emit(source, Inference(model, 1.0 + i, i))

    try:
        emit(300)
        await until(lambda: _count_is(stub, model, 300))
        nats_server.stop()
        for _ in range(10):
            emit(50)
            await asyncio.sleep(0.1)
        spooled = runtime.metrics.registry.get_sample_value("infermesh_outage_svc_events_spooled")
        assert spooled and spooled > 0, "nothing went to the spool while NATS was down"
        await asyncio.sleep(1.0)
        nats_server.start()
        emit(100)
        await until(lambda: _count_is(stub, model, 900), timeout_s=60)
        await until(lambda: _spool_empty(runtime.metrics), timeout_s=30)
    finally:
        await runtime.close()
        if nats_server.proc is None:
            nats_server.start()
    assert await stored_count(stub, model) == 900
    assert await rows_written(stub, model) == 900
    assert runtime.metrics.registry.get_sample_value("infermesh_outage_svc_events_dropped_total") == 0


async def _spool_empty(metrics: Metrics) -> bool:
    return metrics.registry.get_sample_value("infermesh_outage_svc_events_spooled") == 0


async def test_monitor_killed_mid_stream_loses_nothing(nats_server: NatsServer, tmp_path: Path) -> None:
    """SIGKILL the monitor while events stream in; after a restart every event is stored exactly once."""
    events = {"nats_url": nats_server.url, "nats_stream": "RESTART_TEST", "nats_subject": "restart.events"}
    process = MonitorProcess(
        tmp_path,
        events=events,
        ingest={"nats_enabled": True, "fetch_timeout_s": 0.2, "fetch_batch": 8, "ack_wait_s": 2.0},
    )
    process.start()
    model = f"restart-{uuid.uuid4().hex[:8]}"
    sink = NatsSink(EventSettings(**events), "restart-publisher")
    source = EventSource("model-gateway", "restart-1")
    emitter = EventEmitter(
        sink, EventSettings(batch_size=100, flush_interval_s=0.02, buffer_size=100_000), Metrics("restart-publisher")
    )
    emitter.start()
    sent = 0
    try:
        for step in range(60):
            for _ in range(100):
                emitter.emit(source, Inference(model, 2.0, sent))
                sent += 1
            if step == 20:
                process.kill()
            if step == 40:
                await asyncio.to_thread(process.start)
            await asyncio.sleep(0.03)
        await emitter.stop()
        async with grpc.aio.insecure_channel(process.address) as channel:
            monitor = monitor_pb2_grpc.MonitorServiceStub(channel)
            await until(lambda: _count_is(monitor, model, sent), timeout_s=90)
            assert await rows_written(monitor, model) == sent
    finally:
        await sink.close()
        process.stop()
