"""Events reach the monitor's ReportEvents through the runtime's emitter, across a monitor outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import grpc

from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_chassis import context as ctx
from infermesh_chassis.app import Runtime
from infermesh_chassis.events import EventSource
from infermesh_chassis.settings import ServiceSettings

SOURCE = EventSource("emitting-svc", "i-1")


class Feedback:
    """A feedback event labelling request ``target``."""

    __slots__ = ("target",)
    KIND: ClassVar[str] = "feedback"

    def __init__(self, target: str) -> None:
        self.target = target

    def fields(self) -> Mapping[str, Any]:
        return {"target_request_id": self.target}


class RecordingMonitor(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self) -> None:
        self.events: list[monitor_pb2.Event] = []

    async def ReportEvents(self, request, context):
        self.events.extend(request.events)
        return monitor_pb2.ReportEventsResponse(accepted=len(request.events))


async def _start_monitor(port: int = 0) -> tuple[grpc.aio.Server, int, RecordingMonitor]:
    server = grpc.aio.server()
    monitor = RecordingMonitor()
    monitor_pb2_grpc.add_MonitorServiceServicer_to_server(monitor, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound, monitor


async def _until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_events_reach_the_monitor_and_survive_an_outage():
    server, port, monitor = await _start_monitor()
    settings = ServiceSettings(
        service_name="emitting-svc",
        discovery={"static": {"monitor": [f"127.0.0.1:{port}"]}},
        events={"flush_interval_s": 0.02, "batch_size": 50},
        client={"default_timeout_s": 0.5, "max_attempts": 1},
    )
    runtime = Runtime.create(settings)
    emitter = runtime.event_emitter()
    token = ctx.bind(ctx.CallContext("req-7"))
    try:
        emitter.emit(SOURCE, Feedback("req-6"))
    finally:
        ctx.unbind(token)
    await _until(lambda: len(monitor.events) == 1)
    [event] = monitor.events
    assert event.request_id == "req-7"
    assert event.source.service == "emitting-svc" and event.source.instance == "i-1"
    assert event.schema_version == 1 and len(event.event_id) == 32 and event.time.seconds > 0
    assert event.WhichOneof("payload") == "feedback"

    await server.stop(0)
    for i in range(20):
        emitter.emit(SOURCE, Feedback(f"r{i}"))
    await asyncio.sleep(0.5)
    server, _, monitor = await _start_monitor(port)
    await _until(lambda: len(monitor.events) == 20)
    assert [e.feedback.target_request_id for e in monitor.events] == [f"r{i}" for i in range(20)]
    await runtime.close()
    await server.stop(0)
