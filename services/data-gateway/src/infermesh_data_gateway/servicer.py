"""The gRPC servicer of ``infermesh.datagateway.v1.DataGatewayService``: decode, call the core, encode."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from infermesh.common.v1 import common_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as pb
from infermesh.datagateway.v1 import data_gateway_pb2_grpc
from infermesh_chassis.errors import InvalidArgument
from infermesh_chassis.validation import parse_uint
from infermesh_data_gateway import converters
from infermesh_data_gateway.gateway import DataGateway

__all__ = ["SERVICE_NAME", "DataGatewayServicer"]

SERVICE_NAME = "infermesh.datagateway.v1.DataGatewayService"
_ENGINES = {pb.BATCH_ENGINE_UNSPECIFIED: "", pb.BATCH_ENGINE_LOCAL: "local", pb.BATCH_ENGINE_SPARK: "spark"}
_DEFAULT_PAGE, _MAX_PAGE = 50, 500


def _engine(value: int) -> str:
    if value not in _ENGINES:
        raise InvalidArgument(f"engine: unknown batch engine {value}")
    return _ENGINES[value]


class DataGatewayServicer(data_gateway_pb2_grpc.DataGatewayServiceServicer):
    """Thin: every method validates through :class:`DataGateway` and encodes its answer."""

    def __init__(self, gateway: DataGateway) -> None:
        self.gateway = gateway
        self._heads: dict[tuple[str, str], bytes] = {}
        """Per (version, feature service): a GetFeaturesResponse without rows, serialized (one parse
        per call instead of a copy of each field message)."""

    async def GetFeatures(
        self, request: pb.GetFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetFeaturesResponse:
        result = await self.gateway.get_features(
            request.feature_service,
            converters.entities_from_proto(request.entities),
            request.routing_attributes,
            request.definition_version,
        )
        head = self._heads.get((result.version, result.service.name))
        if head is None:  # a version never changes, nor do its fields
            head = self._heads[(result.version, result.service.name)] = pb.GetFeaturesResponse(
                feature_service=result.service.name,
                definition_version=result.version,
                fields=converters.fields_to_proto(result.service),
            ).SerializeToString()
        response = pb.GetFeaturesResponse.FromString(head)
        converters.write_rows(response.rows, result.service, result.version, result.vectors)
        return response

    async def ListFeatureServices(
        self, request: pb.ListFeatureServicesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListFeatureServicesResponse:
        size = request.page.page_size or _DEFAULT_PAGE
        if size < 0:
            raise InvalidArgument("page.page_size must be >= 0")
        size = min(size, _MAX_PAGE)
        token = request.page.page_token
        offset = parse_uint(token, "page.page_token", what="a token this server returned") if token else 0
        services = self.gateway.list_services(request.name_prefix)
        page = services[offset : offset + size]
        next_token = str(offset + size) if offset + size < len(services) else ""
        return pb.ListFeatureServicesResponse(
            feature_services=[converters.summary_to_proto(d, s) for d, s in page],
            page=common_pb2.PageResponse(next_page_token=next_token),
        )

    async def DescribeFeatureService(
        self, request: pb.DescribeFeatureServiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeFeatureServiceResponse:
        definitions, service = self.gateway.service(request.name, request.definition_version)
        return pb.DescribeFeatureServiceResponse(
            feature_service=converters.describe_to_proto(
                definitions, service, self.gateway.sources(definitions.version)
            )
        )

    async def PushFeatures(
        self, request: pb.PushFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> pb.PushFeaturesResponse:
        written, skipped = await self.gateway.push(request.feature_view, converters.push_rows_from_proto(request.rows))
        return pb.PushFeaturesResponse(rows_written=written, rows_skipped=skipped)

    async def GetTrainingSet(
        self, request: pb.GetTrainingSetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GetTrainingSetResponse]:
        if request.chunk_rows < 0:
            raise InvalidArgument("chunk_rows must be >= 0")
        entities = converters.training_entities_from_proto(request)
        training = await self.gateway.training_set(
            request.feature_service, entities, request.definition_version, _engine(request.engine)
        )
        chunk_rows = request.chunk_rows or self.gateway.settings.training_chunk_rows
        for chunk in converters.training_chunks(training, request.format, chunk_rows):
            yield chunk

    async def MaterializeFeatureView(
        self, request: pb.MaterializeFeatureViewRequest, context: grpc.aio.ServicerContext
    ) -> pb.MaterializeFeatureViewResponse:
        result = await self.gateway.materialize(
            request.feature_view,
            converters.micros_of(request.start_time, request.HasField("start_time")),
            converters.micros_of(request.end_time, request.HasField("end_time")),
            request.incremental,
            _engine(request.engine),
        )
        return pb.MaterializeFeatureViewResponse(
            feature_view=result.view,
            rows_written=result.rows_written,
            range=converters.time_range_to_proto(result.start_us, result.end_us),
            watermark=converters.timestamp_of(result.watermark_us),
            elapsed=converters.duration_to_proto(result.elapsed_s),
        )
