"""The inference data plane: the Open Inference Protocol (KServe v2) exactly as Triton serves it.

The servicer implements Triton's ``inference.GRPCInferenceService`` with the generated modules
tritonclient ships, so Triton's own clients and perf_analyzer work against the gateway
unchanged. ``ModelInfer`` resolves the version through the :class:`~.routing.Router` (empty
version: the traffic policy; a number or an alias pins; ``churn@canary`` or the ``alias``
parameter too), validates the request against that version's schema, and forwards it through
the :class:`~.pool.WorkerPool`. Tensor contents pass through as bytes: ``ModelInfer`` is
registered without serializers (:func:`add_to_server`), the request is parsed only to read what
routing and validation need (raw contents are measured in place, never copied or decoded), the
bytes the caller sent go to Triton readdressed by a field appended to them (:mod:`.wire`), and
Triton's answer comes back as the bytes Triton sent, with the model and the version that served
appended the same way. Only a request carrying the gateway's own ``alias`` parameter is
re-encoded (without it). A mirrored request reuses the same bytes for its shadow version in the
background; the shadow's answer is reported, never returned, and cannot slow or fail the primary.

Model management through this protocol (RepositoryModelLoad/Unload) is refused: versions are
deployed through ``infermesh.modelgateway.v1.ModelControlService``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infermesh_chassis import context as ctx
from infermesh_chassis import tracing
from infermesh_chassis.errors import (
    FailedPrecondition,
    InfermeshError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from infermesh_chassis.events import EventEmitter, EventSource
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.validation import bound_message, check_fields, shown
from infermesh_model_gateway.domain import ModelVersionRecord, VersionState
from infermesh_model_gateway.events import InferencePayload, ShadowPayload
from infermesh_model_gateway.pool import WorkerPool
from infermesh_model_gateway.routing import Router, deprecation_warning
from infermesh_model_gateway.settings import InferenceSettings
from infermesh_model_gateway.validation import RequestValidator
from infermesh_model_gateway.wire import string_field

__all__ = ["InferenceServicer", "add_to_server"]

SERVICE = "inference.GRPCInferenceService"
_MODEL_NAME, _MODEL_VERSION = 1, 2
"""The fields that address a ModelInferRequest and name who answered a ModelInferResponse."""

_log = get_logger("infermesh_model_gateway.dataplane")


class _Target:
    """What the data plane keeps per version it forwards to: its validator, the bytes that readdress
    a request to its Triton model, and the bytes that name it in an answer."""

    __slots__ = ("answered_by", "record", "to_triton", "triton_name", "validator")

    def __init__(self, record: ModelVersionRecord, max_request_bytes: int) -> None:
        self.record = record
        self.triton_name = record.triton_name
        self.validator = RequestValidator(record, max_request_bytes)
        self.to_triton = string_field(_MODEL_NAME, self.triton_name) + string_field(_MODEL_VERSION, "")
        self.answered_by = string_field(_MODEL_NAME, record.model) + string_field(_MODEL_VERSION, str(record.version))


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """KServe v2 over gRPC in front of the worker pool (see the module docstring)."""

    def __init__(
        self,
        router: Router,
        pool: WorkerPool,
        settings: InferenceSettings,
        metrics: Metrics,
        *,
        emitter: EventEmitter | None = None,
        instance: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self._router = router
        self._pool = pool
        self._settings = settings
        self._emitter = emitter
        self._source = EventSource("model-gateway", instance)
        self._rng = rng or random.Random()
        self._targets: dict[str, _Target] = {}
        self._shadows: set[asyncio.Task[None]] = set()
        self._served = metrics.counter("inferences", "Inferences served, by model and version.", ("model", "version"))
        self._shadowed = metrics.counter("shadow_requests", "Mirrored requests sent to a shadow version.", ("model",))
        self._shadow_skipped = metrics.counter(
            "shadow_skipped", "Mirrored requests skipped because too many were in flight.", ("model",)
        )
        self._shadow_failed = metrics.counter("shadow_failures", "Mirrored requests that failed.", ("model",))
        self._refused = metrics.counter(
            "inferences_refused", "Inferences refused because their version had too many in flight.", ("model",)
        )

    def _target(self, record: ModelVersionRecord) -> _Target:
        target = self._targets.get(record.triton_name)
        if target is None or target.record is not record:
            target = self._targets[record.triton_name] = _Target(record, self._settings.max_request_bytes)
        return target

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self._settings.default_timeout_s if remaining is None else max(0.001, remaining)

    @staticmethod
    def _param(request: service_pb2.ModelInferRequest, name: str) -> str:
        if name not in request.parameters:
            return ""
        value = request.parameters[name]
        kind = value.WhichOneof("parameter_choice")
        return "" if kind is None else str(getattr(value, kind))

    def _routing_key(self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext) -> str | None:
        key_name = self._router.sticky_key(request.model_name)
        if not key_name:
            return None
        key = self._param(request, key_name)
        if key:
            return key
        for meta_key, value in context.invocation_metadata() or ():
            if meta_key == key_name.lower():
                return value if isinstance(value, str) else value.decode()
        return None

    async def infer_bytes(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Route, validate, forward, and report one serialized ModelInferRequest; Triton's serialized
        answer naming the model and the version that served."""
        try:
            request = service_pb2.ModelInferRequest.FromString(payload)
        except DecodeError:
            raise InvalidArgument(
                "the request is not a valid inference.ModelInferRequest (protobuf encoding); "
                "check the client's contract version"
            ) from None
        check_fields(request)  # registered without a deserializer, so the chassis saw only bytes
        return await self._infer(request, payload, context)

    async def _infer(
        self, request: service_pb2.ModelInferRequest, payload: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        started = time.perf_counter()
        alias = self._param(request, "alias")
        route = self._router.resolve(
            request.model_name, request.model_version, alias=alias, routing_key=self._routing_key(request, context)
        )
        primary = self._target(route.primary)
        record = primary.record
        primary.validator.validate(request, payload)
        limit = self._settings.max_in_flight_per_version
        if self._pool.in_flight(primary.triton_name) >= limit:
            self._refused.labels(record.model).inc()
            raise ResourceExhausted(
                f"model '{record.model}' version {record.version} already has {limit} inferences in flight "
                "through this gateway (inference.max_in_flight_per_version); retry after a short backoff",
                retry_after_s=self._settings.overload_retry_after_s,
            )
        traced = tracing.active()
        if traced:
            tracing.annotate(
                **{
                    "infermesh.model": record.model,
                    "infermesh.model_version": record.version,
                    "infermesh.route": "pinned" if route.pinned else "traffic_policy",
                    "infermesh.alias": alias,
                    "infermesh.shadow_version": route.shadow.version if route.shadow is not None else 0,
                }
            )
        if route.pinned and record.deprecated_until is not None:
            context.set_trailing_metadata(((self._settings.deprecation_header, deprecation_warning(record)),))
        if alias:  # the gateway's own parameter is not Triton's: the one case that re-encodes the request
            del request.parameters["alias"]
            payload = request.SerializeToString()
        try:
            if traced:
                with tracing.span("worker_call", **{"infermesh.triton_model": primary.triton_name}) as span:
                    try:
                        reply = await self._pool.infer_bytes(
                            primary.triton_name, payload + primary.to_triton, timeout_s=self._timeout(context)
                        )
                    except InfermeshError as exc:
                        tracing.failed(span, f"{exc.status_code.name}: {exc.message}")
                        raise
            else:
                reply = await self._pool.infer_bytes(
                    primary.triton_name, payload + primary.to_triton, timeout_s=self._timeout(context)
                )
        except InfermeshError as exc:
            self._report(record, request, None, started, exc)
            raise
        self._served.labels(record.model, str(record.version)).inc()
        reply += primary.answered_by
        if route.shadow is not None:
            self._mirror(
                route.shadow,
                request,
                payload,
                primary=record,
                reply=reply,
                primary_latency_ms=(time.perf_counter() - started) * 1000,
            )
        if self._emitter is not None:
            self._report(record, request, reply, started, None)
        return reply

    def _report(
        self,
        record: ModelVersionRecord,
        request: service_pb2.ModelInferRequest,
        response: bytes | None,
        started: float,
        error: InfermeshError | None,
    ) -> None:
        if self._emitter is None:
            return
        payload = InferencePayload(
            record,
            request,
            response,
            latency_ms=(time.perf_counter() - started) * 1000,
            status_code=error.status_code.value[0] if error is not None else 0,
            error_message=error.message if error is not None else "",
            sample=self._rng.random() < self._settings.event_input_sample_rate,
        )
        self._emitter.emit(self._source, payload)

    def _mirror(
        self,
        shadow: ModelVersionRecord,
        request: service_pb2.ModelInferRequest,
        payload: bytes,
        *,
        primary: ModelVersionRecord,
        reply: bytes,
        primary_latency_ms: float,
    ) -> None:
        if len(self._shadows) >= self._settings.shadow_max_in_flight:
            self._shadow_skipped.labels(primary.model).inc()
            return
        self._shadowed.labels(primary.model).inc()
        task = asyncio.get_running_loop().create_task(
            self._run_shadow(
                shadow, request, payload, primary=primary, primary_reply=reply, primary_latency_ms=primary_latency_ms
            )
        )
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _run_shadow(
        self,
        shadow: ModelVersionRecord,
        request: service_pb2.ModelInferRequest,
        payload: bytes,
        *,
        primary: ModelVersionRecord,
        primary_reply: bytes,
        primary_latency_ms: float,
    ) -> None:
        """Send the primary's request bytes, readdressed, to the shadow version and report both answers."""
        started = time.perf_counter()
        response: bytes | None = None
        error: tuple[int, str] | None = None
        with tracing.span(
            "mirror", **{"infermesh.model": primary.model, "infermesh.shadow_version": shadow.version}
        ) as span:
            try:
                target = self._target(shadow)
                target.validator.validate(request, payload)
                response = await self._pool.infer_bytes(
                    target.triton_name, payload + target.to_triton, timeout_s=self._settings.shadow_timeout_s
                )
            except InfermeshError as exc:
                self._shadow_failed.labels(primary.model).inc()
                error = (exc.status_code.value[0], exc.message)
            except Exception as exc:  # a shadow must never take anything down with it
                self._shadow_failed.labels(primary.model).inc()
                _log.exception("shadow_failed", model=primary.model, shadow_version=shadow.version)
                error = (grpc.StatusCode.INTERNAL.value[0], str(exc))
            if error is not None:
                tracing.failed(span, error[1])
        if self._emitter is not None:
            latency_ms = (time.perf_counter() - started) * 1000
            event = ShadowPayload(
                primary,
                primary_reply,
                primary_latency_ms=primary_latency_ms,
                shadow=shadow,
                shadow_response=response,
                shadow_latency_ms=latency_ms,
                error=error,
            )
            self._emitter.emit(self._source, event)

    async def drain_shadows(self) -> None:
        """Wait for mirrored requests still in flight (at shutdown)."""
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)

    # --- KServe v2 RPCs -------------------------------------------------------------------------

    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Registered without serializers by :func:`add_to_server`: the request and the answer are bytes."""
        return await self.infer_bytes(request, context)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[service_pb2.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        async for request in request_iterator:
            try:
                check_fields(request)
                reply = await self._infer(request, request.SerializeToString(), context)
            except InfermeshError as exc:
                yield service_pb2.ModelStreamInferResponse(error_message=bound_message(exc.message))
                continue
            except Exception:  # one bad item answers with an error; the stream goes on
                _log.exception("stream_item_failed", model=shown(request.model_name))
                yield service_pb2.ModelStreamInferResponse(
                    error_message=f"internal error (request id {ctx.current_request_id()})"
                )
                continue
            answer = service_pb2.ModelStreamInferResponse()
            answer.infer_response.ParseFromString(reply)
            yield answer

    async def ServerLive(
        self, request: service_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerReadyResponse:
        now = time.monotonic()
        return service_pb2.ServerReadyResponse(ready=any(w.available(now) for w in self._pool.workers))

    async def ServerMetadata(
        self, request: service_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerMetadataResponse:
        return service_pb2.ServerMetadataResponse(
            name=self._settings.server_name,
            version=self._settings.server_version,
            extensions=["model_configuration", "statistics", "parameters"],
        )

    async def ModelReady(
        self, request: service_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelReadyResponse:
        try:
            record = self._router.version(request.name, request.version)
        except FailedPrecondition:
            return service_pb2.ModelReadyResponse(ready=False)
        ready = record.state is VersionState.SERVING and bool(self._pool.candidates(record.triton_name))
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ModelMetadata(
        self, request: service_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelMetadataResponse:
        record = self._router.version(request.name, request.version)
        batching = record.deployment.max_batch_size > 0

        def meta(tensors: tuple[Any, ...]) -> list[service_pb2.ModelMetadataResponse.TensorMetadata]:
            return [
                service_pb2.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=t.datatype, shape=[-1, *t.shape] if batching else list(t.shape)
                )
                for t in tensors
            ]

        return service_pb2.ModelMetadataResponse(
            name=record.model,
            versions=[str(v.version) for v in self._router.serving_versions(record.model)],
            platform=record.format.value,
            inputs=meta(record.inputs),
            outputs=meta(record.outputs),
        )

    async def ModelConfig(
        self, request: service_pb2.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelConfigResponse:
        record = self._router.version(request.name, request.version)
        workers = self._pool.candidates(record.triton_name)
        if not workers:
            raise Unavailable(f"no healthy worker has version {record.version} of model '{record.model}' ready")
        reply: service_pb2.ModelConfigResponse = await self._pool.call(
            workers[0], "ModelConfig", service_pb2.ModelConfigRequest(name=record.triton_name)
        )
        reply.config.name = record.model
        return reply

    async def ModelStatistics(
        self, request: service_pb2.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelStatisticsResponse:
        if request.name:
            records = (
                [self._router.version(request.name, request.version)]
                if request.version
                else self._router.serving_versions(request.name)
            )
        else:
            records = [v for m in self._router.models() for v in self._router.serving_versions(m)]
        merged: dict[str, service_pb2.ModelStatistics] = {}
        for record in records:
            stats = service_pb2.ModelStatistics(name=record.model, version=str(record.version))
            for worker in self._pool.candidates(record.triton_name):
                reply = await self._pool.call(
                    worker, "ModelStatistics", service_pb2.ModelStatisticsRequest(name=record.triton_name)
                )
                for part in reply.model_stats:
                    _add_statistics(stats, part)
            merged[record.triton_name] = stats
        return service_pb2.ModelStatisticsResponse(model_stats=list(merged.values()))

    async def RepositoryIndex(
        self, request: service_pb2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryIndexResponse:
        models = []
        for name in self._router.models():
            for record in self._router.serving_versions(name):
                ready = bool(self._pool.candidates(record.triton_name))
                if request.ready and not ready:
                    continue
                models.append(
                    service_pb2.RepositoryIndexResponse.ModelIndex(
                        name=name, version=str(record.version), state="READY" if ready else "UNAVAILABLE"
                    )
                )
        return service_pb2.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(
        self, request: service_pb2.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryModelLoadResponse:
        raise Unimplemented(
            "models are deployed through infermesh.modelgateway.v1.ModelControlService/DeployModelVersion"
        )

    async def RepositoryModelUnload(
        self, request: service_pb2.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryModelUnloadResponse:
        raise Unimplemented(
            "models are undeployed through infermesh.modelgateway.v1.ModelControlService/UndeployModelVersion"
        )


def _add_statistics(into: service_pb2.ModelStatistics, part: service_pb2.ModelStatistics) -> None:
    """Sum one worker's statistics for a model into the gateway's."""
    into.inference_count += part.inference_count
    into.execution_count += part.execution_count
    into.last_inference = max(into.last_inference, part.last_inference)
    for field in (
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    ):
        mine, theirs = getattr(into.inference_stats, field), getattr(part.inference_stats, field)
        mine.count += theirs.count
        mine.ns += theirs.ns
    batches = {b.batch_size: b for b in into.batch_stats}
    for theirs in part.batch_stats:
        mine = batches.get(theirs.batch_size)
        if mine is None:
            into.batch_stats.add().CopyFrom(theirs)
            continue
        for field in ("compute_input", "compute_infer", "compute_output"):
            getattr(mine, field).count += getattr(theirs, field).count
            getattr(mine, field).ns += getattr(theirs, field).ns


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` as tritonclient's generated ``add_GRPCInferenceServiceServicer_to_server``
    does, from the same service descriptor, except that ModelInfer has no serializers: it takes and
    returns serialized messages, so that tensor contents pass through untouched."""
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service_pb2.DESCRIPTOR.services_by_name[SERVICE.rpartition(".")[2]].methods:
        behavior = getattr(servicer, method.name)
        factory = factories[(method.client_streaming, method.server_streaming)]
        if method.name == "ModelInfer":
            handlers[method.name] = factory(behavior)
            continue
        handlers[method.name] = factory(
            behavior,
            request_deserializer=getattr(service_pb2, method.input_type.name).FromString,
            response_serializer=getattr(service_pb2, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
