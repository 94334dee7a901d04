"""Events reach the monitor's RPC through the runtime's emitter, across a monitor outage.

The chassis knows no service contract: the monitor here is a recording server for an ingest RPC of the
test's own (an ``EventBatch`` request, as the real ``ReportEventsRequest`` is on the wire), named by an
:class:`IngestRpc` as the services name the monitor's ``ReportEvents``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import grpc
import pytest
from google.protobuf import empty_pb2

from infermesh.common.v1 import events_pb2
from infermesh_chassis import context as ctx
from infermesh_chassis.app import Runtime
from infermesh_chassis.events import EventSource, IngestRpc
from infermesh_chassis.settings import ServiceSettings

SOURCE = EventSource("emitting-svc", "i-1")
SERVICE = "test.events.v1.Ingest"


class IngestStub:
    """What a generated stub of ``SERVICE`` would be."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.ReportEvents = channel.unary_unary(
            f"/{SERVICE}/ReportEvents",
            request_serializer=events_pb2.EventBatch.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )


INGEST = IngestRpc(IngestStub, "ReportEvents", events_pb2.EventBatch.FromString)


class Feedback:
    """A feedback event labelling request ``target``."""

    __slots__ = ("target",)
    KIND: ClassVar[str] = "feedback"

    def __init__(self, target: str) -> None:
        self.target = target

    def fields(self) -> Mapping[str, Any]:
        return {"target_request_id": self.target}


class RecordingMonitor:
    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []

    async def report_events(self, request: events_pb2.EventBatch, context: object) -> empty_pb2.Empty:
        self.events.extend(request.events)
        return empty_pb2.Empty()


async def _start_monitor(port: int = 0) -> tuple[grpc.aio.Server, int, RecordingMonitor]:
    server = grpc.aio.server()
    monitor = RecordingMonitor()
    handler = grpc.unary_unary_rpc_method_handler(
        monitor.report_events,
        request_deserializer=events_pb2.EventBatch.FromString,
        response_serializer=empty_pb2.Empty.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"ReportEvents": handler}),))
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
    emitter = runtime.event_emitter(INGEST)
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


async def test_the_grpc_transport_needs_an_ingest_rpc():
    runtime = Runtime.create(ServiceSettings(service_name="emitting-svc"))
    with pytest.raises(ValueError, match="IngestRpc"):
        runtime.event_emitter()
    await runtime.close()
