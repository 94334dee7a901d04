"""Safe delivery on the real mesh: SLO-gated rollouts driven by the model gateway's controller with the
monitor's CheckSlo as the gate, under live traffic through the business center.

A healthy candidate walks every step to ``production``; a candidate that fails 20% of its requests
is rolled back at its first step, having served a sliver of the traffic, and callers never see an
error (the business center's fallback answers for the failed share); a gateway restarted mid-rollout
resumes it where it was.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2
from mesh_support import API_KEY
from tritonclient.grpc import service_pb2_grpc

from infermesh.bizcenter.v1 import biz_center_pb2 as biz
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as biz_grpc
from infermesh.common.v1 import common_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2 as mg
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc as mg_grpc
from infermesh_cli.stack import LocalStack
from infermesh_model_gateway.testing import infer_request, sha256

MODEL = "churn-canary"
SCENE = "churn-canary"
FAULTY = {"infermesh.fault.error_rate": "0.2"}


def _register(stack: LocalStack, artifact: str, **backend: str) -> mg.RegisterModelVersionRequest:
    path = stack.workdir / "models" / artifact
    return mg.RegisterModelVersionRequest(
        model=MODEL,
        format=mg.MODEL_FORMAT_ONNX,
        artifact=mg.Artifact(uri=str(path), sha256=sha256(path)),
        inputs=[common_pb2.TensorSpec(name="X", datatype="FP32", shape=[10])],
        outputs=[
            common_pb2.TensorSpec(name="label", datatype="INT64", shape=[1]),
            common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[2]),
        ],
        deployment=mg.DeploymentConfig(
            max_batch_size=64, dynamic_batching=mg.DynamicBatching(enabled=True), backend_parameters=backend
        ),
        actor="test",
    )


async def _prepare(stack: LocalStack) -> None:
    async with grpc.aio.insecure_channel(stack.process("model-gateway").address) as channel:
        control = mg_grpc.ModelControlServiceStub(channel)
        for request in (
            _register(stack, "churn_lr.onnx"),
            _register(stack, "churn_gb.onnx"),
            _register(stack, "churn_gb.onnx", **FAULTY),
        ):
            version = (await control.RegisterModelVersion(request)).model_version.version
            await control.DeployModelVersion(mg.DeployModelVersionRequest(model=MODEL, version=version), timeout=120)
        await control.PromoteModelVersion(mg.PromoteModelVersionRequest(model=MODEL, version=1))
    async with grpc.aio.insecure_channel(stack.process("biz-center").address) as channel:
        admin = biz_grpc.BizCenterAdminServiceStub(channel)
        scene = (await admin.GetScene(biz.GetSceneRequest(name="churn-score"), metadata=API_KEY)).scene
        scene.name = SCENE
        scene.model_routing.model.Clear()
        scene.model_routing.model.model = MODEL
        scene.ClearField("gray_release")
        del scene.fallback_chain[:]
        scene.fallback_chain.add().alternate_model.model.model = MODEL
        scene.fallback_chain[0].alternate_model.model.alias = "production"
        scene.fallback_chain.add().rule_default.default_prediction.scores["churn"] = 0.2
        await admin.UpsertScene(biz.UpsertSceneRequest(scene=scene), metadata=API_KEY)


@pytest.fixture(scope="module")
def canary(mesh: LocalStack) -> Iterator[LocalStack]:
    asyncio.run(_prepare(mesh))
    yield mesh


class Traffic:
    """Predict calls for the canary scene until stopped; what callers saw, over time."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.stop = asyncio.Event()
        self.errors: Counter[str] = Counter()
        self.versions: Counter[int] = Counter()
        self.degraded = 0
        self.first_degraded: float | None = None

    @property
    def answered(self) -> int:
        return sum(self.versions.values()) + self.degraded

    async def run(self, concurrency: int = 6) -> None:
        async with grpc.aio.insecure_channel(self.stack.process("biz-center").address) as channel:
            predict = biz_grpc.BizCenterServiceStub(channel).Predict

            async def worker(offset: int) -> None:
                i = offset
                while not self.stop.is_set():
                    i += concurrency
                    request = biz.PredictRequest(scene=SCENE, unit_id=str(1 + i % 200))
                    try:
                        response = await predict(request, metadata=API_KEY, timeout=5)
                    except grpc.aio.AioRpcError as exc:
                        self.errors[exc.code().name] += 1
                        continue
                    if response.degradation.degraded:
                        self.degraded += 1
                        self.first_degraded = self.first_degraded or time.time()
                    else:
                        self.versions[response.model_version] += 1

            await asyncio.gather(*(worker(k) for k in range(concurrency)))


