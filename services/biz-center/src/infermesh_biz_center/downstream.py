"""The two downstreams of a prediction: the data gateway (features) and the model gateway (inference).

Each wraps a chassis :class:`~infermesh_chassis.client.ServiceClient` (discovery, deadlines
bounded by the inbound call, retries of idempotent reads on another instance, and the one place
where ``grpc.RpcError`` becomes the project's error) and converts between the contracts and the
core's types:

- :class:`FeatureClient` learns a feature service's entity keys and request values once
  (``DescribeFeatureService``, cached), splits the caller's values between them, fills the
  scene's unit key from the unit id, and returns the ordered vector with statuses and lineage.
  An entity stays an :class:`EntityRow` of references and primitives until the one GetFeatures
  of its batch is built, in place (protobuf copies a message passed whole to a constructor).
- :class:`ModelClient` calls the Open Inference Protocol with tritonclient's own stubs: it learns
  the model's input tensor (``ModelMetadata``, cached), packs the vector into it, pins a version
  (``version``) or an alias (``model@alias``) when the route names one, and returns the output
  tensors with the version that served. Class labels come from the model gateway's registry
  (``GetModelVersion``), cached per version (versions are immutable).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import triton_to_np_dtype

from infermesh.common.v1 import common_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as dg
from infermesh.datagateway.v1 import data_gateway_pb2_grpc as dg_grpc
from infermesh.modelgateway.v1 import model_gateway_pb2 as mg
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc as mg_grpc
from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_biz_center.catalog import CompiledScene
from infermesh_biz_center.domain import ModelTarget, PredictInput, RawTensor
from infermesh_chassis.client import ServiceClient
from infermesh_chassis.errors import FailedPrecondition, InfermeshError, InvalidArgument, Unavailable
from infermesh_chassis.events import IngestRpc
from infermesh_chassis.ids import NOT_CANONICAL, canonical_int64

__all__ = [
    "DATA_GATEWAY_IDEMPOTENT",
    "DATA_GATEWAY_STUB",
    "INFERENCE_IDEMPOTENT",
    "INFERENCE_STUB",
    "MODEL_CONTROL_IDEMPOTENT",
    "MODEL_CONTROL_STUB",
    "MONITOR_INGEST",
    "EntityRow",
    "FeatureClient",
    "FeatureVector",
    "Guard",
    "InferResult",
    "InputSpec",
    "ModelClient",
    "decode_tensor",
    "pack_row",
]

DATA_GATEWAY_STUB = dg_grpc.DataGatewayServiceStub
DATA_GATEWAY_IDEMPOTENT = ("GetFeatures", "DescribeFeatureService")
INFERENCE_STUB = service_pb2_grpc.GRPCInferenceServiceStub
INFERENCE_IDEMPOTENT = ("ModelInfer", "ModelMetadata")
MODEL_CONTROL_STUB = mg_grpc.ModelControlServiceStub
MODEL_CONTROL_IDEMPOTENT = ("GetModelVersion",)
MONITOR_INGEST = IngestRpc(
    monitor_pb2_grpc.MonitorServiceStub, "ReportEvents", monitor_pb2.ReportEventsRequest.FromString
)
"""Where events go when ``events.transport`` is ``grpc``: the monitor's ReportEvents."""


def _numpy_dtype(datatype: str) -> Any:
    """The numpy type of a numeric KServe v2 datatype (tritonclient's table), None for BYTES, BF16, unknown."""
    return None if datatype in ("BYTES", "BF16") else triton_to_np_dtype(datatype)


_DEGRADED_STATUSES = {
    dg.FEATURE_STATUS_FALLBACK: "fallback source",
    dg.FEATURE_STATUS_DEFAULT: "default value",
    dg.FEATURE_STATUS_MISSING: "missing",
}


