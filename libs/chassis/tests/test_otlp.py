"""The in-place OTLP encoder gives the very message the SDK's encoder gives."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace import set_span_in_context as with_span
from opentelemetry.trace.span import TraceState

from infermesh_chassis.otlp import encode_spans


class _Kept(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def _spans() -> list[ReadableSpan]:
    """Spans of two providers with equal resources (one group), two scopes, every kind of field."""
    kept = _Kept()
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")]))
    for version in ("1.0", None):
        provider = TracerProvider(resource=Resource.create({"service.name": "svc", "n": 3}))
        provider.add_span_processor(kept)
        tracer = provider.get_tracer("scope", version)
        attributes = {"s": "x", "b": True, "i": 3, "f": 1.5, "ints": [1, 2], "texts": ["a"]}
        server = tracer.start_span(
            "server", with_span(NonRecordingSpan(remote)), SpanKind.SERVER, attributes, links=[Link(remote, {"x": 1})]
        )
        server.add_event("event", {"e": "v"})
        server.set_status(Status(StatusCode.ERROR, "boom"))
        server.end()
        tracer.start_span("client", with_span(server), SpanKind.CLIENT).end()
        inner = tracer.start_span("inner")
        inner.set_status(Status(StatusCode.OK))
        inner.end()
    return kept.spans


def test_the_request_equals_the_sdk_encoders_byte_for_byte() -> None:
    spans = _spans()
    ours, theirs = encode_spans(spans), sdk_encode_spans(spans)
    assert ours == theirs
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    assert len(ours.resource_spans) == 1 and len(ours.resource_spans[0].scope_spans) == 2


def test_no_spans_is_an_empty_request() -> None:
    assert encode_spans([]).ByteSize() == 0
