"""Tracing: one SERVER span per RPC and one CLIENT span per downstream call, W3C traceparent between
hops, parent-based sampling, trace ids in logs and exemplars, and export that never hurts a request.

Spans go to a real OTLP/gRPC receiver (the standard ``TraceService/Export``) started here.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

from infermesh.common.v1 import common_pb2
from infermesh_chassis import tracing as tr
from infermesh_chassis.events import AuditPayload, EncodedBatch, EventEmitter, EventSource, decode_batch
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import EventSettings, ServiceSettings, TracingSettings
from infermesh_chassis.tracing import Tracing, format_traceparent, parse_traceparent

SERVICE = "test.Echo"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps every span it is sent, flattened."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        for resource_spans in request.resource_spans:
            service = next(a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "error": span.status.code == span.status.STATUS_CODE_ERROR,
                            "attributes": {a.key: a.value for a in span.attributes},
                        }
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    server = grpc.aio.server()
    receiver = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield receiver, f"127.0.0.1:{port}"
    await server.stop(0)


async def call(address: str, method: str, payload: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    async with grpc.aio.insecure_channel(address) as channel:
        return await channel.unary_unary(f"/{SERVICE}/{method}")(payload, metadata=metadata, timeout=5)  # type: ignore[no-any-return]


async def flushed(collector: Collector, tracings: list[Tracing], count: int) -> list[dict[str, Any]]:
    """The collected spans once ``count`` have arrived (every tracing flushed; export is synchronous).

    A server span ends in the handler's ``finally``, which may run just after its caller has the
    answer (an aborted call), so flushing goes on until the spans are in, for at most 10 s."""
    async with asyncio.timeout(10):
        while True:
            for tracing in tracings:
                await tracing.flush()
            if len(collector.spans) >= count:
                break
            await asyncio.sleep(0.01)
    assert len(collector.spans) == count, collector.spans
    return collector.spans


def test_tracing_is_off_without_an_endpoint() -> None:
    assert Tracing.create(TracingSettings(), "svc") is None
    assert ServiceSettings(service_name="svc").tracing.endpoint == ""


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "0-af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" + "x" * 5000,
        b"\xff\xfe",
    ],
)
def test_malformed_traceparents_are_ignored(value: str | bytes) -> None:
    assert parse_traceparent(value) is None


def test_traceparent_round_trip_and_forward_compatible_versions() -> None:
    value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    parsed = parse_traceparent(value)
    assert parsed is not None and parsed.trace_flags.sampled and parsed.is_remote
    assert format_traceparent(parsed) == value
    later = parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-what-comes-next")
    assert later is not None and not later.trace_flags.sampled


async def test_one_request_is_one_trace_across_hops(collector, traced, log_events) -> None:
    receiver, endpoint = collector
    back, _, back_tracing = await traced("back", endpoint)
    front, _, front_tracing = await traced("front", endpoint, downstream=back.address)

    async with grpc.aio.insecure_channel(front.address) as channel:
        forwarded = channel.unary_unary(f"/{SERVICE}/Forward")(b"Echo:hi", timeout=5)
        assert await forwarded == b"hi"
        trailers = dict(await forwarded.trailing_metadata() or ())
    spans = await flushed(receiver, [back_tracing, front_tracing], 3)

    by_service_kind = {(s["service"], s["kind"]): s for s in spans}
    front_server = by_service_kind[("front", 2)]
    front_client = by_service_kind[("front", 3)]
    back_server = by_service_kind[("back", 2)]
    assert front_server["name"] == f"{SERVICE}/Forward" and front_server["parent"] == ""
    assert trailers["x-trace-id"] == front_server["trace_id"]
    assert front_client["name"] == f"{SERVICE}/Echo" and front_client["parent"] == front_server["span_id"]
    assert back_server["name"] == f"{SERVICE}/Echo" and back_server["parent"] == front_client["span_id"]
    assert len({s["trace_id"] for s in spans}) == 1
    assert back_server["attributes"]["rpc.grpc.status_code"].int_value == 0

    handled = [e for e in log_events() if e["event"] == "echo_handled"]
    assert len(handled) == 1
    assert handled[0]["trace_id"] == back_server["trace_id"] and handled[0]["span_id"] == back_server["span_id"]

    exposition = openmetrics(front.metrics.registry).decode()
    latency_lines = [line for line in exposition.splitlines() if "grpc_server_latency_seconds_bucket" in line]
    assert any(f'# {{trace_id="{front_server["trace_id"]}"}}' in line for line in latency_lines)
    client_lines = [line for line in exposition.splitlines() if "grpc_client_latency_seconds_bucket" in line]
    assert any(f'# {{trace_id="{front_client["trace_id"]}"}}' in line for line in client_lines)


async def test_a_malformed_traceparent_starts_a_new_trace_and_never_fails_the_call(collector, traced) -> None:
    receiver, endpoint = collector
    server, _, tracing = await traced("svc", endpoint)
    bad = (
        "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-" + "a" * 4000,
        # unsampled-looking but invalid: never passed on as an unsampled decision
        "00-00000000000000000000000000000000-b7ad6b7169203331-00",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-00",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-00",
    )
    for value in bad:
        assert await call(server.address, "Echo", b"x", (("traceparent", value),)) == b"x"
    spans = await flushed(receiver, [tracing], len(bad))
    assert all(s["parent"] == "" for s in spans)
    assert len({s["trace_id"] for s in spans}) == len(bad)


async def test_sampling_follows_the_callers_decision(collector, traced) -> None:
    receiver, endpoint = collector
    never, _, never_tracing = await traced("never", endpoint, ratio=0.0)
    always, _, always_tracing = await traced("always", endpoint, ratio=1.0)
    sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    unsampled = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"

    await call(never.address, "Echo", b"x", (("traceparent", sampled),))
    await call(never.address, "Echo", b"x")
    await call(always.address, "Echo", b"x", (("traceparent", unsampled),))
    spans = await flushed(receiver, [never_tracing, always_tracing], 1)
    assert spans[0]["service"] == "never"
    assert spans[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert spans[0]["parent"] == "b7ad6b7169203331"


@pytest.mark.parametrize("ratio", [0.0, 1.0])
async def test_a_trace_the_mesh_starts_is_named_by_the_request_id_and_carries_it_alone(
    collector, traced, echo_service_class, ratio
) -> None:
    receiver, endpoint = collector
    seen: list[dict[str, str]] = []

    class Recording(echo_service_class):  # type: ignore[misc,valid-type]
        async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            seen.append(dict(context.invocation_metadata() or ()))
            return await super().echo(request, context)

    back, back_service, back_tracing = await traced("back", endpoint, ratio=ratio, service_cls=Recording)
    front, _, front_tracing = await traced("front", endpoint, ratio=ratio, downstream=back.address)
    rid = "5a4d1c0ffee0" * 2 + "0123abcd"
    await call(front.address, "Forward", b"Echo:a", (("x-request-id", rid),))
    assert back_service.seen_request_ids == [rid]
    assert "x-request-id" not in seen[0] and seen[0]["traceparent"][3:35] == rid
    assert seen[0]["traceparent"].endswith("-01" if ratio else "-00")
    spans = await flushed(receiver, [front_tracing, back_tracing], 3 if ratio else 0)
    assert {s["trace_id"] for s in spans} <= {rid}

    await call(front.address, "Forward", b"Echo:b", (("x-request-id", "order-17/b"),))  # cannot name a trace
    assert back_service.seen_request_ids[1] == "order-17/b"
    assert seen[1]["x-request-id"] == "order-17/b" and seen[1]["traceparent"][3:35] != rid


async def test_a_call_with_a_traceparent_alone_takes_its_trace_id_as_request_id(traced, echo_service_class) -> None:
    server, service, _ = await traced("svc", "127.0.0.1:9", ratio=0.0)
    sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await call(server.address, "Echo", b"x", (("traceparent", sampled),))
    await call(server.address, "Echo", b"x", (("traceparent", "garbage"),))
    await call(server.address, "Echo", b"x", (("traceparent", sampled), ("x-request-id", "given")))
    await call(
        server.address, "Echo", b"x", (("traceparent", "00-1af7651916cd43dd8448eb211c80319c-0000000000000000-00"),)
    )
    first, second, third, fourth = service.seen_request_ids
    assert first == "0af7651916cd43dd8448eb211c80319c"
    assert second is not None and len(second) == 32 and second != first
    assert third == "given"
    assert fourth is not None and fourth != "1af7651916cd43dd8448eb211c80319c"  # malformed: names nothing


async def test_a_failed_downstream_call_is_a_failed_client_span(collector, traced) -> None:
    receiver, endpoint = collector
    back, _, back_tracing = await traced("back", endpoint)
    front, _, front_tracing = await traced("front", endpoint, downstream=back.address)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(front.address, "Forward", b"Fail:NotFound")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    spans = await flushed(receiver, [back_tracing, front_tracing], 3)
    assert all(s["error"] for s in spans)
    client = next(s for s in spans if s["kind"] == 3)
    assert client["attributes"]["rpc.grpc.status_code"].int_value == grpc.StatusCode.NOT_FOUND.value[0]


async def test_an_unreachable_collector_drops_spans_with_a_counter_and_never_fails_a_call(traced) -> None:
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{closed.getsockname()[1]}"
        server, _, tracing = await traced("svc", endpoint)
        for i in range(20):
            assert await call(server.address, "Echo", str(i).encode()) == str(i).encode()
        await tracing.flush()
        sample = server.metrics.registry.get_sample_value
        assert sample("infermesh_svc_trace_spans_dropped_total") == 20
        assert sample("infermesh_svc_trace_spans_exported_total") == 0
        assert (
            sample("infermesh_svc_grpc_server_requests_total", {"grpc_service": SERVICE, "grpc_method": "Echo"}) == 20
        )


class GatedCollector(Collector):
    """A collector that holds its first Export until released, and notes each batch's size."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.exporting = asyncio.Event()
        self.release = asyncio.Event()

    async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.exporting.set()
        await self.release.wait()
        self.batches.append(sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans))
        return await super().Export(request, context)


