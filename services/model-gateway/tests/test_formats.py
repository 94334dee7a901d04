"""Every supported format, registered and served through real Triton, answers as the library itself.

scikit-learn (skops natively, joblib when trusted), XGBoost (JSON booster), LightGBM (text booster)
and PMML (exported with nyoka) are trained here on the churn data, registered with the gateway,
deployed on an embedded Triton worker's python backend, and compared with the estimator's own
``predict_proba``. Untrusted pickles are refused, as are outputs a format cannot produce.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import joblib
import lightgbm as lgb
import numpy as np
import pytest
import pytest_asyncio
import skops.io
import xgboost as xgb
from nyoka import skl_to_pmml
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from infermesh.common.v1 import common_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_model_gateway.runtimes import ArtifactError, TensorInfo, load_runtime
from infermesh_model_gateway.testing import ChurnModels, GatewayHarness, infer_request, output, sha256, start_gateway

ON_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")

_INPUTS = [common_pb2.TensorSpec(name="X", datatype="FP32", shape=[6])]
_OUTPUTS = [
    common_pb2.TensorSpec(name="label", datatype="INT64", shape=[1]),
    common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[2]),
]


def _skops(x: np.ndarray, y: np.ndarray, path: Path) -> Any:
    model = LogisticRegression(max_iter=500).fit(x, y)
    skops.io.dump(model, path)
    return model


def _joblib(x: np.ndarray, y: np.ndarray, path: Path) -> Any:
    model = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0).fit(x, y)
    joblib.dump(model, path)
    return model


def _xgboost(x: np.ndarray, y: np.ndarray, path: Path) -> Any:
    model = xgb.XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1).fit(x, y)
    model.get_booster().save_model(str(path))
    return model


def _lightgbm(x: np.ndarray, y: np.ndarray, path: Path) -> Any:
    model = lgb.LGBMClassifier(n_estimators=30, num_leaves=8, n_jobs=1, verbose=-1).fit(x, y)
    model.booster_.save_model(str(path))
    return model


def _pmml(x: np.ndarray, y: np.ndarray, path: Path) -> Any:
    pipeline = Pipeline([("clf", LogisticRegression(max_iter=500))]).fit(x.astype(np.float64), y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skl_to_pmml(pipeline, [f"f{i}" for i in range(x.shape[1])], "churned", str(path))
    return pipeline


_FORMATS: dict[str, tuple[int, str, Callable[[np.ndarray, np.ndarray, Path], Any], bool]] = {
    "sklearn-skops": (pb.MODEL_FORMAT_SKLEARN, "model.skops", _skops, False),
    "sklearn-joblib": (pb.MODEL_FORMAT_SKLEARN, "model.joblib", _joblib, True),
    "xgboost": (pb.MODEL_FORMAT_XGBOOST, "model.json", _xgboost, False),
    "lightgbm": (pb.MODEL_FORMAT_LIGHTGBM, "model.txt", _lightgbm, False),
    "pmml": (pb.MODEL_FORMAT_PMML, "model.pmml", _pmml, False),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayHarness]:
    async with start_gateway(tmp_path_factory.mktemp("formats"), workers=1) as harness:
        yield harness


@ON_MODULE_LOOP
@pytest.mark.parametrize("kind", list(_FORMATS))
async def test_each_format_serves_what_its_library_predicts(gw, churn_models: ChurnModels, tmp_path, kind):
    fmt, filename, train, trusted = _FORMATS[kind]
    x, y = churn_models.x[:1500], churn_models.y[:1500]
    path = tmp_path / filename
    estimator = train(x, y, path)
    registered = await gw.control.RegisterModelVersion(
        pb.RegisterModelVersionRequest(
            model=f"churn-{kind}",
            format=fmt,
            artifact=pb.Artifact(uri=f"file://{path}", sha256=sha256(path), trusted=trusted),
            inputs=_INPUTS,
            outputs=_OUTPUTS,
            deployment=pb.DeploymentConfig(max_batch_size=32, dynamic_batching=pb.DynamicBatching(enabled=True)),
        )
    )
    version = registered.model_version.version
    await gw.control.DeployModelVersion(pb.DeployModelVersionRequest(model=f"churn-{kind}", version=version))
    sample = churn_models.x[1500:1516]
    response = await gw.inference.ModelInfer(infer_request(f"churn-{kind}", sample, str(version)))
    expected = estimator.predict_proba(sample.astype(np.float64) if kind == "pmml" else sample)
    np.testing.assert_allclose(output(response, "probabilities"), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(output(response, "label").reshape(-1), np.argmax(expected, axis=1))


@ON_MODULE_LOOP
async def test_an_untrusted_joblib_file_is_refused(gw, churn_models: ChurnModels, tmp_path):
    path = tmp_path / "model.joblib"
    _joblib(churn_models.x[:200], churn_models.y[:200], path)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.control.RegisterModelVersion(
            pb.RegisterModelVersionRequest(
                model="untrusted",
                format=pb.MODEL_FORMAT_SKLEARN,
                artifact=pb.Artifact(uri=str(path), sha256=sha256(path)),
                inputs=_INPUTS,
                outputs=_OUTPUTS,
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "joblib file, which runs code when loaded" in caught.value.details()


def test_a_format_cannot_promise_outputs_it_does_not_produce(churn_models: ChurnModels, tmp_path):
    path = tmp_path / "model.json"
    _xgboost(churn_models.x[:200], churn_models.y[:200], path)
    with pytest.raises(ArtifactError, match="produce the outputs label, probabilities, prediction"):
        load_runtime("xgboost", path, [TensorInfo("X", "FP32", (6,))], [TensorInfo("logits", "FP32", (2,))])


def test_a_regressor_serves_predictions_but_not_probabilities(churn_models: ChurnModels, tmp_path):
    path = tmp_path / "model.txt"
    lgb.LGBMRegressor(n_estimators=10, verbose=-1).fit(churn_models.x, churn_models.y).booster_.save_model(str(path))
    inputs = [TensorInfo("X", "FP32", (6,))]
    runtime = load_runtime("lightgbm", path, inputs, [TensorInfo("prediction", "FP64", (1,))])
    values = runtime.predict({"X": churn_models.x[:5]})["prediction"]
    assert values.shape == (5, 1)
    with pytest.raises(ArtifactError, match="not a classifier with probabilities"):
        load_runtime("lightgbm", path, inputs, [TensorInfo("probabilities", "FP32", (2,))])
