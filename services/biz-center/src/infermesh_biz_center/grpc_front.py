"""The gRPC front: ``BizCenterService`` (Predict, PredictBatch) and ``BizCenterAdminService``.

Thin servicers: read the credentials from metadata (``x-api-key``, or ``authorization: Bearer
<jwt>``), decode the request into the core's types, call the core, encode the answer. Errors are
the chassis' (the server interceptor maps them to statuses, with the ``retry-after-ms`` trailer
of RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as pb_grpc
from infermesh.common.v1 import common_pb2
from infermesh_biz_center.auth import ANONYMOUS, Authenticator
from infermesh_biz_center.domain import PredictInput, Prediction, PredictOutcome, Principal, error_field
from infermesh_biz_center.predictor import Predictor
from infermesh_biz_center.registry import ConfigRegistry
from infermesh_biz_center.store import AuditRecord
from infermesh_chassis import context as ctx
from infermesh_chassis.errors import FailedPrecondition, InfermeshError, NotFound, ResourceExhausted
from infermesh_chassis.logs import get_logger

if TYPE_CHECKING:
    from infermesh_biz_center.streaming import BindingStatus, StreamBindings

_log = get_logger("infermesh_biz_center.grpc_front")

__all__ = [
    "AdminServicer",
    "PredictServicer",
    "credentials",
    "decode_request",
    "encode_outcome",
]


def credentials(context: grpc.aio.ServicerContext) -> tuple[str | None, str | None]:
    """(API key, bearer token) from the call's metadata."""
    api_key = bearer = None
    for key, value in context.invocation_metadata() or ():
        text = value if isinstance(value, str) else value.decode()
        if key == "x-api-key":
            api_key = text
        elif key == "authorization" and text[:7].lower() == "bearer ":
            bearer = text[7:].strip()
    return api_key, bearer


def decode_request(request: pb.PredictRequest) -> PredictInput:
    """A PredictRequest as the core's input."""
    return PredictInput(
        request.scene, request.unit_id, dict(request.features), dict(request.attributes), request.request_id
    )


def _prediction(prediction: Prediction) -> dict[str, Any]:
    return {
        "scores": prediction.scores,
        "label": prediction.label,
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": t.shape, "raw_contents": t.raw}
            for t in prediction.outputs
        ],
    }


def _outcome_fields(outcome: PredictOutcome) -> dict[str, Any]:
    """The PredictResponse fields of ``outcome`` as plain values: protobuf builds nested messages from
    them in place (a message passed to a constructor or appended would be serialized and parsed again)."""
    degradation = outcome.degradation
    return {
        "request_id": outcome.request_id,
        "prediction": _prediction(outcome.prediction),
        "variant": outcome.variant,
        "assignments": [
            {"experiment": a.experiment, "layer": a.layer, "variant": a.variant, "bucket": a.bucket}
            for a in outcome.assignments
        ],
        "model": outcome.model,
        "model_version": outcome.model_version,
        "degradation": {
            "degraded": degradation.degraded,
            "reason": degradation.reason,
            "detail": degradation.detail,
            "served_by": degradation.served_by,
        },
        "latencies": [{"hop": h.name, "latency_ms": h.latency_ms} for h in outcome.hops],
        "scene": outcome.scene,
        "scene_config_version": outcome.scene_config_version,
        "route": outcome.route,
        "feature_lineage": outcome.lineage,  # the data gateway's message: copied once, into the answer
    }


def encode_outcome(outcome: PredictOutcome) -> pb.PredictResponse:
    """The core's answer as a PredictResponse."""
    return pb.PredictResponse(**_outcome_fields(outcome))


def _write_error(status: common_pb2.ErrorStatus, error: InfermeshError) -> None:
    status.code = error.status_code.value[0]
    status.message = error.message
    if isinstance(error, ResourceExhausted) and error.retry_after_s is not None:
        status.retry_after.FromNanoseconds(int(error.retry_after_s * 1e9))
    if field := error_field(error.message):
        status.details["field"] = field


def _write_status(message: pb.StreamBindingStatus, status: BindingStatus, binding: pb.StreamBinding) -> None:
    """Write a :class:`BindingStatus` into ``message`` in place (``binding`` is the scene's own message)."""
    message.scene = status.binding.scene
    message.consuming = status.consuming
    message.pending = status.pending
    message.ack_pending = status.ack_pending
    message.redelivered = status.redelivered
    message.dead_letters = status.dead_letters
    message.consumed = status.consumed
    message.scored = status.scored
    message.degraded = status.degraded
    message.dead_lettered = status.dead_lettered
    message.error = status.error
    message.binding.CopyFrom(binding)
    message.oldest_pending_age.FromNanoseconds(int(status.oldest_pending_age_s * 1e9))


def _scene_bindings(scenes: Sequence[pb.Scene]) -> dict[tuple[str, str], pb.StreamBinding]:
    """The stream bindings of ``scenes`` as configured, by (scene, binding name)."""
    return {(scene.name, b.name): b for scene in scenes for b in scene.stream_bindings}


def _request_id(request_id: str) -> str:
    return request_id or ctx.current_request_id() or ctx.new_request_id()


