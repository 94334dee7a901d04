"""Bad input against a real data gateway server: page tokens that are not ASCII numbers in range,
huge names, and bytes that are no protobuf all answer INVALID_ARGUMENT with a plain message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from infermesh.common.v1 import common_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as pb

DEFINITIONS = """\
project: {version: "v1"}
entities: {customer: {keys: {customer_id: INT64}}}
sources:
  caller: {kind: request}
feature_views:
  basket: {entities: [customer], fields: {amount: FP64}, source: caller}
feature_services:
%s
"""

SERVICES = ["alpha", "beta", "gamma"]


@pytest_asyncio.fixture
async def running(tmp_path: Path, gateway_factory) -> AsyncIterator[object]:
    folder = tmp_path / "defs"
    folder.mkdir()
    services = "\n".join(
        f"  {name}:\n    entities: [customer]\n    features:\n"
        "      - {name: amount, dtype: FP64, field: basket.amount, default: 0}"
        for name in SERVICES
    )
    (folder / "features.yaml").write_text(DEFINITIONS % services)
    yield await gateway_factory(folder)


def _list(token: str, size: int = 1) -> pb.ListFeatureServicesRequest:
    return pb.ListFeatureServicesRequest(page=common_pb2.PageRequest(page_size=size, page_token=token))


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("\u0661", id="arabic-indic-1"),
        pytest.param("\u00b2", id="superscript-2"),
        pytest.param("\uff11", id="full-width-1"),
        pytest.param("9" * 30, id="30-digits"),
        pytest.param("+1", id="plus-sign"),
        pytest.param(" 1", id="leading-space"),
        pytest.param("-1", id="negative"),
        pytest.param("abc", id="letters"),
    ],
)
async def test_a_page_token_that_is_not_one_is_invalid_argument(running, token):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.stub.ListFeatureServices(_list(token))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details().startswith("page.page_token: ")
    assert len(refused.value.details()) < 200


async def test_returned_page_tokens_page_through_every_service(running):
    names, token = [], ""
    for _ in SERVICES:
        page = await running.stub.ListFeatureServices(_list(token))
        names += [s.name for s in page.feature_services]
        token = page.page.next_page_token
        if not token:
            break
    assert names == SERVICES and not token


HUGE = "f" * 20_000


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(
            lambda stub: stub.DescribeFeatureService(pb.DescribeFeatureServiceRequest(name=HUGE)), id="Describe"
        ),
        pytest.param(lambda stub: stub.GetFeatures(pb.GetFeaturesRequest(feature_service=HUGE)), id="GetFeatures"),
        pytest.param(lambda stub: stub.PushFeatures(pb.PushFeaturesRequest(feature_view=HUGE)), id="PushFeatures"),
        pytest.param(lambda stub: stub.ListFeatureServices(pb.ListFeatureServicesRequest(name_prefix=HUGE)), id="List"),
    ],
)
async def test_a_20k_name_is_invalid_argument_not_a_removed_stream(running, call):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(running.stub)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "20000 characters" in refused.value.details()


@pytest.mark.parametrize("method", ["GetFeatures", "ListFeatureServices", "DescribeFeatureService", "PushFeatures"])
async def test_bytes_that_are_no_protobuf_are_invalid_argument(running, method):
    call = running.channel.unary_unary(
        f"/infermesh.datagateway.v1.DataGatewayService/{method}", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"\x0a\xff\xff\xff\xff", timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details()
    assert "not a valid infermesh.datagateway.v1." in details and "<class" not in details


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("x" * 300, id="name-too-long"),
        pytest.param("a\x00b", id="nul-byte"),
        pytest.param("/" + "d/" * 2000, id="deep-path"),
    ],
)
async def test_a_training_uri_that_cannot_name_a_file_is_invalid_argument(running, uri):
    request = pb.GetTrainingSetRequest(feature_service=SERVICES[0], uri=uri)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        [_ async for _ in running.stub.GetTrainingSet(request, timeout=10)]
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details().startswith("uri: ")


ODD_TEXT = ["\u00b2", "9" * 30, "\u0661", "-1", "", "x" * 256, "\x00", "%s", "alpha", "1"]
ODD_NUMBERS = [-1, 0, 2**31 - 1]


def _fill(message: Message, text: str, number: int, depth: int = 0) -> None:
    """Every singular scalar field of ``message`` (and of its nested messages) set to odd values."""
    for field in message.DESCRIPTOR.fields:
        if field.label == FieldDescriptor.LABEL_REPEATED:
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            setattr(message, field.name, text)
        elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
            setattr(message, field.name, number)
        elif field.type == FieldDescriptor.TYPE_ENUM:
            setattr(message, field.name, 99)
        elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            setattr(message, field.name, float("nan"))
        elif (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and depth < 2
            and not field.message_type.full_name.startswith("google.protobuf.")
        ):
            _fill(getattr(message, field.name), text, number, depth + 1)


async def test_no_odd_request_answers_internal_or_unknown(running):
    """A sweep of every RPC with odd strings and numbers: each answers a status the caller can act on."""
    service = pb.DESCRIPTOR.services_by_name["DataGatewayService"]
    unexpected = []
    for method in service.methods:
        if method.client_streaming:
            continue
        path = f"/{service.full_name}/{method.name}"
        invoke = running.channel.unary_stream if method.server_streaming else running.channel.unary_unary
        call = invoke(path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None)
        for text in ODD_TEXT:
            for number in ODD_NUMBERS:
                request = getattr(pb, method.input_type.name)()
                _fill(request, text, number)
                try:
                    if method.server_streaming:
                        [_ async for _ in call(request, timeout=10)]
                    else:
                        await call(request, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                        unexpected.append((method.name, text[:12], number, exc.details()))
    assert not unexpected