class _TtlCache:
    """A small map whose entries expire ``ttl_s`` after they were stored."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        entry = self._entries.get(key)
        if entry is None or entry[0] < self._clock():
            return None
        return entry[1]

    def put(self, key: Any, value: Any) -> None:
        self._entries[key] = (self._clock() + self._ttl_s, value)

    def drop(self, key: Any) -> None:
        self._entries.pop(key, None)


@dataclass(frozen=True, slots=True)
class _ServiceShape:
    keys: Mapping[str, str]
    """Entity key name → dtype."""
    request_values: frozenset[str]


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """One entity's feature vector, in model input order."""

    names: tuple[str, ...]
    views: tuple[str, ...]
    """The feature view of each feature ("" for one computed from request values only)."""
    values: tuple[common_pb2.Value, ...]
    statuses: tuple[int, ...]
    lineage: common_pb2.FeatureLineage

    def incomplete(self) -> str:
        """Which features did not come from their primary source ("" when all did). A request-only
        feature at its default is complete: the caller did not send an optional value."""
        odd = [
            f"{name} ({_DEGRADED_STATUSES[status]})"
            for name, view, status in zip(self.names, self.views, self.statuses, strict=False)
            if status in _DEGRADED_STATUSES and (view or status != dg.FEATURE_STATUS_DEFAULT)
        ]
        return ", ".join(odd)


@dataclass(frozen=True, slots=True)
class EntityRow:
    """One entity of a GetFeatures call, until :meth:`FeatureClient.fetch_rows` writes it into the
    request: the caller's values (references to its request's messages) and the unit's key."""

    keys: tuple[tuple[str, common_pb2.Value], ...] = ()
    request_values: tuple[tuple[str, common_pb2.Value], ...] = ()
    unit_key: str = ""
    """The key the unit id fills ("" when the scene names none)."""
    unit_value: int | str = ""


def _unit_value(unit_id: str, dtype: str, key: str) -> int | str:
    """The unit id as the value of entity key ``key``: for an integer key, only its canonical spelling (the
    text the experiment buckets hash must name one integer, and the data gateway reads keys by the same rule)."""
    if dtype.startswith(("INT", "UINT")):
        number = canonical_int64(unit_id)
        if number is None:
            raise InvalidArgument(f"unit_id: {unit_id[:64]!r} {NOT_CANONICAL}, as key '{key}' needs")
        return number
    return unit_id


def _entity_row(shape: _ServiceShape, key: str, inp: PredictInput) -> EntityRow:
    """The entity row of ``inp``'s unit (``key``: the scene's unit id key, "" for none)."""
    features = inp.features
    if not features:
        if not key:
            return EntityRow()
        return EntityRow((), (), key, _unit_value(inp.unit_id, shape.keys.get(key, "BYTES"), key))
    keys = tuple((n, v) for n, v in features.items() if n in shape.keys and n != key)
    values = tuple((n, v) for n, v in features.items() if n in shape.request_values and n not in shape.keys)
    if not key:
        return EntityRow(keys, values)
    return EntityRow(keys, values, key, _unit_value(inp.unit_id, shape.keys.get(key, "BYTES"), key))


Guard = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
"""Runs a downstream call under the caller's protection (its circuit breaker)."""


