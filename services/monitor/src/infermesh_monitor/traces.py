"""Traces: the monitor as an OTLP/gRPC trace receiver, spans stored beside the events, and read back.

:class:`OtlpTraceServicer` serves the standard ``opentelemetry.proto.collector.trace.v1.TraceService/Export``,
so every service's chassis (or any OpenTelemetry SDK or collector) can export to the monitor. Each
span becomes one row of the ``spans`` table (ReplacingMergeTree on ``(trace_id, span_id)``: a batch
exported twice collapses), with what the waterfall and the listings need in columns of their own
(service, name, kind, start, duration, status, request id, scene, degraded, fallback) and every
attribute as text. A payload that is not a valid export (ids of the wrong length or all zero, no
name, an end before the start, more than :data:`MAX_SPANS_PER_EXPORT` spans) is refused whole with
INVALID_ARGUMENT naming the first bad span; bytes that are not an ``ExportTraceServiceRequest`` at all
are refused by the chassis interceptor, also with INVALID_ARGUMENT.

:class:`TraceQueries` answers ``GetTrace`` (by trace id, or by request id through the spans and then the
events, which carry the trace id too) and ``ListTraces`` (the slowest traces of a window, optionally
of one scene).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common_pb2

from infermesh_chassis.errors import InvalidArgument
from infermesh_chassis.metrics import Metrics
from infermesh_monitor.store import Store, json_rows

__all__ = [
    "MAX_SPANS_PER_EXPORT",
    "EventRow",
    "OtlpTraceServicer",
    "SpanRow",
    "TraceQueries",
    "TraceSummaryRow",
    "span_rows",
]

MAX_SPANS_PER_EXPORT = 20_000
"""Most spans one Export may carry (an SDK's batch is 512 by default)."""
MAX_ATTRIBUTES = 64
"""Attributes kept per span (the first ones)."""
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 1024
MAX_TRACE_SPANS = 10_000
"""Most spans GetTrace returns for one trace."""

REQUEST_ID = "infermesh.request_id"
SCENE = "infermesh.scene"
DEGRADED = "infermesh.degraded"
FALLBACK = "infermesh.fallback"
"""Span attributes the chassis and the services set, kept in columns of their own."""

_HEX = frozenset("0123456789abcdef")


def _text(value: otlp_common_pb2.AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "string_value":
        return value.string_value[:MAX_VALUE_CHARS]
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return repr(value.double_value)
    if kind == "bytes_value":
        return value.bytes_value.hex()[:MAX_VALUE_CHARS]
    if kind == "array_value":
        return ("[" + ", ".join(_text(v) for v in value.array_value.values) + "]")[:MAX_VALUE_CHARS]
    return ("{" + ", ".join(f"{kv.key}: {_text(kv.value)}" for kv in value.kvlist_value.values) + "}")[:MAX_VALUE_CHARS]


def _time(unix_nanos: int) -> str:
    seconds, nanos = divmod(unix_nanos, 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}"


def _valid_id(raw: bytes, size: int) -> bool:
    return len(raw) == size and raw != bytes(size)


def span_rows(request: trace_service_pb2.ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """The ``spans`` rows of one export; INVALID_ARGUMENT naming the first malformed span."""
    rows: list[dict[str, Any]] = []
    for r, resource_spans in enumerate(request.resource_spans):
        service = "unknown_service"
        for kv in resource_spans.resource.attributes:
            if kv.key == "service.name":
                service = _text(kv.value)[:MAX_KEY_CHARS] or service
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            for i, span in enumerate(scope_spans.spans):
                where = f"resource_spans[{r}].scope_spans[{s}].spans[{i}]"
                if len(rows) >= MAX_SPANS_PER_EXPORT:
                    raise InvalidArgument(
                        f"an export carries at most {MAX_SPANS_PER_EXPORT} spans; send smaller batches"
                    )
                if not _valid_id(span.trace_id, 16):
                    raise InvalidArgument(f"{where}.trace_id: 16 bytes, not all zero, are required")
                if not _valid_id(span.span_id, 8):
                    raise InvalidArgument(f"{where}.span_id: 8 bytes, not all zero, are required")
                if span.parent_span_id and not _valid_id(span.parent_span_id, 8):
                    raise InvalidArgument(f"{where}.parent_span_id: empty or 8 bytes, not all zero")
                if not span.name:
                    raise InvalidArgument(f"{where}.name: required")
                if not 0 <= span.kind <= 5:
                    raise InvalidArgument(f"{where}.kind: {span.kind} is not an OTLP span kind (0..5)")
                if span.start_time_unix_nano == 0 or span.end_time_unix_nano < span.start_time_unix_nano:
                    raise InvalidArgument(f"{where}: start_time_unix_nano must be set and not after end_time_unix_nano")
                attributes = {
                    kv.key[:MAX_KEY_CHARS]: _text(kv.value) for kv in span.attributes[:MAX_ATTRIBUTES] if kv.key
                }
                rows.append(
                    {
                        "start": _time(span.start_time_unix_nano),
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "service": service,
                        "name": span.name[:MAX_VALUE_CHARS],
                        "kind": span.kind,
                        "duration_ms": (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6,
                        "status": span.status.code if 0 <= span.status.code <= 2 else 0,
                        "status_message": span.status.message[:MAX_VALUE_CHARS],
                        "request_id": attributes.get(REQUEST_ID, ""),
                        "scene": attributes.get(SCENE, ""),
                        "degraded": attributes.get(DEGRADED) == "true",
                        "fallback": attributes.get(FALLBACK, ""),
                        "attributes": attributes,
                    }
                )
    return rows


@dataclass(frozen=True, slots=True)
class SpanRow:
    """One stored span."""

    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    name: str
    kind: int
    start_us: int
    duration_ms: float
    status: int
    status_message: str
    request_id: str
    degraded: bool
    fallback: str
    attributes: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EventRow:
    """One stored event of a trace."""

    event_id: str
    kind: str
    service: str
    time_us: int
    span_id: str
    request_id: str


_EVENT_KINDS = ("inference", "shadow", "exposure", "audit", "feedback")


@dataclass(frozen=True, slots=True)
class TraceSummaryRow:
    """One trace of a listing."""

    trace_id: str
    request_id: str
    scene: str
    root_service: str
    root_name: str
    start_us: int
    duration_ms: float
    spans: int
    error: bool
    degraded: bool


def check_trace_id(trace_id: str) -> str:
    """``trace_id`` when it is 32 lowercase hex characters (not all zero), else INVALID_ARGUMENT."""
    if len(trace_id) != 32 or not set(trace_id) <= _HEX or set(trace_id) == {"0"}:
        raise InvalidArgument("trace_id: 32 lowercase hex characters (a W3C trace id) are required")
    return trace_id


class TraceQueries:
    """Stores and reads the ``spans`` table."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def store(self, rows: list[dict[str, Any]]) -> None:
        """Insert spans (rows of :func:`span_rows`)."""
        if rows:
            await self._store.insert("spans", json_rows(rows), "JSONEachRow")

    async def trace_of_request(self, request_id: str) -> str | None:
        """The trace id of the most recent trace that carried ``request_id`` (its spans, else its events)."""
        for sql in (
            "SELECT trace_id FROM spans WHERE request_id = {rid:String} ORDER BY start DESC LIMIT 1",
            "SELECT trace_id FROM inference_events WHERE request_id = {rid:String} AND trace_id != '' "
            "ORDER BY time DESC LIMIT 1",
        ):
            rows = await self._store.rows(sql, {"rid": request_id})
            if rows:
                return str(rows[0][0])
        return None

    async def spans(self, trace_id: str) -> list[SpanRow]:
        """The spans of one trace, by start time."""
        rows = await self._store.rows(
            """SELECT trace_id, span_id, parent_span_id, service, name, kind, toUnixTimestamp64Micro(start),
                duration_ms, status, status_message, request_id, degraded, fallback, attributes
            FROM spans FINAL WHERE trace_id = {trace_id:String} ORDER BY start, span_id LIMIT {limit:UInt32}""",
            {"trace_id": trace_id, "limit": MAX_TRACE_SPANS},
        )
        return [
            SpanRow(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                int(r[5]),
                int(r[6]),
                float(r[7]),
                int(r[8]),
                str(r[9]),
                str(r[10]),
                bool(r[11]),
                str(r[12]),
                dict(r[13]),
            )
            for r in rows
        ]

    async def events(self, trace_id: str) -> list[EventRow]:
        """The events stored with ``trace_id``, by time (each event table is scanned by trace id)."""
        union = " UNION ALL ".join(
            f"SELECT event_id, '{kind}' AS kind, source_service, toUnixTimestamp64Micro(time) AS at, span_id, "
            f"request_id FROM {kind}_events WHERE trace_id = {{trace_id:String}}"
            for kind in _EVENT_KINDS
        )
        rows = await self._store.rows(
            f"SELECT * FROM ({union}) ORDER BY at, event_id LIMIT {{limit:UInt32}}",
            {"trace_id": trace_id, "limit": MAX_TRACE_SPANS},
        )
        return [EventRow(str(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4]), str(r[5])) for r in rows]

    async def slowest(self, scene: str, since_s: float, limit: int) -> list[TraceSummaryRow]:
        """The ``limit`` slowest traces that started in the last ``since_s`` seconds (of ``scene`` if set)."""
        rows = await self._store.rows(
            """SELECT trace_id,
                argMin(request_id, (parent_span_id != '', start)) AS root_request,
                anyIf(scene, scene != '') AS trace_scene,
                argMin(service, (parent_span_id != '', start)) AS root_service,
                argMin(name, (parent_span_id != '', start)) AS root_name,
                min(toUnixTimestamp64Micro(start)) AS first_us,
                (max(toUnixTimestamp64Micro(start) + toInt64(duration_ms * 1000)) - first_us) / 1000 AS total_ms,
                count() AS span_count, max(status = 2) AS failed, max(degraded) AS any_degraded
            FROM spans
            WHERE start >= fromUnixTimestamp64Micro({since_us:Int64}, 'UTC')
            GROUP BY trace_id
            HAVING {scene:String} = '' OR countIf(scene = {scene:String}) > 0
            ORDER BY total_ms DESC, trace_id LIMIT {limit:UInt32}""",
            {"since_us": round((time.time() - since_s) * 1e6), "scene": scene, "limit": limit},
        )
        return [
            TraceSummaryRow(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                int(r[5]),
                float(r[6]),
                int(r[7]),
                bool(r[8]),
                bool(r[9]),
            )
            for r in rows
        ]


class OtlpTraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    """``TraceService/Export``: validate, store (see the module docstring)."""

    def __init__(self, queries: TraceQueries, metrics: Metrics) -> None:
        self._queries = queries
        self._stored = metrics.counter("spans_stored", "Spans received over OTLP and stored.")

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        rows = span_rows(request)
        await self._queries.store(rows)
        self._stored.inc(len(rows))
        return trace_service_pb2.ExportTraceServiceResponse()
