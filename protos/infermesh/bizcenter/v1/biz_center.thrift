// Thrift front of the infermesh business center, for legacy callers of its predict API.
//
// Same semantics as the gRPC service infermesh.bizcenter.v1.BizCenterService (biz_center.proto):
// the business center serves both from one core. Transport: buffered, binary protocol, unless the
// server is configured otherwise (client and server must agree). gRPC status codes map to the
// exceptions below: INVALID_ARGUMENT -> InvalidRequest; NOT_FOUND -> NotFound; UNAUTHENTICATED
// -> Unauthenticated; PERMISSION_DENIED -> PermissionDenied; RESOURCE_EXHAUSTED (rate limit or
// load shedding) -> RateLimited; UNAVAILABLE, DEADLINE_EXCEEDED -> Unavailable; anything else
// -> InternalError.
//
// Field ids are never reused or renumbered.

namespace py infermesh_bizcenter_thrift

/** A typed feature value. Exactly one field is set; none set means null (missing). */
union Value {
  /** A floating-point number. */
  1: double double_value
  /** A signed integer. */
  2: i64 int_value
  /** A string. */
  3: string string_value
  /** A boolean. */
  4: bool bool_value
}

/** Why an answer is degraded (same numbers as infermesh.common.v1.DegradationReason). */
enum DegradationReason {
  /** Not degraded, or unknown. */
  UNSPECIFIED = 0
  /** A downstream's circuit breaker was open. */
  CIRCUIT_OPEN = 1
  /** The deadline ran out before a downstream answered. */
  DEADLINE_EXCEEDED = 2
  /** A downstream call failed. */
  DOWNSTREAM_ERROR = 3
  /** The feature vector could not be obtained. */
  FEATURES_UNAVAILABLE = 4
  /** Some features came from a fallback source or a default. */
  FEATURES_FALLBACK = 5
  /** No serving replica of the routed model version. */
  MODEL_UNAVAILABLE = 6
  /** A downstream was overloaded. */
  DOWNSTREAM_OVERLOADED = 7
  /** Another reason; see degraded_detail. */
  OTHER = 8
}

/** Per-call options: credentials and deadline (gRPC callers send these as metadata and deadline). */
struct CallOptions {
  /** An API key. */
  1: optional string api_key
  /** A JWT bearer token. */
  2: optional string bearer_token
  /** Deadline of the whole call in milliseconds; absent uses the scene's SLO deadline. */
  3: optional i32 deadline_ms
  /** W3C trace context of the caller (https://www.w3.org/TR/trace-context/, e.g.
      "00-<32 hex trace id>-<16 hex span id>-01"): the call joins that trace. Absent or malformed
      starts a new trace (never an error). */
  4: optional string traceparent
}

/** A prediction request for one unit in one scene. */
struct PredictRequest {
  /** Scene name. */
  1: required string scene
  /** The unit the prediction is for (user, device, order...). */
  2: required string unit_id
  /** Values the caller knows (entity keys and request-time values), by name. */
  3: optional map<string, Value> features
  /** Attributes for gray-release rules (region, app version...). */
  4: optional map<string, string> attributes
  /** Request id for tracing; generated when absent. */
  5: optional string request_id
}

/** The answer to a PredictRequest. */
struct PredictResponse {
  /** Request id (echoed or generated). */
  1: required string request_id
  /** Scores by class label (or output name for regressors). */
  2: required map<string, double> scores
  /** The predicted label, when the scene maps one. */
  3: optional string label
  /** The experiment variant that chose the model; empty when none. */
  4: required string variant
  /** Model that served; empty for cached or rule-based answers. */
  5: required string model_name
  /** Model version that served; 0 for cached or rule-based answers. */
  6: required i64 model_version
  /** True when the answer is degraded (fallback, defaults, ...). */
  7: required bool degraded
  /** Why it is degraded. */
  8: required DegradationReason degraded_reason
  /** Human-readable detail of the degradation. */
  9: optional string degraded_detail
  /** Scene name. */
  10: required string scene
  /** Id of the trace this answer was recorded in (32 hex; `infermesh trace` shows it); absent when
      the call was not traced (tracing off, or not sampled). */
  11: optional string trace_id
}

/** Error codes of a failed batch item (one per exception type). */
enum ErrorCode {
  /** Not set. */
  UNSPECIFIED = 0
  /** See InvalidRequest. */
  INVALID_REQUEST = 1
  /** See NotFound. */
  NOT_FOUND = 2
  /** See Unauthenticated. */
  UNAUTHENTICATED = 3
  /** See PermissionDenied. */
  PERMISSION_DENIED = 4
  /** See RateLimited. */
  RATE_LIMITED = 5
  /** See Unavailable. */
  UNAVAILABLE = 6
  /** See InternalError. */
  INTERNAL_ERROR = 7
}

/** The error of one failed batch item. */
struct PredictError {
  /** What went wrong. */
  1: required ErrorCode code
  /** Human-readable message. */
  2: required string message
  /** For RATE_LIMITED: milliseconds to wait before retrying. */
  3: optional i64 retry_after_ms
}

/** Outcome of one batch item: exactly one field is set. */
union PredictResult {
  /** The item's answer. */
  1: PredictResponse response
  /** The item's error. */
  2: PredictError error
}

/** The request is malformed (bad scene name, feature value or attribute). */
exception InvalidRequest {
  /** What is wrong. */
  1: string message
  /** The offending field, e.g. "features.age". */
  2: optional string field_name
}

/** The scene (or a model it routes to) does not exist. */
exception NotFound {
  /** What was not found. */
  1: string message
}

/** No credentials, or credentials that are not valid. */
exception Unauthenticated {
  /** Why. */
  1: string message
}

/** Valid credentials that are not allowed to use this scene. */
exception PermissionDenied {
  /** Why. */
  1: string message
}

/** A rate limit or the scene's concurrency limit was exceeded. */
exception RateLimited {
  /** Which limit. */
  1: string message
  /** Milliseconds to wait before retrying. */
  2: i64 retry_after_ms
}

/** The service cannot answer now (no fallback left, deadline spent); retrying may succeed. */
exception Unavailable {
  /** Why. */
  1: string message
}

/** An unexpected server error; details are in the server's log. */
exception InternalError {
  /** A generic message. */
  1: string message
}

/** The business center's predict API. */
service BizCenter {
  /** Predicts for one unit in one scene. Without credentials in options: Unauthenticated. */
  PredictResponse predict(1: PredictRequest request, 2: CallOptions options)
    throws (1: InvalidRequest invalid_request, 2: NotFound not_found,
            3: Unauthenticated unauthenticated, 4: RateLimited rate_limited,
            5: Unavailable unavailable, 6: InternalError internal_error,
            7: PermissionDenied permission_denied)

  /**
   * Predicts for many units (any scenes); one result per item, in request order, each a
   * response or an error. Raises only when the whole call fails (e.g. bad credentials).
   */
  list<PredictResult> predictBatch(1: list<PredictRequest> requests, 2: CallOptions options)
    throws (1: InvalidRequest invalid_request, 2: Unauthenticated unauthenticated,
            3: RateLimited rate_limited, 4: Unavailable unavailable,
            5: InternalError internal_error, 6: PermissionDenied permission_denied)
}
