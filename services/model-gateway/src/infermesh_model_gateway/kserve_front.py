"""The KServe v2 gRPC front: the Open Inference Protocol exactly as Triton serves it.

The servicer implements Triton's ``inference.GRPCInferenceService`` with the generated modules
tritonclient ships, so Triton's own clients and perf_analyzer work against the gateway
unchanged. It only translates: it decodes a request, calls the :class:`~.inference.InferenceCore`
(which routes, admits, forwards, mirrors and reports), and encodes the answer; errors are the
chassis' and the server interceptor maps them to statuses. ``ModelInfer`` is registered without
serializers (:func:`add_to_server`): the request is parsed once, for the core to read what
routing and validation need, and the core forwards the bytes the caller sent and answers with the
bytes Triton sent (see :mod:`.inference`), so tensor contents pass through untouched. A caller
pinned to a deprecated version gets the core's warning in trailing metadata
(``inference.deprecation_header``).

Model management through this protocol (RepositoryModelLoad/Unload) is refused: versions are
deployed through ``infermesh.modelgateway.v1.ModelControlService``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infermesh_chassis import context as ctx
from infermesh_chassis.errors import InfermeshError, InvalidArgument, Unimplemented
from infermesh_chassis.logs import get_logger
from infermesh_chassis.validation import bound_message, check_fields, shown
from infermesh_model_gateway.inference import InferenceCore
from infermesh_model_gateway.settings import InferenceSettings

__all__ = ["InferenceServicer", "add_to_server"]

SERVICE = "inference.GRPCInferenceService"

_log = get_logger("infermesh_model_gateway.kserve_front")


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """KServe v2 over gRPC in front of the :class:`~.inference.InferenceCore` (see the module docstring)."""

    def __init__(self, core: InferenceCore, settings: InferenceSettings) -> None:
        self._core = core
        self._settings = settings

    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Registered without serializers by :func:`add_to_server`: the request and the answer are bytes."""
        try:
            message = service_pb2.ModelInferRequest.FromString(request)
        except DecodeError:
            raise InvalidArgument(
                "the request is not a valid inference.ModelInferRequest (protobuf encoding); "
                "check the client's contract version"
            ) from None
        check_fields(message)  # registered without a deserializer, so the chassis saw only bytes
        reply, warning = await self._core.infer(
            message, request, time_remaining=context.time_remaining(), headers=context.invocation_metadata
        )
        if warning:
            context.set_trailing_metadata(((self._settings.deprecation_header, warning),))
        return reply

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[service_pb2.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        async for request in request_iterator:
            try:
                check_fields(request)
                reply, warning = await self._core.infer(
                    request,
                    request.SerializeToString(),
                    time_remaining=context.time_remaining(),
                    headers=context.invocation_metadata,
                )
            except InfermeshError as exc:
                yield service_pb2.ModelStreamInferResponse(error_message=bound_message(exc.message))
                continue
            except Exception:  # one bad item answers with an error; the stream goes on
                _log.exception("stream_item_failed", model=shown(request.model_name))
                yield service_pb2.ModelStreamInferResponse(
                    error_message=f"internal error (request id {ctx.current_request_id()})"
                )
                continue
            if warning:
                context.set_trailing_metadata(((self._settings.deprecation_header, warning),))
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
        return service_pb2.ServerReadyResponse(ready=self._core.ready())

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
        return service_pb2.ModelReadyResponse(ready=self._core.model_ready(request.name, request.version))

    async def ModelMetadata(
        self, request: service_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelMetadataResponse:
        record = self._core.version(request.name, request.version)
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
            versions=[str(v.version) for v in self._core.serving_versions(record.model)],
            platform=record.format.value,
            inputs=meta(record.inputs),
            outputs=meta(record.outputs),
        )

    async def ModelConfig(
        self, request: service_pb2.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelConfigResponse:
        return await self._core.model_config(request.name, request.version)

    async def ModelStatistics(
        self, request: service_pb2.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelStatisticsResponse:
        merged: dict[str, service_pb2.ModelStatistics] = {}
        for record, parts in await self._core.statistics(request.name, request.version):
            stats = service_pb2.ModelStatistics(name=record.model, version=str(record.version))
            for part in parts:
                _add_statistics(stats, part)
            merged[record.triton_name] = stats
        return service_pb2.ModelStatisticsResponse(model_stats=list(merged.values()))

    async def RepositoryIndex(
        self, request: service_pb2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryIndexResponse:
        models = [
            service_pb2.RepositoryIndexResponse.ModelIndex(
                name=record.model, version=str(record.version), state="READY" if ready else "UNAVAILABLE"
            )
            for record, ready in self._core.index()
            if ready or not request.ready
        ]
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
