from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from infermesh.common.v1 import common_pb2 as _common_pb2
from infermesh.common.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatsWindow(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATS_WINDOW_UNSPECIFIED: _ClassVar[StatsWindow]
    STATS_WINDOW_1M: _ClassVar[StatsWindow]
    STATS_WINDOW_5M: _ClassVar[StatsWindow]
    STATS_WINDOW_1H: _ClassVar[StatsWindow]

class StatsDimension(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATS_DIMENSION_UNSPECIFIED: _ClassVar[StatsDimension]
    STATS_DIMENSION_SCENE: _ClassVar[StatsDimension]
    STATS_DIMENSION_VARIANT: _ClassVar[StatsDimension]
    STATS_DIMENSION_MODEL: _ClassVar[StatsDimension]
    STATS_DIMENSION_MODEL_VERSION: _ClassVar[StatsDimension]
    STATS_DIMENSION_SOURCE_SERVICE: _ClassVar[StatsDimension]
    STATS_DIMENSION_WORKER: _ClassVar[StatsDimension]

class DriftLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRIFT_LEVEL_UNSPECIFIED: _ClassVar[DriftLevel]
    DRIFT_LEVEL_NONE: _ClassVar[DriftLevel]
    DRIFT_LEVEL_MODERATE: _ClassVar[DriftLevel]
    DRIFT_LEVEL_SIGNIFICANT: _ClassVar[DriftLevel]

class SpanKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPAN_KIND_UNSPECIFIED: _ClassVar[SpanKind]
    SPAN_KIND_INTERNAL: _ClassVar[SpanKind]
    SPAN_KIND_SERVER: _ClassVar[SpanKind]
    SPAN_KIND_CLIENT: _ClassVar[SpanKind]
    SPAN_KIND_PRODUCER: _ClassVar[SpanKind]
    SPAN_KIND_CONSUMER: _ClassVar[SpanKind]

class SpanStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPAN_STATUS_UNSET: _ClassVar[SpanStatus]
    SPAN_STATUS_OK: _ClassVar[SpanStatus]
    SPAN_STATUS_ERROR: _ClassVar[SpanStatus]
STATS_WINDOW_UNSPECIFIED: StatsWindow
STATS_WINDOW_1M: StatsWindow
STATS_WINDOW_5M: StatsWindow
STATS_WINDOW_1H: StatsWindow
STATS_DIMENSION_UNSPECIFIED: StatsDimension
STATS_DIMENSION_SCENE: StatsDimension
STATS_DIMENSION_VARIANT: StatsDimension
STATS_DIMENSION_MODEL: StatsDimension
STATS_DIMENSION_MODEL_VERSION: StatsDimension
STATS_DIMENSION_SOURCE_SERVICE: StatsDimension
STATS_DIMENSION_WORKER: StatsDimension
DRIFT_LEVEL_UNSPECIFIED: DriftLevel
DRIFT_LEVEL_NONE: DriftLevel
DRIFT_LEVEL_MODERATE: DriftLevel
DRIFT_LEVEL_SIGNIFICANT: DriftLevel
SPAN_KIND_UNSPECIFIED: SpanKind
SPAN_KIND_INTERNAL: SpanKind
SPAN_KIND_SERVER: SpanKind
SPAN_KIND_CLIENT: SpanKind
SPAN_KIND_PRODUCER: SpanKind
SPAN_KIND_CONSUMER: SpanKind
SPAN_STATUS_UNSET: SpanStatus
SPAN_STATUS_OK: SpanStatus
SPAN_STATUS_ERROR: SpanStatus

class ReportEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ...) -> None: ...

class ReportEventsResponse(_message.Message):
    __slots__ = ("accepted", "duplicates", "rejected_event_ids")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    rejected_event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected_event_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("events", "sequence")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    sequence: int
    def __init__(self, events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ..., sequence: _Optional[int] = ...) -> None: ...

class StreamEventsResponse(_message.Message):
    __slots__ = ("accepted", "duplicates", "rejected_event_ids", "last_sequence")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    rejected_event_ids: _containers.RepeatedScalarFieldContainer[str]
    last_sequence: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected_event_ids: _Optional[_Iterable[str]] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class StatsFilter(_message.Message):
    __slots__ = ("scene", "variant", "model", "model_version", "source_service")
    SCENE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    scene: str
    variant: str
    model: str
    model_version: int
    source_service: str
    def __init__(self, scene: _Optional[str] = ..., variant: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., source_service: _Optional[str] = ...) -> None: ...

class QueryStatsRequest(_message.Message):
    __slots__ = ("window", "group_by", "filter", "end_time")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    window: StatsWindow
    group_by: _containers.RepeatedScalarFieldContainer[StatsDimension]
    filter: StatsFilter
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, window: _Optional[_Union[StatsWindow, str]] = ..., group_by: _Optional[_Iterable[_Union[StatsDimension, str]]] = ..., filter: _Optional[_Union[StatsFilter, _Mapping]] = ..., end_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StatsGroup(_message.Message):
    __slots__ = ("scene", "variant", "model", "model_version", "source_service", "worker")
    SCENE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    scene: str
    variant: str
    model: str
    model_version: int
    source_service: str
    worker: str
    def __init__(self, scene: _Optional[str] = ..., variant: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., source_service: _Optional[str] = ..., worker: _Optional[str] = ...) -> None: ...

class StatsRow(_message.Message):
    __slots__ = ("group", "count", "throughput_rps", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "mean_latency_ms", "error_rate", "degraded_rate", "error_count", "degraded_count")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_RPS_FIELD_NUMBER: _ClassVar[int]
    P50_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P95_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P99_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_RATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_COUNT_FIELD_NUMBER: _ClassVar[int]
    group: StatsGroup
    count: int
    throughput_rps: float
    p50_latency_ms: float
    p95_latency_ms: float
    p99_latency_ms: float
    mean_latency_ms: float
    error_rate: float
    degraded_rate: float
    error_count: int
    degraded_count: int
    def __init__(self, group: _Optional[_Union[StatsGroup, _Mapping]] = ..., count: _Optional[int] = ..., throughput_rps: _Optional[float] = ..., p50_latency_ms: _Optional[float] = ..., p95_latency_ms: _Optional[float] = ..., p99_latency_ms: _Optional[float] = ..., mean_latency_ms: _Optional[float] = ..., error_rate: _Optional[float] = ..., degraded_rate: _Optional[float] = ..., error_count: _Optional[int] = ..., degraded_count: _Optional[int] = ...) -> None: ...

class QueryStatsResponse(_message.Message):
    __slots__ = ("window", "rows")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    window: _common_pb2.TimeRange
    rows: _containers.RepeatedCompositeFieldContainer[StatsRow]
    def __init__(self, window: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., rows: _Optional[_Iterable[_Union[StatsRow, _Mapping]]] = ...) -> None: ...

class Feedback(_message.Message):
    __slots__ = ("request_id", "unit_id", "scene", "label_name", "label", "label_time")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    unit_id: str
    scene: str
    label_name: str
    label: _common_pb2.Value
    label_time: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., unit_id: _Optional[str] = ..., scene: _Optional[str] = ..., label_name: _Optional[str] = ..., label: _Optional[_Union[_common_pb2.Value, _Mapping]] = ..., label_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportFeedbackRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Feedback]
    def __init__(self, items: _Optional[_Iterable[_Union[Feedback, _Mapping]]] = ...) -> None: ...

class ReportFeedbackResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class DriftBaseline(_message.Message):
    __slots__ = ("baseline_id", "window")
    BASELINE_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    baseline_id: str
    window: _common_pb2.TimeRange
    def __init__(self, baseline_id: _Optional[str] = ..., window: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ...) -> None: ...

class HistogramBin(_message.Message):
    __slots__ = ("lower", "upper", "category", "baseline_fraction", "current_fraction")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    lower: float
    upper: float
    category: str
    baseline_fraction: float
    current_fraction: float
    def __init__(self, lower: _Optional[float] = ..., upper: _Optional[float] = ..., category: _Optional[str] = ..., baseline_fraction: _Optional[float] = ..., current_fraction: _Optional[float] = ...) -> None: ...

class DriftEntry(_message.Message):
    __slots__ = ("name", "psi", "level", "baseline_count", "current_count", "bins")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    BASELINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    name: str
    psi: float
    level: DriftLevel
    baseline_count: int
    current_count: int
    bins: _containers.RepeatedCompositeFieldContainer[HistogramBin]
    def __init__(self, name: _Optional[str] = ..., psi: _Optional[float] = ..., level: _Optional[_Union[DriftLevel, str]] = ..., baseline_count: _Optional[int] = ..., current_count: _Optional[int] = ..., bins: _Optional[_Iterable[_Union[HistogramBin, _Mapping]]] = ...) -> None: ...

