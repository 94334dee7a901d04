"""The server interceptor (request id, RED metrics, deadline capture, error mapping) and the RED recorder.

Server side, :class:`ServerInterceptor` wraps every handler once per method (cached) so
that each call

- takes the request id from ``x-request-id`` metadata, else the trace id of a ``traceparent`` (a hop
  of a trace the mesh started sends that alone, see :meth:`.tracing.Tracing.start_server`), else
  creates one; makes it current for
  the call (every log line carries it, see :mod:`.logs`) and returns it in trailing metadata;
  an oversize or malformed request id is refused with INVALID_ARGUMENT;
- refuses a request that is not a valid protobuf of the method's type, and one with oversize
  identifier fields (:func:`~infermesh_chassis.validation.check_fields`), with INVALID_ARGUMENT;
- records the caller's deadline so downstream calls can be bounded by it, and sheds a call that
  reaches its handler with its deadline passed (or less left than ``grpc.min_deadline_ms``,
  :class:`DeadlineShedding`): DEADLINE_EXCEEDED at once, the servicer never run;
- maps :class:`~infermesh_chassis.errors.InfermeshError` to its status and a message bounded to
  what gRPC metadata carries, and anything unexpected to INTERNAL with a generic message (the
  traceback goes to the log);
- counts requests, errors by status code, and latency; a call the caller cancelled (or whose
  deadline passed, :func:`cancelled_code`) is counted as CANCELLED (DEADLINE_EXCEEDED) and logged;
  and keeps how many calls its handlers hold now (:attr:`ServerInterceptor.held`, compared with
  gRPC core's own counts by :mod:`.corecalls`);
- with tracing on (:mod:`.tracing`), opens the call's SERVER span, child of the caller's ``traceparent``
  metadata, current for the call and ended with its status; a sampled call's latency carries its trace
  id as an exemplar, and its trailing metadata the trace id (``x-trace-id``). With tracing off, that is
  one ``None`` test per call.

There is no client interceptor: a grpc.aio client interceptor costs every call an extra task and
new call details. :class:`~infermesh_chassis.client.ServiceClient`, the one client boundary, passes
the request id (``metadata=``) and the deadline (``timeout=``) itself and records the same RED
metrics with a :class:`CallRecorder`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context

from infermesh_chassis import context as ctx
from infermesh_chassis.errors import DeadlineExceeded, InfermeshError, InvalidArgument
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics, RpcMetrics
from infermesh_chassis.tracing import (
    TRACE_ID_METADATA_KEY,
    TRACEPARENT_METADATA_KEY,
    Tracing,
    end_span,
    exemplar_of,
    request_id_of,
)
from infermesh_chassis.validation import bound_message, check_fields, check_request_id

__all__ = [
    "DEADLINE_SKEW_S",
    "SHED_LOG_EVERY_S",
    "CallRecorder",
    "DeadlineShedding",
    "ServerInterceptor",
    "cancelled_code",
    "split_method",
]

_log = get_logger("infermesh_chassis.interceptors")

DEADLINE_SKEW_S = 0.1
"""How close to the server's deadline a call that ends unanswered still ended by its deadline.

The caller's deadline and the server's are the same instant only in principle: the server's starts
when the call's headers arrive (``grpc-timeout`` is relative), so it is later by the time they took.
The caller's own timer then fires first, and its RST_STREAM can reach the server that much before
the server's deadline (measured: up to a few ms on a loaded 2-core box, where 1 run in 6 went this
way). A cancellation that close to the deadline is the deadline; one earlier is the caller's own."""


def cancelled_code(remaining: float | None) -> grpc.StatusCode:
    """The status of a call that ended because its caller went away, ``remaining`` seconds before the
    server's deadline (``context.time_remaining()``; None: no deadline): DEADLINE_EXCEEDED within
    :data:`DEADLINE_SKEW_S` of the deadline, CANCELLED otherwise."""
    if remaining is not None and remaining <= DEADLINE_SKEW_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


