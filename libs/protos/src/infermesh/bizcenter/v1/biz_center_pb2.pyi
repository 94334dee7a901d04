from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from infermesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_SOURCE_UNSPECIFIED: _ClassVar[RouteSource]
    ROUTE_SOURCE_DEFAULT: _ClassVar[RouteSource]
    ROUTE_SOURCE_EXPERIMENT: _ClassVar[RouteSource]
    ROUTE_SOURCE_GRAY_RELEASE: _ClassVar[RouteSource]
    ROUTE_SOURCE_FALLBACK: _ClassVar[RouteSource]

class ConditionOperator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONDITION_OPERATOR_UNSPECIFIED: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_EQUALS: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_NOT_EQUALS: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_IN: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_NOT_IN: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_PREFIX: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_REGEX: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_GTE: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_LT: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_VERSION_GTE: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_VERSION_LT: _ClassVar[ConditionOperator]
    CONDITION_OPERATOR_EXISTS: _ClassVar[ConditionOperator]

class RateLimitMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RATE_LIMIT_MODE_UNSPECIFIED: _ClassVar[RateLimitMode]
    RATE_LIMIT_MODE_LOCAL: _ClassVar[RateLimitMode]
    RATE_LIMIT_MODE_GLOBAL: _ClassVar[RateLimitMode]

class StreamFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_FORMAT_UNSPECIFIED: _ClassVar[StreamFormat]
    STREAM_FORMAT_PROTOBUF: _ClassVar[StreamFormat]
    STREAM_FORMAT_JSON: _ClassVar[StreamFormat]

class ExperimentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_STATUS_UNSPECIFIED: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_DRAFT: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_RUNNING: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_PAUSED: _ClassVar[ExperimentStatus]
    EXPERIMENT_STATUS_COMPLETED: _ClassVar[ExperimentStatus]
ROUTE_SOURCE_UNSPECIFIED: RouteSource
ROUTE_SOURCE_DEFAULT: RouteSource
ROUTE_SOURCE_EXPERIMENT: RouteSource
ROUTE_SOURCE_GRAY_RELEASE: RouteSource
ROUTE_SOURCE_FALLBACK: RouteSource
CONDITION_OPERATOR_UNSPECIFIED: ConditionOperator
CONDITION_OPERATOR_EQUALS: ConditionOperator
CONDITION_OPERATOR_NOT_EQUALS: ConditionOperator
CONDITION_OPERATOR_IN: ConditionOperator
CONDITION_OPERATOR_NOT_IN: ConditionOperator
CONDITION_OPERATOR_PREFIX: ConditionOperator
CONDITION_OPERATOR_REGEX: ConditionOperator
CONDITION_OPERATOR_GTE: ConditionOperator
CONDITION_OPERATOR_LT: ConditionOperator
CONDITION_OPERATOR_VERSION_GTE: ConditionOperator
CONDITION_OPERATOR_VERSION_LT: ConditionOperator
CONDITION_OPERATOR_EXISTS: ConditionOperator
RATE_LIMIT_MODE_UNSPECIFIED: RateLimitMode
RATE_LIMIT_MODE_LOCAL: RateLimitMode
RATE_LIMIT_MODE_GLOBAL: RateLimitMode
STREAM_FORMAT_UNSPECIFIED: StreamFormat
STREAM_FORMAT_PROTOBUF: StreamFormat
STREAM_FORMAT_JSON: StreamFormat
EXPERIMENT_STATUS_UNSPECIFIED: ExperimentStatus
EXPERIMENT_STATUS_DRAFT: ExperimentStatus
EXPERIMENT_STATUS_RUNNING: ExperimentStatus
EXPERIMENT_STATUS_PAUSED: ExperimentStatus
EXPERIMENT_STATUS_COMPLETED: ExperimentStatus

