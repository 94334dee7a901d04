"""The Thrift front, called with thriftpy2 and with the official Apache Thrift Python client generated
by Debian's ``thrift-compiler`` from the same IDL: answers equal the gRPC front's, errors are the
IDL's exceptions, deadlines and batches behave the same."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bizcenter_support import (
    ADMIN_KEY,
    OTHER_KEY,
    SCORING_KEY,
    Doubles,
    Harness,
    churn_request,
    edit_scene,
    scoring,
    warmed,
)
from thriftpy2.contrib.aio.rpc import make_client

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh_biz_center.thrift_front import IDL
from infermesh_chassis.testing import debian_tool

IDL_FILE = Path(__file__).resolve().parents[3] / "protos" / "infermesh" / "bizcenter" / "v1" / "biz_center.thrift"


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The official client's generated package, from the IDL in protos/."""
    compiler = debian_tool("thrift", "thrift-compiler")
    if compiler is None:
        pytest.skip("thrift-compiler is not installed and apt-get could not install it (no root or no network)")
    out = tmp_path_factory.mktemp("thrift-official")
    subprocess.run([compiler, "--gen", "py", "-out", str(out), str(IDL_FILE)], check=True, capture_output=True)
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("infermesh_bizcenter_thrift.BizCenter")
    finally:
        sys.path.remove(str(out))


class Official:
    """A blocking official client (TSocket + TBufferedTransport + TBinaryProtocol), one connection."""

    def __init__(self, service: ModuleType, port: int) -> None:
        from thrift.protocol import TBinaryProtocol  # noqa: PLC0415  (the official library, test-only)
        from thrift.transport import TSocket, TTransport  # noqa: PLC0415

        self.types = importlib.import_module("infermesh_bizcenter_thrift.ttypes")
        self.transport = TTransport.TBufferedTransport(TSocket.TSocket("127.0.0.1", port))
        self.client = service.Client(TBinaryProtocol.TBinaryProtocol(self.transport))
        self.transport.open()

    def close(self) -> None:
        self.transport.close()


async def _thriftpy(biz: Harness) -> Any:
    assert biz.biz.thrift is not None
    return await make_client(IDL.BizCenter, "127.0.0.1", biz.biz.thrift.port, timeout=5000)


def _request(types: Any, unit: str, scene: str = "churn-score", **attributes: str) -> Any:
    return types.PredictRequest(
        scene=scene,
        unit_id=unit,
        features={"basket_amount": types.Value(double_value=12.5)},
        attributes=attributes,
    )


async def test_thriftpy2_answers_like_grpc(biz: Harness, doubles: Doubles):
    await warmed(biz)
    client = await _thriftpy(biz)
    try:
        answer = await client.predict(_request(IDL, "1"), IDL.CallOptions(api_key=SCORING_KEY))
        assert doubles.data.last_request.entities[0].request_values["basket_amount"].double_value == 12.5
        expected = await biz.predict.Predict(churn_request(1), metadata=scoring())
        assert (answer.scene, answer.variant, answer.model_name, answer.model_version) == (
            "churn-score",
            expected.variant,
            "churn",
            expected.model_version,
        )
        assert answer.scores == pytest.approx(dict(expected.prediction.scores))
        assert answer.label == expected.prediction.label
        assert answer.degraded is False and answer.degraded_reason == IDL.DegradationReason.UNSPECIFIED
        assert answer.request_id
    finally:
        client.close()