SHED_LOG_EVERY_S = 10.0
"""At most one ``rpc_shed`` warning per this many seconds (it counts the calls shed since the last)."""


def split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → ``("pkg.Service", "Method")``."""
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return service, method


class CallRecorder:
    """Counts one method's calls, their latency and their errors (metric children looked up once)."""

    __slots__ = ("_error_children", "_errors", "_labels", "_latency", "_requests")

    def __init__(self, metrics: RpcMetrics, full_method: str) -> None:
        self._labels = split_method(full_method)
        self._requests = metrics.requests.labels(*self._labels)
        self._latency = metrics.latency.labels(*self._labels)
        self._errors = metrics.errors
        self._error_children: dict[grpc.StatusCode, Any] = {}

    def record(self, code: grpc.StatusCode, started: float, exemplar: dict[str, str] | None = None) -> None:
        """Count one call that ended with ``code``, begun at ``started`` (``time.perf_counter()``);
        ``exemplar`` (a sampled call's ``trace_id``) goes with its latency."""
        self._requests.inc()
        self._latency.observe(time.perf_counter() - started, exemplar)
        if code is not grpc.StatusCode.OK:
            child = self._error_children.get(code)
            if child is None:
                child = self._error_children[code] = self._errors.labels(*self._labels, code.name)
            child.inc()


class DeadlineShedding:
    """Answers DEADLINE_EXCEEDED for a call that reaches its handler with ``min_deadline_s`` or less
    left of its deadline (0: only one whose deadline has passed), before its servicer runs.

    Counted in ``infermesh_<service>_grpc_server_shed_total{reason="deadline"}`` (and, as every call,
    in the RED metrics with its status), and logged as ``rpc_shed`` at most once per ``log_every_s``.

    Where a burst's calls wait for the event loop, in gRPC core, a call whose deadline passes there
    never reaches a unary-request handler: grpc.aio finds the call ended when it reads the request
    and drops it (only the interceptor's method lookup ran). gRPC core counts those as failed
    (``grpc_core_calls_failed_total``, :mod:`.corecalls`); this sheds the calls that do reach a
    handler: those with too little time left to be worth serving, and streaming-request calls (read
    by the servicer) whose deadline passed while they waited.
    """

    __slots__ = ("_clock", "_counter", "_log_every_s", "_logged_at", "_unlogged", "min_deadline_s")

    def __init__(
        self,
        metrics: Metrics,
        min_deadline_s: float = 0.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        log_every_s: float = SHED_LOG_EVERY_S,
    ) -> None:
        self.min_deadline_s = min_deadline_s
        self._counter = metrics.counter(
            "grpc_server_shed",
            "Calls answered before their handler ran, by reason (deadline: it had passed, or less "
            "than grpc.min_deadline_ms was left, when the call reached its handler).",
            ("grpc_service", "grpc_method", "reason"),
        )
        self._clock = clock
        self._log_every_s = log_every_s
        self._logged_at: float | None = None
        self._unlogged = 0

    def check(self, method: str, remaining: float | None) -> None:
        """Raise DEADLINE_EXCEEDED (counted, logged) when ``remaining`` (seconds; None: no deadline)
        is at most the minimum."""
        if remaining is None or remaining > self.min_deadline_s:
            return
        self._counter.labels(*split_method(method), "deadline").inc()
        self._unlogged += 1
        now = self._clock()
        left_ms = round(max(remaining, 0.0) * 1000, 3)
        if self._logged_at is None or now - self._logged_at >= self._log_every_s:
            _log.warning(
                "rpc_shed",
                rpc=method,
                reason="deadline",
                remaining_ms=left_ms,
                min_deadline_ms=self.min_deadline_s * 1000,
                shed=self._unlogged,
                hint="calls reach their handler with their deadline (nearly) spent: they waited for the event "
                "loop, or their callers' deadlines are shorter than grpc.min_deadline_ms",
            )
            self._unlogged, self._logged_at = 0, now
        raise DeadlineExceeded(
            f"shed before it was served: {left_ms} ms left of the deadline, "
            f"the server needs more than {self.min_deadline_s * 1000:g} ms"
        )


