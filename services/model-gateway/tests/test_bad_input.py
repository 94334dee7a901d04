"""Bad input against the gateway with a real Triton worker: version strings and page tokens that
are not ASCII numbers in range, huge names, bytes that are no protobuf; a bad item of a
``ModelStreamInfer`` stream is answered on its own and the stream goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2

from infermesh.common.v1 import common_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_model_gateway.testing import (
    ChurnModels,
    GatewayHarness,
    infer_request,
    register_request,
    start_gateway,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

BAD_NUMBERS = [
    pytest.param("\u0661", id="arabic-indic-1"),
    pytest.param("\uff11", id="full-width-1"),
    pytest.param("\u00b2", id="superscript-2"),
    pytest.param("9" * 30, id="30-digits"),
    pytest.param(str(2**63), id="int64-max-plus-1"),
    pytest.param("+1", id="plus-sign"),
    pytest.param(" 1", id="leading-space"),
    pytest.param("-1", id="negative"),
    pytest.param("1.0", id="decimal"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(churn_models: ChurnModels, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayHarness]:
    async with start_gateway(tmp_path_factory.mktemp("gateway")) as harness:
        assert await harness.register_and_deploy("churn", churn_models.v1) == 1
        await harness.control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1))
        await harness.control.RegisterModelVersion(register_request("churn", churn_models.v2))  # a second page
        yield harness


def _versioned_calls(gw: GatewayHarness, x: Any) -> dict[str, Callable[[str], Any]]:
    """Every data-plane RPC that takes a version string, as ``version -> awaitable``."""
    inference = gw.inference
    return {
        "ModelMetadata": lambda v: inference.ModelMetadata(service_pb2.ModelMetadataRequest(name="churn", version=v)),
        "ModelReady": lambda v: inference.ModelReady(service_pb2.ModelReadyRequest(name="churn", version=v)),
        "ModelConfig": lambda v: inference.ModelConfig(service_pb2.ModelConfigRequest(name="churn", version=v)),
        "ModelStatistics": lambda v: inference.ModelStatistics(
            service_pb2.ModelStatisticsRequest(name="churn", version=v)
        ),
        "ModelInfer": lambda v: inference.ModelInfer(infer_request("churn", x, version=v)),
    }


VERSIONED = ["ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics", "ModelInfer"]


@pytest.mark.parametrize("rpc", VERSIONED)
@pytest.mark.parametrize("version", BAD_NUMBERS)
async def test_a_version_that_is_not_an_ascii_number_is_invalid_argument(gw, churn_models, rpc, version):
    call = _versioned_calls(gw, churn_models.x[:1])[rpc]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(version)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "version" in refused.value.details()
    assert len(refused.value.details()) < 200


@pytest.mark.parametrize("rpc", VERSIONED)
async def test_the_same_rpcs_still_serve_a_plain_number_and_an_alias(gw, churn_models, rpc):
    call = _versioned_calls(gw, churn_models.x[:1])[rpc]
    await call("1")
    await call("production")
    with pytest.raises(grpc.aio.AioRpcError) as absent:
        await call("7")
    assert absent.value.code() == grpc.StatusCode.NOT_FOUND


def _paged_calls(gw: GatewayHarness) -> dict[str, Callable[[str], Any]]:
    control = gw.control

    def page(token: str) -> common_pb2.PageRequest:
        return common_pb2.PageRequest(page_size=1, page_token=token)

    return {
        "ListModelVersions": lambda t: control.ListModelVersions(
            pb.ListModelVersionsRequest(model="churn", page=page(t))
        ),
        "ListAuditEntries": lambda t: control.ListAuditEntries(pb.ListAuditEntriesRequest(page=page(t))),
        "ListRollouts": lambda t: control.ListRollouts(pb.ListRolloutsRequest(page=page(t))),
    }


@pytest.mark.parametrize("rpc", ["ListModelVersions", "ListAuditEntries", "ListRollouts"])
@pytest.mark.parametrize("token", [*BAD_NUMBERS, pytest.param("abc", id="letters")])
async def test_a_page_token_that_is_not_one_is_invalid_argument(gw, rpc, token):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _paged_calls(gw)[rpc](token)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details().startswith("page.page_token: ")
    assert len(refused.value.details()) < 200


@pytest.mark.parametrize("rpc", ["ListModelVersions", "ListAuditEntries"])
async def test_a_returned_page_token_still_pages(gw, rpc):
    first = await _paged_calls(gw)[rpc]("")
    assert first.page.next_page_token
    await _paged_calls(gw)[rpc](first.page.next_page_token)


HUGE = "m" * 20_000


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda gw: gw.control.GetModel(pb.GetModelRequest(model=HUGE)), id="GetModel"),
        pytest.param(
            lambda gw: gw.control.GetModelVersion(pb.GetModelVersionRequest(model=HUGE, version=1)),
            id="GetModelVersion",
        ),
        pytest.param(
            lambda gw: gw.inference.ModelMetadata(service_pb2.ModelMetadataRequest(name=HUGE)), id="ModelMetadata"
        ),
        pytest.param(
            lambda gw: gw.inference.ModelInfer(service_pb2.ModelInferRequest(model_name=HUGE)), id="ModelInfer"
        ),
        pytest.param(
            lambda gw: gw.inference.ModelMetadata(service_pb2.ModelMetadataRequest(name="churn", version=HUGE)),
            id="ModelMetadata-version",
        ),
    ],
)
async def test_a_20k_name_is_invalid_argument_not_a_removed_stream(gw, call):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(gw)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "20000 characters" in refused.value.details()


@pytest.mark.parametrize(
    "method",
    [
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelMetadata",
        "/infermesh.modelgateway.v1.ModelControlService/GetModel",
        "/infermesh.modelgateway.v1.ModelControlService/RegisterModelVersion",
    ],
)
async def test_bytes_that_are_no_protobuf_are_invalid_argument(gw, method):
    call = gw.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"\x0a\xff\xff\xff\xff", timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "<class" not in refused.value.details() and "not a valid" in refused.value.details()


async def test_a_bad_stream_item_is_answered_and_the_stream_goes_on(gw, churn_models):
    x = churn_models.x[:1]
    items = [
        infer_request("churn", x, version="1"),
        infer_request("churn", x, version="\u00b2"),
        infer_request("churn", x, version="9" * 30),
        infer_request(HUGE, x),
        infer_request("churn", x, version="\u0661"),
        infer_request("churn", x),
    ]
    answers = [answer async for answer in gw.inference.ModelStreamInfer(iter(items), timeout=30)]
    assert len(answers) == len(items)
    served = [a.infer_response.model_version for a in answers]
    errors = [a.error_message for a in answers]
    assert served[0] == "1" and served[-1] == "1"
    assert not errors[0] and not errors[-1]
    assert "model_version" in errors[1] and "model_version" in errors[2] and "model_version" in errors[4]
    assert "model_name: 20000 characters" in errors[3]
    assert all(len(e) < 300 for e in errors)


ODD_TEXT = ["\u00b2", "9" * 30, "\u0661", "-1", "", "x" * 256, "\x00", "1"]
ODD_NUMBERS = [-1, 0, 2**63 - 1]


def _fill(message: Message, text: str, number: int, depth: int = 0) -> None:
    """Every singular scalar field of ``message`` (and of its nested messages) set to odd values."""
    for field in message.DESCRIPTOR.fields:
        if field.label == FieldDescriptor.LABEL_REPEATED:
            continue
        kind = field.type
        if kind == FieldDescriptor.TYPE_STRING:
            setattr(message, field.name, text)
        elif kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32):
            bound = 2**31 - 1 if kind == FieldDescriptor.TYPE_INT32 else 2**63 - 1
            setattr(message, field.name, max(-bound - 1, min(bound, number)))
        elif kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
            setattr(message, field.name, min(abs(number), 2**32 - 1))
        elif kind == FieldDescriptor.TYPE_ENUM:
            setattr(message, field.name, 99)
        elif kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            setattr(message, field.name, float("nan"))
        elif (
            kind == FieldDescriptor.TYPE_MESSAGE
            and depth < 2
            and not field.message_type.full_name.startswith("google.protobuf.")
        ):
            _fill(getattr(message, field.name), text, number, depth + 1)


@pytest.mark.parametrize(
    ("service", "module"),
    [
        pytest.param(pb.DESCRIPTOR.services_by_name["ModelControlService"], pb, id="control"),
        pytest.param(service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"], service_pb2, id="inference"),
    ],
)
async def test_no_odd_request_answers_internal_or_unknown(gw, service, module):
    """A sweep of every unary RPC with odd strings and numbers: each answers a status the caller can
    act on (mutations included: no odd value names the module's model, so nothing it serves changes)."""
    unexpected = []
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            continue
        call = gw.channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=None,
        )
        for text in ODD_TEXT:
            for number in ODD_NUMBERS:
                request = getattr(module, method.input_type.name)()
                _fill(request, text, number)
                try:
                    await call(request, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                        unexpected.append((method.name, text[:12], number, exc.details()))
    assert not unexpected
