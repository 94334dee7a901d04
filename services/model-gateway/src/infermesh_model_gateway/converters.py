"""Protobuf ↔ domain conversions for the control plane (protobuf stays at the edge).

Incoming messages are validated here as they are converted: a missing or malformed field is
INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from string import hexdigits

import numpy as np
from google.protobuf import json_format, timestamp_pb2

from infermesh.common.v1 import common_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_chassis.errors import InvalidArgument
from infermesh_model_gateway.domain import (
    DEFAULT_QUEUE_DELAY_US,
    MAX_QUEUE_DELAY_US,
    AuditRecord,
    DeploymentConfig,
    DriftBaseline,
    Mirror,
    ModelFormat,
    ModelRecord,
    ModelVersionRecord,
    Replica,
    ReplicaState,
    Rollout,
    RolloutState,
    RolloutStep,
    SampleTensor,
    TensorSchema,
    TrafficPolicy,
    VersionState,
    WarmupSample,
    queue_delay_text,
    validate_model_name,
)
from infermesh_model_gateway.runtimes import NUMPY_TYPES, infer_serialization

__all__ = [
    "audit_to_proto",
    "model_to_proto",
    "rollout_states_from_proto",
    "rollout_to_proto",
    "state_from_proto",
    "steps_from_proto",
    "traffic_from_proto",
    "traffic_to_proto",
    "version_from_register",
    "version_to_proto",
]

_FORMATS = {
    pb.MODEL_FORMAT_ONNX: ModelFormat.ONNX,
    pb.MODEL_FORMAT_SKLEARN: ModelFormat.SKLEARN,
    pb.MODEL_FORMAT_XGBOOST: ModelFormat.XGBOOST,
    pb.MODEL_FORMAT_LIGHTGBM: ModelFormat.LIGHTGBM,
    pb.MODEL_FORMAT_PMML: ModelFormat.PMML,
}
_FORMATS_BACK = {v: k for k, v in _FORMATS.items()}
_SERIALIZATIONS = {
    pb.ARTIFACT_SERIALIZATION_NATIVE: "native",
    pb.ARTIFACT_SERIALIZATION_PICKLE: "pickle",
    pb.ARTIFACT_SERIALIZATION_JOBLIB: "joblib",
}
_SERIALIZATIONS_BACK = {v: k for k, v in _SERIALIZATIONS.items()}
_STATES = {
    pb.MODEL_VERSION_STATE_REGISTERED: VersionState.REGISTERED,
    pb.MODEL_VERSION_STATE_DEPLOYING: VersionState.DEPLOYING,
    pb.MODEL_VERSION_STATE_SERVING: VersionState.SERVING,
    pb.MODEL_VERSION_STATE_DRAINING: VersionState.DRAINING,
    pb.MODEL_VERSION_STATE_RETIRED: VersionState.RETIRED,
    pb.MODEL_VERSION_STATE_FAILED: VersionState.FAILED,
}
_STATES_BACK = {v: k for k, v in _STATES.items()}
_REPLICA_STATES = {
    ReplicaState.LOADING: pb.REPLICA_STATE_LOADING,
    ReplicaState.READY: pb.REPLICA_STATE_READY,
    ReplicaState.UNLOADING: pb.REPLICA_STATE_UNLOADING,
    ReplicaState.FAILED: pb.REPLICA_STATE_FAILED,
}


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _tensors(specs: list[common_pb2.TensorSpec], field: str) -> tuple[TensorSchema, ...]:
    if not specs:
        raise InvalidArgument(f"{field}: at least one tensor is required")
    tensors = []
    for index, spec in enumerate(specs):
        if not spec.name:
            raise InvalidArgument(f"{field}[{index}].name is required")
        try:
            tensors.append(
                TensorSchema(spec.name, spec.datatype, tuple(spec.shape), tuple(spec.class_labels), spec.description)
            )
        except InvalidArgument as exc:
            raise InvalidArgument(f"{field}[{index}]: {exc.message}") from None
    return tuple(tensors)


def _queue_delay_us(batching: pb.DynamicBatching) -> int:
    """The dynamic batcher's queue delay in microseconds (500 when unset), within 0..MAX_QUEUE_DELAY_US."""
    if not batching.HasField("max_queue_delay"):
        return DEFAULT_QUEUE_DELAY_US
    delay = batching.max_queue_delay.ToMicroseconds()
    if delay < 0:
        raise InvalidArgument("deployment.dynamic_batching.max_queue_delay must not be negative")
    if delay > MAX_QUEUE_DELAY_US:
        raise InvalidArgument(
            f"deployment.dynamic_batching.max_queue_delay is {queue_delay_text(delay)}; at most "
            f"{queue_delay_text(MAX_QUEUE_DELAY_US)} is accepted: Triton holds every request that does not fill a "
            "batch this long (warm-up included); typical values are 100us to 10ms"
        )
    return delay