class _Undecodable:
    """What the request deserializer yields for bytes that are not a valid request message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserialize`` that yields an :class:`_Undecodable` instead of raising (grpc.aio would
    answer UNKNOWN naming the Python exception); the handler refuses it with INVALID_ARGUMENT."""
    if deserialize is None:
        return None
    message_type = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    name = getattr(message_type, "full_name", "") or "request message"
    refusal = f"the request is not a valid {name} (protobuf encoding); check the client's contract version"

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception:  # any failure to decode is the caller's bytes, never a server fault
            return _Undecodable(refusal)

    return parse


def _checked_request(request: Any) -> None:
    """INVALID_ARGUMENT for an undecodable request or one with oversize identifier fields."""
    if type(request) is _Undecodable:
        raise InvalidArgument(request.message)
    check_fields(request)


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if type(request) is _Undecodable:
            raise InvalidArgument(request.message)
        yield request


class _ServerCall:
    """Everything the wrapped handler does around the servicer's behavior for one call."""

    __slots__ = (
        "_span_token",
        "_token",
        "code",
        "context",
        "exemplar",
        "method",
        "refusal",
        "remaining",
        "request_id",
        "span",
        "started",
    )

    def __init__(self, context: grpc.aio.ServicerContext, method: str, tracing: Tracing | None = None) -> None:
        self.context = context
        self.method = method
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.refusal: InvalidArgument | None = None
        rid = traceparent = None
        unsampled = ""
        for key, value in context.invocation_metadata() or ():
            if key == ctx.REQUEST_ID_METADATA_KEY:
                rid = value if isinstance(value, str) else value.decode(errors="replace")
            elif key == TRACEPARENT_METADATA_KEY:
                traceparent = value
        if rid is not None:
            try:
                check_request_id(rid, f"metadata {ctx.REQUEST_ID_METADATA_KEY}")
            except InvalidArgument as exc:
                self.refusal, rid = exc, None
        elif traceparent is not None:
            rid, unsampled = request_id_of(traceparent)
        self.request_id = rid or ctx.new_request_id()
        self.remaining = remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        call = ctx.CallContext(self.request_id, deadline, method, tracing)
        call.traceparent = unsampled
        self._token = ctx.bind(call)
        self.span = None
        self.exemplar: dict[str, str] | None = None
        if tracing is not None and not unsampled:  # an unsampled call is decided: no span, passed on as it came
            self.span, self._span_token = tracing.start_server(method[1:], traceparent, self.request_id, call)

    def finish(self) -> None:
        ctx.unbind(self._token)
        if self.span is not None:
            otel_context.detach(self._span_token)  # type: ignore[arg-type]
            end_span(self.span, self.code)
            self.exemplar = exemplar_of(self.span)

    def admit(self, request_or_iterator: Any, *, streaming_request: bool) -> Any:
        """The request (or request stream) once checked: INVALID_ARGUMENT for a bad request id, and
        for undecodable bytes or oversize fields of a unary request. A request stream is checked for
        undecodable items as they are read; its servicer checks each item's fields itself (with
        :func:`~infermesh_chassis.validation.check_fields`), so a bad item can be answered on its own."""
        if self.refusal is not None:
            raise self.refusal
        if streaming_request:
            return _checked_stream(request_or_iterator)
        _checked_request(request_or_iterator)
        return request_or_iterator

    def cancelled(self) -> None:
        """Count and log a call that ends because the caller went away or its deadline passed."""
        self.code = cancelled_code(self.context.time_remaining())
        _log.info(
            "rpc_cancelled",
            rpc=self.method,
            code=self.code.name,
            elapsed_ms=round((time.perf_counter() - self.started) * 1000, 3),
        )

    def trailing(self, extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
        if self.span is None:
            return ((ctx.REQUEST_ID_METADATA_KEY, self.request_id), *extra)
        trace_id = f"{self.span.get_span_context().trace_id:032x}"
        return ((ctx.REQUEST_ID_METADATA_KEY, self.request_id), (TRACE_ID_METADATA_KEY, trace_id), *extra)

    def succeeded(self) -> None:
        self.context.set_trailing_metadata(self.trailing(tuple(self.context.trailing_metadata() or ())))
        explicit = self.context.code()
        if isinstance(explicit, grpc.StatusCode):
            self.code = explicit

    async def fail(self, exc: BaseException) -> None:
        """Turn an exception from the behavior into the call's status (always raises)."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.cancelled()
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            code = self.context.code()
            self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
            raise exc
        if isinstance(exc, InfermeshError):
            self.code = exc.status_code
            if exc.status_code is grpc.StatusCode.INTERNAL:
                _log.error("rpc_internal_error", error=exc.message)
            await self.context.abort(exc.status_code, bound_message(exc.message), self.trailing(exc.metadata))
        if isinstance(exc, NotImplementedError):
            self.code = grpc.StatusCode.UNIMPLEMENTED
            await self.context.abort(self.code, "method not implemented by this service", self.trailing())
        self.code = grpc.StatusCode.INTERNAL
        _log.error("rpc_unhandled_exception", exc_info=exc)
        await self.context.abort(self.code, f"internal error (request id {self.request_id})", self.trailing())


Behavior = Callable[..., Any]


class _Held:
    """How many calls the wrapped handlers hold now (begun, not yet ended)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


def _wrap_unary_response(
    behavior: Behavior,
    method: str,
    recorder: CallRecorder,
    *,
    tracing: Tracing | None,
    held: _Held,
    shedding: DeadlineShedding,
    streaming_request: bool,
) -> Behavior:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _ServerCall(context, method, tracing)
        held.count += 1
        try:
            shedding.check(method, call.remaining)
            request_or_iterator = call.admit(request_or_iterator, streaming_request=streaming_request)
            result = behavior(request_or_iterator, context)
            if inspect.isawaitable(result):
                result = await result
            call.succeeded()
            return result
        except BaseException as exc:  # every outcome must be mapped and counted
            await call.fail(exc)
        finally:
            held.count -= 1
            call.finish()
            recorder.record(call.code, call.started, call.exemplar)

    return handler


def _wrap_stream_response(
    behavior: Behavior,
    method: str,
    recorder: CallRecorder,
    *,
    tracing: Tracing | None,
    held: _Held,
    shedding: DeadlineShedding,
    streaming_request: bool,
) -> Behavior:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = _ServerCall(context, method, tracing)
        held.count += 1
        try:
            shedding.check(method, call.remaining)
            request_or_iterator = call.admit(request_or_iterator, streaming_request=streaming_request)
            produced = behavior(request_or_iterator, context)
            if inspect.isawaitable(produced):  # a behavior that writes with context.write()
                await produced
            else:
                async for item in produced:
                    yield item
            call.succeeded()
        except BaseException as exc:  # every outcome must be mapped and counted
            await call.fail(exc)
        finally:
            held.count -= 1
            call.finish()
            recorder.record(call.code, call.started, call.exemplar)

    return handler


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """The one server interceptor of every service (see the module docstring)."""

    def __init__(self, metrics: RpcMetrics, shedding: DeadlineShedding, tracing: Tracing | None = None) -> None:
        self._metrics = metrics
        self._shedding = shedding
        self._tracing = tracing
        self._held = _Held()
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    @property
    def held(self) -> int:
        """Calls the wrapped handlers hold now: begun and not yet ended."""
        return self._held.count

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._cache[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        recorder = CallRecorder(self._metrics, method)
        kwargs = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        around: dict[str, Any] = {"tracing": self._tracing, "held": self._held, "shedding": self._shedding}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(handler.unary_unary, method, recorder, **around, streaming_request=False),
                **kwargs,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(handler.stream_unary, method, recorder, **around, streaming_request=True),
                **kwargs,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_response(handler.unary_stream, method, recorder, **around, streaming_request=False),
                **kwargs,
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream_response(handler.stream_stream, method, recorder, **around, streaming_request=True),
            **kwargs,
        )
