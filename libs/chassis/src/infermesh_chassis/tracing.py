"""Distributed tracing: the OpenTelemetry SDK set up from settings, spans at the chassis' two boundaries.

:meth:`Tracing.create` builds one service's tracer from ``settings.tracing``: the service name and
version as resource attributes, parent-based sampling at ``sample_ratio`` (a sampled request is sampled
at every hop, an unsampled one nowhere; an unsampled call gets no span at all and only passes its
``traceparent`` on), and an exporter that sends OTLP over grpc.aio from the event loop. An empty
``endpoint`` turns tracing off: no tracer exists, and the server interceptor and the client boundary
test one ``None`` per call and add nothing else.

The spans come from the chassis' two boundaries only (no second interceptor stack):

- the server interceptor opens one SERVER span per RPC (:meth:`Tracing.start_server`), child of the
  caller's W3C ``traceparent`` metadata; a missing or malformed ``traceparent`` starts a new trace and
  never fails the call;
- :class:`~infermesh_chassis.client.ServiceClient` opens one CLIENT span per downstream call attempt
  (:meth:`Tracing.start_client`) and sends its ``traceparent`` in ``metadata=``.

A service adds its own spans inside a request with :func:`span` and marks the request's span with
:func:`annotate` (degraded, fallback, ...); both do nothing outside a sampled request.

Export never blocks a request: ending a span only appends it to a bounded queue, which a task on the
event loop sends as OTLP over grpc.aio (:class:`AsyncOtlpExporter`), one attempt per batch bounded by
``export_timeout_s``; a batch it cannot deliver (the endpoint is unreachable or refuses it) and spans
that overflow the queue are dropped and counted (``infermesh_<service>_trace_spans_dropped_total``;
delivered ones in ``..._trace_spans_exported_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import random
import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from infermesh_chassis import context as ctx
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.otlp import encode_spans
from infermesh_chassis.settings import TracingSettings
from infermesh_chassis.tasks import cancel_and_wait

__all__ = [
    "TRACEPARENT_METADATA_KEY",
    "TRACE_ID_METADATA_KEY",
    "AsyncOtlpExporter",
    "Span",
    "Tracing",
    "active",
    "annotate",
    "attached",
    "captured",
    "current_ids",
    "end_span",
    "exemplar_of",
    "failed",
    "format_traceparent",
    "parse_traceparent",
    "request_id_of",
    "span",
]

TRACEPARENT_METADATA_KEY = "traceparent"
"""gRPC metadata key of the W3C trace context (https://www.w3.org/TR/trace-context/)."""
TRACE_ID_METADATA_KEY = "x-trace-id"
"""Trailing metadata key naming the trace a sampled call was recorded in (``infermesh trace`` shows it)."""

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_UNSAMPLED_V00 = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-00")
"""A canonical, valid, unsampled version-00 ``traceparent``: passed on as it came, without parsing it
(the common case behind an unsampled hop; one match instead of a parse and a rebuild)."""
_TRACE_ID = re.compile(r"(?!0{32})[0-9a-f]{32}")
"""A request id that can name a trace: one the mesh made (:func:`~infermesh_chassis.context.new_request_id`)."""
_next_trace_id: ContextVar[int] = ContextVar("infermesh_next_trace_id", default=0)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NEW_TRACE = otel_context.Context()
"""The parent context of a span that starts a new trace (not whatever happens to be current)."""

_log = get_logger("infermesh_chassis.tracing")


def _fields(value: str | bytes) -> tuple[str, str, str] | None:
    """``(trace_hex, span_hex, flags_hex)`` of a valid W3C ``traceparent``, else None.

    Version ``00`` must have exactly four fields; a later version may append more (the spec's forward
    compatibility); version ``ff``, upper-case hex and all-zero ids are invalid.
    """
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None) or trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:
        return None
    return trace_hex, span_hex, flags_hex


def parse_traceparent(value: str | bytes | None) -> SpanContext | None:
    """The remote span context a W3C ``traceparent`` names, or None when it is absent or malformed."""
    fields = None if value is None else _fields(value)
    if fields is None:
        return None
    trace_hex, span_hex, flags_hex = fields
    flags = TraceFlags(int(flags_hex, 16) & 0x01)
    return SpanContext(int(trace_hex, 16), int(span_hex, 16), is_remote=True, trace_flags=flags)