def _deployment(config: pb.DeploymentConfig, present: bool) -> DeploymentConfig:
    if not present:
        return DeploymentConfig()
    if config.max_batch_size < 0:
        raise InvalidArgument("deployment.max_batch_size must be >= 0 (0: the model does not batch)")
    if config.instance_count < 0:
        raise InvalidArgument("deployment.instance_count must be >= 0 (0 means 1)")
    if config.placement.worker_selector:
        raise InvalidArgument("deployment.placement.worker_selector is not supported; name worker_ids instead")
    batching = config.dynamic_batching
    delay_us = _queue_delay_us(batching)
    dynamic_batching = batching.enabled and config.max_batch_size > 0
    preferred = tuple(batching.preferred_batch_sizes)
    if preferred and not dynamic_batching:
        raise InvalidArgument(
            "deployment.dynamic_batching.preferred_batch_sizes needs dynamic_batching.enabled and max_batch_size > 0"
        )
    for index, size in enumerate(preferred):
        if not 0 < size <= config.max_batch_size:
            raise InvalidArgument(
                f"deployment.dynamic_batching.preferred_batch_sizes[{index}] is {size}; each preferred batch size "
                f"must be between 1 and max_batch_size ({config.max_batch_size})"
            )
    return DeploymentConfig(
        max_batch_size=config.max_batch_size,
        dynamic_batching=dynamic_batching,
        max_queue_delay_us=delay_us,
        preferred_batch_sizes=preferred,
        instance_count=config.instance_count or 1,
        placement=tuple(config.placement.worker_ids),
        backend_parameters=dict(config.backend_parameters),
        warmup_samples=tuple(
            _sample(s, f"deployment.warmup_samples[{i}]") for i, s in enumerate(config.warmup_samples)
        ),
    )


def _raw(tensor: common_pb2.Tensor, where: str) -> bytes:
    if tensor.raw_contents:
        return tensor.raw_contents
    kind = tensor.values.WhichOneof("kind")
    if kind == "string_list":
        return b"".join(len(s.encode()).to_bytes(4, "little") + s.encode() for s in tensor.values.string_list.values)
    dtype = NUMPY_TYPES.get(tensor.datatype)
    if kind not in ("double_list", "int64_list") or dtype is None or tensor.datatype == "BYTES":
        raise InvalidArgument(f"{where}: give raw_contents, or values as a list matching datatype {tensor.datatype}")
    return np.asarray(getattr(tensor.values, kind).values, dtype=dtype).tobytes()


def _sample(sample: pb.WarmupSample, where: str) -> WarmupSample:
    if not sample.inputs:
        raise InvalidArgument(f"{where}.inputs: at least one tensor is required")
    if sample.count < 0:
        raise InvalidArgument(f"{where}.count must be >= 0 (0 means once)")
    inputs = tuple(
        SampleTensor(t.name, t.datatype, tuple(t.shape), _raw(t, f"{where}.inputs[{i}]"))
        for i, t in enumerate(sample.inputs)
    )
    return WarmupSample(sample.name or where, inputs, sample.count or 1)


def _is_sha256(digest: str) -> bool:
    return len(digest) == 64 and all(c in hexdigits for c in digest)


def _drift_baseline(ref: pb.DriftBaselineRef) -> DriftBaseline:
    source = ref.WhichOneof("source")
    if source is None or not getattr(ref, source):
        raise InvalidArgument("drift_baseline: give its uri or the baseline_id the monitor stores it under")
    if ref.sha256 and not _is_sha256(ref.sha256):
        raise InvalidArgument("drift_baseline.sha256 must be the file's SHA-256 digest as 64 hex characters")
    return DriftBaseline(uri=ref.uri, baseline_id=ref.baseline_id, sha256=ref.sha256.lower())


