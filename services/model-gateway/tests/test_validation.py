"""Request validation: every malformed request gets INVALID_ARGUMENT naming the tensor and what was expected."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from infermesh_chassis.errors import InvalidArgument
from infermesh_model_gateway.domain import DeploymentConfig, ModelFormat, ModelVersionRecord, TensorSchema
from infermesh_model_gateway.validation import RequestValidator


def _record(max_batch_size: int = 8) -> ModelVersionRecord:
    return ModelVersionRecord(
        model="churn",
        version=2,
        format=ModelFormat.ONNX,
        artifact_uri="file:///m.onnx",
        artifact_sha256="0" * 64,
        inputs=(TensorSchema("features", "FP32", (4,)), TensorSchema("segment", "INT64", (1,))),
        outputs=(TensorSchema("probabilities", "FP32", (2,)), TensorSchema("label", "INT64", (1,))),
        deployment=DeploymentConfig(max_batch_size=max_batch_size),
    )


def _request(batch: int = 2, *, features=None, segment=None, **overrides) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="churn")
    feats = np.zeros((batch, 4), np.float32) if features is None else features
    seg = np.zeros((batch, 1), np.int64) if segment is None else segment
    request.inputs.add(
        name=overrides.get("name0", "features"),
        datatype=overrides.get("dtype0", "FP32"),
        shape=overrides.get("shape0", list(feats.shape)),
    )
    request.inputs.add(name="segment", datatype="INT64", shape=list(seg.shape))
    request.raw_input_contents.extend([overrides.get("raw0", feats.tobytes()), seg.tobytes()])
    return request


def _check(request, record=None, max_bytes: int = 1 << 20) -> None:
    """Validate as the data plane does (raw contents measured in the serialized request), and check
    that the parsed request alone gets the same verdict."""
    validator = RequestValidator(record or _record(), max_bytes)
    try:
        validator.validate(request, request.SerializeToString())
    except InvalidArgument as exc:
        with pytest.raises(InvalidArgument) as parsed_only:
            validator.validate(request)
        assert parsed_only.value.message == exc.message
        raise
    validator.validate(request)


def test_a_well_formed_request_passes():
    _check(_request())
    typed = service_pb2.ModelInferRequest(model_name="churn")
    typed.inputs.add(name="features", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    typed.inputs.add(name="segment", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(3)
    _check(typed)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"name0": "feature"},
            r"unknown input 'feature' for model 'churn' version 2; expected inputs: 'features' FP32 \[-1, 4\]",
        ),
        ({"dtype0": "FP64"}, "input 'features': datatype FP64, expected FP32"),
        ({"shape0": [2, 5]}, r"input 'features': shape \[2, 5\], expected \[-1, 4\]"),
        ({"shape0": [8]}, r"input 'features': shape \[8\], expected \[-1, 4\] \(batch dimension first\)"),
        (
            {"raw0": b"\0" * 12},
            r"input 'features': 12 bytes of raw contents, expected 32 \(8 FP32 elements of 4 bytes\)",
        ),
    ],
)
def test_bad_inputs(overrides, message):
    with pytest.raises(InvalidArgument, match=message):
        _check(_request(**overrides))


def test_missing_and_repeated_inputs():
    request = _request()
    del request.inputs[1]
    del request.raw_input_contents[1]
    with pytest.raises(InvalidArgument, match="missing input 'segment' for model 'churn' version 2"):
        _check(request)
    request = _request()
    request.inputs[1].name = "features"
    with pytest.raises(InvalidArgument, match="input 'features' is given more than once"):
        _check(request)


def test_oversize_and_inconsistent_batches():
    with pytest.raises(InvalidArgument, match="batch size 9 exceeds the maximum of 8 for model 'churn' version 2"):
        _check(_request(9))
    request = _request(2, segment=np.zeros((3, 1), np.int64))
    with pytest.raises(InvalidArgument, match="batch size 3 differs from other inputs' 2"):
        _check(request)


def test_raw_contents_count_must_match_inputs():
    request = _request()
    del request.raw_input_contents[1]
    with pytest.raises(InvalidArgument, match="raw_input_contents has 1 entries for 2 inputs"):
        _check(request)


def test_typed_contents_count_must_match_shape():
    typed = service_pb2.ModelInferRequest(model_name="churn")
    typed.inputs.add(name="features", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3])
    typed.inputs.add(name="segment", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(3)
    with pytest.raises(InvalidArgument, match=r"contents.fp32_contents has 3 elements, shape \[1, 4\] needs 4"):
        _check(typed)


def test_unknown_requested_output():
    request = _request()
    request.outputs.add(name="proba")
    with pytest.raises(
        InvalidArgument, match="unknown output 'proba' requested; the model's outputs: 'label', 'probabilities'"
    ):
        _check(request)


def test_size_cap():
    with pytest.raises(InvalidArgument, match="more than the gateway's limit of 16"):
        _check(_request(), max_bytes=16)


def test_non_batching_version_uses_full_shapes():
    record = _record(max_batch_size=0)
    request = service_pb2.ModelInferRequest(model_name="churn")
    request.inputs.add(name="features", datatype="FP32", shape=[4])
    request.inputs.add(name="segment", datatype="INT64", shape=[1])
    request.raw_input_contents.extend([np.zeros(4, np.float32).tobytes(), np.zeros(1, np.int64).tobytes()])
    _check(request, record)
    request.inputs[0].shape[:] = [1, 4]
    with pytest.raises(InvalidArgument, match=r"shape \[1, 4\], expected \[4\]"):
        _check(request, record)


def test_bytes_tensors_are_counted_by_length_prefix():
    record = ModelVersionRecord(
        model="text",
        version=1,
        format=ModelFormat.ONNX,
        artifact_uri="file:///t",
        artifact_sha256="0" * 64,
        inputs=(TensorSchema("text", "BYTES", (1,)),),
        outputs=(TensorSchema("y", "FP32", (1,)),),
    )
    good = service_pb2.ModelInferRequest(model_name="text")
    good.inputs.add(name="text", datatype="BYTES", shape=[2, 1])
    good.raw_input_contents.append(b"".join(len(s).to_bytes(4, "little") + s for s in (b"hi", b"there")))
    _check(good, record)
    truncated = service_pb2.ModelInferRequest()
    truncated.CopyFrom(good)
    truncated.raw_input_contents[0] = good.raw_input_contents[0][:-2]
    with pytest.raises(InvalidArgument, match="raw BYTES element 1 is longer than the contents"):
        _check(truncated, record)