class FeatureClient:
    """Feature vectors from the data gateway (see the module docstring)."""

    def __init__(self, client: ServiceClient, *, metadata_ttl_s: float) -> None:
        self._client = client
        self._shapes = _TtlCache(metadata_ttl_s)

    async def _shape(self, feature_service: str, version: str, timeout_s: float | None, guard: Guard) -> _ServiceShape:
        shape: _ServiceShape | None = self._shapes.get((feature_service, version))
        if shape is not None:
            return shape
        reply = await guard(
            lambda: self._client.call(
                "DescribeFeatureService",
                dg.DescribeFeatureServiceRequest(name=feature_service, definition_version=version),
                timeout_s=timeout_s,
            )
        )
        description = reply.feature_service
        shape = _ServiceShape(
            keys={key.name: key.dtype for entity in description.entities for key in entity.keys},
            request_values=frozenset(value.name for value in description.request_values),
        )
        self._shapes.put((feature_service, version), shape)
        return shape

    async def entity_row(
        self, scene: CompiledScene, inp: PredictInput, *, guard: Guard, timeout_s: float | None = None
    ) -> EntityRow:
        """The entity row of ``inp``'s unit for ``scene``: the unit id in the scene's key, the caller's values
        split between keys and request values (values that are neither are ignored). The description
        of the feature service is cached; fetching it runs under ``guard``."""
        shape = await self._shape(scene.feature_service, scene.feature_definition_version, timeout_s, guard)
        return _entity_row(shape, scene.unit_id_key, inp)

    async def entity_rows(
        self, scene: CompiledScene, inputs: Sequence[PredictInput], *, guard: Guard, timeout_s: float | None = None
    ) -> list[EntityRow | InvalidArgument]:
        """:meth:`entity_row` of each of ``inputs`` (all of ``scene``), the description read once; an input
        whose row cannot be made (a unit id its key cannot hold) gets its InvalidArgument instead."""
        shape = await self._shape(scene.feature_service, scene.feature_definition_version, timeout_s, guard)
        key = scene.unit_id_key
        rows: list[EntityRow | InvalidArgument] = []
        for inp in inputs:
            try:
                rows.append(_entity_row(shape, key, inp))
            except InvalidArgument as exc:
                rows.append(exc)
        return rows

    async def fetch_rows(
        self,
        feature_service: str,
        definition_version: str,
        rows: Sequence[EntityRow],
        attributes: Mapping[str, str],
        *,
        timeout_s: float | None = None,
    ) -> list[FeatureVector]:
        """The vectors of ``rows``, in one GetFeatures (built in place)."""
        request = dg.GetFeaturesRequest(feature_service=feature_service, definition_version=definition_version)
        request.routing_attributes.update(attributes)
        for row in rows:
            entity = request.entities.add()
            for name, value in row.keys:
                entity.keys[name].CopyFrom(value)
            for name, value in row.request_values:
                entity.request_values[name].CopyFrom(value)
            if row.unit_key:
                unit = entity.keys[row.unit_key]
                if isinstance(row.unit_value, int):
                    unit.int64_value = row.unit_value
                else:
                    unit.string_value = row.unit_value
        reply = await self._client.call("GetFeatures", request, timeout_s=timeout_s)
        if len(reply.rows) != len(rows):
            raise Unavailable(f"data gateway returned {len(reply.rows)} rows for {len(rows)} entities")
        names = tuple(f.name for f in reply.fields)
        views = tuple(f.feature_view for f in reply.fields)
        return [
            FeatureVector(names, views, values=tuple(r.values), statuses=tuple(r.statuses), lineage=r.lineage)
            for r in reply.rows
        ]


@dataclass(frozen=True, slots=True)
class InferResult:
    """What the model gateway answered, and which version served."""

    model: str
    version: int
    outputs: tuple[RawTensor, ...]


