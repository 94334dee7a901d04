"""What the data plane reports to the monitor, as event payloads of the chassis' emitter.

The serving path only records references (the request message it already parsed, Triton's answer
as the bytes the gateway passed through) and plain values; the ``InferenceEvent``/``ShadowEvent``
fields are read from them, the answers parsed, when the emitter builds its batch, off the request
path (see :mod:`infermesh_chassis.events`). Neither is changed after it was answered, so reading it
later reads what was served.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from tritonclient.grpc import service_pb2

from infermesh.common.v1 import common_pb2
from infermesh_model_gateway.domain import ModelVersionRecord
from infermesh_model_gateway.validation import batch_size

__all__ = ["InferencePayload", "ShadowPayload"]

_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "FP16": np.float16}
"""Datatypes decoded into sampled event inputs (others are reported as raw tensors only)."""


def _tensors(reply: bytes) -> list[dict[str, Any]]:
    response = service_pb2.ModelInferResponse.FromString(reply)
    raw = response.raw_output_contents
    return [
        {
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
            "raw_contents": raw[i] if i < len(raw) else b"",
        }
        for i, output in enumerate(response.outputs)
    ]


def _sampled_inputs(request: service_pb2.ModelInferRequest) -> dict[str, common_pb2.Value]:
    values: dict[str, common_pb2.Value] = {}
    raw = request.raw_input_contents
    for i, tensor in enumerate(request.inputs):
        dtype = _NUMPY.get(tensor.datatype)
        if dtype is None or i >= len(raw):
            continue
        array = np.frombuffer(raw[i], dtype=dtype).astype(np.float64)
        values[tensor.name] = common_pb2.Value(double_list={"values": array.tolist()})
    return values


class InferencePayload:
    """One inference served (or refused) by the gateway: an ``InferenceEvent``."""

    __slots__ = ("error_message", "latency_ms", "record", "request", "response", "sample", "status_code")
    KIND: ClassVar[str] = "inference"

    def __init__(
        self,
        record: ModelVersionRecord,
        request: service_pb2.ModelInferRequest,
        response: bytes | None,
        *,
        latency_ms: float,
        status_code: int,
        error_message: str,
        sample: bool,
    ) -> None:
        self.record = record
        self.request = request
        self.response = response
        self.latency_ms = latency_ms
        self.status_code = status_code
        self.error_message = error_message
        self.sample = sample
        """Whether the event carries the request's inputs (sampled for drift)."""

    def fields(self) -> Mapping[str, Any]:
        """The ``InferenceEvent`` fields."""
        record = self.record
        fields: dict[str, Any] = {
            "model": record.model,
            "model_version": record.version,
            "latency_ms": self.latency_ms,
            "status_code": self.status_code,
            "error_message": self.error_message,
            "batch_size": batch_size(self.request, record),
        }
        if self.response is not None:
            fields["outputs"] = _tensors(self.response)
        if self.sample:
            fields["sampled_inputs"] = _sampled_inputs(self.request)
        return fields


class ShadowPayload:
    """A mirrored request compared with the primary's answer: a ``ShadowEvent``."""

    __slots__ = (
        "error",
        "model",
        "primary_latency_ms",
        "primary_response",
        "primary_version",
        "shadow_latency_ms",
        "shadow_response",
        "shadow_version",
    )
    KIND: ClassVar[str] = "shadow"

    def __init__(
        self,
        primary: ModelVersionRecord,
        primary_response: bytes,
        *,
        primary_latency_ms: float,
        shadow: ModelVersionRecord,
        shadow_response: bytes | None,
        shadow_latency_ms: float,
        error: tuple[int, str] | None,
    ) -> None:
        self.model = primary.model
        self.primary_version = primary.version
        self.primary_response = primary_response
        self.primary_latency_ms = primary_latency_ms
        self.shadow_version = shadow.version
        self.shadow_response = shadow_response
        self.shadow_latency_ms = shadow_latency_ms
        self.error = error
        """The shadow's status code and message when it failed."""

    def fields(self) -> Mapping[str, Any]:
        """The ``ShadowEvent`` fields."""
        fields: dict[str, Any] = {
            "model": self.model,
            "primary_version": self.primary_version,
            "primary_outputs": _tensors(self.primary_response),
            "primary_latency_ms": self.primary_latency_ms,
            "shadow_version": self.shadow_version,
            "shadow_latency_ms": self.shadow_latency_ms,
        }
        if self.shadow_response is not None:
            fields["shadow_outputs"] = _tensors(self.shadow_response)
        if self.error is not None:
            fields["shadow_error"] = {"code": self.error[0], "message": self.error[1]}
        return fields