def _unsampled(request_id: str) -> str:
    """A ``traceparent`` for a new trace that is not sampled: its trace id is the request id when that
    can be one (the mesh's own random ids), else random, as is then the parent id (the low bit of each
    set so neither is all zeros). No span of it is ever recorded: the parent id only has to be valid."""
    if _TRACE_ID.fullmatch(request_id) is not None and request_id[16:] != _ZERO_SPAN:
        return f"00-{request_id}-{request_id[16:]}-00"
    ids = f"{random.getrandbits(192) | _LOW_BITS:048x}"
    return f"00-{ids[:32]}-{ids[32:]}-00"


_LOW_BITS = 1 | 1 << 64


def request_id_of(traceparent: str | bytes) -> tuple[str | None, str]:
    """The trace id a ``traceparent`` names, to be the request id of a call that came without
    ``x-request-id`` (None when it names none), and the ``traceparent`` again when it is a valid
    unsampled one, else "" (the call's ``CallContext.traceparent``: decided, it needs no
    :meth:`Tracing.start_server`).

    A trace the mesh starts has the request's id as its trace id (:meth:`Tracing.start_server`), so
    its hops send the ``traceparent`` alone: one metadata entry per call, as with tracing off.
    """
    if type(traceparent) is not str:
        return None, ""
    if _UNSAMPLED_V00.fullmatch(traceparent) is not None:
        return traceparent[3:35], traceparent
    fields = _fields(traceparent)  # a malformed one names nothing: its call starts a trace of its own
    return (None if fields is None else fields[0]), ""


class _Decided(Sampler):
    """The SDK's sampler: it is only asked for spans already decided to be sampled (see
    :meth:`Tracing.start_server`), so it keeps each one as it comes. The mesh sends no ``tracestate``,
    so there is none to carry over from a parent (the SDK's ALWAYS_ON looks it up for every span)."""

    def should_sample(  # noqa: PLR0917  (the SDK calls it with these, positionally)
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "DecidedBeforeTheSdk"


_DECIDED = _Decided()


class _RequestTraceIds(RandomIdGenerator):
    """Trace ids of new traces: the request's id when :meth:`Tracing.start_server` names it, else random."""

    def generate_trace_id(self) -> int:
        return _next_trace_id.get() or super().generate_trace_id()


def format_traceparent(span_context: SpanContext) -> str:
    """The W3C ``traceparent`` of ``span_context``."""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags) & 1:02x}"


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the current span when it is sampled, else None."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.trace_flags.sampled:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def active() -> bool:
    """True inside a sampled request of a service whose tracing is on: the cheap test (a contextvar read
    when tracing is off) to put before work that only feeds spans."""
    call = ctx.current()
    return call is not None and call.tracing is not None and trace.get_current_span().is_recording()


def annotate(**attributes: str | bool | int | float) -> None:
    """Set attributes on the current span (the request's, or the innermost :func:`span`) if it is sampled."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(attributes)


Captured = tuple[otel_context.Context, str]


def captured() -> Captured:
    """The current trace context (sampled or not), to run work for this request later (:func:`attached`)."""
    call = ctx.current()
    return otel_context.get_current(), "" if call is None else call.traceparent


@contextmanager
def attached(context: Captured) -> Iterator[None]:
    """Make a :func:`captured` trace context current for the block (a batch run for its first member);
    an unsampled one goes on the current call context, which the block must have bound itself."""
    otel, passthrough = context
    call = ctx.current()
    if call is not None:
        call.traceparent = passthrough
    token = otel_context.attach(otel)
    try:
        yield
    finally:
        otel_context.detach(token)


class _Untraced:
    """What :func:`span` returns outside a sampled request: a block that does nothing (shared)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_UNTRACED = _Untraced()


class _SpanBlock:
    """A child span of the current one, current for the ``with`` block."""

    __slots__ = ("_child", "_token")

    def __init__(self, child: Span) -> None:
        self._child = child
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._child))
        return self._child

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self._child.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
        if self._token is not None:
            otel_context.detach(self._token)
        self._child.end()


def span(name: str, **attributes: str | bool | int | float) -> _SpanBlock | _Untraced:
    """A child span of the current one, current for the ``with`` block, when the request is sampled.

    ``with span(...) as s`` gives the span (to add attributes known only at the end) or None when
    nothing is traced (then the block costs a contextvar read); an exception leaving the block marks
    the span as failed.
    """
    call = ctx.current()
    if call is None or call.tracing is None:
        return _UNTRACED
    if not trace.get_current_span().is_recording():
        return _UNTRACED
    return _SpanBlock(call.tracing.tracer.start_span(name, attributes=attributes))


