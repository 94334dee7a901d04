from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DegradationReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEGRADATION_REASON_UNSPECIFIED: _ClassVar[DegradationReason]
    DEGRADATION_REASON_CIRCUIT_OPEN: _ClassVar[DegradationReason]
    DEGRADATION_REASON_DEADLINE_EXCEEDED: _ClassVar[DegradationReason]
    DEGRADATION_REASON_DOWNSTREAM_ERROR: _ClassVar[DegradationReason]
    DEGRADATION_REASON_FEATURES_UNAVAILABLE: _ClassVar[DegradationReason]
    DEGRADATION_REASON_FEATURES_FALLBACK: _ClassVar[DegradationReason]
    DEGRADATION_REASON_MODEL_UNAVAILABLE: _ClassVar[DegradationReason]
    DEGRADATION_REASON_DOWNSTREAM_OVERLOADED: _ClassVar[DegradationReason]
    DEGRADATION_REASON_OTHER: _ClassVar[DegradationReason]

class ServedBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVED_BY_UNSPECIFIED: _ClassVar[ServedBy]
    SERVED_BY_PRIMARY: _ClassVar[ServedBy]
    SERVED_BY_ALTERNATE_MODEL: _ClassVar[ServedBy]
    SERVED_BY_CACHED_SCORE: _ClassVar[ServedBy]
    SERVED_BY_RULE_DEFAULT: _ClassVar[ServedBy]

class SloVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SLO_VERDICT_UNSPECIFIED: _ClassVar[SloVerdict]
    SLO_VERDICT_PASS: _ClassVar[SloVerdict]
    SLO_VERDICT_FAIL: _ClassVar[SloVerdict]
    SLO_VERDICT_INSUFFICIENT_DATA: _ClassVar[SloVerdict]
DEGRADATION_REASON_UNSPECIFIED: DegradationReason
DEGRADATION_REASON_CIRCUIT_OPEN: DegradationReason
DEGRADATION_REASON_DEADLINE_EXCEEDED: DegradationReason
DEGRADATION_REASON_DOWNSTREAM_ERROR: DegradationReason
DEGRADATION_REASON_FEATURES_UNAVAILABLE: DegradationReason
DEGRADATION_REASON_FEATURES_FALLBACK: DegradationReason
DEGRADATION_REASON_MODEL_UNAVAILABLE: DegradationReason
DEGRADATION_REASON_DOWNSTREAM_OVERLOADED: DegradationReason
DEGRADATION_REASON_OTHER: DegradationReason
SERVED_BY_UNSPECIFIED: ServedBy
SERVED_BY_PRIMARY: ServedBy
SERVED_BY_ALTERNATE_MODEL: ServedBy
SERVED_BY_CACHED_SCORE: ServedBy
SERVED_BY_RULE_DEFAULT: ServedBy
SLO_VERDICT_UNSPECIFIED: SloVerdict
SLO_VERDICT_PASS: SloVerdict
SLO_VERDICT_FAIL: SloVerdict
SLO_VERDICT_INSUFFICIENT_DATA: SloVerdict

class Value(_message.Message):
    __slots__ = ("null_value", "double_value", "int64_value", "string_value", "bool_value", "bytes_value", "double_list", "int64_list", "string_list")
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_LIST_FIELD_NUMBER: _ClassVar[int]
    INT64_LIST_FIELD_NUMBER: _ClassVar[int]
    STRING_LIST_FIELD_NUMBER: _ClassVar[int]
    null_value: _struct_pb2.NullValue
    double_value: float
    int64_value: int
    string_value: str
    bool_value: bool
    bytes_value: bytes
    double_list: DoubleList
    int64_list: Int64List
    string_list: StringList
    def __init__(self, null_value: _Optional[_Union[_struct_pb2.NullValue, str]] = ..., double_value: _Optional[float] = ..., int64_value: _Optional[int] = ..., string_value: _Optional[str] = ..., bool_value: bool = ..., bytes_value: _Optional[bytes] = ..., double_list: _Optional[_Union[DoubleList, _Mapping]] = ..., int64_list: _Optional[_Union[Int64List, _Mapping]] = ..., string_list: _Optional[_Union[StringList, _Mapping]] = ...) -> None: ...