def _spec(
    candidate: int, percents: list[float], dwell_s: int, min_requests: int = 10, **gates: float
) -> mg.RolloutSpec:
    return mg.RolloutSpec(
        model=MODEL,
        candidate_version=candidate,
        steps=[mg.RolloutStep(candidate_percent=p) for p in percents],
        min_dwell=duration_pb2.Duration(seconds=dwell_s),
        min_requests=min_requests,
        evaluation_interval=duration_pb2.Duration(seconds=1),
        gates=common_pb2.SloThresholds(**gates),
    )


async def _follow(stack: LocalStack, spec: mg.RolloutSpec, timeout_s: float = 120.0) -> mg.Rollout:
    """Start a rollout under traffic and wait until it ends; its final state."""
    async with grpc.aio.insecure_channel(stack.process("model-gateway").address) as channel:
        control = mg_grpc.ModelControlServiceStub(channel)
        rollout = (await control.StartRollout(mg.StartRolloutRequest(spec=spec, actor="test"))).rollout
        deadline = time.monotonic() + timeout_s
        while rollout.state in (mg.ROLLOUT_STATE_PENDING, mg.ROLLOUT_STATE_RUNNING):
            assert time.monotonic() < deadline, f"rollout stuck on step {rollout.current_step}"
            await asyncio.sleep(0.5)
            rollout = (await control.GetRollout(mg.GetRolloutRequest(id=rollout.id))).rollout
    return rollout


async def _production(stack: LocalStack) -> int:
    async with grpc.aio.insecure_channel(stack.process("model-gateway").address) as channel:
        model = (await mg_grpc.ModelControlServiceStub(channel).GetModel(mg.GetModelRequest(model=MODEL))).model
    return model.aliases["production"]


async def test_a_healthy_candidate_walks_every_step_to_production(canary: LocalStack):
    traffic = Traffic(canary)
    load = asyncio.ensure_future(traffic.run())
    try:
        spec = _spec(2, [5, 25, 50, 100], dwell_s=2, max_error_rate=0.02, max_p99_latency_ms=1000)
        rollout = await _follow(canary, spec)
    finally:
        traffic.stop.set()
        await load
    assert rollout.state == mg.ROLLOUT_STATE_SUCCEEDED, rollout.state_detail
    actions = [mg.RolloutAction.Name(d.action) for d in rollout.decisions]
    assert actions == ["ROLLOUT_ACTION_START", *["ROLLOUT_ACTION_ADVANCE"] * 3, "ROLLOUT_ACTION_COMPLETE"]
    assert all(d.evaluation.verdict == common_pb2.SLO_VERDICT_PASS for d in rollout.decisions[1:])
    assert await _production(canary) == 2
    assert not traffic.errors
    assert traffic.degraded <= 0.02 * traffic.answered, "only the odd answer over the scene's 250 ms SLO on 2 cores"
    assert traffic.versions[1] > 0 and traffic.versions[2] > 0


