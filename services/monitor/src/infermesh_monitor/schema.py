"""The monitor's tables, and the ingest pipeline that ClickHouse runs itself.

Events are inserted as serialized protobuf (``Event`` messages, length-delimited) into
``events_in_<kind>``, one ``Null`` table per field of the ``payload`` oneof, whose columns are
the ``Event`` fields the monitor keeps, named by their path (``inference_model`` is
``Event.inference.model``). ClickHouse parses the protobuf itself, with a schema rendered from
the generated descriptors (:func:`protobuf_schema`), and a materialized view per table moves the
rows into their table (shadow outputs are decoded into numbers on the way; inference outputs are
kept raw and decoded when a report reads them). Python never touches an event field on the hot
path: it only reads ids and payload kinds to de-duplicate and route.

Every event table is partitioned by day, expires by a TTL, and is sorted for the queries that
read it (``ORDER BY`` starts with what they filter on). The low-volume event tables (shadow,
exposure, audit, feedback) are ReplacingMergeTree on a key that ends with ``event_id``, so an exact
duplicate that ever got past ingest de-duplication collapses when parts merge; the hot
``inference_events`` is a plain MergeTree (a Replacing engine de-duplicates every inserted block
and tripled the cost of an insert) and relies on ingest de-duplication alone. ``insert_id`` names
the insert a row came from, which lets an insert that was cut short (a crash between storing and
acknowledging) be removed and done again exactly once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from infermesh.common.v1 import events_pb2
from infermesh_monitor.settings import StorageSettings
from infermesh_monitor.store import Store

__all__ = [
    "EVENT_SCHEMA",
    "EVENT_TABLES",
    "PAYLOAD_KINDS",
    "PREDICTED_LABEL",
    "PREDICTION_NAMES",
    "PREDICTION_VALUES",
    "SchemaManager",
    "ingest_settings",
    "protobuf_schema",
]

_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
    FieldDescriptor.TYPE_ENUM: "int32",
}


def protobuf_schema(root: Descriptor) -> str:
    """A self-contained proto3 schema for ``root`` and every message it uses (no imports).

    Messages are renamed by their full name (dots become underscores) so that one file holds
    them all; enums become int32 (the same wire encoding). Field names, numbers and oneofs are
    kept, which is all ClickHouse's Protobuf format needs.
    """
    rendered: dict[str, str] = {}

    def name(message: Descriptor) -> str:
        return message.full_name.replace(".", "_")

    def is_map(field: FieldDescriptor) -> bool:
        return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry

    def type_of(field: FieldDescriptor) -> str:
        if is_map(field):
            entry = field.message_type
            return f"map<{type_of(entry.fields_by_name['key'])}, {type_of(entry.fields_by_name['value'])}>"
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            visit(field.message_type)
            return name(field.message_type)
        return _SCALARS[field.type]

    def line(field: FieldDescriptor, indent: str) -> str:
        repeated = field.label == FieldDescriptor.LABEL_REPEATED and not is_map(field)
        return f"{indent}{'repeated ' if repeated else ''}{type_of(field)} {field.name} = {field.number};"

    def visit(message: Descriptor) -> None:
        if message.full_name in rendered:
            return
        rendered[message.full_name] = ""
        lines = [f"message {name(message)} {{"]
        done: set[str] = set()
        for field in message.fields:
            oneof = field.containing_oneof
            real_oneof = oneof is not None and not (len(oneof.fields) == 1 and oneof.name.startswith("_"))
            if oneof is not None and real_oneof:
                if oneof.name in done:
                    continue
                done.add(oneof.name)
                lines.append(f"  oneof {oneof.name} {{")
                lines.extend(line(member, "    ") for member in oneof.fields)
                lines.append("  }")
            else:
                lines.append(line(field, "  "))
        lines.append("}")
        rendered[message.full_name] = "\n".join(lines)

    visit(root)
    return 'syntax = "proto3";\n\n' + "\n\n".join(rendered.values()) + "\n"


EVENT_MESSAGE = events_pb2.Event.DESCRIPTOR.full_name.replace(".", "_")

PAYLOAD_KINDS = ("inference", "shadow", "exposure", "audit", "feedback")
"""The fields of ``Event.payload``; events of kind K are inserted into the Null table ``events_in_K``."""

EVENT_SCHEMA = protobuf_schema(events_pb2.Event.DESCRIPTOR)
"""The ``Event`` message and everything it uses, as one proto file for ClickHouse."""


def ingest_settings(store: Store) -> dict[str, object]:
    """Settings of every insert into an ``events_in_<kind>`` table (format ``Protobuf``)."""
    return {**store.protobuf_settings(EVENT_SCHEMA, EVENT_MESSAGE), "input_format_protobuf_oneof_presence": 1}


_VALUE_KIND = (
    "Enum8('unset' = 0, 'null_value' = 1, 'double_value' = 2, 'int64_value' = 3, 'string_value' = 4, "
    "'bool_value' = 5, 'bytes_value' = 6, 'double_list' = 7, 'int64_list' = 8, 'string_list' = 9)"
)
_VALUE = (
    f"Tuple(kind {_VALUE_KIND}, double_value Float64, int64_value Int64, string_value String, bool_value Bool, "
    "double_list Tuple(values Array(Float64)), int64_list Tuple(values Array(Int64)), "
    "string_list Tuple(values Array(String)))"
)


def _tensor_columns(prefix: str) -> list[tuple[str, str]]:
    return [
        (f"{prefix}_name", "Array(String)"),
        (f"{prefix}_datatype", "Array(String)"),
        (f"{prefix}_raw_contents", "Array(String)"),
        (f"{prefix}_values_double_list_values", "Array(Array(Float64))"),
        (f"{prefix}_values_int64_list_values", "Array(Array(Int64))"),
        (f"{prefix}_values_string_list_values", "Array(Array(String))"),
    ]


_EVENTS_IN: list[tuple[str, str]] = [
    ("event_id", "String"),
    ("schema_version", "UInt32"),
    ("time_seconds", "Int64"),
    ("time_nanos", "Int32"),
    ("source_service", "String"),
    ("source_instance", "String"),
    ("request_id", "String"),
    ("trace_id", "String"),
    ("span_id", "String"),
    ("inference_scene", "String"),
    ("inference_unit_id_hash", "String"),
    ("inference_variant", "String"),
    ("inference_model", "String"),
    ("inference_model_version", "Int64"),
    ("inference_worker", "String"),
    ("inference_hop_latencies_hop", "Array(String)"),
    ("inference_hop_latencies_latency_ms", "Array(Float64)"),
    ("inference_latency_ms", "Float64"),
    ("inference_status_code", "Int32"),
    ("inference_error_message", "String"),
    ("inference_degradation_degraded", "Bool"),
    ("inference_degradation_reason", "Int32"),
    ("inference_degradation_detail", "String"),
    ("inference_degradation_served_by", "Int32"),
    ("inference_sampled_inputs", f"Map(String, {_VALUE})"),
    ("inference_scores", "Map(String, Float64)"),
    ("inference_label", "String"),
    *_tensor_columns("inference_outputs"),
    ("inference_feature_lineage_feature_service", "String"),
    ("inference_feature_lineage_definition_version", "String"),
    ("inference_batch_size", "Int32"),
    ("shadow_model", "String"),
    ("shadow_primary_version", "Int64"),
    ("shadow_primary_latency_ms", "Float64"),
    *_tensor_columns("shadow_primary_outputs"),
    ("shadow_shadow_version", "Int64"),
    ("shadow_shadow_latency_ms", "Float64"),
    *_tensor_columns("shadow_shadow_outputs"),
    ("shadow_shadow_error_code", "Int32"),
    ("shadow_shadow_error_message", "String"),
    ("exposure_scene", "String"),
    ("exposure_experiment", "String"),
    ("exposure_layer", "String"),
    ("exposure_variant", "String"),
    ("exposure_unit_id_hash", "String"),
    ("audit_service", "String"),
    ("audit_entry_id", "String"),
    ("audit_entry_time_seconds", "Int64"),
    ("audit_entry_time_nanos", "Int32"),
    ("audit_entry_actor", "String"),
    ("audit_entry_action", "String"),
    ("audit_entry_target", "String"),
    ("audit_entry_before_json", "String"),
    ("audit_entry_after_json", "String"),
    ("audit_entry_reason", "String"),
    ("audit_entry_request_id", "String"),
    ("feedback_target_request_id", "String"),
    ("feedback_unit_id_hash", "String"),
    ("feedback_scene", "String"),
    ("feedback_label_name", "String"),
    ("feedback_label_kind", _VALUE_KIND),
    ("feedback_label_double_value", "Float64"),
    ("feedback_label_int64_value", "Int64"),
    ("feedback_label_string_value", "String"),
    ("feedback_label_bool_value", "Bool"),
    ("feedback_label_time_seconds", "Int64"),
    ("feedback_label_time_nanos", "Int32"),
]

_RAW_TYPES = {
    "FP32": ("Float32", 4),
    "FP64": ("Float64", 8),
    "BF16": ("BFloat16", 2),
    "INT64": ("Int64", 8),
    "INT32": ("Int32", 4),
    "INT16": ("Int16", 2),
    "INT8": ("Int8", 1),
    "UINT64": ("UInt64", 8),
    "UINT32": ("UInt32", 4),
    "UINT16": ("UInt16", 2),
    "UINT8": ("UInt8", 1),
    "BOOL": ("UInt8", 1),
}
"""KServe v2 datatypes decoded by reinterpreting their raw contents: ClickHouse type and element size."""

_FUNCTIONS = {
    # IEEE 754 half precision (as UInt16) to Float64.
    "infermesh_half": """(h) -> if(bitAnd(h, 32768) != 0, -1., 1.) * multiIf(
        bitAnd(bitShiftRight(h, 10), 31) = 0, bitAnd(h, 1023) * exp2(-24),
        bitAnd(bitShiftRight(h, 10), 31) = 31, if(bitAnd(h, 1023) = 0, inf, nan),
        (1 + bitAnd(h, 1023) / 1024) * exp2(bitAnd(bitShiftRight(h, 10), 31) - 15))""",
    # The whole elements of raw contents: a trailing partial element is cut off, so malformed
    # contents never fail a query.
    "infermesh_whole": "(raw, size) -> substring(raw, 1, length(raw) - length(raw) % size)",
    # KServe v2 raw tensor contents (little-endian, row-major) to Float64; BYTES and unknown types give [].
    "infermesh_raw_numbers": "(dt, raw) -> multiIf("
    + "".join(
        f"dt = '{dt}', CAST(reinterpret(infermesh_whole(raw, {size}), 'Array({ch})'), 'Array(Float64)'), "
        for dt, (ch, size) in _RAW_TYPES.items()
    )
    + "dt = 'FP16', arrayMap(h -> infermesh_half(h), reinterpret(infermesh_whole(raw, 2), 'Array(UInt16)')), "
    + "CAST([], 'Array(Float64)'))",
    # How many numbers a tensor holds, without decoding it.
    "infermesh_tensor_size": """(dt, raw, dl, il) -> if(length(raw) > 0, intDiv(length(raw), multiIf(
        dt IN ('FP64', 'INT64', 'UINT64'), 8, dt IN ('FP32', 'INT32', 'UINT32'), 4,
        dt IN ('FP16', 'BF16', 'INT16', 'UINT16'), 2, dt IN ('INT8', 'UINT8', 'BOOL'), 1, length(raw) + 1)),
        if(notEmpty(dl), length(dl), length(il)))""",
    # A tensor's numbers, from its raw contents or its value lists.
    "infermesh_tensor_numbers": """(dt, raw, dl, il) -> if(length(raw) > 0, infermesh_raw_numbers(dt, raw),
        if(notEmpty(dl), dl, arrayMap(x -> toFloat64(x), il)))""",
    "infermesh_is_float": "(dt) -> dt IN ('FP16', 'FP32', 'FP64', 'BF16')",
    # A comparable form of a discrete (label) tensor: equal tensors give equal strings.
    "infermesh_tensor_key": """(dt, raw, il, sl) -> if(length(raw) > 0, concat(dt, ':', raw),
        if(notEmpty(sl), arrayStringConcat(sl, '\\x1f'), arrayStringConcat(arrayMap(x -> toString(x), il), ',')))""",
    # The first element of a discrete tensor, as text (a predicted label).
    "infermesh_tensor_first_label": """(dt, raw, il, sl) -> multiIf(
        dt = 'BYTES' AND length(raw) >= 4, toValidUTF8(substring(raw, 5, reinterpretAsUInt32(substring(raw, 1, 4)))),
        notEmpty(sl), sl[1],
        NOT infermesh_is_float(dt) AND dt != 'BYTES' AND (length(raw) > 0 OR notEmpty(il)),
            toString(toInt64(infermesh_tensor_numbers(dt, raw, CAST([], 'Array(Float64)'), il)[1])),
        '')""",
    # Names of a tensor's n values over rows: "name" for one value per row, "name[j]" for column j.
    "infermesh_value_names": """(name, n, rows) -> arrayMap(
        i -> if(if(n % rows = 0, intDiv(n, rows), n) <= 1, name,
                concat(name, '[', toString(i % if(n % rows = 0, intDiv(n, rows), n)), ']')),
        range(n))""",
    # Feature samples of one sampled input: (name, number, category, numeric) per value.
    "infermesh_feature_samples": """(name, v, rows) -> multiIf(
        tupleElement(v, 'kind') = 'double_value', [(name, tupleElement(v, 'double_value'), '', true)],
        tupleElement(v, 'kind') = 'int64_value', [(name, toFloat64(tupleElement(v, 'int64_value')), '', true)],
        tupleElement(v, 'kind') = 'bool_value', [(name, toFloat64(tupleElement(v, 'bool_value')), '', true)],
        tupleElement(v, 'kind') = 'string_value', [(name, nan, tupleElement(v, 'string_value'), false)],
        tupleElement(v, 'kind') = 'double_list',
            arrayMap((x, n) -> (n, x, '', true), tupleElement(tupleElement(v, 'double_list'), 'values'),
                     infermesh_value_names(name, length(tupleElement(tupleElement(v, 'double_list'), 'values')), rows)),
        tupleElement(v, 'kind') = 'int64_list',
            arrayMap((x, n) -> (n, toFloat64(x), '', true), tupleElement(tupleElement(v, 'int64_list'), 'values'),
                     infermesh_value_names(name, length(tupleElement(tupleElement(v, 'int64_list'), 'values')), rows)),
        tupleElement(v, 'kind') = 'string_list',
            arrayMap((x, n) -> (n, nan, x, false), tupleElement(tupleElement(v, 'string_list'), 'values'),
                     infermesh_value_names(name, length(tupleElement(tupleElement(v, 'string_list'), 'values')), rows)),
        CAST([], 'Array(Tuple(String, Float64, String, Bool))'))""",
}


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    columns: list[tuple[str, str]]
    engine: str
    order_by: str
    partition_by: str | None
    ttl: str | None
    indexes: tuple[str, ...] = ()


_TIME = (
    "if(time_seconds = 0, now64(6, 'UTC'),"
    " fromUnixTimestamp64Micro(time_seconds * 1000000 + intDiv(time_nanos, 1000), 'UTC'))"
)
_INSERT_ID = "getSetting('insert_deduplication_token')"


_TRACE_INDEX = "INDEX trace_idx trace_id TYPE bloom_filter GRANULARITY 4"
"""Every event table finds a trace's events by trace id (GetTrace) without reading every row."""