async def test_thriftpy2_errors_are_the_idl_exceptions(biz: Harness, doubles: Doubles):
    client = await _thriftpy(biz)
    try:
        with pytest.raises(IDL.Unauthenticated):
            await client.predict(_request(IDL, "1"), IDL.CallOptions())
        with pytest.raises(IDL.PermissionDenied):
            await client.predict(_request(IDL, "1"), IDL.CallOptions(api_key=OTHER_KEY))
        with pytest.raises(IDL.NotFound, match="scene 'nope'"):
            await client.predict(_request(IDL, "1", scene="nope"), IDL.CallOptions(api_key=SCORING_KEY))
        with pytest.raises(IDL.InvalidRequest) as invalid:
            await client.predict(_request(IDL, "x"), IDL.CallOptions(api_key=SCORING_KEY))
        assert invalid.value.field_name == "unit_id"
        await edit_scene(biz, lambda s: s.rate_limit.CopyFrom(pb.RateLimit(requests_per_second=1, burst=1)))
        await client.predict(_request(IDL, "1"), IDL.CallOptions(api_key=SCORING_KEY))
        with pytest.raises(IDL.RateLimited) as limited:
            await client.predict(_request(IDL, "1"), IDL.CallOptions(api_key=SCORING_KEY))
        assert 0 < limited.value.retry_after_ms <= 1000
        # the connection survives every error
        await edit_scene(biz, lambda s: s.ClearField("rate_limit"))
        assert (await client.predict(_request(IDL, "2"), IDL.CallOptions(api_key=SCORING_KEY))).scores
    finally:
        client.close()


async def test_thriftpy2_deadline_and_degradation(biz: Harness, doubles: Doubles):
    doubles.models.delay_s = 1.0
    client = await _thriftpy(biz)
    try:
        answer = await client.predict(_request(IDL, "3"), IDL.CallOptions(api_key=SCORING_KEY, deadline_ms=80))
        assert answer.degraded is True
        assert answer.degraded_reason == IDL.DegradationReason.DEADLINE_EXCEEDED
        assert (answer.model_name, answer.model_version) == ("", 0)
        assert "rule-based default" in answer.degraded_detail
        assert doubles.models.time_left[-1] <= 0.08
        await edit_scene(biz, lambda s: s.ClearField("fallback_chain"))
        with pytest.raises(IDL.Unavailable, match="deadline"):
            await client.predict(_request(IDL, "3"), IDL.CallOptions(api_key=SCORING_KEY, deadline_ms=80))
    finally:
        client.close()


async def test_thriftpy2_batch(biz: Harness, doubles: Doubles):
    client = await _thriftpy(biz)
    try:
        results = await client.predictBatch(
            [_request(IDL, "1"), _request(IDL, "2", scene="nope")], IDL.CallOptions(api_key=ADMIN_KEY)
        )
        assert results[0].response is not None and results[0].error is None
        assert results[1].error.code == IDL.ErrorCode.NOT_FOUND
        with pytest.raises(IDL.Unauthenticated):
            await client.predictBatch([_request(IDL, "1")], IDL.CallOptions(api_key="bad"))
    finally:
        client.close()


async def test_official_apache_thrift_client(biz: Harness, doubles: Doubles, official: ModuleType):
    await warmed(biz)
    assert biz.biz.thrift is not None
    port = biz.biz.thrift.port

    def calls() -> dict[str, Any]:
        client = Official(official, port)
        types, seen = client.types, {}
        try:
            seen["answer"] = client.client.predict(_request(types, "4"), types.CallOptions(api_key=SCORING_KEY))
            try:
                client.client.predict(_request(types, "4", scene="nope"), types.CallOptions(api_key=SCORING_KEY))
            except types.NotFound as exc:
                seen["not_found"] = exc.message
            try:
                client.client.predict(_request(types, "4"), types.CallOptions(bearer_token="nonsense"))
            except types.Unauthenticated as exc:
                seen["unauthenticated"] = exc.message
            seen["batch"] = client.client.predictBatch(
                [_request(types, "1"), _request(types, "zz")], types.CallOptions(api_key=SCORING_KEY)
            )
        finally:
            client.close()
        return seen

    seen = await asyncio.to_thread(calls)
    expected = await biz.predict.Predict(churn_request(4), metadata=scoring())
    answer = seen["answer"]
    assert (answer.variant, answer.model_name, answer.model_version) == (
        expected.variant,
        "churn",
        expected.model_version,
    )
    assert answer.scores == pytest.approx(dict(expected.prediction.scores))
    assert "scene 'nope' does not exist" in seen["not_found"]
    assert "bearer tokens are not accepted" in seen["unauthenticated"]
    first, second = seen["batch"]
    assert first.response.scores and first.error is None
    assert second.error.code == 1 and "not an integer" in second.error.message  # INVALID_REQUEST
