"""Retirement that never fails silently: a deprecation warning to pinned callers, then a clear NOT_FOUND."""

from __future__ import annotations

from datetime import UTC

import grpc
import pytest
from google.protobuf import duration_pb2

from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_model_gateway.testing import ChurnModels, ManualClock, infer_request, start_gateway, until


async def test_pinned_callers_are_warned_then_told_where_to_go(churn_models: ChurnModels, tmp_path):
    clock = ManualClock()
    async with start_gateway(tmp_path, workers=1, clock=clock, rollouts={"tick_s": 0.2}) as gw:
        await gw.register_and_deploy("churn", churn_models.v1)
        await gw.register_and_deploy("churn", churn_models.v2)
        await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
        retire = pb.RetireModelVersionRequest(
            model="churn", version=1, successor_version=2, deprecation_period=duration_pb2.Duration(seconds=3600)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.control.RetireModelVersion(retire)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "alias 'production' still point at it" in refused.value.details()
        await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=2))
        scheduled = await gw.control.RetireModelVersion(retire)
        assert scheduled.model_version.retirement.successor_version == 2

        call = gw.inference.ModelInfer(infer_request("churn", churn_models.x[:1], "1"))
        assert (await call).model_version == "1"
        warning = dict(await call.trailing_metadata())["infermesh-deprecation"]
        assert "version 1 of model 'churn' is deprecated and retires at" in warning
        assert "move to version 2" in warning
        unpinned = gw.inference.ModelInfer(infer_request("churn", churn_models.x[:1]))
        await unpinned
        assert "infermesh-deprecation" not in dict(await unpinned.trailing_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as moved:
            await gw.control.SetAlias(pb.SetAliasRequest(model="churn", alias="old", version=1))
        assert "is deprecated" in moved.value.details()

        # the deprecation period ends when the test says so, however slow the machine
        clock.now = scheduled.model_version.retirement.retire_time.ToDatetime(tzinfo=UTC)

        async def retired() -> bool:
            version = await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="churn", version=1))
            return version.model_version.state == pb.MODEL_VERSION_STATE_RETIRED

        await until(retired, what="version 1 retired by the controller")
        await gw.gateway.refresh()  # the data plane's snapshot may lag the registry by one change
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await gw.inference.ModelInfer(infer_request("churn", churn_models.x[:1], "1"))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert "version 1 of model 'churn' was retired at" in gone.value.details()
        assert "use version 2" in gone.value.details()
        assert all("churn__1" not in w.ready_models for w in gw.gateway.pool.workers)


async def test_retiring_now_without_a_successor_says_when(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=1) as gw:
        await gw.register_and_deploy("churn", churn_models.v1)
        await gw.register_and_deploy("churn", churn_models.v2)
        await gw.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=2))
        retired = await gw.control.RetireModelVersion(pb.RetireModelVersionRequest(model="churn", version=1))
        assert retired.model_version.state == pb.MODEL_VERSION_STATE_RETIRED
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await gw.inference.ModelInfer(infer_request("churn", churn_models.x[:1], "1"))
        assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "was retired at" in gone.value.details() and "has no successor" in gone.value.details()
        audit = await gw.control.ListAuditEntries(pb.ListAuditEntriesRequest())
        assert "model_version.retire" in [e.action for e in audit.entries]
        assert "model_version.retired" in [e.action for e in audit.entries]
