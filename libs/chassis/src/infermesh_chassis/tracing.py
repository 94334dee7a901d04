"""Distributed tracing: the OpenTelemetry SDK set up from settings, spans at the chassis' two boundaries.

:meth:`Tracing.create` builds one service's tracer from ``settings.tracing``: the service name and
version as resource attributes, parent-based sampling at ``sample_ratio`` (a sampled request is sampled
at every hop, an unsampled one nowhere), and a batch span processor that exports OTLP over gRPC from a
background thread. An empty ``endpoint`` turns tracing off: no tracer exists, and the server interceptor
and the client boundary test one ``None`` per call and add nothing else.

The spans come from the chassis' two boundaries only (no second interceptor stack):

- the server interceptor opens one SERVER span per RPC (:meth:`Tracing.start_server`), child of the
  caller's W3C ``traceparent`` metadata; a missing or malformed ``traceparent`` starts a new trace and
  never fails the call;
- :class:`~infermesh_chassis.client.ServiceClient` opens one CLIENT span per downstream call attempt
  (:meth:`Tracing.start_client`) and sends its ``traceparent`` in ``metadata=``.

A service adds its own spans inside a request with :func:`span` and marks the request's span with
:func:`annotate` (degraded, fallback, ...); both do nothing outside a sampled request.

Export never blocks a request: ending a span only appends it to the processor's bounded queue. The
exporter makes one attempt per batch, bounded by ``export_timeout_s``; a batch it cannot deliver (the
endpoint is unreachable or refuses it) and spans that overflow the queue are dropped and counted
(``infermesh_<service>_trace_spans_dropped_total``; delivered ones in ``..._trace_spans_exported_total``).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import Token
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from infermesh_chassis import context as ctx
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import TracingSettings

__all__ = [
    "TRACEPARENT_METADATA_KEY",
    "OtlpGrpcSpanExporter",
    "Tracing",
    "annotate",
    "attached",
    "captured",
    "current_ids",
    "end_span",
    "exemplar_of",
    "format_traceparent",
    "parse_traceparent",
    "span",
]

TRACEPARENT_METADATA_KEY = "traceparent"
"""gRPC metadata key of the W3C trace context (https://www.w3.org/TR/trace-context/)."""

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_NEW_TRACE = otel_context.Context()
"""The parent context of a span that starts a new trace (not whatever happens to be current)."""

_log = get_logger("infermesh_chassis.tracing")


def parse_traceparent(value: str | bytes | None) -> SpanContext | None:
    """The remote span context a W3C ``traceparent`` names, or None when it is absent or malformed.

    Version ``00`` must have exactly four fields; a later version may append more (the spec's forward
    compatibility); version ``ff``, upper-case hex and all-zero ids are invalid.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(flags_hex, 16) & 0x01))


def format_traceparent(span_context: SpanContext) -> str:
    """The W3C ``traceparent`` of ``span_context``."""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags) & 1:02x}"


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the current span when it is sampled, else None."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.trace_flags.sampled:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def annotate(**attributes: str | bool | int | float) -> None:
    """Set attributes on the current span (the request's, or the innermost :func:`span`) if it is sampled."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(attributes)


def captured() -> otel_context.Context:
    """The current trace context, to run work for this request later or elsewhere (:func:`attached`)."""
    return otel_context.get_current()


@contextmanager
def attached(context: otel_context.Context) -> Iterator[None]:
    """Make a :func:`captured` trace context current for the block (a batch run for its first member)."""
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def span(name: str, **attributes: str | bool | int | float) -> Iterator[Span | None]:
    """A child span of the current one, current for the block, when the request is sampled.

    Yields the span (to add attributes known only at the end) or None when nothing is traced; an
    exception leaving the block marks the span as failed.
    """
    call = ctx.current()
    tracing = None if call is None else call.tracing
    parent = trace.get_current_span()
    if tracing is None or not parent.is_recording():
        yield None
        return
    child = tracing.tracer.start_span(name, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(child))
    try:
        yield child
    except BaseException as exc:
        child.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
        raise
    finally:
        otel_context.detach(token)
        child.end()


class Tracing:
    """One service's tracer and its export pipeline (see the module docstring)."""

    def __init__(self, settings: TracingSettings, service: str, version: str, metrics: Metrics | None = None) -> None:
        self.settings = settings
        resource = Resource.create({"service.name": service, "service.version": version})
        self.provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        self.exporter = OtlpGrpcSpanExporter(settings.endpoint, settings.export_timeout_s)
        self.processor = _CountingBatchProcessor(
            self.exporter,
            max_queue_size=settings.max_queue_spans,
            schedule_delay_millis=settings.export_interval_s * 1000,
            max_export_batch_size=min(settings.max_export_batch_spans, settings.max_queue_spans),
            export_timeout_millis=settings.export_timeout_s * 1000,
        )
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("infermesh_chassis", version)
        if metrics is not None:
            metrics.counter_function(
                "trace_spans_exported", "Spans delivered to the trace collector.", lambda: self.exporter.exported
            )
            metrics.counter_function("trace_spans_dropped", "Spans dropped (export failed, queue full).", self.dropped)

    @classmethod
    def create(
        cls, settings: TracingSettings, service: str, metrics: Metrics | None = None, version: str | None = None
    ) -> Tracing | None:
        """The service's tracing, or None when ``settings.endpoint`` is empty (tracing off)."""
        if not settings.endpoint:
            return None
        return cls(settings, service, version or settings.service_version or _package_version(service), metrics)

    def dropped(self) -> int:
        """Spans dropped so far: batches the exporter could not deliver plus queue overflows."""
        return self.exporter.dropped + self.processor.overflowed

    def start_server(
        self, name: str, traceparent: str | bytes | None, request_id: str, system: str = "grpc"
    ) -> tuple[Span, Token[otel_context.Context]]:
        """Open the SERVER span of one RPC, child of ``traceparent`` when it is valid, and make it current
        (end it with :meth:`end_server`)."""
        remote = parse_traceparent(traceparent)
        parent = _NEW_TRACE if remote is None else trace.set_span_in_context(NonRecordingSpan(remote), _NEW_TRACE)
        server_span = self.tracer.start_span(
            name,
            parent,
            SpanKind.SERVER,
            {"rpc.system": system, "rpc.method": name, "infermesh.request_id": request_id},
        )
        return server_span, otel_context.attach(trace.set_span_in_context(server_span))

    @staticmethod
    def end_server(server_span: Span, token: Token[otel_context.Context], code: grpc.StatusCode) -> None:
        """Make what was current before :meth:`start_server` current again and end its span with ``code``."""
        otel_context.detach(token)
        end_span(server_span, code)

    def start_client(self, name: str, peer: str) -> tuple[Span, str]:
        """Open the CLIENT span of one downstream call (child of the current span) and its ``traceparent``."""
        client_span = self.tracer.start_span(
            name, kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc", "rpc.method": name, "net.peer.name": peer}
        )
        return client_span, format_traceparent(client_span.get_span_context())

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export every ended span now (tests, shutdown); False when it did not finish in time."""
        return self.provider.force_flush(int(timeout_s * 1000))

    async def shutdown(self) -> None:
        """Export what is queued (bounded by the export timeout) and stop the export thread."""
        await asyncio.to_thread(self.provider.shutdown)


def end_span(span_: Span, code: grpc.StatusCode) -> None:
    """End ``span_`` with the gRPC status of its call (non-OK marks it failed)."""
    if span_.is_recording():
        span_.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span_.set_status(Status(StatusCode.ERROR, code.name))
    span_.end()


def exemplar_of(span_: Span) -> dict[str, str] | None:
    """The exemplar labels (``trace_id``) for a latency observation made under ``span_``, if sampled."""
    span_context = span_.get_span_context()
    if not span_context.trace_flags.sampled:
        return None
    return {"trace_id": f"{span_context.trace_id:032x}"}


class OtlpGrpcSpanExporter(SpanExporter):
    """OTLP/gRPC span export with one attempt per batch, bounded by ``timeout_s``.

    The SDK's own OTLP exporter retries an unreachable endpoint for about a minute per batch and holds
    its lock meanwhile, so a process stopping while the collector is down would wait that long; here a
    batch that fails is dropped and counted at once, and the next batch tries again.
    """

    def __init__(self, endpoint: str, timeout_s: float) -> None:
        self._endpoint = endpoint
        self._timeout_s = timeout_s
        self._channel = grpc.insecure_channel(endpoint)
        self._stub = trace_service_pb2_grpc.TraceServiceStub(self._channel)
        self._lock = threading.Lock()
        self._failing = False
        self.exported = 0
        self.dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self._stub.Export(encode_spans(spans), timeout=self._timeout_s)
        except Exception as exc:  # any failure drops the batch; the request path never sees it
            with self._lock:
                self.dropped += len(spans)
            if not self._failing:
                self._failing = True
                code = exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__
                _log.warning("trace_export_failed", endpoint=self._endpoint, code=code, dropped=len(spans))
            return SpanExportResult.FAILURE
        with self._lock:
            self.exported += len(spans)
        if self._failing:
            self._failing = False
            _log.info("trace_export_recovered", endpoint=self._endpoint)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._channel.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _CountingBatchProcessor(BatchSpanProcessor):
    """The SDK's batch processor, counting the spans its full queue pushes out (it drops the oldest)."""

    overflowed = 0

    def on_end(self, span: ReadableSpan) -> None:
        queue: Any = getattr(self, "queue", None)
        if queue is not None and span.context.trace_flags.sampled and len(queue) >= queue.maxlen:
            self.overflowed += 1
        super().on_end(span)


def _package_version(service: str) -> str:
    for name in (f"infermesh-{service}", "infermesh-chassis"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "0"
