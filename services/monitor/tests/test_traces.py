"""The monitor as an OTLP trace receiver: spans exported by the chassis' SDK are stored and read back
(by trace id, by request id through spans or events, slowest first), malformed exports are refused."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from monitor_support import MonitorThread, inference_event, until
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.trace import SpanKind, Status, StatusCode

from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_chassis.settings import TracingSettings
from infermesh_chassis.tracing import Tracing

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture
async def otlp(monitor: MonitorThread) -> AsyncIterator[trace_service_pb2_grpc.TraceServiceStub]:
    async with grpc.aio.insecure_channel(monitor.address) as channel:
        yield trace_service_pb2_grpc.TraceServiceStub(channel)


def tracing_to(monitor: MonitorThread, service: str) -> Tracing:
    tracing = Tracing.create(TracingSettings(endpoint=monitor.address, sample_ratio=1.0), service)
    assert tracing is not None
    return tracing


def export_one_request(front: Tracing, back: Tracing, request_id: str, scene: str, slow_ms: float) -> str:
    """Record a request's spans as two services would: front server → front client → back server (failed)."""
    t0 = time.time_ns()
    server = front.tracer.start_span(
        "infermesh.bizcenter.v1.BizCenterService/Predict",
        kind=SpanKind.SERVER,
        attributes={"infermesh.request_id": request_id, "infermesh.scene": scene},
        start_time=t0 + 1_000,
    )
    ctx = trace.set_span_in_context(server)
    client = front.tracer.start_span("back/Get", ctx, SpanKind.CLIENT, start_time=t0 + 2_000)
    remote = back.tracer.start_span(
        "back/Get", trace.set_span_in_context(client), SpanKind.SERVER, start_time=t0 + 3_000
    )
    remote.set_status(Status(StatusCode.ERROR, "UNAVAILABLE"))
    remote.end(end_time=t0 + 4_000)
    client.set_status(Status(StatusCode.ERROR, "UNAVAILABLE"))
    client.end(end_time=t0 + 5_000)
    server.set_attributes({"infermesh.degraded": True, "infermesh.fallback": "RULE_DEFAULT"})
    server.end(end_time=t0 + 1_000 + round(slow_ms * 1e6))
    return f"{server.get_span_context().trace_id:032x}"


async def test_exported_spans_are_stored_and_read_back(monitor: MonitorThread, stub) -> None:
    front, back = tracing_to(monitor, "biz-center"), tracing_to(monitor, "data-gateway")
    scene = f"scene-{uuid.uuid4().hex[:8]}"
    request_id = uuid.uuid4().hex
    slow = export_one_request(front, back, request_id, scene, slow_ms=50.0)
    fast = export_one_request(front, back, uuid.uuid4().hex, scene, slow_ms=5.0)
    await front.flush()
    await back.flush()
    assert front.exporter.exported == 4 and back.exporter.exported == 2 and front.dropped() == 0

    reply = await stub.GetTrace(monitor_pb2.GetTraceRequest(trace_id=slow))
    by_kind = {(s.service, s.kind): s for s in reply.spans}
    root = by_kind[("biz-center", monitor_pb2.SPAN_KIND_SERVER)]
    client = by_kind[("biz-center", monitor_pb2.SPAN_KIND_CLIENT)]
    remote = by_kind[("data-gateway", monitor_pb2.SPAN_KIND_SERVER)]
    assert root.parent_span_id == "" and client.parent_span_id == root.span_id
    assert remote.parent_span_id == client.span_id
    assert root.request_id == request_id and root.degraded and root.fallback == "RULE_DEFAULT"
    assert root.attributes["infermesh.scene"] == scene
    assert remote.status == monitor_pb2.SPAN_STATUS_ERROR and remote.status_message == "UNAVAILABLE"
    assert root.duration_ms == pytest.approx(50.0, abs=0.01)
    assert reply.spans[0].span_id == root.span_id

    by_request = await stub.GetTrace(monitor_pb2.GetTraceRequest(request_id=request_id))
    assert by_request.trace_id == slow and len(by_request.spans) == 3

    listed = await stub.ListTraces(monitor_pb2.ListTracesRequest(scene=scene, since=Duration(seconds=10**9), limit=5))
    assert [t.trace_id for t in listed.traces] == [slow, fast]
    top = listed.traces[0]
    assert top.request_id == request_id and top.scene == scene and top.spans == 3
    assert top.root_service == "biz-center" and top.error and top.degraded
    assert top.duration_ms == pytest.approx(50.0, abs=0.01)
    await front.shutdown()
    await back.shutdown()