class PredictServicer(pb_grpc.BizCenterServiceServicer):
    """Predict and PredictBatch over gRPC."""

    def __init__(self, predictor: Predictor, auth: Authenticator) -> None:
        self._predictor = predictor
        self._auth = auth

    def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        return self._auth.authenticate(*credentials(context))

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        """Predict for one unit in one scene."""
        principal = self._principal(context)
        outcome = await self._predictor.predict(principal, decode_request(request), _request_id(request.request_id))
        return encode_outcome(outcome)

    async def PredictBatch(
        self, request: pb.PredictBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictBatchResponse:
        """Predict for many units; each item is answered or fails on its own."""
        principal = self._principal(context)
        items = [decode_request(item) for item in request.items]
        results = await self._predictor.predict_batch(principal, items, _request_id(""))
        response = pb.PredictBatchResponse()
        for result in results:
            if isinstance(result, InfermeshError):
                _write_error(response.results.add().error, result)
            else:
                response.results.add(response=_outcome_fields(result))
        return response


class AdminServicer(pb_grpc.BizCenterAdminServiceServicer):
    """Scenes, experiments, stream bindings and the audit log over gRPC (admin callers only)."""

    def __init__(self, registry: ConfigRegistry, auth: Authenticator, streams: StreamBindings | None = None) -> None:
        self._registry = registry
        self._auth = auth
        self._streams = streams

    def _admin(self, context: grpc.aio.ServicerContext, actor: str = "", reason: str = "") -> AuditRecord:
        principal = self._auth.authenticate(*credentials(context))
        self._auth.authorize_admin(principal)
        who = (actor or principal.name) if principal is ANONYMOUS else principal.name
        return AuditRecord(who, reason, ctx.current_request_id() or "")

    async def ListScenes(
        self, request: pb.ListScenesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListScenesResponse:
        """Scenes by name, paginated."""
        self._admin(context)
        scenes, token = await self._registry.list_scenes(request.page)
        return pb.ListScenesResponse(scenes=scenes, page=common_pb2.PageResponse(next_page_token=token))

    async def GetScene(self, request: pb.GetSceneRequest, context: grpc.aio.ServicerContext) -> pb.GetSceneResponse:
        """One scene."""
        self._admin(context)
        return pb.GetSceneResponse(scene=await self._registry.get_scene(request.name))

    async def UpsertScene(
        self, request: pb.UpsertSceneRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertSceneResponse:
        """Create or replace a scene."""
        who = self._admin(context, request.actor, request.reason)
        expected = request.expected_config_version if request.HasField("expected_config_version") else None
        scene = await self._registry.upsert_scene(
            request.scene, expected=expected, validate_only=request.validate_only, who=who
        )
        return pb.UpsertSceneResponse(scene=scene)

    async def DeleteScene(
        self, request: pb.DeleteSceneRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSceneResponse:
        """Delete a scene."""
        who = self._admin(context, request.actor, request.reason)
        expected = request.expected_config_version if request.HasField("expected_config_version") else None
        return pb.DeleteSceneResponse(scene=await self._registry.delete_scene(request.name, expected=expected, who=who))

    async def ListExperiments(
        self, request: pb.ListExperimentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListExperimentsResponse:
        """Experiments by name, paginated and filtered."""
        self._admin(context)
        experiments, token = await self._registry.list_experiments(request.page, request.scene, request.statuses)
        return pb.ListExperimentsResponse(experiments=experiments, page=common_pb2.PageResponse(next_page_token=token))

    async def GetExperiment(
        self, request: pb.GetExperimentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetExperimentResponse:
        """One experiment."""
        self._admin(context)
        return pb.GetExperimentResponse(experiment=await self._registry.get_experiment(request.name))

    async def UpsertExperiment(
        self, request: pb.UpsertExperimentRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertExperimentResponse:
        """Create or replace an experiment."""
        who = self._admin(context, request.actor, request.reason)
        expected = request.expected_config_version if request.HasField("expected_config_version") else None
        experiment = await self._registry.upsert_experiment(
            request.experiment, expected=expected, validate_only=request.validate_only, who=who
        )
        return pb.UpsertExperimentResponse(experiment=experiment)

    async def DeleteExperiment(
        self, request: pb.DeleteExperimentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteExperimentResponse:
        """Delete an experiment."""
        who = self._admin(context, request.actor, request.reason)
        expected = request.expected_config_version if request.HasField("expected_config_version") else None
        experiment = await self._registry.delete_experiment(request.name, expected=expected, who=who)
        return pb.DeleteExperimentResponse(experiment=experiment)

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditEntriesResponse:
        """The audit log, newest first."""
        self._admin(context)
        entries, token = await self._registry.audit(request.page, request.filter)
        return pb.ListAuditEntriesResponse(entries=entries, page=common_pb2.PageResponse(next_page_token=token))

    def _stream_bindings(self) -> StreamBindings:
        if self._streams is None:
            raise FailedPrecondition("stream bindings are not consumed by this instance (streaming.enabled is false)")
        return self._streams

    async def ListStreamBindings(
        self, request: pb.ListStreamBindingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListStreamBindingsResponse:
        """The scenes' stream bindings with their live state."""
        self._admin(context)
        streams = self._stream_bindings()
        statuses = await streams.statuses(request.scene)
        scenes = []
        for name in sorted({s.binding.scene for s in statuses}):
            with contextlib.suppress(NotFound):  # deleted meanwhile: the next call no longer lists it
                scenes.append(await self._registry.get_scene(name))
        configured = _scene_bindings(scenes)
        response = pb.ListStreamBindingsResponse()
        for status in statuses:
            binding = configured.get(status.binding.key)
            if binding is not None:  # else the scene changed meanwhile: the next call shows it
                _write_status(response.bindings.add(), status, binding)
        return response

    async def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReplayDeadLettersResponse:
        """Publish a binding's dead letters to their input subject again."""
        who = self._admin(context, request.actor)
        streams = self._stream_bindings()
        replayed = await streams.replay_dead_letters(request.scene, request.binding, request.limit)
        _log.info("dead_letters_replayed", actor=who.actor, scene=request.scene, binding=request.binding)
        return pb.ReplayDeadLettersResponse(replayed=replayed)
