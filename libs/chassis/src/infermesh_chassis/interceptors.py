"""The server interceptor (request id, RED metrics, deadline capture, error mapping) and the RED recorder.

Server side, :class:`ServerInterceptor` wraps every handler once per method (cached) so
that each call

- takes the request id from ``x-request-id`` metadata (or creates one), makes it current for
  the call (every log line carries it, see :mod:`.logs`) and returns it in trailing metadata;
- records the caller's deadline so downstream calls can be bounded by it;
- maps :class:`~infermesh_chassis.errors.InfermeshError` to its status and message, and
  anything unexpected to INTERNAL with a generic message (the traceback goes to the log);
- counts requests, errors by status code, and latency.

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

from infermesh_chassis import context as ctx
from infermesh_chassis.errors import InfermeshError
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import RpcMetrics

__all__ = ["CallRecorder", "ServerInterceptor", "split_method"]

_log = get_logger("infermesh_chassis.interceptors")


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

    def record(self, code: grpc.StatusCode, started: float) -> None:
        """Count one call that ended with ``code``, begun at ``started`` (``time.perf_counter()``)."""
        self._requests.inc()
        self._latency.observe(time.perf_counter() - started)
        if code is not grpc.StatusCode.OK:
            child = self._error_children.get(code)
            if child is None:
                child = self._error_children[code] = self._errors.labels(*self._labels, code.name)
            child.inc()


class _ServerCall:
    """Everything the wrapped handler does around the servicer's behavior for one call."""

    __slots__ = ("_token", "code", "context", "request_id", "started")

    def __init__(self, context: grpc.aio.ServicerContext, method: str) -> None:
        self.context = context
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        rid = None
        for key, value in context.invocation_metadata() or ():
            if key == ctx.REQUEST_ID_METADATA_KEY:
                rid = value if isinstance(value, str) else value.decode()
                break
        self.request_id = rid or ctx.new_request_id()
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        self._token = ctx.bind(ctx.CallContext(self.request_id, deadline, method))

    def finish(self) -> None:
        ctx.unbind(self._token)

    def trailing(self, extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
        return ((ctx.REQUEST_ID_METADATA_KEY, self.request_id), *extra)

    def succeeded(self) -> None:
        self.context.set_trailing_metadata(self.trailing(tuple(self.context.trailing_metadata() or ())))
        explicit = self.context.code()
        if isinstance(explicit, grpc.StatusCode):
            self.code = explicit

    async def fail(self, exc: BaseException) -> None:
        """Turn an exception from the behavior into the call's status (always raises)."""
        if isinstance(exc, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            code = self.context.code()
            self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
            raise exc
        if isinstance(exc, InfermeshError):
            self.code = exc.status_code
            if exc.status_code is grpc.StatusCode.INTERNAL:
                _log.error("rpc_internal_error", error=exc.message)
            await self.context.abort(exc.status_code, exc.message, self.trailing(exc.metadata))
        if isinstance(exc, NotImplementedError):
            self.code = grpc.StatusCode.UNIMPLEMENTED
            await self.context.abort(self.code, "method not implemented by this service", self.trailing())
        self.code = grpc.StatusCode.INTERNAL
        _log.error("rpc_unhandled_exception", exc_info=exc)
        await self.context.abort(self.code, f"internal error (request id {self.request_id})", self.trailing())


Behavior = Callable[..., Any]


def _wrap_unary_response(behavior: Behavior, method: str, recorder: CallRecorder) -> Behavior:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _ServerCall(context, method)
        try:
            result = behavior(request_or_iterator, context)
            if inspect.isawaitable(result):
                result = await result
            call.succeeded()
            return result
        except BaseException as exc:  # every outcome must be mapped and counted
            await call.fail(exc)
        finally:
            call.finish()
            recorder.record(call.code, call.started)

    return handler


def _wrap_stream_response(behavior: Behavior, method: str, recorder: CallRecorder) -> Behavior:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = _ServerCall(context, method)
        try:
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
            call.finish()
            recorder.record(call.code, call.started)

    return handler


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """The one server interceptor of every service (see the module docstring)."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

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
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(handler.unary_unary, method, recorder), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(handler.stream_unary, method, recorder), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_response(handler.unary_stream, method, recorder), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream_response(handler.stream_stream, method, recorder), **kwargs
        )
