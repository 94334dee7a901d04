"""The Thrift front for legacy callers: the ``BizCenter`` service of biz_center.thrift over thriftpy2.

Same core, same semantics as the gRPC front: credentials, the deadline and the caller's W3C trace
context (``traceparent``: the call joins that trace; absent or malformed starts a new one) travel in
``CallOptions``, the request id in the request (or a new one). With tracing on, each call is one SERVER
span like a gRPC call's, and a traced answer names its ``trace_id``. Errors become the IDL's
exceptions: INVALID_ARGUMENT → InvalidRequest (with the field), NOT_FOUND → NotFound,
UNAUTHENTICATED → Unauthenticated, PERMISSION_DENIED → PermissionDenied, RESOURCE_EXHAUSTED →
RateLimited (with retry_after_ms), UNAVAILABLE and DEADLINE_EXCEEDED → Unavailable, anything
else → InternalError. The server runs in the service's event loop (binary protocol; buffered
or framed transport as configured; TLS, mutual with a CA, when configured) and drains
in-flight calls on shutdown.

Every connection is bounded (``ThriftSettings``; see :mod:`.thrift_wire`): a request larger than
``max_message_bytes``, a declared string over ``max_string_bytes``, an unknown type or a
container larger than its request could hold closes the connection before what it declares is
read; so does a connection idle for ``idle_timeout_s``, a request not whole within
``request_timeout_s`` of its first byte, or an answer not taken in that time. Beyond
``max_connections`` open ones, a new connection is closed at once.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import thriftpy2
from thriftpy2.contrib.aio.processor import TAsyncProcessor
from thriftpy2.contrib.aio.protocol.binary import TAsyncBinaryProtocol
from thriftpy2.contrib.aio.transport.buffered import TAsyncBufferedTransport
from thriftpy2.contrib.aio.transport.framed import TAsyncFramedTransport
from thriftpy2.thrift import TException

from infermesh.common.v1 import common_pb2
from infermesh_biz_center.auth import Authenticator
from infermesh_biz_center.domain import PredictInput, PredictOutcome, Principal, error_field
from infermesh_biz_center.predictor import Predictor
from infermesh_biz_center.settings import ThriftSettings
from infermesh_biz_center.thrift_wire import Limits, MemoryTransport, Refused, Stream, read_message
from infermesh_biz_center.tls import server_ssl_context
from infermesh_chassis import context as ctx
from infermesh_chassis import tracing as tr
from infermesh_chassis.errors import InfermeshError, ResourceExhausted
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics

__all__ = ["IDL", "ThriftFront", "load_idl"]

T = TypeVar("T")

_log = get_logger("infermesh_biz_center.thrift_front")


def load_idl() -> Any:
    """The thriftpy2 module of biz_center.thrift (the copy generated into infermesh-protos)."""
    path = importlib.resources.files("infermesh.bizcenter.v1") / "biz_center.thrift"
    with importlib.resources.as_file(path) as idl:
        return thriftpy2.load(str(idl), module_name="biz_center_thrift")


IDL = load_idl()


def _value(value: Any) -> common_pb2.Value:
    if value.double_value is not None:
        return common_pb2.Value(double_value=value.double_value)
    if value.int_value is not None:
        return common_pb2.Value(int64_value=value.int_value)
    if value.string_value is not None:
        return common_pb2.Value(string_value=value.string_value)
    if value.bool_value is not None:
        return common_pb2.Value(bool_value=value.bool_value)
    return common_pb2.Value(null_value=0)


def _input(request: Any) -> PredictInput:
    features: Mapping[str, Any] = request.features or {}
    return PredictInput(
        scene=request.scene or "",
        unit_id=request.unit_id or "",
        features={name: _value(value) for name, value in features.items()},
        attributes=dict(request.attributes or {}),
        request_id=request.request_id or "",
    )


def _response(outcome: PredictOutcome) -> Any:
    degradation = outcome.degradation
    return IDL.PredictResponse(
        request_id=outcome.request_id,
        scores=dict(outcome.prediction.scores),
        label=outcome.prediction.label or None,
        variant=outcome.variant,
        model_name=outcome.model,
        model_version=outcome.model_version,
        degraded=degradation.degraded,
        degraded_reason=degradation.reason,
        degraded_detail=degradation.detail or None,
        scene=outcome.scene,
    )


_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: "INVALID_REQUEST",
    grpc.StatusCode.NOT_FOUND: "NOT_FOUND",
    grpc.StatusCode.UNAUTHENTICATED: "UNAUTHENTICATED",
    grpc.StatusCode.PERMISSION_DENIED: "PERMISSION_DENIED",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "RATE_LIMITED",
    grpc.StatusCode.UNAVAILABLE: "UNAVAILABLE",
    grpc.StatusCode.DEADLINE_EXCEEDED: "UNAVAILABLE",
}


def _retry_after_ms(error: InfermeshError) -> int:
    if isinstance(error, ResourceExhausted) and error.retry_after_s is not None:
        return max(1, round(error.retry_after_s * 1000))
    return 0


def _exception(error: InfermeshError) -> Exception:
    """The IDL exception of a core error."""
    code = _CODES.get(error.status_code, "INTERNAL_ERROR")
    if code == "INVALID_REQUEST":
        return IDL.InvalidRequest(message=error.message, field_name=error_field(error.message) or None)
    if code == "RATE_LIMITED":
        return IDL.RateLimited(message=error.message, retry_after_ms=_retry_after_ms(error))
    cls = {
        "NOT_FOUND": IDL.NotFound,
        "UNAUTHENTICATED": IDL.Unauthenticated,
        "PERMISSION_DENIED": IDL.PermissionDenied,
        "UNAVAILABLE": IDL.Unavailable,
    }.get(code, IDL.InternalError)
    return cls(message=error.message)  # type: ignore[no-any-return]


def _error(error: InfermeshError) -> Any:
    code = _CODES.get(error.status_code, "INTERNAL_ERROR")
    return IDL.PredictError(
        code=getattr(IDL.ErrorCode, code),
        message=error.message,
        retry_after_ms=_retry_after_ms(error) or None,
    )


class _Handler:
    """The methods of the ``BizCenter`` Thrift service."""

    def __init__(
        self, predictor: Predictor, auth: Authenticator, metrics: Metrics, tracing: tr.Tracing | None = None
    ) -> None:
        self._predictor = predictor
        self._tracing = tracing
        self._auth = auth
        self._calls = metrics.counter(
            "thrift_requests", "Thrift calls handled, by method and outcome.", ("method", "outcome")
        )
        self._latency = metrics.histogram("thrift_latency_seconds", "Latency of Thrift calls, by method.", ("method",))
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def _call(self, method: str, options: Any, request_id: str, body: Callable[[Principal], Awaitable[T]]) -> T:
        started = time.perf_counter()
        deadline_ms = getattr(options, "deadline_ms", None)
        deadline = time.monotonic() + deadline_ms / 1000 if deadline_ms else None
        call = ctx.CallContext(request_id, deadline, f"thrift:{method}", self._tracing)
        token = ctx.bind(call)
        span = span_token = None
        if self._tracing is not None:
            traceparent = getattr(options, "traceparent", None)
            span, span_token = self._tracing.start_server(
                f"BizCenter/{method}", traceparent, request_id, call, "thrift"
            )
        self.in_flight += 1
        self.idle.clear()
        outcome = "ok"
        code = grpc.StatusCode.OK
        try:
            principal = self._auth.authenticate(
                getattr(options, "api_key", None), getattr(options, "bearer_token", None)
            )
            return await body(principal)
        except InfermeshError as exc:
            code = exc.status_code
            outcome = _CODES.get(exc.status_code, "INTERNAL_ERROR").lower()
            if outcome == "internal_error":
                _log.error("thrift_internal_error", method=method, error=exc.message)
            raise _exception(exc) from None
        except Exception:
            code = grpc.StatusCode.INTERNAL
            outcome = "internal_error"
            _log.exception("thrift_unhandled_exception", method=method)
            raise IDL.InternalError(message=f"internal error (request id {request_id})") from None
        finally:
            if span is not None and span_token is not None:
                tr.Tracing.end_server(span, span_token, code)
            ctx.unbind(token)
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()
            self._calls.labels(method, outcome).inc()
            self._latency.labels(method).observe(time.perf_counter() - started)

    async def predict(self, request: Any, options: Any) -> Any:
        """Predict for one unit in one scene."""
        inp = _input(request)
        request_id = inp.request_id or ctx.new_request_id()

        async def body(principal: Principal) -> Any:
            response = _response(await self._predictor.predict(principal, inp, request_id))
            if self._tracing is not None:
                ids = tr.current_ids()
                response.trace_id = None if ids is None else ids[0]
            return response

        return await self._call("predict", options, request_id, body)

    async def predictBatch(self, requests: Any, options: Any) -> Any:
        """Predict for many units; one result per item."""
        items = [_input(r) for r in requests or ()]
        request_id = ctx.new_request_id()

        async def body(principal: Principal) -> Any:
            results = await self._predictor.predict_batch(principal, items, request_id)
            return [
                IDL.PredictResult(error=_error(r))
                if isinstance(r, InfermeshError)
                else IDL.PredictResult(response=_response(r))
                for r in results
            ]

        return await self._call("predictBatch", options, request_id, body)


class ThriftFront:
    """The Thrift server (see the module docstring)."""

    def __init__(
        self,
        predictor: Predictor,
        auth: Authenticator,
        settings: ThriftSettings,
        metrics: Metrics,
        tracing: tr.Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._handler = _Handler(predictor, auth, metrics, tracing)
        self._processor = TAsyncProcessor(IDL.BizCenter, self._handler)
        self._limits = Limits(
            max_message_bytes=settings.max_message_bytes,
            max_string_bytes=settings.max_string_bytes,
            idle_timeout_s=settings.idle_timeout_s,
            request_timeout_s=settings.request_timeout_s,
        )
        self._ssl = server_ssl_context(settings.tls) if settings.tls is not None else None
        self._connections: set[Stream] = set()
        self._open = metrics.gauge("thrift_connections", "Open Thrift connections.")
        self._closed = metrics.counter(
            "thrift_connections_closed",
            "Thrift connections closed, by why: closed (by the peer), idle, slow, too_large, malformed, "
            "limit (refused: too many open), error.",
            ("why",),
        )
        self._listener: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        """Bind and serve in the running event loop."""
        self._listener = await asyncio.start_server(
            self._serve,
            self._settings.host,
            self._settings.port,
            ssl=self._ssl,
            ssl_handshake_timeout=self._settings.idle_timeout_s if self._ssl is not None else None,
        )
        self.port = int(self._listener.sockets[0].getsockname()[1])
        _log.info(
            "thrift_server_started",
            address=f"{self._settings.host}:{self.port}",
            transport=self._settings.transport,
            tls=self._settings.tls is not None,
        )

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests one after another, each read under the limits, until it ends."""
        if len(self._connections) >= self._settings.max_connections:
            writer.close()
            self._closed.labels("limit").inc()
            return
        framed = self._settings.transport == "framed"
        stream = Stream(reader, writer, self._limits, framed=framed)
        self._connections.add(stream)
        self._open.set(len(self._connections))
        oprot = TAsyncBinaryProtocol(TAsyncFramedTransport(stream) if framed else TAsyncBufferedTransport(stream))
        why = "closed"
        try:
            while True:
                await stream.next_request()
                message = await read_message(stream, self._limits)
                iprot = TAsyncBinaryProtocol(MemoryTransport(message), strict_decode=True)
                await self._processor.process(iprot, oprot)
        except EOFError:
            pass
        except Refused as exc:
            why = exc.reason
            if why != "closed":
                _log.info("thrift_connection_dropped", why=why, detail=str(exc), peer=_peer(writer))
        except (TException, UnicodeDecodeError) as exc:
            why = "malformed"
            _log.info("thrift_connection_dropped", why=why, detail=str(exc)[:200], peer=_peer(writer))
        except Exception:
            why = "error"
            _log.exception("thrift_connection_error", peer=_peer(writer))
        finally:
            self._connections.discard(stream)
            self._open.set(len(self._connections))
            self._closed.labels(why).inc()
            stream.close()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting connections, let in-flight calls finish within ``grace_s``, then close every connection."""
        if self._listener is None:
            return
        self._listener.close()
        self._listener = None
        try:
            await asyncio.wait_for(self._handler.idle.wait(), grace_s)
        except TimeoutError:
            _log.warning("thrift_drain_timeout", in_flight=self._handler.in_flight)
        for stream in list(self._connections):
            stream.close()
        _log.info("thrift_server_stopped")


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