@dataclass(frozen=True, slots=True)
class InputSpec:
    """The model input a feature vector feeds."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def batchable(self) -> bool:
        """Whether the input has a leading batch dimension, so rows of several requests can share a call."""
        return len(self.shape) >= 2 and self.shape[0] == -1


def _flatten(name: str, value: common_pb2.Value, numeric: bool) -> list[Any]:
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        if numeric:
            return [float("nan")]
        return [b""]
    if kind == "double_list":
        return list(value.double_list.values)
    if kind == "int64_list":
        return list(value.int64_list.values)
    if kind == "string_list":
        if numeric:
            raise FailedPrecondition(f"feature '{name}' holds strings but the model input is numeric")
        return [s.encode() for s in value.string_list.values]
    scalar = getattr(value, kind)
    if isinstance(scalar, str):
        if numeric:
            raise FailedPrecondition(f"feature '{name}' holds a string but the model input is numeric")
        return [scalar.encode()]
    return [scalar]


def pack_row(names: Sequence[str], values: Sequence[common_pb2.Value], datatype: str) -> tuple[bytes, int]:
    """A feature vector as KServe v2 raw bytes of ``datatype``, and its element count."""
    dtype = _numpy_dtype(datatype)
    numeric = dtype is not None
    flat: list[Any] = []
    for name, value in zip(names, values, strict=False):
        flat.extend(_flatten(name, value, numeric))
    if not numeric:
        if datatype != "BYTES":
            raise FailedPrecondition(f"model input datatype {datatype} is not supported")
        return b"".join(struct.pack("<I", len(item)) + item for item in flat), len(flat)
    if np.issubdtype(dtype, np.integer) and any(isinstance(v, float) and v != v for v in flat):  # noqa: PLR0124
        raise FailedPrecondition(f"a feature is missing and the model input {datatype} has no NaN")
    return np.asarray(flat).astype(dtype).tobytes(), len(flat)


def _bytes_elements(raw: bytes) -> list[bytes]:
    items, at = [], 0
    while at < len(raw):
        (size,) = struct.unpack_from("<I", raw, at)
        items.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return items


def _split(tensor: RawTensor, rows: int, *, batched: bool) -> list[RawTensor]:
    """One output tensor of a batch, cut into its rows (each keeps a leading dimension of 1)."""
    if not batched:
        return [tensor]
    if not tensor.shape or tensor.shape[0] != rows:
        raise FailedPrecondition(f"output '{tensor.name}' has shape {list(tensor.shape)} for a batch of {rows}")
    shape = (1, *tensor.shape[1:])
    if tensor.datatype == "BYTES":
        items = _bytes_elements(tensor.raw)
        per = len(items) // rows
        return [
            RawTensor(
                tensor.name,
                tensor.datatype,
                shape,
                b"".join(struct.pack("<I", len(b)) + b for b in items[r * per : (r + 1) * per]),
            )
            for r in range(rows)
        ]
    size = len(tensor.raw) // rows
    return [RawTensor(tensor.name, tensor.datatype, shape, tensor.raw[r * size : (r + 1) * size]) for r in range(rows)]


def decode_tensor(tensor: RawTensor) -> np.ndarray[Any, Any]:
    """A raw output tensor as a flat numpy array (BYTES as Python bytes objects)."""
    if tensor.datatype == "BYTES":
        return np.asarray(_bytes_elements(tensor.raw), dtype=object)
    dtype = _numpy_dtype(tensor.datatype)
    if dtype is None:
        raise FailedPrecondition(f"output '{tensor.name}' has unsupported datatype {tensor.datatype}")
    return np.frombuffer(tensor.raw, dtype=dtype)


def _contents_bytes(output: service_pb2.ModelInferResponse.InferOutputTensor) -> bytes:
    """Raw bytes of an output sent in typed ``contents`` rather than ``raw_output_contents``."""
    contents = output.contents
    for field, dtypes in (
        ("fp32_contents", np.float32),
        ("fp64_contents", np.float64),
        ("int_contents", np.int32),
        ("int64_contents", np.int64),
        ("uint_contents", np.uint32),
        ("uint64_contents", np.uint64),
        ("bool_contents", np.bool_),
    ):
        values = getattr(contents, field)
        if len(values):
            dtype = _numpy_dtype(output.datatype) or dtypes
            return np.asarray(list(values)).astype(dtype).tobytes()
    if len(contents.bytes_contents):
        return b"".join(struct.pack("<I", len(b)) + b for b in contents.bytes_contents)
    return b""


class ModelClient:
    """Inference through the model gateway (see the module docstring)."""

    def __init__(self, inference: ServiceClient, control: ServiceClient, *, metadata_ttl_s: float) -> None:
        self._inference = inference
        self._control = control
        self._inputs = _TtlCache(metadata_ttl_s)
        self._labels: dict[tuple[str, int], Mapping[str, tuple[str, ...]]] = {}
        self._labels_missing = _TtlCache(metadata_ttl_s)

    @staticmethod
    def _address(target: ModelTarget) -> tuple[str, str]:
        if target.alias:
            return f"{target.model}@{target.alias}", ""
        return target.model, str(target.version) if target.version else ""

    async def input_spec(
        self, target: ModelTarget, input_name: str, *, guard: Guard, timeout_s: float | None = None
    ) -> InputSpec:
        """The input ``input_name`` (empty: the only one) of ``target``; cached, fetched under ``guard``."""
        specs: dict[str, InputSpec] | None = self._inputs.get(target)
        if specs is None:
            name, version = self._address(target)
            reply = await guard(
                lambda: self._inference.call(
                    "ModelMetadata", service_pb2.ModelMetadataRequest(name=name, version=version), timeout_s=timeout_s
                )
            )
            specs = {t.name: InputSpec(t.name, t.datatype, tuple(t.shape)) for t in reply.inputs}
            self._inputs.put(target, specs)
        if input_name:
            spec = specs.get(input_name)
            if spec is None:
                raise FailedPrecondition(f"model {target} has no input '{input_name}' (inputs: {sorted(specs)})")
            return spec
        if len(specs) != 1:
            raise FailedPrecondition(f"model {target} has inputs {sorted(specs)}: the scene must name one")
        return next(iter(specs.values()))

    async def infer_rows(
        self,
        target: ModelTarget,
        spec: InputSpec,
        rows: Sequence[bytes],
        count: int,
        *,
        parameters: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> list[InferResult]:
        """Run the model on packed rows of ``count`` elements each, in one ModelInfer (a batch when the
        input has a batch dimension); one result per row."""
        if len(rows) > 1 and not spec.batchable:
            raise FailedPrecondition(f"model {target} input '{spec.name}' has no batch dimension")
        name, version = self._address(target)
        request = service_pb2.ModelInferRequest(model_name=name, model_version=version)
        tensor = request.inputs.add(name=spec.name, datatype=spec.datatype)
        tensor.shape.extend([len(rows), count] if spec.batchable else [count])
        request.raw_input_contents.append(b"".join(rows))
        for key, value in (parameters or {}).items():
            param = request.parameters[key]
            if isinstance(value, bool):
                param.bool_param = value
            elif isinstance(value, int):
                param.int64_param = value
            elif isinstance(value, float):
                param.double_param = value
            else:
                param.string_param = str(value)
        try:
            reply = await self._inference.call("ModelInfer", request, timeout_s=timeout_s)
        except (InvalidArgument, FailedPrecondition):
            self._inputs.drop(target)  # the schema may have changed under a moving alias
            raise
        try:
            served = int(reply.model_version)
        except ValueError:
            served = 0
        model = reply.model_name.partition("@")[0] or target.model
        raw_outputs = reply.raw_output_contents
        per_row = [
            _split(
                RawTensor(
                    o.name, o.datatype, tuple(o.shape), raw_outputs[i] if i < len(raw_outputs) else _contents_bytes(o)
                ),
                len(rows),
                batched=spec.batchable,
            )
            for i, o in enumerate(reply.outputs)
        ]
        return [InferResult(model, served, tuple(output[r] for output in per_row)) for r in range(len(rows))]

    async def labels(self, model: str, version: int, timeout_s: float | None = None) -> Mapping[str, tuple[str, ...]]:
        """Class labels of each output of a served version ({} when the registry cannot say)."""
        key = (model, version)
        known = self._labels.get(key)
        if known is not None:
            return known
        if version <= 0 or self._labels_missing.get(key):
            return {}
        try:
            reply = await self._control.call(
                "GetModelVersion", mg.GetModelVersionRequest(model=model, version=version), timeout_s=timeout_s
            )
        except InfermeshError:
            self._labels_missing.put(key, True)
            return {}
        labels = {o.name: tuple(o.class_labels) for o in reply.model_version.outputs if o.class_labels}
        self._labels[key] = labels
        return labels
