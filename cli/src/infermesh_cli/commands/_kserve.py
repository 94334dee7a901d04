"""The KServe v2 data plane at the edge: numpy arrays in and out of tritonclient's protobuf messages.

The model gateway speaks the protocol exactly as Triton does, through the generated modules
tritonclient ships (a second copy of package ``inference`` would collide in protobuf's pool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor, triton_to_np_dtype

from infermesh_cli.commands._context import Context, Remote
from infermesh_cli.commands._errors import UsageError

__all__ = ["TensorMeta", "decode_outputs", "encode_input", "infer_request", "inference", "model_metadata"]

_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def inference(ctx: Context) -> Remote:
    """The model gateway's inference data plane."""
    return ctx.remote("model-gateway", service_pb2_grpc.GRPCInferenceServiceStub)


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """An input or output of a model version as ModelMetadata declares it (shape with -1 for dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


async def model_metadata(remote: Remote, model: str, version: str = "") -> tuple[list[TensorMeta], list[TensorMeta]]:
    """The inputs and outputs of ``model`` (at ``version``: a number, an alias, or empty for the policy's choice)."""
    reply = await remote.call("ModelMetadata", service_pb2.ModelMetadataRequest(name=model, version=version))
    inputs = [TensorMeta(t.name, t.datatype, tuple(t.shape)) for t in reply.inputs]
    outputs = [TensorMeta(t.name, t.datatype, tuple(t.shape)) for t in reply.outputs]
    return inputs, outputs


def _shaped(meta: TensorMeta, array: np.ndarray) -> np.ndarray:
    """``array`` with a batch dimension added when the model takes one and the values lack it."""
    if meta.shape and meta.shape[0] == -1 and array.ndim == len(meta.shape) - 1:
        return array.reshape(1, *array.shape)
    return array


def encode_input(meta: TensorMeta, values: Any) -> tuple[service_pb2.ModelInferRequest.InferInputTensor, bytes]:
    """An input tensor of ``meta``'s datatype holding ``values`` (nested lists or an array), as raw contents."""
    try:
        if meta.datatype == "BYTES":
            array = _shaped(meta, np.asarray(values, dtype=object))
            serialized = serialize_byte_tensor(array)
            raw = serialized.item() if serialized.size else b""
        else:
            array = _shaped(meta, np.asarray(values, dtype=triton_to_np_dtype(meta.datatype)))
            raw = np.ascontiguousarray(array).tobytes()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"input {meta.name}: cannot be read as {meta.datatype}: {exc}") from None
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name=meta.name, datatype=meta.datatype, shape=list(array.shape)
    )
    return tensor, raw


def infer_request(
    model: str,
    version: str,
    tensors: list[tuple[service_pb2.ModelInferRequest.InferInputTensor, bytes]],
    parameters: dict[str, str] | None = None,
    outputs: list[str] | None = None,
) -> service_pb2.ModelInferRequest:
    """A ModelInfer request with raw input contents; ``parameters`` as string parameters."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for tensor, raw in tensors:
        request.inputs.append(tensor)
        request.raw_input_contents.append(raw)
    for key, text in (parameters or {}).items():
        request.parameters[key].string_param = text
    for name in outputs or []:
        request.outputs.add(name=name)
    return request


def decode_outputs(response: service_pb2.ModelInferResponse) -> dict[str, tuple[str, np.ndarray]]:
    """Every output tensor of a response as (datatype, array), from raw or typed contents."""
    decoded: dict[str, tuple[str, np.ndarray]] = {}
    for index, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        if index < len(response.raw_output_contents):
            raw = response.raw_output_contents[index]
            if tensor.datatype == "BYTES":
                array = deserialize_bytes_tensor(raw)
            else:
                array = np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype))
        else:
            array = np.asarray(getattr(tensor.contents, _CONTENTS[tensor.datatype]))
        decoded[tensor.name] = (tensor.datatype, array.reshape(shape))
    return decoded
