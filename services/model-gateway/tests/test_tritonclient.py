"""Triton's own clients work against the gateway unchanged: tritonclient (sync and aio) and perf_analyzer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_model_gateway.perf_analyzer import run_perf_analyzer
from infermesh_model_gateway.testing import ChurnModels, GatewayHarness, start_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(churn_models: ChurnModels, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayHarness]:
    async with start_gateway(tmp_path_factory.mktemp("tritonclient"), workers=1) as harness:
        await harness.register_and_deploy("churn", churn_models.v1)
        await harness.register_and_deploy("churn", churn_models.v2)
        await harness.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=2))
        yield harness


def _sync_session(address: str, x: np.ndarray) -> dict[str, object]:
    client = grpcclient.InferenceServerClient(address)
    try:
        tensor = grpcclient.InferInput("X", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("churn", [tensor], outputs=[grpcclient.InferRequestedOutput("probabilities")])
        pinned = client.infer("churn", [tensor], model_version="1")
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready("churn", "2"),
            "metadata": client.get_model_metadata("churn", as_json=True),
            "config": client.get_model_config("churn", as_json=True),
            "probabilities": result.as_numpy("probabilities"),
            "label_absent": result.as_numpy("label") is None,
            "version": result.get_response().model_version,
            "pinned_version": pinned.get_response().model_version,
            "statistics": client.get_inference_statistics("churn", as_json=True),
        }
    finally:
        client.close()


async def test_the_sync_client_works_unchanged(gw, churn_models):
    x = churn_models.x[:5]
    seen = await asyncio.to_thread(_sync_session, gw.address, x)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["metadata"]["name"] == "churn"
    assert seen["config"]["config"]["max_batch_size"] == 64
    expected = churn_models.v2.estimator.predict_proba(x)
    np.testing.assert_allclose(seen["probabilities"], expected, rtol=1e-4, atol=1e-5)
    assert seen["label_absent"], "only the requested output is returned"
    assert (seen["version"], seen["pinned_version"]) == ("2", "1")
    stats = {s["version"]: int(s.get("inference_count", 0)) for s in seen["statistics"]["model_stats"]}
    assert stats["2"] >= 1 and stats["1"] >= 1


async def test_the_aio_client_works_unchanged(gw, churn_models):
    client = aioclient.InferenceServerClient(gw.address)
    try:
        x = churn_models.x[:3]
        tensor = aioclient.InferInput("X", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        results = await asyncio.gather(*(client.infer("churn", [tensor]) for _ in range(20)))
        for result in results:
            np.testing.assert_array_equal(result.as_numpy("label").reshape(-1), churn_models.v2.estimator.predict(x))
        with pytest.raises(InferenceServerException, match="model 'missing' is not registered"):
            await client.infer("missing", [tensor])
    finally:
        await client.close()


async def test_perf_analyzer_measures_the_gateway(gw, tmp_path):
    result = await asyncio.to_thread(
        run_perf_analyzer, gw.address, "churn", concurrency=2, shapes={"X": [6]}, measurement_ms=1000, workdir=tmp_path
    )
    assert result.concurrency == 2
    assert result.throughput > 50
    assert 0 < result.p50_ms <= result.p99_ms