def _tables(s: StorageSettings) -> list[_Table]:
    envelope = [
        ("time", "DateTime64(6, 'UTC')"),
        ("event_id", "String"),
        ("insert_id", "String"),
        ("request_id", "String"),
        ("source_service", "LowCardinality(String)"),
        ("source_instance", "LowCardinality(String)"),
        ("trace_id", "String"),
        ("span_id", "String"),
    ]
    events_ttl = f"toDateTime(time) + INTERVAL {s.events_ttl_days} DAY"
    return [
        _Table(
            "inference_events",
            [
                *envelope,
                ("scene", "LowCardinality(String)"),
                ("variant", "LowCardinality(String)"),
                ("unit_id_hash", "String"),
                ("model", "LowCardinality(String)"),
                ("model_version", "Int64"),
                ("worker", "LowCardinality(String)"),
                ("latency_ms", "Float64"),
                ("status_code", "Int32"),
                ("error_message", "String"),
                ("degraded", "Bool"),
                ("degradation_reason", "Int32"),
                ("degradation_detail", "String"),
                ("served_by", "Int32"),
                ("batch_size", "UInt32"),
                ("hops", "Array(LowCardinality(String))"),
                ("hop_latency_ms", "Array(Float64)"),
                ("label", "String"),
                ("score_names", "Array(LowCardinality(String))"),
                ("score_values", "Array(Float64)"),
                ("output_names", "Array(LowCardinality(String))"),
                ("output_types", "Array(LowCardinality(String))"),
                ("output_raw", "Array(String)"),
                ("output_doubles", "Array(Array(Float64))"),
                ("output_ints", "Array(Array(Int64))"),
                ("output_strings", "Array(Array(String))"),
                ("sampled", "Bool"),
                ("feature_service", "LowCardinality(String)"),
                ("definition_version", "LowCardinality(String)"),
            ],
            "MergeTree",
            "(model, model_version, source_service, time)",
            "toDate(time)",
            events_ttl,
            (
                "INDEX scene_idx scene TYPE set(256) GRANULARITY 4",
                "INDEX variant_idx variant TYPE set(256) GRANULARITY 4",
                _TRACE_INDEX,
            ),
        ),
        _Table(
            "shadow_events",
            [
                *envelope,
                ("model", "LowCardinality(String)"),
                ("primary_version", "Int64"),
                ("shadow_version", "Int64"),
                ("primary_latency_ms", "Float64"),
                ("shadow_latency_ms", "Float64"),
                ("shadow_failed", "Bool"),
                ("shadow_error_code", "Int32"),
                ("shadow_error_message", "String"),
                ("primary_scores", "Array(Float64)"),
                ("shadow_scores", "Array(Float64)"),
                ("primary_labels", "Array(String)"),
                ("shadow_labels", "Array(String)"),
            ],
            "ReplacingMergeTree",
            "(model, primary_version, shadow_version, time, event_id)",
            "toDate(time)",
            events_ttl,
            (_TRACE_INDEX,),
        ),
        _Table(
            "exposure_events",
            [
                *envelope,
                ("scene", "LowCardinality(String)"),
                ("experiment", "LowCardinality(String)"),
                ("layer", "LowCardinality(String)"),
                ("variant", "LowCardinality(String)"),
                ("unit_id_hash", "String"),
            ],
            "ReplacingMergeTree",
            "(experiment, layer, variant, time, event_id)",
            "toDate(time)",
            events_ttl,
            (_TRACE_INDEX,),
        ),
        _Table(
            "audit_events",
            [
                *envelope,
                ("service", "LowCardinality(String)"),
                ("entry_id", "String"),
                ("entry_time", "DateTime64(6, 'UTC')"),
                ("actor", "String"),
                ("action", "LowCardinality(String)"),
                ("target", "String"),
                ("before_json", "String"),
                ("after_json", "String"),
                ("reason", "String"),
                ("entry_request_id", "String"),
            ],
            "ReplacingMergeTree",
            "(service, target, time, event_id)",
            "toDate(time)",
            f"toDateTime(time) + INTERVAL {s.audit_ttl_days} DAY",
            (_TRACE_INDEX,),
        ),
        _Table(
            "feedback_events",
            [
                *envelope,
                ("target_request_id", "String"),
                ("unit_id_hash", "String"),
                ("scene", "LowCardinality(String)"),
                ("label_name", "LowCardinality(String)"),
                ("label_kind", "LowCardinality(String)"),
                ("label_number", "Float64"),
                ("label_text", "String"),
                ("label_time", "DateTime64(6, 'UTC')"),
            ],
            "ReplacingMergeTree",
            "(label_name, scene, time, event_id)",
            "toDate(time)",
            f"toDateTime(time) + INTERVAL {s.feedback_ttl_days} DAY",
            (_TRACE_INDEX,),
        ),
        _Table(
            "feature_samples",
            [
                ("time", "DateTime64(6, 'UTC')"),
                ("event_id", "String"),
                ("insert_id", "String"),
                ("source_service", "LowCardinality(String)"),
                ("scene", "LowCardinality(String)"),
                ("model", "LowCardinality(String)"),
                ("model_version", "Int64"),
                ("feature", "LowCardinality(String)"),
                ("value", "Float64"),
                ("category", "String"),
                ("numeric", "Bool"),
            ],
            "MergeTree",
            "(model, model_version, feature, time)",
            "toDate(time)",
            events_ttl,
        ),
        _Table(
            "inference_rollup",
            [
                ("bucket", "DateTime('UTC')"),
                ("source_service", "LowCardinality(String)"),
                ("scene", "LowCardinality(String)"),
                ("variant", "LowCardinality(String)"),
                ("model", "LowCardinality(String)"),
                ("model_version", "Int64"),
                ("requests", "SimpleAggregateFunction(sum, UInt64)"),
                ("errors", "SimpleAggregateFunction(sum, UInt64)"),
                ("degraded", "SimpleAggregateFunction(sum, UInt64)"),
                ("latency_sum", "SimpleAggregateFunction(sum, Float64)"),
                ("latency", "AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64)"),
            ],
            "AggregatingMergeTree",
            "(bucket, source_service, scene, variant, model, model_version)",
            "toDate(bucket)",
            "bucket + INTERVAL 2 DAY",
        ),
        _Table(
            "spans",
            [
                ("start", "DateTime64(6, 'UTC')"),
                ("trace_id", "String"),
                ("span_id", "String"),
                ("parent_span_id", "String"),
                ("service", "LowCardinality(String)"),
                ("name", "LowCardinality(String)"),
                ("kind", "UInt8"),
                ("duration_ms", "Float64"),
                ("status", "UInt8"),
                ("status_message", "String"),
                ("request_id", "String"),
                ("scene", "LowCardinality(String)"),
                ("degraded", "Bool"),
                ("fallback", "LowCardinality(String)"),
                ("attributes", "Map(String, String)"),
            ],
            "ReplacingMergeTree",
            "(trace_id, span_id)",
            "toDate(start)",
            f"toDateTime(start) + INTERVAL {s.spans_ttl_days} DAY",
            (
                "INDEX request_idx request_id TYPE bloom_filter GRANULARITY 4",
                "INDEX start_idx start TYPE minmax GRANULARITY 4",
            ),
        ),
        _Table(
            "ingested_batches",
            [
                ("batch_id", "String"),
                ("insert_id", "String"),
                ("state", "Enum8('pending' = 1, 'done' = 2)"),
                ("events", "UInt32"),
                ("time", "DateTime('UTC') DEFAULT now()"),
            ],
            "MergeTree",
            "(batch_id, state)",
            "toYYYYMM(time)",
            f"time + INTERVAL {s.ledger_ttl_days} DAY",
        ),
        _Table(
            "baselines",
            [
                ("baseline_id", "String"),
                ("model", "LowCardinality(String)"),
                ("model_version", "Int64"),
                ("source", "String"),
                ("description", "String"),
                ("samples", "UInt64"),
                ("registered", "DateTime64(6, 'UTC')"),
            ],
            "ReplacingMergeTree(registered)",
            "baseline_id",
            None,
            None,
        ),
        _Table(
            "baseline_samples",
            [
                ("baseline_id", "String"),
                ("name", "LowCardinality(String)"),
                ("value", "Float64"),
                ("category", "String"),
                ("numeric", "Bool"),
            ],
            "MergeTree",
            "(baseline_id, name)",
            None,
            None,
        ),
    ]


