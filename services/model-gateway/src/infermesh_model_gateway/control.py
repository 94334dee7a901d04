"""The control plane: ``infermesh.modelgateway.v1.ModelControlService``.

Thin by design: each RPC converts its request (:mod:`.converters`), calls the registry or the
deployer, and converts the result back. Every mutation is recorded in the audit log by the
registry, in the same transaction as the change. Rollout transitions go through
:class:`~.rollouts.RolloutOperations`, shared with the rollout controller.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime, timedelta

import grpc

from infermesh.common.v1 import common_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc as pb_grpc
from infermesh_chassis.errors import InvalidArgument
from infermesh_chassis.logs import get_logger
from infermesh_model_gateway.converters import (
    audit_to_proto,
    model_to_proto,
    rollout_states_from_proto,
    rollout_to_proto,
    state_from_proto,
    steps_from_proto,
    traffic_from_proto,
    traffic_to_proto,
    version_from_register,
    version_to_proto,
)
from infermesh_model_gateway.deployment import Deployer
from infermesh_model_gateway.domain import ModelRecord, ModelVersionRecord, Rollout
from infermesh_model_gateway.registry import Registry
from infermesh_model_gateway.rollouts import RolloutOperations, new_rollout
from infermesh_model_gateway.settings import RolloutSettings

__all__ = ["ControlServicer"]

_log = get_logger("infermesh_model_gateway.control")

_MAX_PAGE = 1000
_DEFAULT_PAGE = 100


def _page_size(page: common_pb2.PageRequest) -> int:
    if page.page_size < 0:
        raise InvalidArgument("page.page_size must be >= 0")
    return min(page.page_size or _DEFAULT_PAGE, _MAX_PAGE)


def _actor(actor: str) -> str:
    return actor or "anonymous"


class ControlServicer(pb_grpc.ModelControlServiceServicer):
    """Registry, deployment, traffic and audit RPCs (see the module docstring)."""

    def __init__(
        self, registry: Registry, deployer: Deployer, rollouts: RolloutOperations, rollout_settings: RolloutSettings
    ) -> None:
        self._registry = registry
        self._deployer = deployer
        self._rollouts = rollouts
        self._rollout_settings = rollout_settings
        self._background: set[asyncio.Task[ModelVersionRecord]] = set()

    async def _all_versions(self, model: str) -> list[ModelVersionRecord]:
        versions: list[ModelVersionRecord] = []
        token = ""
        while True:
            page, token = await self._registry.list_versions(model, page_size=_MAX_PAGE, page_token=token)
            versions.extend(page)
            if not token:
                return versions

    async def _model(self, record: ModelRecord) -> pb.Model:
        return model_to_proto(record, await self._all_versions(record.name))

    async def _version(self, record: ModelVersionRecord) -> pb.ModelVersion:
        model = await self._registry.get_model(record.model)
        aliases = [alias for alias, version in model.aliases.items() if version == record.version]
        return version_to_proto(record, aliases, self._deployer.replicas(record))

    async def RegisterModelVersion(
        self, request: pb.RegisterModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterModelVersionResponse:
        record = version_from_register(request)
        stored = await self._deployer.register(record, actor=_actor(request.actor), reason=request.reason)
        return pb.RegisterModelVersionResponse(model_version=await self._version(stored))

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=await self._model(await self._registry.get_model(request.model)))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        records, token = await self._registry.list_models(
            page_size=_page_size(request.page), page_token=request.page.page_token
        )
        models = [
            await self._model(r)
            for r in records
            if r.name.startswith(request.name_prefix) and (not request.owner or r.owner == request.owner)
        ]
        return pb.ListModelsResponse(models=models, page=common_pb2.PageResponse(next_page_token=token))

    async def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelVersionResponse:
        selector = request.WhichOneof("selector")
        if selector is None:
            raise InvalidArgument("give a version number or an alias")
        version = (
            request.version
            if selector == "version"
            else await self._registry.resolve_alias(request.model, request.alias)
        )
        record = await self._registry.get_version(request.model, version)
        return pb.GetModelVersionResponse(model_version=await self._version(record))

    async def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelVersionsResponse:
        states = {state_from_proto(s) for s in request.states}
        records, token = await self._registry.list_versions(
            request.model, page_size=_page_size(request.page), page_token=request.page.page_token
        )
        model = await self._registry.get_model(request.model)
        versions = [
            version_to_proto(r, [a for a, v in model.aliases.items() if v == r.version], self._deployer.replicas(r))
            for r in records
            if not states or r.state in states
        ]
        return pb.ListModelVersionsResponse(
            model_versions=versions, page=common_pb2.PageResponse(next_page_token=token)
        )

    async def DeployModelVersion(
        self, request: pb.DeployModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeployModelVersionResponse:
        if request.HasField("deployment"):
            raise InvalidArgument(
                "deployment: the deployment config is fixed at registration; register a new version to change it"
            )
        actor = _actor(request.actor)
        # A task of its own, so that a caller who goes away cannot cancel it half-way (which left the
        # version DEPLOYING and loaded): it finishes, or fails and undoes what it did, either way.
        task = asyncio.get_running_loop().create_task(
            self._deployer.deploy(request.model, request.version, actor=actor, reason=request.reason)
        )
        self._background.add(task)
        task.add_done_callback(functools.partial(self._finished, background=request.return_immediately))
        if request.return_immediately:
            await asyncio.sleep(0)
            record = await self._registry.get_version(request.model, request.version)
        else:
            record = await asyncio.shield(task)
        return pb.DeployModelVersionResponse(model_version=await self._version(record))

    def _finished(self, task: asyncio.Task[ModelVersionRecord], *, background: bool) -> None:
        """Forget a finished deploy; log its error when no caller waited for it (a failed load is
        logged by the deployer in any case)."""
        self._background.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None and background:
            _log.warning("background_deploy_failed", error=str(error))

    async def UndeployModelVersion(
        self, request: pb.UndeployModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.UndeployModelVersionResponse:
        drain = request.drain_timeout.ToTimedelta().total_seconds() if request.HasField("drain_timeout") else None
        record = await self._deployer.undeploy(
            request.model, request.version, actor=_actor(request.actor), reason=request.reason, drain_timeout_s=drain
        )
        return pb.UndeployModelVersionResponse(model_version=await self._version(record))

    async def GetTrafficPolicy(
        self, request: pb.GetTrafficPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTrafficPolicyResponse:
        model = await self._registry.get_model(request.model)
        return pb.GetTrafficPolicyResponse(policy=traffic_to_proto(model.name, model.traffic))

    async def SetTrafficPolicy(
        self, request: pb.SetTrafficPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetTrafficPolicyResponse:
        policy = traffic_from_proto(request.policy)
        expected = request.expected_revision if request.HasField("expected_revision") else None
        model = await self._registry.set_traffic(
            request.model, policy, expected_revision=expected, actor=_actor(request.actor), reason=request.reason
        )
        await self._deployer.changed()
        return pb.SetTrafficPolicyResponse(policy=traffic_to_proto(model.name, model.traffic))

    async def SetAlias(self, request: pb.SetAliasRequest, context: grpc.aio.ServicerContext) -> pb.SetAliasResponse:
        model = await self._registry.set_alias(
            request.model, request.alias, request.version, actor=_actor(request.actor), reason=request.reason
        )
        await self._deployer.changed()
        return pb.SetAliasResponse(model=await self._model(model))

    async def DeleteAlias(
        self, request: pb.DeleteAliasRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteAliasResponse:
        model = await self._registry.delete_alias(
            request.model, request.alias, actor=_actor(request.actor), reason=request.reason
        )
        await self._deployer.changed()
        return pb.DeleteAliasResponse(model=await self._model(model))

    async def PromoteModelVersion(
        self, request: pb.PromoteModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.PromoteModelVersionResponse:
        before = await self._registry.get_model(request.model)
        model = await self._registry.promote(
            request.model, request.version, actor=_actor(request.actor), reason=request.reason
        )
        await self._deployer.changed()
        return pb.PromoteModelVersionResponse(
            model=await self._model(model), previous_version=before.aliases.get("production", 0)
        )

    async def RollbackModel(
        self, request: pb.RollbackModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.RollbackModelResponse:
        before = await self._registry.get_model(request.model)
        model = await self._registry.rollback(
            request.model, to_version=request.to_version or None, actor=_actor(request.actor), reason=request.reason
        )
        await self._deployer.changed()
        return pb.RollbackModelResponse(
            model=await self._model(model), rolled_back_version=before.aliases.get("production", 0)
        )

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditEntriesResponse:
        records, token = await self._registry.list_audit(
            target_prefix=request.filter.target_prefix,
            page_size=_page_size(request.page),
            page_token=request.page.page_token,
        )
        wanted = set(request.filter.actions)
        entries = [
            audit_to_proto(r)
            for r in records
            if (not wanted or r.action in wanted) and (not request.filter.actor or r.actor == request.filter.actor)
        ]
        return pb.ListAuditEntriesResponse(entries=entries, page=common_pb2.PageResponse(next_page_token=token))

    async def RetireModelVersion(
        self, request: pb.RetireModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.RetireModelVersionResponse:
        period = request.deprecation_period.ToTimedelta() if request.HasField("deprecation_period") else timedelta(0)
        if period < timedelta(0):
            raise InvalidArgument("deprecation_period must not be negative")
        actor = _actor(request.actor)
        record = await self._registry.schedule_retirement(
            request.model,
            request.version,
            retire_at=datetime.now(UTC) + period,
            successor=request.successor_version or None,
            successor_model=request.successor_model,
            actor=actor,
            reason=request.reason,
        )
        await self._deployer.changed()
        if period == timedelta(0):
            record = await self._deployer.retire(request.model, request.version, actor=actor, reason=request.reason)
        return pb.RetireModelVersionResponse(model_version=await self._version(record))

    async def _rollout(self, rollout: Rollout) -> pb.Rollout:
        message = rollout_to_proto(rollout)
        if rollout.state.active:
            message.controller = await self._registry.lease_holder(f"model:{rollout.model}")
        return message

    async def StartRollout(
        self, request: pb.StartRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartRolloutResponse:
        spec = request.spec
        defaults = self._rollout_settings
        model = await self._registry.get_model(spec.model)
        rollout = new_rollout(
            model,
            candidate=spec.candidate_version,
            baseline=spec.baseline_version,
            steps=steps_from_proto(spec, defaults.default_steps),
            gates=spec.gates,
            min_dwell_s=(
                spec.min_dwell.ToTimedelta().total_seconds()
                if spec.HasField("min_dwell")
                else defaults.default_min_dwell_s
            ),
            min_requests=spec.min_requests or defaults.default_min_requests,
            evaluation_interval_s=(
                spec.evaluation_interval.ToTimedelta().total_seconds()
                if spec.HasField("evaluation_interval")
                else defaults.default_evaluation_interval_s
            ),
        )
        started = await self._rollouts.start(rollout, actor=_actor(request.actor), reason=request.reason)
        return pb.StartRolloutResponse(rollout=await self._rollout(started))

    async def GetRollout(
        self, request: pb.GetRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRolloutResponse:
        return pb.GetRolloutResponse(rollout=await self._rollout(await self._registry.get_rollout(request.id)))

    async def ListRollouts(
        self, request: pb.ListRolloutsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRolloutsResponse:
        rollouts, token = await self._registry.list_rollouts(
            model=request.model,
            states=rollout_states_from_proto(list(request.states)),
            page_size=_page_size(request.page),
            page_token=request.page.page_token,
        )
        return pb.ListRolloutsResponse(
            rollouts=[await self._rollout(r) for r in rollouts], page=common_pb2.PageResponse(next_page_token=token)
        )

    async def PauseRollout(
        self, request: pb.PauseRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.PauseRolloutResponse:
        rollout = await self._rollouts.pause(request.id, actor=_actor(request.actor), reason=request.reason)
        return pb.PauseRolloutResponse(rollout=await self._rollout(rollout))

    async def ResumeRollout(
        self, request: pb.ResumeRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeRolloutResponse:
        rollout = await self._rollouts.resume(request.id, actor=_actor(request.actor), reason=request.reason)
        return pb.ResumeRolloutResponse(rollout=await self._rollout(rollout))

    async def AbortRollout(
        self, request: pb.AbortRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbortRolloutResponse:
        rollout = await self._rollouts.abort(request.id, actor=_actor(request.actor), reason=request.reason)
        return pb.AbortRolloutResponse(rollout=await self._rollout(rollout))

    async def PromoteRolloutNow(
        self, request: pb.PromoteRolloutNowRequest, context: grpc.aio.ServicerContext
    ) -> pb.PromoteRolloutNowResponse:
        rollout = await self._rollouts.promote_now(request.id, actor=_actor(request.actor), reason=request.reason)
        return pb.PromoteRolloutNowResponse(rollout=await self._rollout(rollout))
