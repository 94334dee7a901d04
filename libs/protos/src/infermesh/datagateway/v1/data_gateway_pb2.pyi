from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from infermesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_STATUS_UNSPECIFIED: _ClassVar[FeatureStatus]
    FEATURE_STATUS_OK: _ClassVar[FeatureStatus]
    FEATURE_STATUS_FALLBACK: _ClassVar[FeatureStatus]
    FEATURE_STATUS_DEFAULT: _ClassVar[FeatureStatus]
    FEATURE_STATUS_MISSING: _ClassVar[FeatureStatus]

class BatchEngine(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_ENGINE_UNSPECIFIED: _ClassVar[BatchEngine]
    BATCH_ENGINE_LOCAL: _ClassVar[BatchEngine]
    BATCH_ENGINE_SPARK: _ClassVar[BatchEngine]

class SourceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_KIND_UNSPECIFIED: _ClassVar[SourceKind]
    SOURCE_KIND_REDIS: _ClassVar[SourceKind]
    SOURCE_KIND_SQL: _ClassVar[SourceKind]
    SOURCE_KIND_FILE: _ClassVar[SourceKind]
    SOURCE_KIND_HTTP: _ClassVar[SourceKind]
    SOURCE_KIND_REQUEST: _ClassVar[SourceKind]

class SourceHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_HEALTH_UNSPECIFIED: _ClassVar[SourceHealth]
    SOURCE_HEALTH_HEALTHY: _ClassVar[SourceHealth]
    SOURCE_HEALTH_DEGRADED: _ClassVar[SourceHealth]
    SOURCE_HEALTH_UNHEALTHY: _ClassVar[SourceHealth]

class TrainingSetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_SET_FORMAT_UNSPECIFIED: _ClassVar[TrainingSetFormat]
    TRAINING_SET_FORMAT_ARROW_IPC: _ClassVar[TrainingSetFormat]
    TRAINING_SET_FORMAT_ROWS: _ClassVar[TrainingSetFormat]
FEATURE_STATUS_UNSPECIFIED: FeatureStatus
FEATURE_STATUS_OK: FeatureStatus
FEATURE_STATUS_FALLBACK: FeatureStatus
FEATURE_STATUS_DEFAULT: FeatureStatus
FEATURE_STATUS_MISSING: FeatureStatus
BATCH_ENGINE_UNSPECIFIED: BatchEngine
BATCH_ENGINE_LOCAL: BatchEngine
BATCH_ENGINE_SPARK: BatchEngine
SOURCE_KIND_UNSPECIFIED: SourceKind
SOURCE_KIND_REDIS: SourceKind
SOURCE_KIND_SQL: SourceKind
SOURCE_KIND_FILE: SourceKind
SOURCE_KIND_HTTP: SourceKind
SOURCE_KIND_REQUEST: SourceKind
SOURCE_HEALTH_UNSPECIFIED: SourceHealth
SOURCE_HEALTH_HEALTHY: SourceHealth
SOURCE_HEALTH_DEGRADED: SourceHealth
SOURCE_HEALTH_UNHEALTHY: SourceHealth
TRAINING_SET_FORMAT_UNSPECIFIED: TrainingSetFormat
TRAINING_SET_FORMAT_ARROW_IPC: TrainingSetFormat
TRAINING_SET_FORMAT_ROWS: TrainingSetFormat

class FeatureField(_message.Message):
    __slots__ = ("name", "dtype", "shape", "feature_view")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VIEW_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    feature_view: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., feature_view: _Optional[str] = ...) -> None: ...

class EntityRow(_message.Message):
    __slots__ = ("keys", "request_values")
    class KeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    class RequestValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    KEYS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_VALUES_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.MessageMap[str, _common_pb2.Value]
    request_values: _containers.MessageMap[str, _common_pb2.Value]
    def __init__(self, keys: _Optional[_Mapping[str, _common_pb2.Value]] = ..., request_values: _Optional[_Mapping[str, _common_pb2.Value]] = ...) -> None: ...