def version_from_register(request: pb.RegisterModelVersionRequest) -> ModelVersionRecord:
    """The version a registration describes (number 0: the registry assigns the next one)."""
    validate_model_name(request.model)
    fmt = _FORMATS.get(request.format)
    if fmt is None:
        raise InvalidArgument("format is required: ONNX, SKLEARN, XGBOOST, LIGHTGBM or PMML")
    artifact = request.artifact
    if not artifact.uri:
        raise InvalidArgument("artifact.uri is required (file:// or http(s)://)")
    sha = artifact.sha256.lower()
    if not _is_sha256(sha):
        raise InvalidArgument("artifact.sha256 must be the artifact's SHA-256 digest as 64 hex characters")
    serialization = _SERIALIZATIONS.get(artifact.serialization) or infer_serialization(artifact.uri)
    return ModelVersionRecord(
        model=request.model,
        version=0,
        format=fmt,
        artifact_uri=artifact.uri,
        artifact_sha256=sha,
        inputs=_tensors(list(request.inputs), "inputs"),
        outputs=_tensors(list(request.outputs), "outputs"),
        trusted=artifact.trusted,
        serialization=serialization,
        owner=request.owner,
        description=request.description,
        tags=dict(request.tags),
        deployment=_deployment(request.deployment, request.HasField("deployment")),
        drift_baseline=_drift_baseline(request.drift_baseline) if request.HasField("drift_baseline") else None,
    )


def state_from_proto(state: int) -> VersionState:
    """A domain state from the enum (INVALID_ARGUMENT when unspecified)."""
    found = _STATES.get(state)
    if found is None:
        raise InvalidArgument(f"unknown model version state {state}")
    return found


def _tensor_spec(tensor: TensorSchema) -> common_pb2.TensorSpec:
    return common_pb2.TensorSpec(
        name=tensor.name,
        datatype=tensor.datatype,
        shape=tensor.shape,
        description=tensor.description,
        class_labels=tensor.class_labels,
    )


def _replica_status(replica: Replica) -> pb.ReplicaStatus:
    return pb.ReplicaStatus(
        worker_id=replica.worker_id,
        address=replica.address,
        state=_REPLICA_STATES[replica.state],
        detail=replica.detail,
        update_time=_timestamp(replica.updated_at),
        worker_restarts=replica.worker_restarts,
    )


def version_to_proto(
    record: ModelVersionRecord, aliases: list[str] | None = None, replicas: list[Replica] | None = None
) -> pb.ModelVersion:
    """The contract's ModelVersion for ``record``, with the aliases pointing at it and its replicas."""
    deployment = record.deployment
    message = pb.ModelVersion(
        model=record.model,
        version=record.version,
        format=_FORMATS_BACK[record.format],
        artifact=pb.Artifact(
            uri=record.artifact_uri,
            sha256=record.artifact_sha256,
            trusted=record.trusted,
            serialization=_SERIALIZATIONS_BACK[record.serialization],
            size_bytes=record.artifact_size_bytes,
        ),
        inputs=[_tensor_spec(t) for t in record.inputs],
        outputs=[_tensor_spec(t) for t in record.outputs],
        deployment=pb.DeploymentConfig(
            max_batch_size=deployment.max_batch_size,
            dynamic_batching=pb.DynamicBatching(enabled=deployment.dynamic_batching),
            instance_count=deployment.instance_count,
            instance_kind=pb.INSTANCE_KIND_CPU,
            placement=pb.Placement(worker_ids=deployment.placement),
            backend_parameters=deployment.backend_parameters,
        ),
        state=_STATES_BACK[record.state],
        state_detail=record.state_detail,
        description=record.description,
        tags=record.tags,
        owner=record.owner,
        created_by=record.created_by,
        aliases=sorted(aliases or []),
        replicas=[_replica_status(r) for r in replicas or []],
        create_time=_timestamp(record.created_at),
        update_time=_timestamp(record.updated_at),
    )
    if record.deprecated_until is not None:
        message.retirement.CopyFrom(
            pb.Retirement(
                successor_version=record.successor or 0,
                successor_model=record.successor_model,
                deprecate_time=_timestamp(record.deprecated_at),
                retire_time=_timestamp(record.retired_at or record.deprecated_until),
                reason=record.retire_reason,
                actor=record.retired_by,
            )
        )
    baseline = record.drift_baseline
    if baseline is not None:
        if baseline.uri:
            message.drift_baseline.uri = baseline.uri
        else:
            message.drift_baseline.baseline_id = baseline.baseline_id
        message.drift_baseline.sha256 = baseline.sha256
    if deployment.dynamic_batching:
        message.deployment.dynamic_batching.max_queue_delay.FromMicroseconds(deployment.max_queue_delay_us)
        message.deployment.dynamic_batching.preferred_batch_sizes.extend(deployment.preferred_batch_sizes)
    for sample in deployment.warmup_samples:
        message.deployment.warmup_samples.add(
            name=sample.name,
            count=sample.count,
            inputs=[
                common_pb2.Tensor(name=i.name, datatype=i.datatype, shape=i.shape, raw_contents=i.raw)
                for i in sample.inputs
            ],
        )
    return message


