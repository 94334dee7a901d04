"""The whole mesh as its users meet it: a Predict through every hop checked against a local model,
Thrift and Node callers, Triton's own client, and a promotion and a rollback under load (processes
killed under load: ``test_chaos.py``)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
from mesh_support import API_KEY, flatten, local_probabilities
from thriftpy2.contrib.aio.rpc import make_client
from tritonclient.grpc import service_pb2_grpc

from infermesh.bizcenter.v1 import biz_center_pb2 as biz
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as biz_grpc
from infermesh.datagateway.v1 import data_gateway_pb2 as dg
from infermesh.datagateway.v1 import data_gateway_pb2_grpc as dg_grpc
from infermesh.modelgateway.v1 import model_gateway_pb2 as mg
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc as mg_grpc
from infermesh_biz_center.thrift_front import IDL
from infermesh_cli.stack import LocalStack
from infermesh_model_gateway.testing import infer_request, output

REPO = Path(__file__).resolve().parents[1]
NODE_DIR = REPO / "services" / "biz-center" / "tests" / "node"


async def _features(stack: LocalStack, customer: int) -> np.ndarray:
    async with grpc.aio.insecure_channel(stack.process("data-gateway").address) as channel:
        request = dg.GetFeaturesRequest(feature_service="churn")
        request.entities.add().keys["customer_id"].int64_value = customer
        reply = await dg_grpc.DataGatewayServiceStub(channel).GetFeatures(request)
    return flatten(list(reply.rows[0].values))


async def _predict(stack: LocalStack, unit: str, basket_amount: float | None = None) -> biz.PredictResponse:
    async with grpc.aio.insecure_channel(stack.process("biz-center").address) as channel:
        request = biz.PredictRequest(scene="churn-score", unit_id=unit)
        if basket_amount is not None:
            request.features["basket_amount"].double_value = basket_amount
        return await biz_grpc.BizCenterServiceStub(channel).Predict(request, metadata=API_KEY, timeout=5)


async def test_a_predict_through_every_hop_equals_the_local_model(mesh: LocalStack):
    for customer in (3, 17, 42):
        response = await _predict(mesh, str(customer))
        assert not response.degradation.degraded, response.degradation.detail
        assert response.variant in ("control", "treatment")
        assert [h.hop for h in response.latencies] == ["data_gateway", "model_gateway"]
        expected = local_probabilities(mesh, response.model_version, await _features(mesh, customer))
        assert response.prediction.scores["churn"] == pytest.approx(float(expected[1]), abs=1e-5)
        assert response.prediction.scores["stay"] == pytest.approx(float(expected[0]), abs=1e-5)
        assert response.feature_lineage.definition_version


async def test_tritonclient_against_the_mesh_model_gateway(mesh: LocalStack):
    x = await _features(mesh, 7)

    def call() -> tuple[np.ndarray, str]:
        client = tritongrpc.InferenceServerClient(mesh.process("model-gateway").address)
        try:
            tensor = tritongrpc.InferInput("X", [1, len(x)], "FP32")
            tensor.set_data_from_numpy(x.reshape(1, -1))
            result = client.infer("churn", [tensor], model_version="2")
            return result.as_numpy("probabilities")[0], result.get_response().model_version
        finally:
            client.close()

    probabilities, version = await asyncio.to_thread(call)
    assert version == "2"
    np.testing.assert_allclose(probabilities, local_probabilities(mesh, 2, x), atol=1e-6)


async def test_a_legacy_thrift_caller_gets_the_grpc_answer(mesh: LocalStack):
    client = await make_client(IDL.BizCenter, "127.0.0.1", mesh.thrift_port, timeout=5000)
    try:
        answer = await client.predict(
            IDL.PredictRequest(scene="churn-score", unit_id="42"), IDL.CallOptions(api_key=API_KEY[0][1])
        )
    finally:
        client.close()
    expected = await _predict(mesh, "42")
    assert answer.variant == expected.variant
    assert answer.model_version == expected.model_version
    assert answer.scores["churn"] == pytest.approx(expected.prediction.scores["churn"], abs=1e-6)


async def test_a_node_caller_gets_the_grpc_answer(mesh: LocalStack):
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        install = [npm, "ci", "--no-audit", "--no-fund"]
        await asyncio.to_thread(subprocess.run, install, cwd=NODE_DIR, check=True, capture_output=True)
    address, key, protos = mesh.process("biz-center").address, API_KEY[0][1], str(REPO / "protos")
    done = await asyncio.to_thread(
        subprocess.run,
        [node, str(NODE_DIR / "predict.js"), address, key, protos, "churn-score", "42"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    expected = await _predict(mesh, "42", basket_amount=12.5)
    assert answer["variant"] == expected.variant
    assert int(answer["model_version"]) == expected.model_version
    assert answer["prediction"]["scores"]["churn"] == pytest.approx(expected.prediction.scores["churn"], abs=1e-6)


async def _load(stack: LocalStack, until: asyncio.Event, concurrency: int = 6) -> dict[str, int]:
    counts = {"ok": 0, "degraded": 0, "errors": 0}
    async with grpc.aio.insecure_channel(stack.process("biz-center").address) as channel:
        predict = biz_grpc.BizCenterServiceStub(channel).Predict

        async def worker(offset: int) -> None:
            i = offset
            while not until.is_set():
                i += concurrency
                request = biz.PredictRequest(scene="churn-score", unit_id=str(1 + i % 200))
                try:
                    response = await predict(request, metadata=API_KEY, timeout=5)
                except grpc.aio.AioRpcError:
                    counts["errors"] += 1
                    continue
                counts["degraded" if response.degradation.degraded else "ok"] += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return counts


async def _until_healthy(stack: LocalStack, timeout_s: float = 30.0) -> None:
    """Wait until the mesh answers normally again (after another test killed a process)."""
    deadline = time.monotonic() + timeout_s
    while (await _predict(stack, "1")).degradation.degraded:
        assert time.monotonic() < deadline, "the mesh did not recover"
        await asyncio.sleep(0.5)


async def test_promote_and_rollback_under_load_fail_no_request(mesh: LocalStack):
    await _until_healthy(mesh)
    stop = asyncio.Event()
    direct: dict[str, int] = {"ok": 0, "errors": 0}
    x = await _features(mesh, 9)

    async def gateway_load() -> None:
        async with grpc.aio.insecure_channel(mesh.process("model-gateway").address) as channel:
            infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            while not stop.is_set():
                try:
                    response = await infer(infer_request("churn", x.reshape(1, -1)), timeout=5)
                    assert output(response, "probabilities").shape == (1, 2)
                    direct["ok"] += 1
                except grpc.aio.AioRpcError:
                    direct["errors"] += 1

    async def operator() -> None:
        async with grpc.aio.insecure_channel(mesh.process("model-gateway").address) as channel:
            control = mg_grpc.ModelControlServiceStub(channel)
            await asyncio.sleep(1.0)
            await control.PromoteModelVersion(mg.PromoteModelVersionRequest(model="churn", version=2, actor="test"))
            await asyncio.sleep(1.0)
            await control.RollbackModel(mg.RollbackModelRequest(model="churn", actor="test", reason="drill"))
            await asyncio.sleep(1.0)
            model = (await control.GetModel(mg.GetModelRequest(model="churn"))).model
            assert model.aliases["production"] == 1
        stop.set()

    counts, *_ = await asyncio.gather(_load(mesh, stop), gateway_load(), operator())
    assert counts["errors"] == 0 and counts["degraded"] == 0, counts
    assert direct["errors"] == 0 and direct["ok"] > 50