def failed(span_: Span | None, message: str) -> None:
    """Mark a :func:`span` failed with ``message`` (an error the block handled itself); None: nothing."""
    if span_ is not None:
        span_.set_status(Status(StatusCode.ERROR, message[:200]))


class Tracing:
    """One service's tracer and its export pipeline (see the module docstring)."""

    def __init__(self, settings: TracingSettings, service: str, version: str, metrics: Metrics | None = None) -> None:
        self.settings = settings
        resource = Resource.create({"service.name": service, "service.version": version})
        # The ratio is drawn in start_server/start_client, before the SDK is asked for a span: the SDK
        # only ever sees sampled spans and their children, so its sampler keeps every one.
        self._ratio = settings.sample_ratio
        self.provider = TracerProvider(resource=resource, sampler=_DECIDED, id_generator=_RequestTraceIds())
        self.exporter = AsyncOtlpExporter(settings)
        self.provider.add_span_processor(self.exporter)
        self.tracer = self.provider.get_tracer("infermesh_chassis", version)
        if metrics is not None:
            metrics.counter_function(
                "trace_spans_exported", "Spans delivered to the trace collector.", lambda: self.exporter.exported
            )
            metrics.counter_function(
                "trace_spans_dropped", "Spans dropped (export failed, queue full).", lambda: self.exporter.dropped
            )

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
        return self.exporter.dropped

    def start_server(
        self,
        name: str,
        traceparent: str | bytes | None,
        request_id: str,
        call: ctx.CallContext | None = None,
        system: str = "grpc",
    ) -> tuple[Span | None, Token[otel_context.Context] | None]:
        """Open the SERVER span of one RPC, child of ``traceparent`` when it is valid, and make it current
        (end it with :meth:`end_server`). Without one, the call starts a new trace whose id is
        ``request_id`` when that is 32 hex digits (every id the mesh makes), so the request id names
        the trace and the calls it makes need no ``x-request-id`` beside their ``traceparent``.

        Sampling is decided here, parent-based, before the SDK is asked for anything: a call that is
        not sampled (its caller's decision, or a new trace that lost the draw) gets no span at all,
        only its unsampled ``traceparent`` on ``call`` for the calls it makes (so every hop behind keeps
        the decision): (None, None). That keeps the 99 unsampled requests of 100 nearly free. (The
        interceptor does not even ask for a call :func:`request_id_of` found unsampled.)
        """
        fields = None
        if traceparent is not None:
            if type(traceparent) is str and _UNSAMPLED_V00.fullmatch(traceparent) is not None:
                if call is not None:
                    call.traceparent = traceparent
                return None, None
            fields = _fields(traceparent)
        if fields is None:
            if self._ratio < 1.0 and random.random() >= self._ratio:
                if call is not None:
                    call.traceparent = _unsampled(request_id)
                return None, None
            parent = _NEW_TRACE
            named = _TRACE_ID.fullmatch(request_id) is not None
        else:
            trace_hex, span_hex, flags_hex = fields
            if not int(flags_hex, 16) & 0x01:
                if call is not None:
                    call.traceparent = f"00-{trace_hex}-{span_hex}-00"
                return None, None
            remote = SpanContext(int(trace_hex, 16), int(span_hex, 16), is_remote=True, trace_flags=_SAMPLED)
            parent = trace.set_span_in_context(NonRecordingSpan(remote), _NEW_TRACE)
            named = False
        attributes = {"rpc.system": system, "rpc.method": name, "infermesh.request_id": request_id}
        token = _next_trace_id.set(int(request_id, 16)) if named else None
        try:
            server_span = self.tracer.start_span(name, parent, SpanKind.SERVER, attributes)
        finally:
            if token is not None:
                _next_trace_id.reset(token)
        return server_span, otel_context.attach(trace.set_span_in_context(server_span))

    @staticmethod
    def end_server(server_span: Span, token: Token[otel_context.Context], code: grpc.StatusCode) -> None:
        """Make what was current before :meth:`start_server` current again and end its span with ``code``."""
        otel_context.detach(token)
        end_span(server_span, code)

    def start_client(self, name: str, peer: str, call: ctx.CallContext | None) -> tuple[Span | None, str]:
        """Open the CLIENT span of one downstream call and its ``traceparent``: a child of the current span
        when the request (``call``, the current one) is sampled; none in an unsampled request (its
        unsampled ``traceparent`` is passed on as it came); outside any request, a new trace sampled at
        ``sample_ratio``."""
        if call is not None and call.traceparent:  # set only in an unsampled request
            return None, call.traceparent
        if not trace.get_current_span().is_recording() and self._ratio < 1.0 and random.random() >= self._ratio:
            return None, _unsampled("")
        client_span = self.tracer.start_span(
            name, kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc", "rpc.method": name, "net.peer.name": peer}
        )
        return client_span, format_traceparent(client_span.get_span_context())

    async def flush(self) -> None:
        """Export every span ended so far now (tests; shutdown does it too)."""
        await self.exporter.flush()

    async def shutdown(self) -> None:
        """Export what is queued (each batch bounded by the export timeout) and stop exporting."""
        await self.exporter.close()


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


