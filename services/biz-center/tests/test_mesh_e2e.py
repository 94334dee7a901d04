"""The whole predict path with the REAL services: business center → data gateway → model gateway → Triton.

The data gateway serves the churn example (services/data-gateway/examples/churn, its data made
fresh in a copy and materialized into an SQLite online store at start); the model gateway runs
one embedded tritonserver. Two churn models are trained at test time on the vectors the data
gateway itself serves (version 1 a logistic regression, version 2 gradient-boosted trees), so
each answer can be compared with onnxruntime on the same vector. Only the monitor is a double.
The last test stops the data gateway mid-load.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import pytest_asyncio
from bizcenter_support import Harness, biz_settings, churn_request, predict_load, run_biz, run_doubles, scoring
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.common.v1 import common_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as dg
from infermesh.datagateway.v1 import data_gateway_pb2_grpc as dg_grpc
from infermesh.modelgateway.v1 import model_gateway_pb2 as mg
from infermesh_chassis.app import Runtime
from infermesh_chassis.settings import load_settings
from infermesh_data_gateway.__main__ import build as build_data_gateway
from infermesh_data_gateway.settings import Settings as DataGatewaySettings
from infermesh_model_gateway.testing import TrainedModel, register_request, sha256, start_gateway, to_onnx_file

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXAMPLE = Path(__file__).resolve().parents[2] / "data-gateway" / "examples" / "churn"
CUSTOMERS = range(1, 201)


@dataclass
class Mesh:
    """The running mesh and what the test knows about it."""

    biz: Harness
    data: Runtime
    vectors: dict[int, np.ndarray]
    models: dict[int, Path]

    def local(self, version: int, customer: int) -> float:
        """onnxruntime's churn probability for the vector the data gateway serves for ``customer``."""
        session = ort.InferenceSession(str(self.models[version]), providers=["CPUExecutionProvider"])
        (probabilities,) = session.run(["probabilities"], {"X": self.vectors[customer][None, :]})
        return float(probabilities[0, 1])


def _vector(row: dg.FeatureRow) -> np.ndarray:
    flat: list[float] = []
    for value in row.values:
        kind = value.WhichOneof("kind")
        flat.extend(value.double_list.values if kind == "double_list" else [float(getattr(value, kind))])
    return np.asarray(flat, dtype=np.float32)


async def _start_data_gateway(root: Path) -> Runtime:
    """The data gateway as its process builds it, serving a fresh copy of the churn example."""
    example = root / "churn"
    shutil.copytree(EXAMPLE, example)
    await asyncio.to_thread(subprocess.run, [sys.executable, str(example / "make_data.py")], check=True)
    os.environ["DATA_GATEWAY_EXAMPLE_ONLINE_DB"] = str(root / "churn-online.db")
    settings = load_settings(
        DataGatewaySettings,
        definitions=str(example / "definitions.yaml"),
        materialize_on_start=["customer_profile", "customer_activity"],
        definitions_reload_s=0,
        metrics={"enabled": False},
        events={"enabled": False},
        grpc={"grace_period_s": 0.5},
    )
    runtime = Runtime.create(settings)
    await build_data_gateway(settings, runtime)
    await runtime.server.start()
    return runtime


async def _train(root: Path, data_address: str) -> tuple[dict[int, np.ndarray], dict[int, Path]]:
    """Vectors of every customer from the data gateway, and two classifiers trained on them."""
    async with grpc.aio.insecure_channel(data_address) as channel:
        reply = await dg_grpc.DataGatewayServiceStub(channel).GetFeatures(
            dg.GetFeaturesRequest(
                feature_service="churn",
                entities=[dg.EntityRow(keys={"customer_id": common_pb2.Value(int64_value=c)}) for c in CUSTOMERS],
            )
        )
    vectors = {c: _vector(row) for c, row in zip(CUSTOMERS, reply.rows, strict=True)}
    x = np.stack([vectors[c] for c in CUSTOMERS])
    rng = np.random.default_rng(3)
    logits = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6) @ rng.normal(size=x.shape[1])
    y = (logits + 0.3 * rng.normal(size=len(x)) > 0).astype(np.int64)
    lr = LogisticRegression(max_iter=1000).fit(x, y)
    gb = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0).fit(x, y)
    models = {1: to_onnx_file(lr, x, root / "churn_lr.onnx"), 2: to_onnx_file(gb, x, root / "churn_gb.onnx")}
    return vectors, {version: trained.path for version, trained in models.items()}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    root = tmp_path_factory.mktemp("mesh")
    previous = os.environ.get("DATA_GATEWAY_EXAMPLE_ONLINE_DB")
    data = await _start_data_gateway(root)
    try:
        vectors, models = await _train(root, data.server.address)
        async with start_gateway(root / "model-gateway", workers=1) as gateway:
            for version, path in models.items():
                trained = TrainedModel(path.stem, path, sha256(path), None)
                registered = await gateway.control.RegisterModelVersion(
                    register_request("churn", trained, features=len(vectors[1]))
                )
                assert registered.model_version.version == version
                await gateway.control.DeployModelVersion(mg.DeployModelVersionRequest(model="churn", version=version))
            await gateway.control.PromoteModelVersion(mg.PromoteModelVersionRequest(model="churn", version=1))
            await gateway.control.SetAlias(mg.SetAliasRequest(model="churn", alias="canary", version=2))
            async with run_doubles() as doubles:
                static = {
                    "data-gateway": [data.server.address],
                    "model-gateway": [gateway.address],
                    "monitor": [doubles.monitor_server.address],
                }
                settings = biz_settings(root, static, resilience={"breaker_fail_max": 3, "breaker_reset_timeout_s": 60})
                async with run_biz(settings) as biz:
                    await _warm_up(biz)
                    yield Mesh(biz, data, vectors, models)
    finally:
        await data.close()
        if previous is None:
            os.environ.pop("DATA_GATEWAY_EXAMPLE_ONLINE_DB", None)
        else:
            os.environ["DATA_GATEWAY_EXAMPLE_ONLINE_DB"] = previous


