"""The inference data plane: the Open Inference Protocol (KServe v2) exactly as Triton serves it.

The servicer implements Triton's ``inference.GRPCInferenceService`` with the generated modules
tritonclient ships, so Triton's own clients and perf_analyzer work against the gateway
unchanged. ``ModelInfer`` resolves the version through the :class:`~.routing.Router` (empty
version: the traffic policy; a number or an alias pins; ``churn@canary`` or the ``alias``
parameter too), validates the request against that version's schema, readdresses it to the
version's Triton model and forwards it through the :class:`~.pool.WorkerPool` with the tensor
bytes untouched. The response names the model and the version that served it. A mirrored
request is copied to its shadow version in the background; the shadow's answer is reported,
never returned, and cannot slow or fail the primary.

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
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infermesh_chassis import context as ctx
from infermesh_chassis.errors import (
    FailedPrecondition,
    InfermeshError,
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

__all__ = ["InferenceServicer"]

_log = get_logger("infermesh_model_gateway.dataplane")


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
        self._validators: dict[str, tuple[ModelVersionRecord, RequestValidator]] = {}
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

    def _validator(self, record: ModelVersionRecord) -> RequestValidator:
        cached = self._validators.get(record.triton_name)
        if cached is not None and cached[0] is record:
            return cached[1]
        validator = RequestValidator(record, self._settings.max_request_bytes)
        self._validators[record.triton_name] = (record, validator)
        return validator

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

    async def infer(
        self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelInferResponse:
        """Route, validate, forward, and report one inference (shared by unary and streaming calls)."""
        started = time.perf_counter()
        requested = request.model_name
        alias = self._param(request, "alias")
        route = self._router.resolve(
            requested, request.model_version, alias=alias, routing_key=self._routing_key(request, context)
        )
        primary = route.primary
        self._validator(primary).validate(request)
        limit = self._settings.max_in_flight_per_version
        if self._pool.in_flight(primary.triton_name) >= limit:
            self._refused.labels(primary.model).inc()
            raise ResourceExhausted(
                f"model '{primary.model}' version {primary.version} already has {limit} inferences in flight "
                "through this gateway (inference.max_in_flight_per_version); retry after a short backoff",
                retry_after_s=self._settings.overload_retry_after_s,
            )
        if route.pinned and primary.deprecated_until is not None:
            context.set_trailing_metadata(((self._settings.deprecation_header, deprecation_warning(primary)),))
        if alias:
            del request.parameters["alias"]
        shadow_request = None
        if route.shadow is not None:
            shadow_request = service_pb2.ModelInferRequest()
            shadow_request.CopyFrom(request)
        request.model_name = primary.triton_name
        request.model_version = ""
        try:
            response = await self._pool.infer(primary.triton_name, request, timeout_s=self._timeout(context))
        except InfermeshError as exc:
            self._report(primary, request, None, started, exc)
            raise
        response.model_name = primary.model
        response.model_version = str(primary.version)
        self._served.labels(primary.model, response.model_version).inc()
        latency_ms = (time.perf_counter() - started) * 1000
        if shadow_request is not None and route.shadow is not None:
            self._mirror(route.shadow, shadow_request, primary, response, latency_ms)
        self._report(primary, request, response, started, None)
        return response

    def _report(
        self,
        record: ModelVersionRecord,
        request: service_pb2.ModelInferRequest,
        response: service_pb2.ModelInferResponse | None,
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
        primary: ModelVersionRecord,
        response: service_pb2.ModelInferResponse,
        primary_latency_ms: float,
    ) -> None:
        if len(self._shadows) >= self._settings.shadow_max_in_flight:
            self._shadow_skipped.labels(primary.model).inc()
            return
        self._shadowed.labels(primary.model).inc()
        task = asyncio.get_running_loop().create_task(
            self._run_shadow(shadow, request, primary, response, primary_latency_ms)
        )
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _run_shadow(
        self,
        shadow: ModelVersionRecord,
        request: service_pb2.ModelInferRequest,
        primary: ModelVersionRecord,
        primary_response: service_pb2.ModelInferResponse,
        primary_latency_ms: float,
    ) -> None:
        started = time.perf_counter()
        response: service_pb2.ModelInferResponse | None = None
        error: tuple[int, str] | None = None
        try:
            self._validator(shadow).validate(request)
            request.model_name = shadow.triton_name
            request.model_version = ""
            response = await self._pool.infer(shadow.triton_name, request, timeout_s=self._settings.shadow_timeout_s)
        except InfermeshError as exc:
            self._shadow_failed.labels(primary.model).inc()
            error = (exc.status_code.value[0], exc.message)
        except Exception as exc:  # a shadow must never take anything down with it
            self._shadow_failed.labels(primary.model).inc()
            _log.exception("shadow_failed", model=primary.model, shadow_version=shadow.version)
            error = (grpc.StatusCode.INTERNAL.value[0], str(exc))
        if self._emitter is not None:
            latency_ms = (time.perf_counter() - started) * 1000
            payload = ShadowPayload(
                primary,
                primary_response,
                primary_latency_ms=primary_latency_ms,
                shadow=shadow,
                shadow_response=response,
                shadow_latency_ms=latency_ms,
                error=error,
            )
            self._emitter.emit(self._source, payload)

    async def drain_shadows(self) -> None:
        """Wait for mirrored requests still in flight (at shutdown)."""
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)

    # --- KServe v2 RPCs -------------------------------------------------------------------------

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelInferResponse:
        return await self.infer(request, context)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[service_pb2.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        async for request in request_iterator:
            try:
                check_fields(request)
                response = await self.infer(request, context)
            except InfermeshError as exc:
                yield service_pb2.ModelStreamInferResponse(error_message=bound_message(exc.message))
                continue
            except Exception:  # one bad item answers with an error; the stream goes on
                _log.exception("stream_item_failed", model=shown(request.model_name))
                yield service_pb2.ModelStreamInferResponse(
                    error_message=f"internal error (request id {ctx.current_request_id()})"
                )
                continue
            yield service_pb2.ModelStreamInferResponse(infer_response=response)

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