async def test_a_request_id_finds_its_trace_and_the_trace_its_events(monitor: MonitorThread, stub) -> None:
    tracing = tracing_to(monitor, "model-gateway")
    span = tracing.tracer.start_span("inference.GRPCInferenceService/ModelInfer", kind=SpanKind.SERVER)
    span.end()
    trace_id = f"{span.get_span_context().trace_id:032x}"
    await tracing.flush()
    event = inference_event(f"m-{uuid.uuid4().hex[:6]}", 1, 2.0)
    event.trace_id, event.span_id = trace_id, f"{span.get_span_context().span_id:016x}"
    await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=[event]))

    async def found() -> bool:
        try:
            reply = await stub.GetTrace(monitor_pb2.GetTraceRequest(request_id=event.request_id))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.NOT_FOUND
            return False
        assert reply.trace_id == trace_id
        [stored] = reply.events
        assert (stored.event_id, stored.kind, stored.service) == (event.event_id, "inference", "model-gateway")
        assert stored.span_id == event.span_id and stored.request_id == event.request_id
        return True

    await until(found, timeout_s=30)
    await tracing.shutdown()


def _request(**span_fields: object) -> trace_service_pb2.ExportTraceServiceRequest:
    span = trace_pb2.Span(
        trace_id=bytes.fromhex("0af7651916cd43dd8448eb211c80319c"),
        span_id=bytes.fromhex("b7ad6b7169203331"),
        name="op",
        start_time_unix_nano=time.time_ns(),
        end_time_unix_nano=time.time_ns() + 1_000,
    )
    for name, value in span_fields.items():
        setattr(span, name, value)
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    return request


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"trace_id": b"\x01" * 15}, "trace_id"),
        ({"trace_id": bytes(16)}, "trace_id"),
        ({"span_id": b""}, "span_id"),
        ({"parent_span_id": b"\x01" * 3}, "parent_span_id"),
        ({"name": ""}, "name"),
        ({"end_time_unix_nano": 500}, "start_time_unix_nano"),
        ({"kind": 9}, "kind"),
        ({"start_time_unix_nano": 0}, "start_time_unix_nano"),
    ],
)
async def test_malformed_exports_are_refused(otlp, fields: dict[str, object], named: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await otlp.Export(_request(**fields))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "resource_spans[0].scope_spans[0].spans[0]" in caught.value.details()
    assert named in caught.value.details()


async def test_bytes_that_are_no_export_request_are_invalid_argument(monitor: MonitorThread) -> None:
    async with grpc.aio.insecure_channel(monitor.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(EXPORT)(b"\xff\xff\xff\xff", timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_an_empty_export_is_accepted(otlp) -> None:
    await otlp.Export(trace_service_pb2.ExportTraceServiceRequest())


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (monitor_pb2.GetTraceRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (monitor_pb2.GetTraceRequest(trace_id="XYZ"), grpc.StatusCode.INVALID_ARGUMENT),
        (monitor_pb2.GetTraceRequest(trace_id="0" * 32), grpc.StatusCode.INVALID_ARGUMENT),
        (monitor_pb2.GetTraceRequest(request_id=""), grpc.StatusCode.INVALID_ARGUMENT),
        (monitor_pb2.GetTraceRequest(trace_id="1" * 32), grpc.StatusCode.NOT_FOUND),
        (monitor_pb2.GetTraceRequest(request_id="never-seen"), grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_get_trace_refuses_what_it_cannot_answer(stub, request_, code) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetTrace(request_)
    assert caught.value.code() is code


async def test_list_traces_bounds_its_arguments(stub: monitor_pb2_grpc.MonitorServiceStub) -> None:
    for request in (
        monitor_pb2.ListTracesRequest(limit=5000),
        monitor_pb2.ListTracesRequest(limit=-1),
        monitor_pb2.ListTracesRequest(since=Duration(seconds=-5)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListTraces(request)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