class GetDriftReportRequest(_message.Message):
    __slots__ = ("model", "model_version", "window", "baseline", "features", "bins")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    window: _common_pb2.TimeRange
    baseline: DriftBaseline
    features: _containers.RepeatedScalarFieldContainer[str]
    bins: int
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ..., window: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., baseline: _Optional[_Union[DriftBaseline, _Mapping]] = ..., features: _Optional[_Iterable[str]] = ..., bins: _Optional[int] = ...) -> None: ...

class GetDriftReportResponse(_message.Message):
    __slots__ = ("model", "model_version", "window", "baseline_description", "features", "predictions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    BASELINE_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    window: _common_pb2.TimeRange
    baseline_description: str
    features: _containers.RepeatedCompositeFieldContainer[DriftEntry]
    predictions: _containers.RepeatedCompositeFieldContainer[DriftEntry]
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ..., window: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., baseline_description: _Optional[str] = ..., features: _Optional[_Iterable[_Union[DriftEntry, _Mapping]]] = ..., predictions: _Optional[_Iterable[_Union[DriftEntry, _Mapping]]] = ...) -> None: ...

class ShadowComparison(_message.Message):
    __slots__ = ("model", "primary_version", "shadow_version", "pairs", "shadow_errors", "agreement_rate", "mean_abs_score_diff", "max_abs_score_diff", "mean_latency_delta_ms", "p99_latency_delta_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ERRORS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_RATE_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABS_SCORE_DIFF_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_SCORE_DIFF_FIELD_NUMBER: _ClassVar[int]
    MEAN_LATENCY_DELTA_MS_FIELD_NUMBER: _ClassVar[int]
    P99_LATENCY_DELTA_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    primary_version: int
    shadow_version: int
    pairs: int
    shadow_errors: int
    agreement_rate: float
    mean_abs_score_diff: float
    max_abs_score_diff: float
    mean_latency_delta_ms: float
    p99_latency_delta_ms: float
    def __init__(self, model: _Optional[str] = ..., primary_version: _Optional[int] = ..., shadow_version: _Optional[int] = ..., pairs: _Optional[int] = ..., shadow_errors: _Optional[int] = ..., agreement_rate: _Optional[float] = ..., mean_abs_score_diff: _Optional[float] = ..., max_abs_score_diff: _Optional[float] = ..., mean_latency_delta_ms: _Optional[float] = ..., p99_latency_delta_ms: _Optional[float] = ...) -> None: ...

class GetShadowReportRequest(_message.Message):
    __slots__ = ("model", "primary_version", "shadow_version", "window", "score_tolerance")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SCORE_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    model: str
    primary_version: int
    shadow_version: int
    window: _common_pb2.TimeRange
    score_tolerance: float
    def __init__(self, model: _Optional[str] = ..., primary_version: _Optional[int] = ..., shadow_version: _Optional[int] = ..., window: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., score_tolerance: _Optional[float] = ...) -> None: ...

class GetShadowReportResponse(_message.Message):
    __slots__ = ("window", "comparisons")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    window: _common_pb2.TimeRange
    comparisons: _containers.RepeatedCompositeFieldContainer[ShadowComparison]
    def __init__(self, window: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., comparisons: _Optional[_Iterable[_Union[ShadowComparison, _Mapping]]] = ...) -> None: ...

class VariantResult(_message.Message):
    __slots__ = ("variant", "control", "units", "predictions", "labelled", "value", "ci_lower", "ci_upper", "delta", "delta_ci_lower", "delta_ci_upper", "p_value", "significant", "p99_latency_ms", "error_rate")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CI_LOWER_FIELD_NUMBER: _ClassVar[int]
    CI_UPPER_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DELTA_CI_LOWER_FIELD_NUMBER: _ClassVar[int]
    DELTA_CI_UPPER_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    SIGNIFICANT_FIELD_NUMBER: _ClassVar[int]
    P99_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    variant: str
    control: bool
    units: int
    predictions: int
    labelled: int
    value: float
    ci_lower: float
    ci_upper: float
    delta: float
    delta_ci_lower: float
    delta_ci_upper: float
    p_value: float
    significant: bool
    p99_latency_ms: float
    error_rate: float
    def __init__(self, variant: _Optional[str] = ..., control: bool = ..., units: _Optional[int] = ..., predictions: _Optional[int] = ..., labelled: _Optional[int] = ..., value: _Optional[float] = ..., ci_lower: _Optional[float] = ..., ci_upper: _Optional[float] = ..., delta: _Optional[float] = ..., delta_ci_lower: _Optional[float] = ..., delta_ci_upper: _Optional[float] = ..., p_value: _Optional[float] = ..., significant: bool = ..., p99_latency_ms: _Optional[float] = ..., error_rate: _Optional[float] = ...) -> None: ...

class MetricReport(_message.Message):
    __slots__ = ("metric", "layer", "test", "variants")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    layer: str
    test: str
    variants: _containers.RepeatedCompositeFieldContainer[VariantResult]
    def __init__(self, metric: _Optional[str] = ..., layer: _Optional[str] = ..., test: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[VariantResult, _Mapping]]] = ...) -> None: ...

