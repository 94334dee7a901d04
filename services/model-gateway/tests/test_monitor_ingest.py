"""With ``events.transport: grpc`` the gateway's events reach the monitor's ReportEvents, which the
gateway names for the chassis (``MONITOR_INGEST``): the chassis itself knows no monitor contract."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

import grpc

from infermesh.common.v1 import events_pb2
from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_chassis.app import Runtime
from infermesh_chassis.events import EventSource
from infermesh_chassis.settings import ServiceSettings
from infermesh_model_gateway.__main__ import MONITOR_INGEST


class RecordingMonitor(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []
        self.arrived = asyncio.Event()

    async def ReportEvents(self, request, context):
        self.events.extend(request.events)
        self.arrived.set()
        return monitor_pb2.ReportEventsResponse(accepted=len(request.events))


class Feedback:
    __slots__ = ()
    KIND: ClassVar[str] = "feedback"

    def fields(self) -> Mapping[str, Any]:
        return {"target_request_id": "req-1"}


async def test_events_reach_the_monitors_report_events():
    server, monitor = grpc.aio.server(), RecordingMonitor()
    monitor_pb2_grpc.add_MonitorServiceServicer_to_server(monitor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    runtime = Runtime.create(
        ServiceSettings(
            service_name="model-gateway",
            discovery={"static": {"monitor": [f"127.0.0.1:{port}"]}},
            events={"flush_interval_s": 0.02},
        )
    )
    try:
        emitter = runtime.event_emitter(MONITOR_INGEST)
        emitter.emit(EventSource("model-gateway", "i-1"), Feedback())
        await asyncio.wait_for(monitor.arrived.wait(), 10)
        [event] = monitor.events
        assert event.source.service == "model-gateway" and event.feedback.target_request_id == "req-1"
    finally:
        await runtime.close()
        await server.stop(0)