async def test_a_flush_sends_what_was_queued_and_later_spans_go_in_the_next_batch() -> None:
    server = grpc.aio.server()
    receiver = GatedCollector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = TracingSettings(endpoint=f"127.0.0.1:{port}", sample_ratio=1.0, export_interval_s=3600)
    tracing = Tracing(settings, "svc", "1")

    def end_spans(count: int) -> None:
        for _ in range(count):
            span, _ = tracing.start_client("test.Echo/Echo", "peer", None)
            assert span is not None
            span.end()

    try:
        end_spans(3)
        flushing = asyncio.create_task(tracing.flush())
        await receiver.exporting.wait()
        end_spans(5)  # while the first batch is on its way
        receiver.release.set()
        await flushing
        assert receiver.batches == [3]
        await tracing.flush()
        assert receiver.batches == [3, 5]
    finally:
        await tracing.shutdown()
        await server.stop(0)


async def test_spans_opened_inside_a_request_are_children_of_its_span(collector, traced, echo_service_class) -> None:
    receiver, endpoint = collector

    class Reading(echo_service_class):  # type: ignore[misc,valid-type]
        async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            with tr.span("source_read", store="redis") as read:
                assert read is not None
                read.set_attribute("rows", 3)
                tr.annotate(cache_hit=True)
            tr.annotate(degraded=True)
            return request

    server, _, tracing = await traced("svc", endpoint, service_cls=Reading)
    assert await call(server.address, "Echo", b"x") == b"x"
    spans = await flushed(receiver, [tracing], 2)
    read = next(s for s in spans if s["name"] == "source_read")
    rpc = next(s for s in spans if s["name"] != "source_read")
    assert read["parent"] == rpc["span_id"] and read["trace_id"] == rpc["trace_id"]
    assert read["attributes"]["store"].string_value == "redis"
    assert read["attributes"]["rows"].int_value == 3
    assert read["attributes"]["cache_hit"].bool_value
    assert rpc["attributes"]["degraded"].bool_value
    with tr.span("outside") as nothing:
        assert nothing is None
    assert json.dumps(tr.current_ids()) == "null"