def _outputs(prefix: str, float_outputs: bool) -> str:
    """Per output of ``prefix``: its numbers (float outputs) or its comparable key (discrete outputs)."""
    keep = "infermesh_is_float(dt)" if float_outputs else "NOT infermesh_is_float(dt)"
    args = f"{prefix}_datatype, {prefix}_raw_contents, {prefix}_values_double_list_values, " + (
        f"{prefix}_values_int64_list_values, {prefix}_values_string_list_values"
    )
    if float_outputs:
        value = "infermesh_tensor_numbers(dt, raw, dl, il)"
        empty = "CAST([], 'Array(Float64)')"
        return f"arrayFlatten(arrayMap((dt, raw, dl, il, sl) -> if({keep}, {value}, {empty}), {args}))"
    value = "infermesh_tensor_key(dt, raw, il, sl)"
    return f"arrayFilter(x -> x != '', arrayMap((dt, raw, dl, il, sl) -> if({keep}, {value}, ''), {args}))"


_VIEWS: dict[str, tuple[str, str]] = {
    "inference_events": (
        "events_in_inference",
        f"""SELECT {_TIME} AS time, event_id, {_INSERT_ID} AS insert_id, request_id, trace_id, span_id, source_service,
            source_instance,
            inference_scene AS scene, inference_variant AS variant, inference_unit_id_hash AS unit_id_hash,
            inference_model AS model, inference_model_version AS model_version, inference_worker AS worker,
            inference_latency_ms AS latency_ms, inference_status_code AS status_code,
            inference_error_message AS error_message, inference_degradation_degraded AS degraded,
            inference_degradation_reason AS degradation_reason, inference_degradation_detail AS degradation_detail,
            inference_degradation_served_by AS served_by, toUInt32(greatest(inference_batch_size, 1)) AS batch_size,
            inference_hop_latencies_hop AS hops, inference_hop_latencies_latency_ms AS hop_latency_ms,
            inference_label AS label, mapKeys(inference_scores) AS score_names,
            mapValues(inference_scores) AS score_values, inference_outputs_name AS output_names,
            inference_outputs_datatype AS output_types, inference_outputs_raw_contents AS output_raw,
            inference_outputs_values_double_list_values AS output_doubles,
            inference_outputs_values_int64_list_values AS output_ints,
            inference_outputs_values_string_list_values AS output_strings,
            notEmpty(inference_sampled_inputs) AS sampled,
            inference_feature_lineage_feature_service AS feature_service,
            inference_feature_lineage_definition_version AS definition_version
        FROM events_in_inference""",
    ),
    "feature_samples": (
        "events_in_inference",
        f"""SELECT {_TIME} AS time, event_id, {_INSERT_ID} AS insert_id, source_service, inference_scene AS scene,
            inference_model AS model, inference_model_version AS model_version,
            s.1 AS feature, s.2 AS value, s.3 AS category, s.4 AS numeric
        FROM (SELECT * FROM events_in_inference WHERE notEmpty(inference_sampled_inputs))
        ARRAY JOIN arrayFlatten(arrayMap((k, v) -> infermesh_feature_samples(k, v, greatest(inference_batch_size, 1)),
            mapKeys(inference_sampled_inputs), mapValues(inference_sampled_inputs))) AS s""",
    ),
    "shadow_events": (
        "events_in_shadow",
        f"""SELECT {_TIME} AS time, event_id, {_INSERT_ID} AS insert_id, request_id, trace_id, span_id, source_service,
            source_instance,
            shadow_model AS model, shadow_primary_version AS primary_version, shadow_shadow_version AS shadow_version,
            shadow_primary_latency_ms AS primary_latency_ms, shadow_shadow_latency_ms AS shadow_latency_ms,
            shadow_shadow_error_code != 0 OR shadow_shadow_error_message != '' AS shadow_failed,
            shadow_shadow_error_code AS shadow_error_code, shadow_shadow_error_message AS shadow_error_message,
            {_outputs("shadow_primary_outputs", True)} AS primary_scores,
            {_outputs("shadow_shadow_outputs", True)} AS shadow_scores,
            {_outputs("shadow_primary_outputs", False)} AS primary_labels,
            {_outputs("shadow_shadow_outputs", False)} AS shadow_labels
        FROM events_in_shadow""",
    ),
    "exposure_events": (
        "events_in_exposure",
        f"""SELECT {_TIME} AS time, event_id, {_INSERT_ID} AS insert_id, request_id, trace_id, span_id, source_service,
            source_instance,
            exposure_scene AS scene, exposure_experiment AS experiment, exposure_layer AS layer,
            exposure_variant AS variant, exposure_unit_id_hash AS unit_id_hash
        FROM events_in_exposure""",
    ),
    "audit_events": (
        "events_in_audit",
        f"""SELECT {_TIME} AS time, event_id, {_INSERT_ID} AS insert_id, request_id, trace_id, span_id, source_service,
            source_instance,
            audit_service AS service, audit_entry_id AS entry_id,
            fromUnixTimestamp64Micro(audit_entry_time_seconds * 1000000 + intDiv(audit_entry_time_nanos, 1000), 'UTC')
                AS entry_time,
            audit_entry_actor AS actor, audit_entry_action AS action, audit_entry_target AS target,
            audit_entry_before_json AS before_json, audit_entry_after_json AS after_json, audit_entry_reason AS reason,
            audit_entry_request_id AS entry_request_id
        FROM events_in_audit""",
    ),
    "feedback_events": (
        "events_in_feedback",
        f"""SELECT {_TIME} AS time, event_id, {_INSERT_ID} AS insert_id, request_id, trace_id, span_id, source_service,
            source_instance,
            feedback_target_request_id AS target_request_id, feedback_unit_id_hash AS unit_id_hash,
            feedback_scene AS scene, feedback_label_name AS label_name, toString(feedback_label_kind) AS label_kind,
            multiIf(feedback_label_kind = 'double_value', feedback_label_double_value,
                    feedback_label_kind = 'int64_value', toFloat64(feedback_label_int64_value),
                    feedback_label_kind = 'bool_value', toFloat64(feedback_label_bool_value),
                    feedback_label_kind = 'string_value',
                        ifNull(toFloat64OrNull(feedback_label_string_value), nan),
                    nan)
                AS label_number,
            multiIf(feedback_label_kind = 'string_value', feedback_label_string_value,
                    feedback_label_kind = 'bool_value', if(feedback_label_bool_value, '1', '0'),
                    feedback_label_kind = 'int64_value', toString(feedback_label_int64_value),
                    feedback_label_kind = 'double_value', toString(feedback_label_double_value), '') AS label_text,
            if(feedback_label_time_seconds = 0, {_TIME},
               fromUnixTimestamp64Micro(feedback_label_time_seconds * 1000000 + intDiv(feedback_label_time_nanos, 1000),
                                        'UTC')) AS label_time
        FROM events_in_feedback""",
    ),
    "inference_rollup": (
        "inference_events",
        """SELECT toStartOfInterval(time, INTERVAL 10 SECOND) AS bucket, source_service, scene, variant, model,
            model_version, toUInt64(count()) AS requests, toUInt64(countIf(status_code != 0)) AS errors,
            toUInt64(countIf(degraded)) AS degraded, sum(latency_ms) AS latency_sum,
            quantilesTDigestState(0.5, 0.95, 0.99)(latency_ms) AS latency
        FROM inference_events
        GROUP BY bucket, source_service, scene, variant, model, model_version""",
    ),
}

