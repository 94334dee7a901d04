"""Validation of an inference request against the schema of the version that will serve it.

Everything is checked before Triton sees the request, from the request's metadata and the
lengths of its contents, without decoding tensors (given the serialized request, the lengths of
raw contents are read from its wire format, so the contents are not even copied): input names
(unknown, missing, repeated), datatypes, shapes (batch dimension first when the version batches,
fixed dimensions), the batch size against the version's maximum, the byte size of raw contents
(or the element count of typed contents), requested output names, and a size cap. Each failure
is INVALID_ARGUMENT with a message naming the tensor and what was expected.
"""

from __future__ import annotations

import math
import struct

from tritonclient.grpc import service_pb2

from infermesh_chassis.errors import InvalidArgument
from infermesh_model_gateway.domain import DATATYPES, ModelVersionRecord, TensorSchema
from infermesh_model_gateway.wire import raw_spans

__all__ = ["RequestValidator", "batch_size"]

_TYPED_FIELD = {
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
"""The typed-contents field that carries each datatype (FP16 travels only as raw bytes)."""


def _shape_text(spec: TensorSchema, batching: bool) -> str:
    dims = (-1, *spec.shape) if batching else spec.shape
    return "[" + ", ".join(str(d) for d in dims) + "]"


_Raw = tuple[bytes, int, int]
"""Raw contents of one input where they lie: a buffer, their offset in it and their length."""


def _bytes_elements(raw: _Raw, name: str) -> int:
    """Number of length-prefixed elements in raw BYTES contents; INVALID_ARGUMENT when malformed."""
    buffer, offset, length = raw
    count, end = 0, offset + length
    while offset < end:
        if offset + 4 > end:
            raise InvalidArgument(f"input '{name}': raw BYTES contents are truncated (a 4-byte length prefix is cut)")
        (size,) = struct.unpack_from("<I", buffer, offset)
        offset += 4 + size
        if offset > end:
            raise InvalidArgument(f"input '{name}': raw BYTES element {count} is longer than the contents")
        count += 1
    return count


def batch_size(request: service_pb2.ModelInferRequest, record: ModelVersionRecord) -> int:
    """The request's batch size (1 for a version that does not batch)."""
    if record.deployment.max_batch_size > 0 and request.inputs and request.inputs[0].shape:
        return int(request.inputs[0].shape[0])
    return 1


class RequestValidator:
    """Checks requests for one model version; built once per version and reused."""

    __slots__ = ("_batching", "_expected", "_inputs", "_max_batch", "_max_bytes", "_outputs", "_record")

    def __init__(self, record: ModelVersionRecord, max_request_bytes: int) -> None:
        self._record = record
        self._inputs = {t.name: t for t in record.inputs}
        self._outputs = {t.name for t in record.outputs}
        self._max_batch = record.deployment.max_batch_size
        self._batching = self._max_batch > 0
        self._max_bytes = max_request_bytes
        self._expected = {t.name: _shape_text(t, self._batching) for t in record.inputs}
        """Each input's expected shape as error messages write it."""

    def _expected_inputs(self) -> str:
        return ", ".join(f"'{t.name}' {t.datatype} {_shape_text(t, self._batching)}" for t in self._inputs.values())

    def validate(self, request: service_pb2.ModelInferRequest, serialized: bytes | None = None) -> None:
        """Raise INVALID_ARGUMENT describing the first problem found; return when the request fits.

        ``serialized``: the bytes ``request`` was parsed from, where the raw contents are measured
        in place (without it, each entry of ``request.raw_input_contents`` is read once)."""
        raw: list[_Raw]
        if serialized is None:
            raw = [(entry, 0, len(entry)) for entry in request.raw_input_contents]
        else:
            raw = [(serialized, offset, length) for offset, length in raw_spans(serialized)]
        if raw and len(raw) != len(request.inputs):
            raise InvalidArgument(
                f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
                "send one entry per input, in the order of the inputs"
            )
        seen: set[str] = set()
        batch: int | None = None
        total_bytes = 0
        for index, tensor in enumerate(request.inputs):
            spec = self._inputs.get(tensor.name)
            if spec is None:
                raise InvalidArgument(
                    f"unknown input '{tensor.name}' for {self._where()}; expected inputs: {self._expected_inputs()}"
                )
            if tensor.name in seen:
                raise InvalidArgument(f"input '{tensor.name}' is given more than once")
            seen.add(tensor.name)
            if tensor.datatype != spec.datatype:
                raise InvalidArgument(
                    f"input '{tensor.name}': datatype {tensor.datatype or '(empty)'}, expected {spec.datatype}"
                )
            batch = self._check_shape(tensor, spec, batch)
            elements = math.prod(tensor.shape)
            total_bytes += self._check_contents(tensor, spec, elements, raw[index] if raw else None)
        if len(seen) != len(self._inputs):
            missing = [name for name in self._inputs if name not in seen]
            raise InvalidArgument(f"missing input {', '.join(repr(m) for m in missing)} for {self._where()}")
        if total_bytes > self._max_bytes:
            raise InvalidArgument(
                f"request tensors hold {total_bytes} bytes, more than the gateway's limit of {self._max_bytes}"
            )
        for output in request.outputs:
            if output.name not in self._outputs:
                expected = ", ".join(repr(o) for o in sorted(self._outputs))
                raise InvalidArgument(f"unknown output '{output.name}' requested; the model's outputs: {expected}")

    def _where(self) -> str:
        return f"model '{self._record.model}' version {self._record.version}"

    def _check_shape(
        self, tensor: service_pb2.ModelInferRequest.InferInputTensor, spec: TensorSchema, batch: int | None
    ) -> int | None:
        shape = list(tensor.shape)
        expected = self._expected[spec.name]
        if self._batching:
            if len(shape) != len(spec.shape) + 1:
                raise InvalidArgument(
                    f"input '{tensor.name}': shape {shape}, expected {expected} (batch dimension first)"
                )
            size, dims = shape[0], shape[1:]
            if size < 1:
                raise InvalidArgument(f"input '{tensor.name}': batch size {size} must be at least 1")
            if size > self._max_batch:
                raise InvalidArgument(
                    f"input '{tensor.name}': batch size {size} exceeds the maximum of {self._max_batch} "
                    f"for {self._where()}"
                )
            if batch is not None and size != batch:
                raise InvalidArgument(f"input '{tensor.name}': batch size {size} differs from other inputs' {batch}")
            batch = size
        else:
            dims = shape
            if len(dims) != len(spec.shape):
                raise InvalidArgument(f"input '{tensor.name}': shape {shape}, expected {expected}")
        for got, want in zip(dims, spec.shape, strict=True):
            if got < 1 or want not in (-1, got):
                raise InvalidArgument(f"input '{tensor.name}': shape {shape}, expected {expected}")
        return batch

    @staticmethod
    def _check_contents(
        tensor: service_pb2.ModelInferRequest.InferInputTensor,
        spec: TensorSchema,
        elements: int,
        raw: _Raw | None,
    ) -> int:
        element_size = DATATYPES[spec.datatype]
        if raw is not None:
            size = raw[2]
            if spec.datatype == "BYTES":
                found = _bytes_elements(raw, tensor.name)
                if found != elements:
                    raise InvalidArgument(
                        f"input '{tensor.name}': raw contents hold {found} BYTES elements, shape needs {elements}"
                    )
            elif size != elements * element_size:
                raise InvalidArgument(
                    f"input '{tensor.name}': {size} bytes of raw contents, expected {elements * element_size} "
                    f"({elements} {spec.datatype} elements of {element_size} bytes)"
                )
            return size
        field = _TYPED_FIELD.get(spec.datatype)
        if field is None:
            raise InvalidArgument(f"input '{tensor.name}': {spec.datatype} must be sent in raw_input_contents")
        found = len(getattr(tensor.contents, field))
        if found != elements:
            raise InvalidArgument(
                f"input '{tensor.name}': contents.{field} has {found} elements, shape {list(tensor.shape)} "
                f"needs {elements}"
            )
        return elements * (element_size or 1)