class FeatureRow(_message.Message):
    __slots__ = ("values", "statuses", "lineage")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[_common_pb2.Value]
    statuses: _containers.RepeatedScalarFieldContainer[FeatureStatus]
    lineage: _common_pb2.FeatureLineage
    def __init__(self, values: _Optional[_Iterable[_Union[_common_pb2.Value, _Mapping]]] = ..., statuses: _Optional[_Iterable[_Union[FeatureStatus, str]]] = ..., lineage: _Optional[_Union[_common_pb2.FeatureLineage, _Mapping]] = ...) -> None: ...

class GetFeaturesRequest(_message.Message):
    __slots__ = ("feature_service", "definition_version", "entities", "routing_attributes")
    class RoutingAttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    ROUTING_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    definition_version: str
    entities: _containers.RepeatedCompositeFieldContainer[EntityRow]
    routing_attributes: _containers.ScalarMap[str, str]
    def __init__(self, feature_service: _Optional[str] = ..., definition_version: _Optional[str] = ..., entities: _Optional[_Iterable[_Union[EntityRow, _Mapping]]] = ..., routing_attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetFeaturesResponse(_message.Message):
    __slots__ = ("feature_service", "definition_version", "fields", "rows")
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    definition_version: str
    fields: _containers.RepeatedCompositeFieldContainer[FeatureField]
    rows: _containers.RepeatedCompositeFieldContainer[FeatureRow]
    def __init__(self, feature_service: _Optional[str] = ..., definition_version: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[FeatureField, _Mapping]]] = ..., rows: _Optional[_Iterable[_Union[FeatureRow, _Mapping]]] = ...) -> None: ...

class FeatureServiceSummary(_message.Message):
    __slots__ = ("name", "definition_version", "description", "owner", "feature_count", "entities")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    FEATURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    definition_version: str
    description: str
    owner: str
    feature_count: int
    entities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., definition_version: _Optional[str] = ..., description: _Optional[str] = ..., owner: _Optional[str] = ..., feature_count: _Optional[int] = ..., entities: _Optional[_Iterable[str]] = ...) -> None: ...

class EntityKey(_message.Message):
    __slots__ = ("name", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

class EntityDefinition(_message.Message):
    __slots__ = ("name", "keys", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    keys: _containers.RepeatedCompositeFieldContainer[EntityKey]
    description: str
    def __init__(self, name: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[EntityKey, _Mapping]]] = ..., description: _Optional[str] = ...) -> None: ...

class RequestValueDefinition(_message.Message):
    __slots__ = ("name", "dtype", "required")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    required: bool
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., required: bool = ...) -> None: ...

class FeatureDefinition(_message.Message):
    __slots__ = ("name", "dtype", "shape", "feature_view", "transform", "default_value", "allow_missing", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VIEW_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    feature_view: str
    transform: str
    default_value: _common_pb2.Value
    allow_missing: bool
    description: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., feature_view: _Optional[str] = ..., transform: _Optional[str] = ..., default_value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ..., allow_missing: bool = ..., description: _Optional[str] = ...) -> None: ...

class FeatureViewDefinition(_message.Message):
    __slots__ = ("name", "entities", "source", "fallback_sources", "ttl", "fields", "owner", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_SOURCES_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    entities: _containers.RepeatedScalarFieldContainer[str]
    source: str
    fallback_sources: _containers.RepeatedScalarFieldContainer[str]
    ttl: _duration_pb2.Duration
    fields: _containers.RepeatedScalarFieldContainer[str]
    owner: str
    description: str
    def __init__(self, name: _Optional[str] = ..., entities: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ..., fallback_sources: _Optional[_Iterable[str]] = ..., ttl: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., fields: _Optional[_Iterable[str]] = ..., owner: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class SourceDefinition(_message.Message):
    __slots__ = ("name", "kind", "timeout", "health")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: SourceKind
    timeout: _duration_pb2.Duration
    health: SourceHealth
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[SourceKind, str]] = ..., timeout: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., health: _Optional[_Union[SourceHealth, str]] = ...) -> None: ...