class GetExperimentReportRequest(_message.Message):
    __slots__ = ("experiment", "layer", "window", "metrics", "label_name", "confidence_level", "control_variant")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    CONTROL_VARIANT_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    layer: str
    window: _common_pb2.TimeRange
    metrics: _containers.RepeatedScalarFieldContainer[str]
    label_name: str
    confidence_level: float
    control_variant: str
    def __init__(self, experiment: _Optional[str] = ..., layer: _Optional[str] = ..., window: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., metrics: _Optional[_Iterable[str]] = ..., label_name: _Optional[str] = ..., confidence_level: _Optional[float] = ..., control_variant: _Optional[str] = ...) -> None: ...

class GetExperimentReportResponse(_message.Message):
    __slots__ = ("experiment", "window", "confidence_level", "reports")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    window: _common_pb2.TimeRange
    confidence_level: float
    reports: _containers.RepeatedCompositeFieldContainer[MetricReport]
    def __init__(self, experiment: _Optional[str] = ..., window: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., confidence_level: _Optional[float] = ..., reports: _Optional[_Iterable[_Union[MetricReport, _Mapping]]] = ...) -> None: ...

class CheckSloRequest(_message.Message):
    __slots__ = ("model", "model_version", "baseline_version", "window", "min_requests", "thresholds", "end_time", "source_service")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    baseline_version: int
    window: _duration_pb2.Duration
    min_requests: int
    thresholds: _common_pb2.SloThresholds
    end_time: _timestamp_pb2.Timestamp
    source_service: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ..., baseline_version: _Optional[int] = ..., window: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., min_requests: _Optional[int] = ..., thresholds: _Optional[_Union[_common_pb2.SloThresholds, _Mapping]] = ..., end_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., source_service: _Optional[str] = ...) -> None: ...

class CheckSloResponse(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: _common_pb2.SloEvaluation
    def __init__(self, evaluation: _Optional[_Union[_common_pb2.SloEvaluation, _Mapping]] = ...) -> None: ...

class FeatureSamples(_message.Message):
    __slots__ = ("name", "numeric", "categorical")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    numeric: _common_pb2.DoubleList
    categorical: _common_pb2.StringList
    def __init__(self, name: _Optional[str] = ..., numeric: _Optional[_Union[_common_pb2.DoubleList, _Mapping]] = ..., categorical: _Optional[_Union[_common_pb2.StringList, _Mapping]] = ...) -> None: ...

class BaselineSamples(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureSamples]
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureSamples, _Mapping]]] = ...) -> None: ...

