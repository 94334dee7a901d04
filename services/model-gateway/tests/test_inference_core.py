"""The inference core on its own: a decoded request in, Triton's bytes out, no transport in between."""

from __future__ import annotations

import ast
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

import infermesh_model_gateway.inference
from infermesh_chassis.errors import InvalidArgument
from infermesh_chassis.metrics import Metrics
from infermesh_model_gateway.domain import (
    ModelFormat,
    ModelRecord,
    ModelVersionRecord,
    TensorSchema,
    TrafficPolicy,
    VersionState,
)
from infermesh_model_gateway.inference import InferenceCore
from infermesh_model_gateway.routing import Router
from infermesh_model_gateway.settings import InferenceSettings

_ANSWER = service_pb2.ModelInferResponse(model_name="churn__1").SerializeToString()


class _Pool:
    """The pool's side of a worker call, recorded: what the core sends and with which timeout."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, float]] = []

    def in_flight(self, triton_name: str) -> int:
        return 0

    async def infer_bytes(self, triton_name: str, request: bytes, *, timeout_s: float) -> bytes:
        self.calls.append((triton_name, request, timeout_s))
        return _ANSWER


def _version(number: int, **extra) -> ModelVersionRecord:
    return ModelVersionRecord(
        model="churn",
        version=number,
        format=ModelFormat.ONNX,
        artifact_uri=f"file:///models/{number}.onnx",
        artifact_sha256="0" * 64,
        inputs=(TensorSchema("x", "FP32", (4,)),),
        outputs=(TensorSchema("y", "FP32", (2,)),),
        state=VersionState.SERVING,
        **extra,
    )


def _core(traffic: TrafficPolicy) -> tuple[InferenceCore, _Pool]:
    router = Router(random.Random(7))
    retires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    versions = [_version(1, deprecated_until=retires, deprecated_at=retires - timedelta(days=1)), _version(2)]
    router.load([(ModelRecord("churn", aliases={"production": 2}, traffic=traffic), versions)])
    pool = _Pool()
    core = InferenceCore(router, pool, InferenceSettings(), Metrics("model-gateway"))  # type: ignore[arg-type]
    return core, pool


def _request(version: str = "", **parameters: str) -> tuple[service_pb2.ModelInferRequest, bytes]:
    request = service_pb2.ModelInferRequest(model_name="churn", model_version=version)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    for name, value in parameters.items():
        request.parameters[name].string_param = value
    return request, request.SerializeToString()


def _no_headers() -> None:
    pytest.fail("the core read the call's headers although no sticky policy needs them")


async def test_the_core_forwards_the_callers_bytes_readdressed_and_names_who_answered():
    core, pool = _core(TrafficPolicy())
    request, payload = _request()

    reply, warning = await core.infer(request, payload, time_remaining=None, headers=_no_headers)

    [(triton_name, sent, timeout_s)] = pool.calls
    assert triton_name == "churn__2"
    assert sent.startswith(payload)
    forwarded = service_pb2.ModelInferRequest.FromString(sent)
    assert (forwarded.model_name, forwarded.model_version) == ("churn__2", "")
    assert forwarded.raw_input_contents == request.raw_input_contents
    assert timeout_s == InferenceSettings().default_timeout_s
    assert reply.startswith(_ANSWER)
    answer = service_pb2.ModelInferResponse.FromString(reply)
    assert (answer.model_name, answer.model_version) == ("churn", "2")
    assert warning == ""


async def test_a_caller_pinned_to_a_deprecated_version_gets_the_warning_and_its_deadline_holds():
    core, pool = _core(TrafficPolicy())
    request, payload = _request("1")

    _, warning = await core.infer(request, payload, time_remaining=0.25, headers=_no_headers)

    assert warning.startswith("version 1 of model 'churn' is deprecated and retires at 2030-01-02T03:04:05")
    assert pool.calls[0][2] == 0.25


async def test_the_alias_parameter_routes_and_is_not_forwarded():
    core, pool = _core(TrafficPolicy())
    request, payload = _request(alias="production")

    await core.infer(request, payload, time_remaining=None, headers=_no_headers)

    forwarded = service_pb2.ModelInferRequest.FromString(pool.calls[0][1])
    assert forwarded.model_name == "churn__2"
    assert "alias" not in forwarded.parameters


async def test_a_sticky_key_is_read_from_the_calls_headers_when_the_request_has_none():
    core, pool = _core(TrafficPolicy(weights={2: 100}, sticky_key="user"))
    request, payload = _request()
    asked: list[bool] = []

    def headers() -> list[tuple[str, str]]:
        asked.append(True)
        return [("user", "u-17")]

    await core.infer(request, payload, time_remaining=None, headers=headers)

    assert asked == [True]
    assert pool.calls[0][0] == "churn__2"


async def test_an_invalid_request_never_reaches_a_worker():
    core, pool = _core(TrafficPolicy())
    request, _ = _request()
    request.inputs[0].datatype = "INT64"

    with pytest.raises(InvalidArgument, match="input 'x'"):
        await core.infer(request, request.SerializeToString(), time_remaining=None, headers=_no_headers)
    assert pool.calls == []


def test_the_core_imports_no_grpc():
    """Only type hints name the transport's modules (under ``TYPE_CHECKING``); nothing runs them."""
    tree = ast.parse(Path(infermesh_model_gateway.inference.__file__).read_text())
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    imported = [
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in type_only
        for alias in node.names
    ]
    assert imported
    assert not [name for name in imported if name.split(".")[0] == "grpc" or name.startswith("tritonclient")]