def traffic_to_proto(model: str, policy: TrafficPolicy) -> pb.TrafficPolicy:
    """The contract's TrafficPolicy."""
    message = pb.TrafficPolicy(
        model=model,
        weights=[pb.VersionWeight(version=v, weight=w) for v, w in sorted(policy.weights.items())],
        sticky=pb.StickyRouting(enabled=bool(policy.sticky_key), key_name=policy.sticky_key),
        revision=policy.revision,
    )
    if policy.mirror is not None:
        message.mirror.shadow_version = policy.mirror.version
        message.mirror.fraction = policy.mirror.fraction
    return message


def traffic_from_proto(message: pb.TrafficPolicy) -> TrafficPolicy:
    """A domain policy from the contract's (INVALID_ARGUMENT naming the bad field)."""
    weights: dict[int, int] = {}
    for index, entry in enumerate(message.weights):
        if entry.version <= 0:
            raise InvalidArgument(f"policy.weights[{index}].version must be a version number (> 0)")
        if entry.version in weights:
            raise InvalidArgument(f"policy.weights[{index}]: version {entry.version} is listed twice")
        weights[entry.version] = entry.weight
    sticky = message.sticky
    if sticky.enabled and not sticky.key_name:
        raise InvalidArgument("policy.sticky.key_name is required when sticky routing is enabled")
    mirror = None
    if message.HasField("mirror") and message.mirror.shadow_version:
        if not 0 < message.mirror.fraction <= 1:
            raise InvalidArgument("policy.mirror.fraction must be in (0, 1]")
        mirror = Mirror(version=message.mirror.shadow_version, fraction=message.mirror.fraction)
    return TrafficPolicy(weights=weights, sticky_key=sticky.key_name if sticky.enabled else "", mirror=mirror)


def model_to_proto(record: ModelRecord, versions: list[ModelVersionRecord]) -> pb.Model:
    """The contract's Model, with its latest and serving versions."""
    return pb.Model(
        name=record.name,
        description=record.description,
        owner=record.owner,
        aliases=record.aliases,
        latest_version=max((v.version for v in versions), default=0),
        traffic_policy=traffic_to_proto(record.name, record.traffic),
        create_time=_timestamp(record.created_at),
        update_time=_timestamp(record.updated_at),
        serving_versions=sorted(v.version for v in versions if v.state is VersionState.SERVING),
    )


def audit_to_proto(record: AuditRecord) -> common_pb2.AuditEntry:
    """The contract's AuditEntry."""
    return common_pb2.AuditEntry(
        id=str(record.id),
        time=_timestamp(record.time),
        actor=record.actor,
        action=record.action,
        target=record.target,
        before_json=record.before,
        after_json=record.after,
        reason=record.reason,
        request_id=record.request_id,
    )


