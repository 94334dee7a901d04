from google.protobuf import timestamp_pb2 as _timestamp_pb2
from infermesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventSource(_message.Message):
    __slots__ = ("service", "instance")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    service: str
    instance: str
    def __init__(self, service: _Optional[str] = ..., instance: _Optional[str] = ...) -> None: ...

class InferenceEvent(_message.Message):
    __slots__ = ("scene", "unit_id_hash", "variant", "model", "model_version", "worker", "hop_latencies", "latency_ms", "status_code", "error_message", "degradation", "sampled_inputs", "scores", "label", "outputs", "feature_lineage", "batch_size")
    class SampledInputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SCENE_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_HASH_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    HOP_LATENCIES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DEGRADATION_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_INPUTS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_LINEAGE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    scene: str
    unit_id_hash: str
    variant: str
    model: str
    model_version: int
    worker: str
    hop_latencies: _containers.RepeatedCompositeFieldContainer[_common_pb2.HopLatency]
    latency_ms: float
    status_code: int
    error_message: str
    degradation: _common_pb2.Degradation
    sampled_inputs: _containers.MessageMap[str, _common_pb2.Value]
    scores: _containers.ScalarMap[str, float]
    label: str
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    feature_lineage: _common_pb2.FeatureLineage
    batch_size: int
    def __init__(self, scene: _Optional[str] = ..., unit_id_hash: _Optional[str] = ..., variant: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., worker: _Optional[str] = ..., hop_latencies: _Optional[_Iterable[_Union[_common_pb2.HopLatency, _Mapping]]] = ..., latency_ms: _Optional[float] = ..., status_code: _Optional[int] = ..., error_message: _Optional[str] = ..., degradation: _Optional[_Union[_common_pb2.Degradation, _Mapping]] = ..., sampled_inputs: _Optional[_Mapping[str, _common_pb2.Value]] = ..., scores: _Optional[_Mapping[str, float]] = ..., label: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., feature_lineage: _Optional[_Union[_common_pb2.FeatureLineage, _Mapping]] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ShadowEvent(_message.Message):
    __slots__ = ("model", "primary_version", "primary_outputs", "primary_latency_ms", "shadow_version", "shadow_outputs", "shadow_latency_ms", "shadow_error")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ERROR_FIELD_NUMBER: _ClassVar[int]
    model: str
    primary_version: int
    primary_outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    primary_latency_ms: float
    shadow_version: int
    shadow_outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    shadow_latency_ms: float
    shadow_error: _common_pb2.ErrorStatus
    def __init__(self, model: _Optional[str] = ..., primary_version: _Optional[int] = ..., primary_outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., primary_latency_ms: _Optional[float] = ..., shadow_version: _Optional[int] = ..., shadow_outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., shadow_latency_ms: _Optional[float] = ..., shadow_error: _Optional[_Union[_common_pb2.ErrorStatus, _Mapping]] = ...) -> None: ...

class ExposureEvent(_message.Message):
    __slots__ = ("scene", "experiment", "layer", "variant", "unit_id_hash")
    SCENE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_HASH_FIELD_NUMBER: _ClassVar[int]
    scene: str
    experiment: str
    layer: str
    variant: str
    unit_id_hash: str
    def __init__(self, scene: _Optional[str] = ..., experiment: _Optional[str] = ..., layer: _Optional[str] = ..., variant: _Optional[str] = ..., unit_id_hash: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("service", "entry")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    service: str
    entry: _common_pb2.AuditEntry
    def __init__(self, service: _Optional[str] = ..., entry: _Optional[_Union[_common_pb2.AuditEntry, _Mapping]] = ...) -> None: ...

class FeedbackEvent(_message.Message):
    __slots__ = ("target_request_id", "unit_id_hash", "scene", "label_name", "label", "label_time")
    TARGET_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_HASH_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_TIME_FIELD_NUMBER: _ClassVar[int]
    target_request_id: str
    unit_id_hash: str
    scene: str
    label_name: str
    label: _common_pb2.Value
    label_time: _timestamp_pb2.Timestamp
    def __init__(self, target_request_id: _Optional[str] = ..., unit_id_hash: _Optional[str] = ..., scene: _Optional[str] = ..., label_name: _Optional[str] = ..., label: _Optional[_Union[_common_pb2.Value, _Mapping]] = ..., label_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "schema_version", "time", "source", "request_id", "trace_id", "span_id", "inference", "shadow", "exposure", "audit", "feedback")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    schema_version: int
    time: _timestamp_pb2.Timestamp
    source: EventSource
    request_id: str
    trace_id: str
    span_id: str
    inference: InferenceEvent
    shadow: ShadowEvent
    exposure: ExposureEvent
    audit: AuditEvent
    feedback: FeedbackEvent
    def __init__(self, event_id: _Optional[str] = ..., schema_version: _Optional[int] = ..., time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[EventSource, _Mapping]] = ..., request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., inference: _Optional[_Union[InferenceEvent, _Mapping]] = ..., shadow: _Optional[_Union[ShadowEvent, _Mapping]] = ..., exposure: _Optional[_Union[ExposureEvent, _Mapping]] = ..., audit: _Optional[_Union[AuditEvent, _Mapping]] = ..., feedback: _Optional[_Union[FeedbackEvent, _Mapping]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...
