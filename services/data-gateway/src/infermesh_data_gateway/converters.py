"""Protobuf ↔ domain conversions for the data gateway (protobuf stays at the edge).

Incoming values become plain Python values (the core validates them against the definitions
and names the field that is wrong); outgoing vectors, descriptions and training-set chunks
are encoded here.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from infermesh.common.v1 import common_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as pb
from infermesh_chassis.errors import InvalidArgument
from infermesh_chassis.validation import shown
from infermesh_data_gateway.definitions import Definitions, ServiceDef
from infermesh_data_gateway.executor import FeatureVector, ViewLineage
from infermesh_data_gateway.gateway import EntityInput, PushInput, TrainingSet
from infermesh_data_gateway.offline import EVENT_COLUMN
from infermesh_data_gateway.sources import Source

__all__ = [
    "describe_to_proto",
    "duration_to_proto",
    "entities_from_proto",
    "fields_to_proto",
    "micros_of",
    "push_rows_from_proto",
    "summary_to_proto",
    "time_range_to_proto",
    "timestamp_of",
    "training_chunks",
    "training_entities_from_proto",
    "value_from_proto",
    "write_rows",
    "write_value",
]

_SOURCE_KINDS = {
    "redis": pb.SOURCE_KIND_REDIS,
    "postgres": pb.SOURCE_KIND_SQL,
    "sqlite": pb.SOURCE_KIND_SQL,
    "file": pb.SOURCE_KIND_FILE,
    "http": pb.SOURCE_KIND_HTTP,
    "request": pb.SOURCE_KIND_REQUEST,
}
_NULL = common_pb2.Value(null_value=0)


def value_from_proto(value: common_pb2.Value) -> Any:
    """A Value as a Python value (None for null or unset)."""
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "double_list":
        return list(value.double_list.values)
    if kind == "int64_list":
        return list(value.int64_list.values)
    if kind == "string_list":
        return list(value.string_list.values)
    return getattr(value, kind)


def _values(mapping: Mapping[str, common_pb2.Value]) -> dict[str, Any]:
    return {name: value_from_proto(value) for name, value in mapping.items()}


def value_to_proto(value: Any, dtype: str) -> common_pb2.Value:
    """A feature value of ``dtype`` as a Value (null when None)."""
    if value is None:
        return _NULL
    if isinstance(value, tuple | list):
        if dtype.startswith("FP"):
            return common_pb2.Value(double_list=common_pb2.DoubleList(values=value))
        if dtype == "BOOL":
            return common_pb2.Value(int64_list=common_pb2.Int64List(values=[int(bool(v)) for v in value]))
        return common_pb2.Value(int64_list=common_pb2.Int64List(values=[int(v) for v in value]))
    if isinstance(value, bool):
        return common_pb2.Value(bool_value=value)
    if isinstance(value, float):
        return common_pb2.Value(double_value=value)
    if isinstance(value, int):
        return common_pb2.Value(int64_value=value)
    return common_pb2.Value(string_value=str(value))


def _timestamp(micros: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMicroseconds(micros)
    return stamp


def duration_to_proto(seconds: float | None) -> duration_pb2.Duration | None:
    """Seconds as a Duration (None stays None)."""
    if seconds is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromMicroseconds(round(seconds * 1_000_000))
    return duration


# -- GetFeatures ---------------------------------------------------------------------------------


def entities_from_proto(rows: Sequence[pb.EntityRow]) -> list[EntityInput]:
    """The entities of a GetFeatures request."""
    return [EntityInput(_values(row.keys), _values(row.request_values)) for row in rows]


def fields_to_proto(service: ServiceDef) -> list[pb.FeatureField]:
    """The features of ``service`` in vector order."""
    return [
        pb.FeatureField(name=f.name, dtype=f.dtype, shape=list(f.shape), feature_view=f.view or "")
        for f in service.features
    ]


def write_value(target: common_pb2.Value, value: Any, dtype: str) -> None:
    """A feature value of ``dtype`` written into ``target`` in place (null when None)."""
    if value is None:
        target.null_value = 0  # google.protobuf.NullValue.NULL_VALUE
    elif isinstance(value, tuple | list):
        if dtype.startswith("FP"):
            target.double_list.values.extend(value)
        elif dtype == "BOOL":
            target.int64_list.values.extend([int(bool(v)) for v in value])
        else:
            target.int64_list.values.extend([int(v) for v in value])
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, int):
        target.int64_value = value
    else:
        target.string_value = str(value)


def _write_lineage(into: common_pb2.FeatureViewLineage, entry: ViewLineage) -> None:
    into.feature_view = entry.view
    into.source = entry.source
    into.from_fallback = entry.from_fallback
    into.used_default = entry.used_default
    into.features.extend(entry.features)
    into.from_cache = entry.from_cache
    if entry.value_time is not None:
        into.value_time.FromMicroseconds(entry.value_time)


def write_rows(
    rows: RepeatedCompositeFieldContainer[pb.FeatureRow],
    service: ServiceDef,
    version: str,
    vectors: Sequence[FeatureVector],
) -> None:
    """One FeatureRow per vector, with statuses and lineage, added in place to ``rows`` (a response's
    repeated ``rows``): protobuf copies a message passed whole to a constructor or a list."""
    dtypes = [f.dtype for f in service.features]
    for vector in vectors:
        row = rows.add()
        values = row.values
        for value, dtype in zip(vector.values, dtypes, strict=True):
            write_value(values.add(), value, dtype)
        row.statuses.extend(vector.statuses)
        lineage = row.lineage
        lineage.feature_service = service.name
        lineage.definition_version = version
        for entry in vector.lineage:
            _write_lineage(lineage.views.add(), entry)


# -- definitions ---------------------------------------------------------------------------------


def summary_to_proto(definitions: Definitions, service: ServiceDef) -> pb.FeatureServiceSummary:
    """A line of ListFeatureServices."""
    return pb.FeatureServiceSummary(
        name=service.name,
        definition_version=definitions.version,
        description=service.description,
        owner=service.owner,
        feature_count=len(service.features),
        entities=list(service.entities),
    )


def describe_to_proto(
    definitions: Definitions, service: ServiceDef, sources: Mapping[str, Source]
) -> pb.FeatureServiceDescription:
    """The full description of a feature service: features, views, sources with their health."""
    views = [definitions.views[name] for name in service.views]
    source_names = list(dict.fromkeys(s for v in views for s in (*v.chain, *(s for r in v.routes for s in r.chain))))
    return pb.FeatureServiceDescription(
        name=service.name,
        definition_version=definitions.version,
        description=service.description,
        owner=service.owner,
        entities=[
            pb.EntityDefinition(
                name=name,
                keys=[pb.EntityKey(name=k.name, dtype=k.dtype.name) for k in definitions.entities[name].keys],
                description=definitions.entities[name].description,
            )
            for name in service.entities
        ],
        request_values=[
            pb.RequestValueDefinition(name=r.name, dtype=r.dtype.name, required=r.required)
            for r in service.request_values
        ],
        features=[
            pb.FeatureDefinition(
                name=f.name,
                dtype=f.dtype,
                shape=list(f.shape),
                feature_view=f.view or "",
                transform=f.expression.text,
                default_value=value_to_proto(f.default, f.dtype) if f.has_default else None,
                allow_missing=f.allow_missing,
                description=f.description,
            )
            for f in service.features
        ],
        views=[
            pb.FeatureViewDefinition(
                name=v.name,
                entities=list(v.entities),
                source=v.chain[0],
                fallback_sources=list(v.chain[1:]),
                ttl=duration_to_proto(v.ttl_s),
                fields=list(v.fields),
                owner=v.owner,
                description=v.description,
            )
            for v in views
        ],
        sources=[
            pb.SourceDefinition(
                name=name,
                kind=_SOURCE_KINDS[sources[name].kind],
                timeout=duration_to_proto(sources[name].timeout_s),
                health=int(sources[name].health),
            )
            for name in source_names
        ],
        definition_file=service.file,
    )


# -- PushFeatures --------------------------------------------------------------------------------


def push_rows_from_proto(rows: Sequence[pb.PushRow]) -> list[PushInput]:
    """The rows of a PushFeatures request."""
    return [
        PushInput(
            _values(row.keys),
            _values(row.values),
            row.event_time.ToMicroseconds() if row.HasField("event_time") else None,
        )
        for row in rows
    ]


# -- GetTrainingSet ------------------------------------------------------------------------------


def _read_uri(uri: str) -> pd.DataFrame:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise InvalidArgument(f"uri: only local files are readable (file:// or a path), not {parsed.scheme}://")
    path = Path(parsed.path if parsed.scheme == "file" else uri)
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a component too long, a NUL byte: no such file can exist
        exists = False
    if not exists:
        raise InvalidArgument(f"uri: {shown(str(path))} does not exist")
    try:
        if path.suffix == ".csv":
            return pa_csv.read_csv(path).to_pandas()
        return pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise InvalidArgument(f"uri: {path} is not a readable Parquet or CSV file: {exc}") from None


def training_entities_from_proto(request: pb.GetTrainingSetRequest) -> pd.DataFrame:
    """The entity rows of a GetTrainingSet request as a frame: keys, ``event_time``, request values, passthrough."""
    which = request.WhichOneof("entities")
    if which == "rows":
        records = []
        for index, row in enumerate(request.rows.rows):
            if not row.HasField("event_time"):
                raise InvalidArgument(f"rows[{index}].event_time is required")
            record = _values(row.keys) | _values(row.request_values) | _values(row.passthrough)
            record["event_time"] = row.event_time.ToMicroseconds() / 1_000_000
            records.append(record)
        return pd.DataFrame.from_records(records)
    if which == "arrow_ipc":
        try:
            return pa.ipc.open_stream(io.BytesIO(request.arrow_ipc)).read_all().to_pandas()
        except pa.ArrowException as exc:
            raise InvalidArgument(f"arrow_ipc: not an Arrow IPC stream: {exc}") from None
    if which == "uri":
        return _read_uri(request.uri)
    raise InvalidArgument("entities are required: rows, arrow_ipc or uri")


def _arrow_table(training: TrainingSet, start: int, stop: int) -> pa.Table:
    frame = training.frame.iloc[start:stop]
    columns: dict[str, pa.Array] = {}
    for key in training.service.keys:
        columns[key.name] = pa.array(frame[key.name].tolist())
    columns["event_time"] = pa.array(frame[EVENT_COLUMN].to_numpy(dtype=np.int64), type=pa.timestamp("us", tz="UTC"))
    for feature in training.service.features:
        col = training.result.columns[feature.name]
        mask = ~col.valid[start:stop]
        values = col.values[start:stop]
        if feature.shape:
            columns[feature.name] = pa.array([list(map(float, v)) for v in values], mask=mask)
        elif feature.dtype == "FP32":
            columns[feature.name] = pa.array(values.astype(np.float32), mask=mask)
        else:
            columns[feature.name] = pa.array(values.tolist(), mask=mask)
    for column in training.passthrough:
        columns[column] = pa.array(frame[column].tolist())
    return pa.table(columns)


def _typed_rows(training: TrainingSet, start: int, stop: int) -> pb.TrainingRows:
    frame = training.frame.iloc[start:stop]
    rows = pb.TrainingRows()
    dtypes = [f.dtype for f in training.service.features]
    for offset in range(stop - start):
        index = start + offset
        row = rows.rows.add()
        for key in training.service.keys:
            row.keys[key.name].CopyFrom(value_to_proto(_python(frame[key.name].iloc[offset]), "BYTES"))
        row.event_time.FromMicroseconds(int(frame[EVENT_COLUMN].iloc[offset]))
        for position, feature in enumerate(training.service.features):
            col = training.result.columns[feature.name]
            value = None
            if col.valid[index]:
                raw = col.values[index]
                value = tuple(float(x) for x in raw) if feature.shape else _python(raw)
            row.values.append(value_to_proto(value, dtypes[position]))
            row.statuses.append(int(training.result.statuses[index, position]))
        for column in training.passthrough:
            row.passthrough[column].CopyFrom(value_to_proto(_python(frame[column].iloc[offset]), "BYTES"))
    return rows


def _python(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") else value


def training_chunks(training: TrainingSet, fmt: int, chunk_rows: int) -> Iterator[pb.GetTrainingSetResponse]:
    """The training set as stream chunks: Arrow IPC (each chunk a complete stream) or typed rows."""
    total = len(training.frame)
    starts = list(range(0, total, chunk_rows)) or [0]
    for chunk_index, start in enumerate(starts):
        stop = min(start + chunk_rows, total)
        response = pb.GetTrainingSetResponse(chunk_index=chunk_index, row_count=stop - start, last=stop >= total)
        if chunk_index == 0:
            response.feature_service = training.service.name
            response.definition_version = training.version
            response.fields.extend(fields_to_proto(training.service))
        if fmt == pb.TRAINING_SET_FORMAT_ROWS:
            response.rows.CopyFrom(_typed_rows(training, start, stop))
        else:
            table = _arrow_table(training, start, stop)
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            response.arrow_ipc = sink.getvalue()
        yield response


def time_range_to_proto(start_us: int | None, end_us: int) -> common_pb2.TimeRange:
    """A [start, end) range (start unset when open)."""
    time_range = common_pb2.TimeRange(end_time=_timestamp(end_us))
    if start_us is not None:
        time_range.start_time.CopyFrom(_timestamp(start_us))
    return time_range


def micros_of(stamp: timestamp_pb2.Timestamp, present: bool) -> int | None:
    """A Timestamp as UTC microseconds, None when the field is unset."""
    return stamp.ToMicroseconds() if present else None


def timestamp_of(micros: int) -> timestamp_pb2.Timestamp:
    """UTC microseconds as a Timestamp."""
    return _timestamp(micros)