class PredictRequest(_message.Message):
    __slots__ = ("scene", "unit_id", "features", "attributes", "request_id")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SCENE_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    scene: str
    unit_id: str
    features: _containers.MessageMap[str, _common_pb2.Value]
    attributes: _containers.ScalarMap[str, str]
    request_id: str
    def __init__(self, scene: _Optional[str] = ..., unit_id: _Optional[str] = ..., features: _Optional[_Mapping[str, _common_pb2.Value]] = ..., attributes: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("scores", "label", "outputs")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.ScalarMap[str, float]
    label: str
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    def __init__(self, scores: _Optional[_Mapping[str, float]] = ..., label: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class ExperimentAssignment(_message.Message):
    __slots__ = ("experiment", "layer", "variant", "bucket")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    layer: str
    variant: str
    bucket: int
    def __init__(self, experiment: _Optional[str] = ..., layer: _Optional[str] = ..., variant: _Optional[str] = ..., bucket: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("request_id", "prediction", "variant", "assignments", "model", "model_version", "degradation", "latencies", "scene", "scene_config_version", "route", "feature_lineage")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADATION_FIELD_NUMBER: _ClassVar[int]
    LATENCIES_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    SCENE_CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_LINEAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prediction: Prediction
    variant: str
    assignments: _containers.RepeatedCompositeFieldContainer[ExperimentAssignment]
    model: str
    model_version: int
    degradation: _common_pb2.Degradation
    latencies: _containers.RepeatedCompositeFieldContainer[_common_pb2.HopLatency]
    scene: str
    scene_config_version: int
    route: RouteSource
    feature_lineage: _common_pb2.FeatureLineage
    def __init__(self, request_id: _Optional[str] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ..., variant: _Optional[str] = ..., assignments: _Optional[_Iterable[_Union[ExperimentAssignment, _Mapping]]] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., degradation: _Optional[_Union[_common_pb2.Degradation, _Mapping]] = ..., latencies: _Optional[_Iterable[_Union[_common_pb2.HopLatency, _Mapping]]] = ..., scene: _Optional[str] = ..., scene_config_version: _Optional[int] = ..., route: _Optional[_Union[RouteSource, str]] = ..., feature_lineage: _Optional[_Union[_common_pb2.FeatureLineage, _Mapping]] = ...) -> None: ...

class PredictBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[PredictRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[PredictRequest, _Mapping]]] = ...) -> None: ...

class PredictBatchResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: PredictResponse
    error: _common_pb2.ErrorStatus
    def __init__(self, response: _Optional[_Union[PredictResponse, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ErrorStatus, _Mapping]] = ...) -> None: ...

class PredictBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PredictBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[PredictBatchResult, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("attribute", "op", "values")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    op: ConditionOperator
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, attribute: _Optional[str] = ..., op: _Optional[_Union[ConditionOperator, str]] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class AttributeRule(_message.Message):
    __slots__ = ("name", "conditions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, name: _Optional[str] = ..., conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class ModelRouting(_message.Message):
    __slots__ = ("model", "input_name")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    input_name: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., input_name: _Optional[str] = ...) -> None: ...

class ResponseMapping(_message.Message):
    __slots__ = ("score_output", "score_labels", "label_output", "threshold", "label_if_above", "label_otherwise", "include_raw_outputs")
    SCORE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SCORE_LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LABEL_IF_ABOVE_FIELD_NUMBER: _ClassVar[int]
    LABEL_OTHERWISE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RAW_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    score_output: str
    score_labels: _containers.RepeatedScalarFieldContainer[str]
    label_output: str
    threshold: float
    label_if_above: str
    label_otherwise: str
    include_raw_outputs: bool
    def __init__(self, score_output: _Optional[str] = ..., score_labels: _Optional[_Iterable[str]] = ..., label_output: _Optional[str] = ..., threshold: _Optional[float] = ..., label_if_above: _Optional[str] = ..., label_otherwise: _Optional[str] = ..., include_raw_outputs: bool = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("requests_per_second", "burst", "mode")
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    requests_per_second: float
    burst: int
    mode: RateLimitMode
    def __init__(self, requests_per_second: _Optional[float] = ..., burst: _Optional[int] = ..., mode: _Optional[_Union[RateLimitMode, str]] = ...) -> None: ...

class AlternateModelStep(_message.Message):
    __slots__ = ("model", "timeout")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    timeout: _duration_pb2.Duration
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., timeout: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CachedScoreStep(_message.Message):
    __slots__ = ("max_age",)
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    max_age: _duration_pb2.Duration
    def __init__(self, max_age: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DefaultRule(_message.Message):
    __slots__ = ("conditions", "prediction")
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    prediction: Prediction
    def __init__(self, conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ...) -> None: ...

class RuleDefaultStep(_message.Message):
    __slots__ = ("rules", "default_prediction")
    RULES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PREDICTION_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[DefaultRule]
    default_prediction: Prediction
    def __init__(self, rules: _Optional[_Iterable[_Union[DefaultRule, _Mapping]]] = ..., default_prediction: _Optional[_Union[Prediction, _Mapping]] = ...) -> None: ...

class FallbackStep(_message.Message):
    __slots__ = ("alternate_model", "cached_score", "rule_default")
    ALTERNATE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CACHED_SCORE_FIELD_NUMBER: _ClassVar[int]
    RULE_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    alternate_model: AlternateModelStep
    cached_score: CachedScoreStep
    rule_default: RuleDefaultStep
    def __init__(self, alternate_model: _Optional[_Union[AlternateModelStep, _Mapping]] = ..., cached_score: _Optional[_Union[CachedScoreStep, _Mapping]] = ..., rule_default: _Optional[_Union[RuleDefaultStep, _Mapping]] = ...) -> None: ...

class RampPoint(_message.Message):
    __slots__ = ("start_time", "percentage")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    percentage: float
    def __init__(self, start_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., percentage: _Optional[float] = ...) -> None: ...

class GrayRelease(_message.Message):
    __slots__ = ("enabled", "target", "allowlist_unit_ids", "rules", "percentage", "ramp", "salt")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ALLOWLIST_UNIT_IDS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    RAMP_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    target: _common_pb2.ModelRef
    allowlist_unit_ids: _containers.RepeatedScalarFieldContainer[str]
    rules: _containers.RepeatedCompositeFieldContainer[AttributeRule]
    percentage: float
    ramp: _containers.RepeatedCompositeFieldContainer[RampPoint]
    salt: str
    def __init__(self, enabled: bool = ..., target: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., allowlist_unit_ids: _Optional[_Iterable[str]] = ..., rules: _Optional[_Iterable[_Union[AttributeRule, _Mapping]]] = ..., percentage: _Optional[float] = ..., ramp: _Optional[_Iterable[_Union[RampPoint, _Mapping]]] = ..., salt: _Optional[str] = ...) -> None: ...

class Scene(_message.Message):
    __slots__ = ("name", "description", "config_version", "feature_service", "feature_definition_version", "unit_id_key", "model_routing", "response_mapping", "slo_deadline", "max_concurrency", "rate_limit", "fallback_chain", "gray_release", "enabled", "owner", "update_time", "updated_by", "stream_bindings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_ROUTING_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_MAPPING_FIELD_NUMBER: _ClassVar[int]
    SLO_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_CHAIN_FIELD_NUMBER: _ClassVar[int]
    GRAY_RELEASE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    STREAM_BINDINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    config_version: int
    feature_service: str
    feature_definition_version: str
    unit_id_key: str
    model_routing: ModelRouting
    response_mapping: ResponseMapping
    slo_deadline: _duration_pb2.Duration
    max_concurrency: int
    rate_limit: RateLimit
    fallback_chain: _containers.RepeatedCompositeFieldContainer[FallbackStep]
    gray_release: GrayRelease
    enabled: bool
    owner: str
    update_time: _timestamp_pb2.Timestamp
    updated_by: str
    stream_bindings: _containers.RepeatedCompositeFieldContainer[StreamBinding]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., config_version: _Optional[int] = ..., feature_service: _Optional[str] = ..., feature_definition_version: _Optional[str] = ..., unit_id_key: _Optional[str] = ..., model_routing: _Optional[_Union[ModelRouting, _Mapping]] = ..., response_mapping: _Optional[_Union[ResponseMapping, _Mapping]] = ..., slo_deadline: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., max_concurrency: _Optional[int] = ..., rate_limit: _Optional[_Union[RateLimit, _Mapping]] = ..., fallback_chain: _Optional[_Iterable[_Union[FallbackStep, _Mapping]]] = ..., gray_release: _Optional[_Union[GrayRelease, _Mapping]] = ..., enabled: bool = ..., owner: _Optional[str] = ..., update_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ..., stream_bindings: _Optional[_Iterable[_Union[StreamBinding, _Mapping]]] = ...) -> None: ...

class JsonMapping(_message.Message):
    __slots__ = ("unit_id", "features", "attributes", "request_id")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    unit_id: str
    features: _containers.ScalarMap[str, str]
    attributes: _containers.ScalarMap[str, str]
    request_id: str
    def __init__(self, unit_id: _Optional[str] = ..., features: _Optional[_Mapping[str, str]] = ..., attributes: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StreamBinding(_message.Message):
    __slots__ = ("name", "stream", "subjects", "format", "json_mapping", "output_subject", "dead_letter_subject", "max_deliver", "max_ack_pending", "batch_size", "ordered_by_unit", "pause_when_degraded", "retry_delay", "ack_wait", "durable", "enabled")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    JSON_MAPPING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    MAX_DELIVER_FIELD_NUMBER: _ClassVar[int]
    MAX_ACK_PENDING_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ORDERED_BY_UNIT_FIELD_NUMBER: _ClassVar[int]
    PAUSE_WHEN_DEGRADED_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_FIELD_NUMBER: _ClassVar[int]
    ACK_WAIT_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    stream: str
    subjects: _containers.RepeatedScalarFieldContainer[str]
    format: StreamFormat
    json_mapping: JsonMapping
    output_subject: str
    dead_letter_subject: str
    max_deliver: int
    max_ack_pending: int
    batch_size: int
    ordered_by_unit: bool
    pause_when_degraded: bool
    retry_delay: _duration_pb2.Duration
    ack_wait: _duration_pb2.Duration
    durable: str
    enabled: bool
    def __init__(self, name: _Optional[str] = ..., stream: _Optional[str] = ..., subjects: _Optional[_Iterable[str]] = ..., format: _Optional[_Union[StreamFormat, str]] = ..., json_mapping: _Optional[_Union[JsonMapping, _Mapping]] = ..., output_subject: _Optional[str] = ..., dead_letter_subject: _Optional[str] = ..., max_deliver: _Optional[int] = ..., max_ack_pending: _Optional[int] = ..., batch_size: _Optional[int] = ..., ordered_by_unit: bool = ..., pause_when_degraded: bool = ..., retry_delay: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., ack_wait: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., durable: _Optional[str] = ..., enabled: bool = ...) -> None: ...

class ListScenesRequest(_message.Message):
    __slots__ = ("page",)
    PAGE_FIELD_NUMBER: _ClassVar[int]
    page: _common_pb2.PageRequest
    def __init__(self, page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListScenesResponse(_message.Message):
    __slots__ = ("scenes", "page")
    SCENES_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    scenes: _containers.RepeatedCompositeFieldContainer[Scene]
    page: _common_pb2.PageResponse
    def __init__(self, scenes: _Optional[_Iterable[_Union[Scene, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ...) -> None: ...

class GetSceneRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetSceneResponse(_message.Message):
    __slots__ = ("scene",)
    SCENE_FIELD_NUMBER: _ClassVar[int]
    scene: Scene
    def __init__(self, scene: _Optional[_Union[Scene, _Mapping]] = ...) -> None: ...

class UpsertSceneRequest(_message.Message):
    __slots__ = ("scene", "expected_config_version", "validate_only", "actor", "reason")
    SCENE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    scene: Scene
    expected_config_version: int
    validate_only: bool
    actor: str
    reason: str
    def __init__(self, scene: _Optional[_Union[Scene, _Mapping]] = ..., expected_config_version: _Optional[int] = ..., validate_only: bool = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UpsertSceneResponse(_message.Message):
    __slots__ = ("scene",)
    SCENE_FIELD_NUMBER: _ClassVar[int]
    scene: Scene
    def __init__(self, scene: _Optional[_Union[Scene, _Mapping]] = ...) -> None: ...

class DeleteSceneRequest(_message.Message):
    __slots__ = ("name", "expected_config_version", "actor", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_config_version: int
    actor: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., expected_config_version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteSceneResponse(_message.Message):
    __slots__ = ("scene",)
    SCENE_FIELD_NUMBER: _ClassVar[int]
    scene: Scene
    def __init__(self, scene: _Optional[_Union[Scene, _Mapping]] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("name", "buckets", "model", "parameters", "control", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    buckets: int
    model: _common_pb2.ModelRef
    parameters: _struct_pb2.Struct
    control: bool
    description: str
    def __init__(self, name: _Optional[str] = ..., buckets: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., control: bool = ..., description: _Optional[str] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("name", "salt", "bucket_count", "variants")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNT_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    salt: str
    bucket_count: int
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    def __init__(self, name: _Optional[str] = ..., salt: _Optional[str] = ..., bucket_count: _Optional[int] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("name", "scene", "description", "config_version", "layers", "start_time", "end_time", "status", "owner", "metrics", "update_time", "updated_by")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    scene: str
    description: str
    config_version: int
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    status: ExperimentStatus
    owner: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    update_time: _timestamp_pb2.Timestamp
    updated_by: str
    def __init__(self, name: _Optional[str] = ..., scene: _Optional[str] = ..., description: _Optional[str] = ..., config_version: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., start_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[ExperimentStatus, str]] = ..., owner: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., update_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ("page", "scene", "statuses")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    page: _common_pb2.PageRequest
    scene: str
    statuses: _containers.RepeatedScalarFieldContainer[ExperimentStatus]
    def __init__(self, page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ..., scene: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[ExperimentStatus, str]]] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments", "page")
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    page: _common_pb2.PageResponse
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ...) -> None: ...

class GetExperimentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetExperimentResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class UpsertExperimentRequest(_message.Message):
    __slots__ = ("experiment", "expected_config_version", "validate_only", "actor", "reason")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    expected_config_version: int
    validate_only: bool
    actor: str
    reason: str
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ..., expected_config_version: _Optional[int] = ..., validate_only: bool = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UpsertExperimentResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class DeleteExperimentRequest(_message.Message):
    __slots__ = ("name", "expected_config_version", "actor", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_config_version: int
    actor: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., expected_config_version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteExperimentResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class ListAuditEntriesRequest(_message.Message):
    __slots__ = ("page", "filter")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    page: _common_pb2.PageRequest
    filter: _common_pb2.AuditFilter
    def __init__(self, page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ..., filter: _Optional[_Union[_common_pb2.AuditFilter, _Mapping]] = ...) -> None: ...

class ListAuditEntriesResponse(_message.Message):
    __slots__ = ("entries", "page")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_common_pb2.AuditEntry]
    page: _common_pb2.PageResponse
    def __init__(self, entries: _Optional[_Iterable[_Union[_common_pb2.AuditEntry, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ...) -> None: ...

class ListStreamBindingsRequest(_message.Message):
    __slots__ = ("scene",)
    SCENE_FIELD_NUMBER: _ClassVar[int]
    scene: str
    def __init__(self, scene: _Optional[str] = ...) -> None: ...

class StreamBindingStatus(_message.Message):
    __slots__ = ("scene", "binding", "consuming", "pending", "ack_pending", "redelivered", "oldest_pending_age", "dead_letters", "consumed", "scored", "degraded", "dead_lettered", "error")
    SCENE_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    CONSUMING_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    ACK_PENDING_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_AGE_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    scene: str
    binding: StreamBinding
    consuming: bool
    pending: int
    ack_pending: int
    redelivered: int
    oldest_pending_age: _duration_pb2.Duration
    dead_letters: int
    consumed: int
    scored: int
    degraded: int
    dead_lettered: int
    error: str
    def __init__(self, scene: _Optional[str] = ..., binding: _Optional[_Union[StreamBinding, _Mapping]] = ..., consuming: bool = ..., pending: _Optional[int] = ..., ack_pending: _Optional[int] = ..., redelivered: _Optional[int] = ..., oldest_pending_age: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., dead_letters: _Optional[int] = ..., consumed: _Optional[int] = ..., scored: _Optional[int] = ..., degraded: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ListStreamBindingsResponse(_message.Message):
    __slots__ = ("bindings",)
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    bindings: _containers.RepeatedCompositeFieldContainer[StreamBindingStatus]
    def __init__(self, bindings: _Optional[_Iterable[_Union[StreamBindingStatus, _Mapping]]] = ...) -> None: ...

class ReplayDeadLettersRequest(_message.Message):
    __slots__ = ("scene", "binding", "limit", "actor")
    SCENE_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    scene: str
    binding: str
    limit: int
    actor: str
    def __init__(self, scene: _Optional[str] = ..., binding: _Optional[str] = ..., limit: _Optional[int] = ..., actor: _Optional[str] = ...) -> None: ...

class ReplayDeadLettersResponse(_message.Message):
    __slots__ = ("replayed",)
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    replayed: int
    def __init__(self, replayed: _Optional[int] = ...) -> None: ...