async def _warm_up(biz: Harness, timeout_s: float = 30.0) -> None:
    """First calls pay for cold sessions (onnxruntime, channels) and may miss the scene's 250 ms SLO."""
    deadline = time.monotonic() + timeout_s
    for customer in range(1, 9):
        while (await biz.predict.Predict(churn_request(customer), metadata=scoring())).degradation.degraded:
            assert time.monotonic() < deadline, "the mesh never answered without degradation"
            await asyncio.sleep(0.2)


async def test_a_scene_end_to_end_through_the_real_mesh(mesh: Mesh):
    versions: Counter[int] = Counter()
    for customer in list(CUSTOMERS)[:60]:
        reply = await mesh.biz.predict.Predict(
            pb.PredictRequest(
                scene="churn-score",
                unit_id=str(customer),
                features={"basket_amount": common_pb2.Value(double_value=0.0)},
            ),
            metadata=scoring(),
        )
        version = 1 if reply.variant == "control" else 2
        versions[version] += 1
        assert (reply.model, reply.model_version, reply.route) == ("churn", version, pb.ROUTE_SOURCE_EXPERIMENT)
        assert not reply.degradation.degraded, reply.degradation.detail
        # days_since_login moves with the clock between the fixture's fetch and this call: a few ppm
        assert reply.prediction.scores["churn"] == pytest.approx(mesh.local(version, customer), rel=1e-3)
        lineage = reply.feature_lineage
        assert (lineage.feature_service, lineage.definition_version) == ("churn", "2026.11.1")
        assert {v.feature_view for v in lineage.views} == {"customer_profile", "customer_activity"}
        assert [h.hop for h in reply.latencies] == ["data_gateway", "model_gateway"]
    assert set(versions) == {1, 2}


async def test_concurrent_requests_through_the_real_mesh_answer_the_same(mesh: Mesh):
    alone = {c: await mesh.biz.predict.Predict(churn_request(c), metadata=scoring()) for c in range(1, 9)}

    async def round_() -> list[pb.PredictResponse]:
        calls = (mesh.biz.predict.Predict(churn_request(1 + i % 8), metadata=scoring()) for i in range(48))
        return list(await asyncio.gather(*calls))

    await round_()  # warm-up: onnxruntime's first run of each new batch size is slow
    together = await round_()
    for i, reply in enumerate(together):
        expected = alone[1 + i % 8]
        assert (reply.variant, reply.model_version) == (expected.variant, expected.model_version)
        # onnxruntime's batch kernels may differ from single-row ones in the last float digits
        assert reply.prediction.scores["churn"] == pytest.approx(expected.prediction.scores["churn"], rel=1e-4)
        assert not reply.degradation.degraded


async def test_data_gateway_stopped_mid_load_degrades_without_errors(mesh: Mesh):
    """Runs last: it stops the data gateway's server."""
    load = asyncio.ensure_future(predict_load(mesh.biz, 2.0, callers=4, customers=8))
    await asyncio.sleep(0.6)
    await mesh.data.server.stop(0)
    outcomes = [outcome for _, outcome in await load]
    assert [o for o in outcomes if isinstance(o, grpc.RpcError)] == []
    degraded = [o for o in outcomes if o.degradation.degraded]
    assert degraded
    assert {o.degradation.served_by for o in degraded} == {common_pb2.SERVED_BY_CACHED_SCORE}
    assert any(o.degradation.reason == common_pb2.DEGRADATION_REASON_CIRCUIT_OPEN for o in degraded)
    assert mesh.biz.biz.predictor.breaker("data-gateway").state == "open"