class FeatureServiceDescription(_message.Message):
    __slots__ = ("name", "definition_version", "description", "owner", "entities", "request_values", "features", "views", "sources", "definition_file")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_VALUES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FILE_FIELD_NUMBER: _ClassVar[int]
    name: str
    definition_version: str
    description: str
    owner: str
    entities: _containers.RepeatedCompositeFieldContainer[EntityDefinition]
    request_values: _containers.RepeatedCompositeFieldContainer[RequestValueDefinition]
    features: _containers.RepeatedCompositeFieldContainer[FeatureDefinition]
    views: _containers.RepeatedCompositeFieldContainer[FeatureViewDefinition]
    sources: _containers.RepeatedCompositeFieldContainer[SourceDefinition]
    definition_file: str
    def __init__(self, name: _Optional[str] = ..., definition_version: _Optional[str] = ..., description: _Optional[str] = ..., owner: _Optional[str] = ..., entities: _Optional[_Iterable[_Union[EntityDefinition, _Mapping]]] = ..., request_values: _Optional[_Iterable[_Union[RequestValueDefinition, _Mapping]]] = ..., features: _Optional[_Iterable[_Union[FeatureDefinition, _Mapping]]] = ..., views: _Optional[_Iterable[_Union[FeatureViewDefinition, _Mapping]]] = ..., sources: _Optional[_Iterable[_Union[SourceDefinition, _Mapping]]] = ..., definition_file: _Optional[str] = ...) -> None: ...

class ListFeatureServicesRequest(_message.Message):
    __slots__ = ("page", "name_prefix")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    page: _common_pb2.PageRequest
    name_prefix: str
    def __init__(self, page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ..., name_prefix: _Optional[str] = ...) -> None: ...

class ListFeatureServicesResponse(_message.Message):
    __slots__ = ("feature_services", "page")
    FEATURE_SERVICES_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    feature_services: _containers.RepeatedCompositeFieldContainer[FeatureServiceSummary]
    page: _common_pb2.PageResponse
    def __init__(self, feature_services: _Optional[_Iterable[_Union[FeatureServiceSummary, _Mapping]]] = ..., page: _Optional[_Union[_common_pb2.PageResponse, _Mapping]] = ...) -> None: ...

class DescribeFeatureServiceRequest(_message.Message):
    __slots__ = ("name", "definition_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    definition_version: str
    def __init__(self, name: _Optional[str] = ..., definition_version: _Optional[str] = ...) -> None: ...

class DescribeFeatureServiceResponse(_message.Message):
    __slots__ = ("feature_service",)
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    feature_service: FeatureServiceDescription
    def __init__(self, feature_service: _Optional[_Union[FeatureServiceDescription, _Mapping]] = ...) -> None: ...

class PushRow(_message.Message):
    __slots__ = ("keys", "values", "event_time")
    class KeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.MessageMap[str, _common_pb2.Value]
    values: _containers.MessageMap[str, _common_pb2.Value]
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, keys: _Optional[_Mapping[str, _common_pb2.Value]] = ..., values: _Optional[_Mapping[str, _common_pb2.Value]] = ..., event_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PushFeaturesRequest(_message.Message):
    __slots__ = ("feature_view", "rows")
    FEATURE_VIEW_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    feature_view: str
    rows: _containers.RepeatedCompositeFieldContainer[PushRow]
    def __init__(self, feature_view: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[PushRow, _Mapping]]] = ...) -> None: ...

class PushFeaturesResponse(_message.Message):
    __slots__ = ("rows_written", "rows_skipped")
    ROWS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    ROWS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    rows_written: int
    rows_skipped: int
    def __init__(self, rows_written: _Optional[int] = ..., rows_skipped: _Optional[int] = ...) -> None: ...

class TrainingEntityRow(_message.Message):
    __slots__ = ("keys", "event_time", "request_values", "passthrough")
    class KeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    class RequestValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    class PassthroughEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    KEYS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_VALUES_FIELD_NUMBER: _ClassVar[int]
    PASSTHROUGH_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.MessageMap[str, _common_pb2.Value]
    event_time: _timestamp_pb2.Timestamp
    request_values: _containers.MessageMap[str, _common_pb2.Value]
    passthrough: _containers.MessageMap[str, _common_pb2.Value]
    def __init__(self, keys: _Optional[_Mapping[str, _common_pb2.Value]] = ..., event_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., request_values: _Optional[_Mapping[str, _common_pb2.Value]] = ..., passthrough: _Optional[_Mapping[str, _common_pb2.Value]] = ...) -> None: ...