async def test_a_faulty_candidate_is_rolled_back_before_most_users_see_it(canary: LocalStack):
    baseline = await _production(canary)
    traffic = Traffic(canary)
    load = asyncio.ensure_future(traffic.run())
    try:
        await asyncio.sleep(2.0)
        started = time.time()
        spec = _spec(3, [1, 5, 25, 50, 100], dwell_s=5, min_requests=20, max_error_rate=0.02)
        rollout = await _follow(canary, spec)
        await asyncio.sleep(1.0)
    finally:
        traffic.stop.set()
        await load
    assert rollout.state == mg.ROLLOUT_STATE_ROLLED_BACK
    assert rollout.current_step <= 1, "rolled back within its first steps (20 requests at 1% can all succeed)"
    assert "error_rate" in rollout.state_detail
    assert await _production(canary) == baseline
    assert not traffic.errors, "the business center's fallback answers for the candidate's failures"
    candidate_share = (traffic.versions[3] + traffic.degraded) / traffic.answered
    assert candidate_share <= 0.05
    assert traffic.first_degraded is not None and traffic.first_degraded >= started
    rolled_back = rollout.end_time.ToDatetime().timestamp()
    time_to_rollback = rolled_back - traffic.first_degraded
    assert time_to_rollback < 60
    print(
        f"\nfaulty candidate: first failed request to rollback {time_to_rollback:.1f} s; "
        f"candidate share {candidate_share:.2%} of {traffic.answered} requests"
    )


async def test_a_gateway_restarted_mid_rollout_resumes_it(canary: LocalStack):
    traffic = Traffic(canary)
    load = asyncio.ensure_future(traffic.run())
    candidate = 1 if await _production(canary) == 2 else 2
    try:
        async with grpc.aio.insecure_channel(canary.process("model-gateway").address) as channel:
            control = mg_grpc.ModelControlServiceStub(channel)
            spec = _spec(candidate, [10, 50, 100], dwell_s=4, max_error_rate=0.02)
            rollout = (await control.StartRollout(mg.StartRolloutRequest(spec=spec, actor="test"))).rollout
            while rollout.current_step < 1:
                await asyncio.sleep(0.5)
                rollout = (await control.GetRollout(mg.GetRolloutRequest(id=rollout.id))).rollout
        await asyncio.to_thread(canary.restart, "model-gateway")
        async with grpc.aio.insecure_channel(canary.process("model-gateway").address) as channel:
            control = mg_grpc.ModelControlServiceStub(channel)
            resumed = (await control.GetRollout(mg.GetRolloutRequest(id=rollout.id))).rollout
            assert resumed.state == mg.ROLLOUT_STATE_RUNNING and resumed.current_step >= 1
            deadline = time.monotonic() + 90
            while resumed.state == mg.ROLLOUT_STATE_RUNNING:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
                resumed = (await control.GetRollout(mg.GetRolloutRequest(id=rollout.id))).rollout
    finally:
        traffic.stop.set()
        await load
    assert resumed.state == mg.ROLLOUT_STATE_SUCCEEDED, resumed.state_detail
    assert await _production(canary) == candidate
    assert not traffic.errors


async def test_a_retired_version_warns_pinned_callers_then_names_its_successor(canary: LocalStack):
    x = np.zeros((1, 10), np.float32)
    async with grpc.aio.insecure_channel(canary.process("model-gateway").address) as channel:
        control = mg_grpc.ModelControlServiceStub(channel)
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        successor = await _production(canary)
        version = 2 if successor == 1 else 1  # healthy, and out of traffic once the rollouts above ended
        await control.RetireModelVersion(
            mg.RetireModelVersionRequest(
                model=MODEL,
                version=version,
                successor_version=successor,
                deprecation_period=duration_pb2.Duration(seconds=3),
                actor="test",
                reason="superseded",
            )
        )
        call = infer(infer_request(MODEL, x, str(version)))
        await call
        warning = dict(await call.trailing_metadata())["infermesh-deprecation"]
        assert f"version {version} of model '{MODEL}' is deprecated" in warning
        assert f"move to version {successor}" in warning
        deadline = time.monotonic() + 30
        while True:
            try:
                await infer(infer_request(MODEL, x, str(version)))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                assert f"use version {successor}" in exc.details()
                break
            assert time.monotonic() < deadline, "the version was never retired"
            await asyncio.sleep(0.5)