async def test_events_emitted_inside_a_sampled_request_carry_its_trace(collector, traced, echo_service_class) -> None:
    receiver, endpoint = collector
    batches: list[bytes] = []

    class Sink:
        async def send(self, batch: EncodedBatch) -> None:
            batches.append(batch.payload)

    emitter = EventEmitter(Sink(), EventSettings(flush_interval_s=0.01), Metrics("emitting"))
    source = EventSource("svc", "i-1")
    emitter.start()

    class Emitting(echo_service_class):  # type: ignore[misc,valid-type]
        async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            emitter.emit(source, AuditPayload("svc", common_pb2.AuditEntry(action=request.decode())))
            return request

    sampled, _, sampled_tracing = await traced("sampled", endpoint, ratio=1.0, service_cls=Emitting)
    unsampled, _, _ = await traced("unsampled", endpoint, ratio=0.0, service_cls=Emitting)
    await call(sampled.address, "Echo", b"traced")
    await call(unsampled.address, "Echo", b"untraced")
    emitter.emit(source, AuditPayload("svc", common_pb2.AuditEntry(action="outside")))
    await emitter.stop()
    events = {e.audit.entry.action: e for payload in batches for e in decode_batch(payload)}
    spans = await flushed(receiver, [sampled_tracing], 1)
    assert (events["traced"].trace_id, events["traced"].span_id) == (spans[0]["trace_id"], spans[0]["span_id"])
    assert events["untraced"].trace_id == events["untraced"].span_id == ""
    assert events["outside"].trace_id == ""


async def test_an_unsampled_request_passes_its_decision_on_and_no_hop_records_it(
    collector, traced, echo_service_class
) -> None:
    receiver, endpoint = collector
    seen: list[str] = []

    class Recording(echo_service_class):  # type: ignore[misc,valid-type]
        async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            seen.append(dict(context.invocation_metadata() or ())["traceparent"])
            return request

    back, _, back_tracing = await traced("back", endpoint, ratio=1.0, service_cls=Recording)
    front, _, front_tracing = await traced("front", endpoint, ratio=0.0, downstream=back.address)
    unsampled = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"
    await call(front.address, "Forward", b"Echo:a", (("traceparent", unsampled),))
    await call(front.address, "Forward", b"Echo:b")
    assert seen[0] == unsampled  # passed on as it came: the front took no part
    new = parse_traceparent(seen[1])
    assert new is not None and not new.trace_flags.sampled and seen[1] != unsampled
    await flushed(receiver, [front_tracing, back_tracing], 0)