class AsyncOtlpExporter(SpanProcessor):
    """Queues ended sampled spans and exports them as OTLP over grpc.aio from the event loop.

    Ending a span appends it to a bounded queue (beyond ``max_queue_spans`` it is dropped and
    counted). A task on the event loop of the first span wakes every ``export_interval_s`` (sooner
    when a batch is full) and sends what is queued, ``max_export_batch_spans`` at a time, one attempt
    each, bounded by ``export_timeout_s``: a batch that fails is dropped and counted, the next one
    tries again. No thread and no synchronous gRPC channel: measured here, the SDK's thread-based
    batch processor with a synchronous channel beside grpc.aio cost a serving process about 40 % of
    its throughput even at 1 % sampling, and the SDK's OTLP exporter retries a dead endpoint for a
    minute under a lock.
    """

    def __init__(self, settings: TracingSettings) -> None:
        self._settings = settings
        self._queue: deque[ReadableSpan] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._failing = False
        self._closed = False
        self.exported = 0
        self.dropped = 0

    def on_start(self, span: Any, parent_context: otel_context.Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if self._closed or not span.context.trace_flags.sampled:
            return
        if len(self._queue) >= self._settings.max_queue_spans:
            self.dropped += 1
            return
        self._queue.append(span)
        if self._task is None:
            self._start()
        elif len(self._queue) >= self._settings.max_export_batch_spans and self._wakeup is not None:
            self._wakeup.set()

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # ended outside any event loop: exported by the next flush
            return
        self._wakeup = asyncio.Event()
        self._task = loop.create_task(self._run(), name="trace-export")

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.export_interval_s):
                    await self._wakeup.wait()
            self._wakeup.clear()
            await self.flush()

    async def flush(self) -> None:
        """Send what is queued now, batch by batch. Spans that end meanwhile wait for the next flush: a
        busy service that drained the queue to the end would send a few spans per call, back to back
        (measured here at sample ratio 1.0: 7 spans per export, a quarter of what tracing cost)."""
        pending = len(self._queue)
        while pending and self._queue:
            count = min(pending, len(self._queue), self._settings.max_export_batch_spans)
            pending -= count
            await self._export([self._queue.popleft() for _ in range(count)])

    async def _export(self, spans: list[ReadableSpan]) -> None:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._settings.endpoint)
        export = self._channel.unary_unary(
            _EXPORT_METHOD, request_serializer=_serialize, response_deserializer=_ignore_response
        )
        try:
            await export(encode_spans(spans), timeout=self._settings.export_timeout_s)
        except Exception as exc:  # any failure drops the batch; the request path never sees it
            self.dropped += len(spans)
            if not self._failing:
                self._failing = True
                code = exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__
                _log.warning("trace_export_failed", endpoint=self._settings.endpoint, code=code, dropped=len(spans))
            return
        self.exported += len(spans)
        if self._failing:
            self._failing = False
            _log.info("trace_export_recovered", endpoint=self._settings.endpoint)

    async def close(self) -> None:
        """Stop the export task, send what is queued, close the channel."""
        self._closed = True
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self.flush()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def shutdown(self) -> None:
        self._closed = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return not self._queue


_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _serialize(request: Any) -> bytes:
    return request.SerializeToString()  # type: ignore[no-any-return]


def _ignore_response(raw: bytes) -> bytes:
    return raw


def _package_version(service: str) -> str:
    for name in (f"infermesh-{service}", "infermesh-chassis"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "0"