PREDICTION_NAMES = """arrayConcat(score_names, arrayFlatten(arrayMap(
    (name, dt, raw, dl, il) -> infermesh_value_names(name, infermesh_tensor_size(dt, raw, dl, il), toInt32(batch_size)),
    output_names, output_types, output_raw, output_doubles, output_ints)))"""
"""SQL over ``inference_events``: the name of each prediction value ("<score>", "<output>", "<output>[j]")."""

PREDICTION_VALUES = """arrayConcat(score_values, arrayFlatten(arrayMap(
    (dt, raw, dl, il) -> infermesh_tensor_numbers(dt, raw, dl, il),
    output_types, output_raw, output_doubles, output_ints)))"""
"""SQL over ``inference_events``: every prediction value (scores, then numeric outputs), aligned with the names."""

PREDICTED_LABEL = """if(label != '', label, arrayFirst(x -> x != '', arrayMap(
    (dt, raw, il, sl) -> infermesh_tensor_first_label(dt, raw, il, sl), output_types, output_raw, output_ints,
    output_strings)))"""
"""SQL over ``inference_events``: the predicted label (the event's, else the first discrete output's first value)."""

EVENT_TABLES = (
    "inference_events",
    "shadow_events",
    "exposure_events",
    "audit_events",
    "feedback_events",
    "feature_samples",
)
"""Tables whose rows carry the ``insert_id`` of the insert that wrote them."""