class RegisterBaselineRequest(_message.Message):
    __slots__ = ("model", "model_version", "baseline_id", "uri", "samples", "window", "sha256", "description")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    baseline_id: str
    uri: str
    samples: BaselineSamples
    window: _common_pb2.TimeRange
    sha256: str
    description: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ..., baseline_id: _Optional[str] = ..., uri: _Optional[str] = ..., samples: _Optional[_Union[BaselineSamples, _Mapping]] = ..., window: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., sha256: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class RegisterBaselineResponse(_message.Message):
    __slots__ = ("baseline_id", "sample_counts")
    class SampleCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BASELINE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    baseline_id: str
    sample_counts: _containers.ScalarMap[str, int]
    def __init__(self, baseline_id: _Optional[str] = ..., sample_counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetTraceRequest(_message.Message):
    __slots__ = ("trace_id", "request_id")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    request_id: str
    def __init__(self, trace_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class TraceSpan(_message.Message):
    __slots__ = ("trace_id", "span_id", "parent_span_id", "service", "name", "kind", "start", "duration_ms", "status", "status_message", "request_id", "degraded", "fallback", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    name: str
    kind: SpanKind
    start: _timestamp_pb2.Timestamp
    duration_ms: float
    status: SpanStatus
    status_message: str
    request_id: str
    degraded: bool
    fallback: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., parent_span_id: _Optional[str] = ..., service: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[_Union[SpanKind, str]] = ..., start: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., duration_ms: _Optional[float] = ..., status: _Optional[_Union[SpanStatus, str]] = ..., status_message: _Optional[str] = ..., request_id: _Optional[str] = ..., degraded: bool = ..., fallback: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetTraceResponse(_message.Message):
    __slots__ = ("trace_id", "spans", "events")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    spans: _containers.RepeatedCompositeFieldContainer[TraceSpan]
    events: _containers.RepeatedCompositeFieldContainer[TraceEvent]
    def __init__(self, trace_id: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[TraceSpan, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[TraceEvent, _Mapping]]] = ...) -> None: ...

class TraceEvent(_message.Message):
    __slots__ = ("event_id", "kind", "service", "time", "span_id", "request_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    kind: str
    service: str
    time: _timestamp_pb2.Timestamp
    span_id: str
    request_id: str
    def __init__(self, event_id: _Optional[str] = ..., kind: _Optional[str] = ..., service: _Optional[str] = ..., time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., span_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListTracesRequest(_message.Message):
    __slots__ = ("scene", "since", "limit")
    SCENE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    scene: str
    since: _duration_pb2.Duration
    limit: int
    def __init__(self, scene: _Optional[str] = ..., since: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class TraceSummary(_message.Message):
    __slots__ = ("trace_id", "request_id", "scene", "root_service", "root_name", "start", "duration_ms", "spans", "error", "degraded")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    ROOT_SERVICE_FIELD_NUMBER: _ClassVar[int]
    ROOT_NAME_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    request_id: str
    scene: str
    root_service: str
    root_name: str
    start: _timestamp_pb2.Timestamp
    duration_ms: float
    spans: int
    error: bool
    degraded: bool
    def __init__(self, trace_id: _Optional[str] = ..., request_id: _Optional[str] = ..., scene: _Optional[str] = ..., root_service: _Optional[str] = ..., root_name: _Optional[str] = ..., start: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., duration_ms: _Optional[float] = ..., spans: _Optional[int] = ..., error: bool = ..., degraded: bool = ...) -> None: ...

class ListTracesResponse(_message.Message):
    __slots__ = ("traces",)
    TRACES_FIELD_NUMBER: _ClassVar[int]
    traces: _containers.RepeatedCompositeFieldContainer[TraceSummary]
    def __init__(self, traces: _Optional[_Iterable[_Union[TraceSummary, _Mapping]]] = ...) -> None: ...
