"""Dynamic batching's queue delay: bounded at registration, shown, and a deploy that fails on it
answers with its cause, logs it, and leaves nothing loaded on Triton."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import structlog
from google.protobuf import duration_pb2
from tritonclient.grpc import service_pb2

from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_chassis import context as ctx
from infermesh_model_gateway.testing import ChurnModels, GatewayHarness, register_request, start_gateway


def _with_delay(churn_models: ChurnModels, delay: duration_pb2.Duration | None) -> pb.RegisterModelVersionRequest:
    request = register_request("churn", churn_models.v1)
    if delay is not None:
        request.deployment.dynamic_batching.max_queue_delay.CopyFrom(delay)
    return request


def _micros(value: int) -> duration_pb2.Duration:
    delay = duration_pb2.Duration()
    delay.FromMicroseconds(value)
    return delay


@pytest.mark.parametrize(
    ("delay", "message"),
    [
        (
            duration_pb2.Duration(seconds=500),
            "deployment.dynamic_batching.max_queue_delay is 500s; at most 1s is accepted",
        ),
        (_micros(1_000_001), "max_queue_delay is 1.000001s; at most 1s is accepted"),
        (duration_pb2.Duration(seconds=10**12), "max_queue_delay is 1000000000000s; at most 1s"),
        (_micros(-1), "deployment.dynamic_batching.max_queue_delay must not be negative"),
    ],
    ids=["500s", "just-over-1s", "huge", "negative"],
)
async def test_a_queue_delay_out_of_bounds_is_refused(churn_models: ChurnModels, tmp_path, delay, message):
    async with start_gateway(tmp_path, workers=0) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.control.RegisterModelVersion(_with_delay(churn_models, delay))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in refused.value.details()
        if "at most" in message:
            assert refused.value.details().endswith("(warm-up included); typical values are 100us to 10ms")
        listed = await gw.control.ListModels(pb.ListModelsRequest())
        assert list(listed.models) == [], "nothing is stored on refusal"


@pytest.mark.parametrize(("delay", "micros"), [(None, 500), (_micros(0), 0), (_micros(1_000_000), 1_000_000)])
async def test_a_queue_delay_within_bounds_is_stored_and_shown(churn_models: ChurnModels, tmp_path, delay, micros):
    async with start_gateway(tmp_path, workers=0) as gw:
        registered = await gw.control.RegisterModelVersion(_with_delay(churn_models, delay))
        shown = await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="churn", version=1))
        for version in (registered.model_version, shown.model_version):
            assert version.deployment.dynamic_batching.max_queue_delay.ToMicroseconds() == micros


async def _triton_state(gw: GatewayHarness, triton_name: str) -> str:
    """The model's state on the (only) embedded worker, asked of Triton itself."""
    worker = gw.gateway.pool.workers[0]
    index = await worker.stub.RepositoryIndex(service_pb2.RepositoryIndexRequest())
    return next((m.state for m in index.models if m.name == triton_name), "")


async def test_a_deploy_whose_warm_up_outlasts_its_timeout_names_the_cause_and_unloads(
    churn_models: ChurnModels, tmp_path
):
    async with start_gateway(tmp_path, workers=1, deploy={"warmup_timeout_s": 0.2}) as gw:
        await gw.control.RegisterModelVersion(_with_delay(churn_models, _micros(1_000_000)))
        with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as failed:
            await gw.control.DeployModelVersion(pb.DeployModelVersionRequest(model="churn", version=1))
        assert failed.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        cause = (
            "warm-up request 1 of 3 on worker embedded-0 got no answer within 0.2s (deploy.warmup_timeout_s); "
            "its dynamic batching holds a request that does not fill a batch up to 1s (max_queue_delay)"
        )
        assert failed.value.details() == f"deploying version 1 of model 'churn' failed: {cause}"
        [logged] = [e for e in logs if e["event"] == "deploy_failed"]
        assert (logged["log_level"], logged["model"], logged["version"]) == ("error", "churn", 1)
        assert logged["cause"] == cause
        version = (await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="churn", version=1))).model_version
        assert version.state == pb.MODEL_VERSION_STATE_FAILED
        assert version.state_detail == cause
        assert await _triton_state(gw, "churn__1") != "READY", "the failed version is unloaded from Triton"
        assert not (tmp_path / "repository" / "churn__1").exists()


async def test_a_caller_that_gives_up_leaves_no_version_half_deployed(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=1, deploy={"warmup_timeout_s": 0.2}) as gw:
        await gw.control.RegisterModelVersion(_with_delay(churn_models, _micros(1_000_000)))
        with pytest.raises(grpc.aio.AioRpcError):  # the caller's deadline or the warm-up, whichever is first
            await gw.control.DeployModelVersion(pb.DeployModelVersionRequest(model="churn", version=1), timeout=0.05)

        async def settled() -> pb.ModelVersion:
            while True:
                reply = await gw.control.GetModelVersion(pb.GetModelVersionRequest(model="churn", version=1))
                if reply.model_version.state != pb.MODEL_VERSION_STATE_DEPLOYING:
                    return reply.model_version
                await asyncio.sleep(0.05)

        version = await asyncio.wait_for(settled(), 30)
        assert version.state == pb.MODEL_VERSION_STATE_FAILED
        assert "warm-up request 1 of 3" in version.state_detail
        assert await _triton_state(gw, "churn__1") != "READY"


async def test_warm_up_keeps_within_what_the_callers_deadline_leaves(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=0) as gw:
        deployer = gw.gateway.deployer
        assert deployer is not None
        assert deployer._warmup_timeout() == (30.0, "deploy.warmup_timeout_s")
        token = ctx.bind(ctx.CallContext("test", deadline=time.monotonic() + 600))
        try:
            assert deployer._warmup_timeout() == (30.0, "deploy.warmup_timeout_s")
        finally:
            ctx.unbind(token)
        token = ctx.bind(ctx.CallContext("test", deadline=time.monotonic() + 10))
        try:
            timeout_s, bound = deployer._warmup_timeout()
        finally:
            ctx.unbind(token)
        assert bound == "what the caller's deadline left"
        assert 7.0 < timeout_s <= 8.0


async def test_a_deploy_that_triton_cannot_load_answers_with_tritons_error(churn_models: ChurnModels, tmp_path):
    async with start_gateway(tmp_path, workers=1) as gw:
        request = register_request("churn", churn_models.v1, backend_parameters={"infermesh.artifact": "missing.onnx"})
        await gw.control.RegisterModelVersion(request)
        with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as failed:
            await gw.control.DeployModelVersion(pb.DeployModelVersionRequest(model="churn", version=1))
        assert failed.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        details = failed.value.details()
        assert details.startswith("deploying version 1 of model 'churn' failed: loading 'churn__1' failed on worker ")
        assert "missing.onnx" in details, "Triton's own error says what it could not load"
        [logged] = [e for e in logs if e["event"] == "deploy_failed"]
        assert logged["cause"] in details
        assert await _triton_state(gw, "churn__1") != "READY"