_ROLLOUT_STATES = {
    pb.ROLLOUT_STATE_PENDING: RolloutState.PENDING,
    pb.ROLLOUT_STATE_RUNNING: RolloutState.RUNNING,
    pb.ROLLOUT_STATE_PAUSED: RolloutState.PAUSED,
    pb.ROLLOUT_STATE_SUCCEEDED: RolloutState.SUCCEEDED,
    pb.ROLLOUT_STATE_ROLLED_BACK: RolloutState.ROLLED_BACK,
    pb.ROLLOUT_STATE_ABORTED: RolloutState.ABORTED,
    pb.ROLLOUT_STATE_FAILED: RolloutState.FAILED,
}
_ROLLOUT_STATES_BACK = {v: k for k, v in _ROLLOUT_STATES.items()}
_ACTIONS = {
    "start": pb.ROLLOUT_ACTION_START,
    "advance": pb.ROLLOUT_ACTION_ADVANCE,
    "rollback": pb.ROLLOUT_ACTION_ROLLBACK,
    "pause": pb.ROLLOUT_ACTION_PAUSE,
    "resume": pb.ROLLOUT_ACTION_RESUME,
    "abort": pb.ROLLOUT_ACTION_ABORT,
    "promote_now": pb.ROLLOUT_ACTION_PROMOTE_NOW,
    "complete": pb.ROLLOUT_ACTION_COMPLETE,
}


def rollout_states_from_proto(states: list[int]) -> frozenset[RolloutState]:
    """Domain states from the enum (INVALID_ARGUMENT for unspecified)."""
    found = set()
    for state in states:
        if state not in _ROLLOUT_STATES:
            raise InvalidArgument(f"unknown rollout state {state}")
        found.add(_ROLLOUT_STATES[state])
    return frozenset(found)


def steps_from_proto(spec: pb.RolloutSpec, default_percents: list[float]) -> tuple[RolloutStep, ...]:
    """The spec's steps, or the defaults (0% is a shadow step mirroring every request)."""
    if not spec.steps:
        return tuple(RolloutStep(p, 1.0 if p == 0 else 0.0) for p in default_percents)
    return tuple(
        RolloutStep(
            candidate_percent=s.candidate_percent,
            shadow_fraction=s.shadow_fraction,
            min_dwell_s=s.min_dwell.ToTimedelta().total_seconds() if s.HasField("min_dwell") else None,
            min_requests=s.min_requests or None,
        )
        for s in spec.steps
    )


def _evaluation(text: str) -> common_pb2.SloEvaluation | None:
    return json_format.Parse(text, common_pb2.SloEvaluation()) if text else None


def rollout_to_proto(rollout: Rollout) -> pb.Rollout:
    """The contract's Rollout."""
    spec = pb.RolloutSpec(
        model=rollout.model,
        candidate_version=rollout.candidate,
        baseline_version=rollout.baseline,
        min_requests=rollout.min_requests,
        gates=json_format.Parse(rollout.gates, common_pb2.SloThresholds()),
    )
    spec.min_dwell.FromTimedelta(timedelta(seconds=rollout.min_dwell_s))
    spec.evaluation_interval.FromTimedelta(timedelta(seconds=rollout.evaluation_interval_s))
    for step in rollout.steps:
        message = spec.steps.add(
            candidate_percent=step.candidate_percent,
            shadow_fraction=step.shadow_fraction,
            min_requests=step.min_requests or 0,
        )
        if step.min_dwell_s is not None:
            message.min_dwell.FromTimedelta(timedelta(seconds=step.min_dwell_s))
    message = pb.Rollout(
        id=rollout.id,
        spec=spec,
        state=_ROLLOUT_STATES_BACK[rollout.state],
        current_step=rollout.current_step,
        step_start_time=_timestamp(rollout.step_started_at),
        next_decision_time=_timestamp(rollout.next_decision_at),
        last_evaluation=_evaluation(rollout.last_evaluation),
        created_by=rollout.created_by,
        create_time=_timestamp(rollout.created_at),
        update_time=_timestamp(rollout.updated_at),
        end_time=_timestamp(rollout.ended_at),
        state_detail=rollout.state_detail,
        controller=rollout.controller,
        baseline_version=rollout.baseline,
    )
    for decision in rollout.decisions:
        message.decisions.add(
            time=_timestamp(decision.time),
            action=_ACTIONS.get(decision.action, pb.ROLLOUT_ACTION_UNSPECIFIED),
            from_step=decision.from_step,
            to_step=decision.to_step,
            automatic=decision.automatic,
            actor=decision.actor,
            reason=decision.reason,
            evaluation=_evaluation(decision.evaluation),
        )
    return message