class TrainingEntityRows(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[TrainingEntityRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[TrainingEntityRow, _Mapping]]] = ...) -> None: ...

class GetTrainingSetRequest(_message.Message):
    __slots__ = ("feature_service", "definition_version", "rows", "arrow_ipc", "uri", "format", "chunk_rows", "engine")
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ARROW_IPC_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ROWS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    definition_version: str
    rows: TrainingEntityRows
    arrow_ipc: bytes
    uri: str
    format: TrainingSetFormat
    chunk_rows: int
    engine: BatchEngine
    def __init__(self, feature_service: _Optional[str] = ..., definition_version: _Optional[str] = ..., rows: _Optional[_Union[TrainingEntityRows, _Mapping]] = ..., arrow_ipc: _Optional[bytes] = ..., uri: _Optional[str] = ..., format: _Optional[_Union[TrainingSetFormat, str]] = ..., chunk_rows: _Optional[int] = ..., engine: _Optional[_Union[BatchEngine, str]] = ...) -> None: ...

class TrainingRow(_message.Message):
    __slots__ = ("keys", "event_time", "values", "statuses", "passthrough")
    class KeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    class PassthroughEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    KEYS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    PASSTHROUGH_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.MessageMap[str, _common_pb2.Value]
    event_time: _timestamp_pb2.Timestamp
    values: _containers.RepeatedCompositeFieldContainer[_common_pb2.Value]
    statuses: _containers.RepeatedScalarFieldContainer[FeatureStatus]
    passthrough: _containers.MessageMap[str, _common_pb2.Value]
    def __init__(self, keys: _Optional[_Mapping[str, _common_pb2.Value]] = ..., event_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., values: _Optional[_Iterable[_Union[_common_pb2.Value, _Mapping]]] = ..., statuses: _Optional[_Iterable[_Union[FeatureStatus, str]]] = ..., passthrough: _Optional[_Mapping[str, _common_pb2.Value]] = ...) -> None: ...

class TrainingRows(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[TrainingRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[TrainingRow, _Mapping]]] = ...) -> None: ...

class GetTrainingSetResponse(_message.Message):
    __slots__ = ("chunk_index", "feature_service", "definition_version", "fields", "arrow_ipc", "rows", "row_count", "last")
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ARROW_IPC_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    feature_service: str
    definition_version: str
    fields: _containers.RepeatedCompositeFieldContainer[FeatureField]
    arrow_ipc: bytes
    rows: TrainingRows
    row_count: int
    last: bool
    def __init__(self, chunk_index: _Optional[int] = ..., feature_service: _Optional[str] = ..., definition_version: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[FeatureField, _Mapping]]] = ..., arrow_ipc: _Optional[bytes] = ..., rows: _Optional[_Union[TrainingRows, _Mapping]] = ..., row_count: _Optional[int] = ..., last: bool = ...) -> None: ...

class MaterializeFeatureViewRequest(_message.Message):
    __slots__ = ("feature_view", "start_time", "end_time", "incremental", "engine", "actor")
    FEATURE_VIEW_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    INCREMENTAL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    feature_view: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    incremental: bool
    engine: BatchEngine
    actor: str
    def __init__(self, feature_view: _Optional[str] = ..., start_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., incremental: bool = ..., engine: _Optional[_Union[BatchEngine, str]] = ..., actor: _Optional[str] = ...) -> None: ...

class MaterializeFeatureViewResponse(_message.Message):
    __slots__ = ("feature_view", "rows_written", "range", "watermark", "elapsed")
    FEATURE_VIEW_FIELD_NUMBER: _ClassVar[int]
    ROWS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    feature_view: str
    rows_written: int
    range: _common_pb2.TimeRange
    watermark: _timestamp_pb2.Timestamp
    elapsed: _duration_pb2.Duration
    def __init__(self, feature_view: _Optional[str] = ..., rows_written: _Optional[int] = ..., range: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., watermark: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., elapsed: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...
