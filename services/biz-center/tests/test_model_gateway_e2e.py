"""The business center in front of the REAL model gateway and real Triton (embedded tritonserver).

Version 1 of ``churn`` is a logistic regression, version 2 gradient-boosted trees (ONNX, trained at
test time); ``production`` points at 1, ``canary`` at 2. The feature vectors come from a data
gateway double serving the rows the models were trained on, so every answer can be compared with
onnxruntime run locally on the same row. The last test stops the model gateway mid-load.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import pytest_asyncio
from bizcenter_support import (
    FakeDataGateway,
    Harness,
    biz_settings,
    churn_request,
    edit_scene,
    predict_load,
    run_biz,
    run_doubles,
    scoring,
)

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.common.v1 import common_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2 as mg
from infermesh_model_gateway.testing import ChurnModels, GatewayHarness, start_gateway, train_churn_models

pytestmark = pytest.mark.asyncio(loop_scope="module")

CUSTOMERS = 64


@dataclass
class Mesh:
    """The business center, the real model gateway, and the trained models."""

    biz: Harness
    gateway: GatewayHarness
    models: ChurnModels

    def local(self, version: int, customer: int) -> float:
        """The churn probability onnxruntime computes for ``customer`` with ``version``."""
        trained = self.models.v1 if version == 1 else self.models.v2
        session = ort.InferenceSession(str(trained.path), providers=["CPUExecutionProvider"])
        (probabilities,) = session.run(["probabilities"], {"X": self.models.x[customer : customer + 1]})
        return float(probabilities[0, 1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    root = tmp_path_factory.mktemp("mesh")
    models = train_churn_models(root / "models")
    async with start_gateway(root / "gateway", workers=1) as gateway:
        assert await gateway.register_and_deploy("churn", models.v1) == 1
        assert await gateway.register_and_deploy("churn", models.v2) == 2
        await gateway.control.PromoteModelVersion(mg.PromoteModelVersionRequest(model="churn", version=1))
        await gateway.control.SetAlias(mg.SetAliasRequest(model="churn", alias="canary", version=2))
        width = models.x.shape[1]
        rows = {i: tuple(float(v) for v in models.x[i]) for i in range(CUSTOMERS)}
        data = FakeDataGateway(rows, tuple(f"f{i}" for i in range(width)), (0.0,) * width)
        async with run_doubles(data) as doubles:
            static = doubles.static() | {"model-gateway": [gateway.address]}
            settings = biz_settings(
                Path(root),
                static,
                resilience={"breaker_fail_max": 3, "breaker_reset_timeout_s": 60},
                client={"max_attempts": 1, "default_timeout_s": 2},
            )
            async with run_biz(settings) as biz:
                # these tests check routing and answers, not the SLO: on a loaded machine a first call
                # to a fresh Triton model can miss the example's 250 ms and (rightly) fall back
                await edit_scene(biz, lambda scene: scene.slo_deadline.FromSeconds(5))
                yield Mesh(biz, gateway, models)


async def test_a_scene_end_to_end_matches_onnxruntime(mesh: Mesh):
    versions = Counter()
    for customer in range(CUSTOMERS):
        reply = await mesh.biz.predict.Predict(churn_request(customer), metadata=scoring())
        version = 1 if reply.variant == "control" else 2
        versions[version] += 1
        assert (reply.model, reply.model_version, reply.route) == ("churn", version, pb.ROUTE_SOURCE_EXPERIMENT)
        assert not reply.degradation.degraded
        assert reply.prediction.scores["churn"] == pytest.approx(mesh.local(version, customer), rel=1e-5, abs=1e-6)
        threshold = 0.4 if any(a.variant == "t40" for a in reply.assignments) else 0.5
        assert reply.prediction.label == ("churn" if reply.prediction.scores["churn"] >= threshold else "stay")
        assert [h.hop for h in reply.latencies] == ["data_gateway", "model_gateway"]
    assert set(versions) == {1, 2}


async def test_paused_experiment_follows_the_production_alias(mesh: Mesh):
    admin = scoring("im-test-admin-key-0123456789")
    experiment = (
        await mesh.biz.admin.GetExperiment(pb.GetExperimentRequest(name="churn-model-ab"), metadata=admin)
    ).experiment
    experiment.status = pb.EXPERIMENT_STATUS_PAUSED
    await mesh.biz.admin.UpsertExperiment(pb.UpsertExperimentRequest(experiment=experiment), metadata=admin)
    try:
        reply = await mesh.biz.predict.Predict(churn_request(7), metadata=scoring())
        assert (reply.route, reply.model_version) == (pb.ROUTE_SOURCE_DEFAULT, 1)
        await mesh.gateway.control.PromoteModelVersion(mg.PromoteModelVersionRequest(model="churn", version=2))
        reply = await mesh.biz.predict.Predict(churn_request(7), metadata=scoring())
        assert reply.model_version == 2  # the response names the version that actually served
        assert reply.prediction.scores["churn"] == pytest.approx(mesh.local(2, 7), rel=1e-5, abs=1e-6)
    finally:
        await mesh.gateway.control.PromoteModelVersion(mg.PromoteModelVersionRequest(model="churn", version=1))
        experiment.status = pb.EXPERIMENT_STATUS_RUNNING
        await mesh.biz.admin.UpsertExperiment(pb.UpsertExperimentRequest(experiment=experiment), metadata=admin)


async def test_gray_release_serves_the_canary_alias(mesh: Mesh):
    reply = await mesh.biz.predict.Predict(churn_request(3, channel="staff"), metadata=scoring())
    assert (reply.route, reply.model_version, reply.variant) == (pb.ROUTE_SOURCE_GRAY_RELEASE, 2, "")
    assert reply.prediction.scores["churn"] == pytest.approx(mesh.local(2, 3), rel=1e-5, abs=1e-6)
    unknown = await mesh.biz.predict.Predict(churn_request(9001), metadata=scoring())  # allowlisted, no stored row
    assert (unknown.route, unknown.model_version) == (pb.ROUTE_SOURCE_GRAY_RELEASE, 2)
    assert unknown.degradation.degraded  # served by the canary, but from default feature values: it says so
    assert unknown.degradation.reason == common_pb2.DEGRADATION_REASON_FEATURES_FALLBACK
    assert unknown.degradation.served_by == common_pb2.SERVED_BY_PRIMARY


async def test_model_gateway_stopped_mid_load_degrades_without_errors(mesh: Mesh):
    """Runs last: it stops the model gateway's server."""
    load = asyncio.ensure_future(predict_load(mesh.biz, 2.5, callers=4, customers=CUSTOMERS, first=0))
    await asyncio.sleep(0.8)
    await mesh.gateway.runtime.server.stop(0)
    outcomes = [outcome for _, outcome in await load]
    assert [o for o in outcomes if isinstance(o, grpc.RpcError)] == []
    degraded = [o for o in outcomes if o.degradation.degraded]
    assert degraded
    assert {o.degradation.served_by for o in degraded} == {common_pb2.SERVED_BY_CACHED_SCORE}
    assert any(o.degradation.reason == common_pb2.DEGRADATION_REASON_CIRCUIT_OPEN for o in degraded)
    breakers = {n: mesh.biz.biz.predictor.breaker(n).state for n in ("model:churn:1", "model:churn:2")}
    assert set(breakers.values()) == {"open"}
    assert np.isfinite([o.prediction.scores["churn"] for o in degraded]).all()