class SchemaManager:
    """Creates and upgrades the monitor's objects at start (idempotent; adds missing columns)."""

    def __init__(self, store: Store, settings: StorageSettings) -> None:
        self._store = store
        self._settings = settings

    async def apply(self) -> None:
        """Functions, tables (new columns added), the ``events_in`` Null table and the views."""
        for name, body in _FUNCTIONS.items():
            await self._store.command(f"CREATE OR REPLACE FUNCTION {name} AS {body}")
        for table in _tables(self._settings):
            await self._table(table)
        envelope = [column for column in _EVENTS_IN if not column[0].startswith(PAYLOAD_KINDS)]
        for kind in PAYLOAD_KINDS:
            columns = envelope + [column for column in _EVENTS_IN if column[0].startswith(f"{kind}_")]
            await self._table(_Table(f"events_in_{kind}", columns, "Null", "", None, None))
        for target, (source, select) in _VIEWS.items():
            await self._view(f"mv_{target}", source, target, select)

    async def _table(self, table: _Table) -> None:
        columns = ",\n  ".join(f"`{name}` {type_}" for name, type_ in table.columns)
        indexes = "".join(f",\n  {index}" for index in table.indexes)
        clauses = f"ENGINE = {table.engine}"
        if table.engine != "Null":
            clauses += f"\nORDER BY {table.order_by}"
            if table.partition_by:
                clauses += f"\nPARTITION BY {table.partition_by}"
            if table.ttl:
                clauses += f"\nTTL {table.ttl}"
            clauses += "\nSETTINGS ttl_only_drop_parts = 1" if table.ttl else ""
        await self._store.command(f"CREATE TABLE IF NOT EXISTS {table.name} (\n  {columns}{indexes}\n) {clauses}")
        for name, type_ in table.columns:
            await self._store.command(f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS `{name}` {type_}")
        for index in table.indexes:  # an index added later covers the parts written from then on
            await self._store.command(
                f"ALTER TABLE {table.name} ADD {index.replace('INDEX ', 'INDEX IF NOT EXISTS ', 1)}"
            )

    async def _view(self, name: str, source: str, target: str, select: str) -> None:
        fingerprint = hashlib.sha256(f"{source}\n{target}\n{select}".encode()).hexdigest()[:16]
        rows = await self._store.rows(
            "SELECT comment FROM system.tables WHERE database = currentDatabase() AND name = {name:String}",
            {"name": name},
        )
        if rows and rows[0][0] == f"infermesh:{fingerprint}":
            return
        await self._store.command(f"DROP VIEW IF EXISTS {name}")
        await self._store.command(
            f"CREATE MATERIALIZED VIEW {name} TO {target} AS {select} COMMENT 'infermesh:{fingerprint}'"
        )
