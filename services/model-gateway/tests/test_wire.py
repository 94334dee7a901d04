"""The wire format the pass-through relies on: raw contents found in place, fields readdressed by appending."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from infermesh_chassis.errors import InvalidArgument
from infermesh_model_gateway.wire import raw_spans, string_field, varint

_names = st.text(min_size=1, max_size=40)


@st.composite
def _requests(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=draw(_names), model_version=draw(st.sampled_from(["", "7"])))
    request.id = draw(st.text(max_size=20))
    for key, value in draw(st.dictionaries(_names, st.integers(-(2**63), 2**63 - 1), max_size=3)).items():
        request.parameters[key].int64_param = value
    for index, raw in enumerate(draw(st.lists(st.binary(max_size=400), max_size=4))):
        tensor = request.inputs.add(name=f"in{index}", datatype="UINT8", shape=[len(raw)])
        tensor.parameters["p"].bool_param = True
        request.raw_input_contents.append(raw)
    for name in draw(st.lists(_names, max_size=2)):
        request.outputs.add(name=name)
    return request


@given(_requests())
def test_raw_spans_find_every_raw_input_in_place(request):
    data = request.SerializeToString()
    assert [data[start : start + length] for start, length in raw_spans(data)] == list(request.raw_input_contents)


@given(_requests(), _names, st.text(max_size=10))
def test_appended_fields_readdress_and_keep_the_rest(request, name, version):
    readdressed = service_pb2.ModelInferRequest.FromString(
        request.SerializeToString() + string_field(1, name) + string_field(2, version)
    )
    assert (readdressed.model_name, readdressed.model_version) == (name, version)
    readdressed.model_name, readdressed.model_version = request.model_name, request.model_version
    assert readdressed == request


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63])
def test_varint_round_trips_through_protobuf(value):
    assert service_pb2.ModelInferRequest.InferInputTensor.FromString(b"\x18" + varint(value)).shape == [
        value - 2**64 if value >= 2**63 else value
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x3a\x05ab", "truncated"),
        (b"\x3a", "truncated"),
        (b"\x08\xff", "truncated"),
        (b"\x0b", "wire type 3"),
    ],
)
def test_malformed_messages_are_invalid_arguments(data, message):
    with pytest.raises(InvalidArgument, match=message):
        raw_spans(data)
