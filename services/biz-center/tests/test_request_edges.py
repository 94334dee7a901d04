"""Edges of the business center's gRPC front found by bad input: oversize and malformed request ids
are refused (INVALID_ARGUMENT, the handler never waits on a downstream), audit page tokens are read
strictly, and a rate-limit refusal names a positive wait."""

from __future__ import annotations

import base64

import grpc
import pytest
from bizcenter_support import ADMIN_KEY, SCORING_KEY, Harness, churn_request, edit_scene, scoring

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.common.v1 import common_pb2

ADMIN = scoring(ADMIN_KEY)


@pytest.mark.parametrize(
    ("request_id", "expected"),
    [
        pytest.param("r" * 20_000, "request_id: 20000 characters", id="20000-chars"),
        pytest.param("r" * 200, "request_id: 200 characters; a request id has at most 128", id="200-chars"),
        pytest.param("caf\u00e9", "is not a request id", id="non-ascii"),
        pytest.param("a b", "is not a request id", id="space"),
    ],
)
async def test_a_bad_request_id_field_is_refused(biz: Harness, request_id, expected):
    request = churn_request(1)
    request.request_id = request_id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await biz.predict.Predict(request, metadata=scoring(SCORING_KEY), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert expected in refused.value.details()


async def test_a_bad_request_id_fails_only_its_batch_item(biz: Harness):
    good, bad = churn_request(1), churn_request(2)
    good.request_id, bad.request_id = "item-1", "r" * 200
    reply = await biz.predict.PredictBatch(
        pb.PredictBatchRequest(items=[good, bad]), metadata=scoring(SCORING_KEY), timeout=10
    )
    assert reply.results[0].WhichOneof("outcome") == "response"
    assert reply.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "a request id has at most 128" in reply.results[1].error.message


def _token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


@pytest.mark.parametrize(
    "inside",
    [
        pytest.param("\u0661", id="arabic-indic-1"),
        pytest.param("\u00b2", id="superscript-2"),
        pytest.param("9" * 30, id="30-digits"),
        pytest.param("+1", id="plus-sign"),
        pytest.param("x", id="letter"),
    ],
)
async def test_an_audit_page_token_that_is_not_one_is_invalid_argument(biz: Harness, inside):
    page = common_pb2.PageRequest(page_token=_token(inside))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await biz.admin.ListAuditEntries(pb.ListAuditEntriesRequest(page=page), metadata=ADMIN)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details().startswith("page.page_token: ")


async def test_a_rate_limit_refusal_names_a_positive_wait(biz: Harness):
    def limit(scene: pb.Scene) -> None:
        scene.rate_limit.CopyFrom(pb.RateLimit(requests_per_second=0.5, burst=1, mode=pb.RATE_LIMIT_MODE_LOCAL))
        scene.max_concurrency = 0

    await edit_scene(biz, limit)
    await biz.predict.Predict(churn_request(1), metadata=scoring(SCORING_KEY))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await biz.predict.Predict(churn_request(1), metadata=scoring(SCORING_KEY))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    [hint] = [int(v) for k, v in refused.value.trailing_metadata() if k == "retry-after-ms"]
    assert 0 < hint <= 2000
    assert refused.value.details() == f"rate limit exceeded for scene churn-score; retry in {hint} ms"