class DoubleList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Int64List(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "datatype", "shape", "description", "class_labels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    description: str
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., description: _Optional[str] = ..., class_labels: _Optional[_Iterable[str]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "values", "raw_contents")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    RAW_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    values: Value
    raw_contents: bytes
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., values: _Optional[_Union[Value, _Mapping]] = ..., raw_contents: _Optional[bytes] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("model", "version", "alias")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    alias: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...

class FeatureViewLineage(_message.Message):
    __slots__ = ("feature_view", "source", "value_time", "from_fallback", "used_default", "features", "from_cache")
    FEATURE_VIEW_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VALUE_TIME_FIELD_NUMBER: _ClassVar[int]
    FROM_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    USED_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    feature_view: str
    source: str
    value_time: _timestamp_pb2.Timestamp
    from_fallback: bool
    used_default: bool
    features: _containers.RepeatedScalarFieldContainer[str]
    from_cache: bool
    def __init__(self, feature_view: _Optional[str] = ..., source: _Optional[str] = ..., value_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., from_fallback: bool = ..., used_default: bool = ..., features: _Optional[_Iterable[str]] = ..., from_cache: bool = ...) -> None: ...

class FeatureLineage(_message.Message):
    __slots__ = ("feature_service", "definition_version", "views")
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    definition_version: str
    views: _containers.RepeatedCompositeFieldContainer[FeatureViewLineage]
    def __init__(self, feature_service: _Optional[str] = ..., definition_version: _Optional[str] = ..., views: _Optional[_Iterable[_Union[FeatureViewLineage, _Mapping]]] = ...) -> None: ...

class Degradation(_message.Message):
    __slots__ = ("degraded", "reason", "detail", "served_by")
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    degraded: bool
    reason: DegradationReason
    detail: str
    served_by: ServedBy
    def __init__(self, degraded: bool = ..., reason: _Optional[_Union[DegradationReason, str]] = ..., detail: _Optional[str] = ..., served_by: _Optional[_Union[ServedBy, str]] = ...) -> None: ...

class PageRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class PageResponse(_message.Message):
    __slots__ = ("next_page_token",)
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    next_page_token: str
    def __init__(self, next_page_token: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "time", "actor", "action", "target", "before_json", "after_json", "reason", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BEFORE_JSON_FIELD_NUMBER: _ClassVar[int]
    AFTER_JSON_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    time: _timestamp_pb2.Timestamp
    actor: str
    action: str
    target: str
    before_json: str
    after_json: str
    reason: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., before_json: _Optional[str] = ..., after_json: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AuditFilter(_message.Message):
    __slots__ = ("target_prefix", "actor", "actions", "start_time", "end_time")
    TARGET_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    target_prefix: str
    actor: str
    actions: _containers.RepeatedScalarFieldContainer[str]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, target_prefix: _Optional[str] = ..., actor: _Optional[str] = ..., actions: _Optional[_Iterable[str]] = ..., start_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("start_time", "end_time")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, start_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HopLatency(_message.Message):
    __slots__ = ("hop", "latency_ms")
    HOP_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    hop: str
    latency_ms: float
    def __init__(self, hop: _Optional[str] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class ErrorStatus(_message.Message):
    __slots__ = ("code", "message", "retry_after", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retry_after: _duration_pb2.Duration
    details: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retry_after: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class OnlineMetricThreshold(_message.Message):
    __slots__ = ("metric", "min_value", "max_value", "max_regression_vs_baseline", "min_labels", "label_name")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_REGRESSION_VS_BASELINE_FIELD_NUMBER: _ClassVar[int]
    MIN_LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAME_FIELD_NUMBER: _ClassVar[int]
    metric: str
    min_value: float
    max_value: float
    max_regression_vs_baseline: float
    min_labels: int
    label_name: str
    def __init__(self, metric: _Optional[str] = ..., min_value: _Optional[float] = ..., max_value: _Optional[float] = ..., max_regression_vs_baseline: _Optional[float] = ..., min_labels: _Optional[int] = ..., label_name: _Optional[str] = ...) -> None: ...

class SloThresholds(_message.Message):
    __slots__ = ("max_p99_latency_ms", "max_p99_latency_ratio", "max_error_rate", "max_degraded_rate", "min_shadow_agreement", "online_metric")
    MAX_P99_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_LATENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_DEGRADED_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_SHADOW_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    ONLINE_METRIC_FIELD_NUMBER: _ClassVar[int]
    max_p99_latency_ms: float
    max_p99_latency_ratio: float
    max_error_rate: float
    max_degraded_rate: float
    min_shadow_agreement: float
    online_metric: OnlineMetricThreshold
    def __init__(self, max_p99_latency_ms: _Optional[float] = ..., max_p99_latency_ratio: _Optional[float] = ..., max_error_rate: _Optional[float] = ..., max_degraded_rate: _Optional[float] = ..., min_shadow_agreement: _Optional[float] = ..., online_metric: _Optional[_Union[OnlineMetricThreshold, _Mapping]] = ...) -> None: ...

class SloFigures(_message.Message):
    __slots__ = ("requests", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "error_rate", "degraded_rate", "shadow_agreement", "online_metric", "labels")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    P50_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P95_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P99_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_RATE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    ONLINE_METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    p50_latency_ms: float
    p95_latency_ms: float
    p99_latency_ms: float
    error_rate: float
    degraded_rate: float
    shadow_agreement: float
    online_metric: float
    labels: int
    def __init__(self, requests: _Optional[int] = ..., p50_latency_ms: _Optional[float] = ..., p95_latency_ms: _Optional[float] = ..., p99_latency_ms: _Optional[float] = ..., error_rate: _Optional[float] = ..., degraded_rate: _Optional[float] = ..., shadow_agreement: _Optional[float] = ..., online_metric: _Optional[float] = ..., labels: _Optional[int] = ...) -> None: ...

class SloCriterion(_message.Message):
    __slots__ = ("name", "observed", "threshold", "baseline_observed", "passed", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BASELINE_OBSERVED_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    observed: float
    threshold: float
    baseline_observed: float
    passed: bool
    detail: str
    def __init__(self, name: _Optional[str] = ..., observed: _Optional[float] = ..., threshold: _Optional[float] = ..., baseline_observed: _Optional[float] = ..., passed: bool = ..., detail: _Optional[str] = ...) -> None: ...

class SloEvaluation(_message.Message):
    __slots__ = ("verdict", "model", "version", "baseline_version", "window", "figures", "baseline_figures", "criteria", "reasons", "evaluate_time")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIGURES_FIELD_NUMBER: _ClassVar[int]
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_TIME_FIELD_NUMBER: _ClassVar[int]
    verdict: SloVerdict
    model: str
    version: int
    baseline_version: int
    window: TimeRange
    figures: SloFigures
    baseline_figures: SloFigures
    criteria: _containers.RepeatedCompositeFieldContainer[SloCriterion]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    evaluate_time: _timestamp_pb2.Timestamp
    def __init__(self, verdict: _Optional[_Union[SloVerdict, str]] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., baseline_version: _Optional[int] = ..., window: _Optional[_Union[TimeRange, _Mapping]] = ..., figures: _Optional[_Union[SloFigures, _Mapping]] = ..., baseline_figures: _Optional[_Union[SloFigures, _Mapping]] = ..., criteria: _Optional[_Iterable[_Union[SloCriterion, _Mapping]]] = ..., reasons: _Optional[_Iterable[str]] = ..., evaluate_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
