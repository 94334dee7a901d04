"""The model gateway's domain types: transport-neutral (no protobuf), shared by the registry,
the Triton workers, the traffic router and the servicers.

A registered model version becomes one Triton model named :func:`triton_model_name`
(``<model>__<version>``), so each version loads, serves and unloads independently of the others.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from infermesh_chassis.errors import InvalidArgument

__all__ = [
    "DATATYPES",
    "DEFAULT_QUEUE_DELAY_US",
    "MAX_QUEUE_DELAY_US",
    "MODEL_NAME_PATTERN",
    "AuditRecord",
    "DeploymentConfig",
    "DriftBaseline",
    "Mirror",
    "ModelFormat",
    "ModelRecord",
    "ModelVersionRecord",
    "Replica",
    "ReplicaState",
    "Rollout",
    "RolloutDecision",
    "RolloutState",
    "RolloutStep",
    "SampleTensor",
    "TensorSchema",
    "TrafficPolicy",
    "VersionState",
    "WarmupSample",
    "parse_triton_model_name",
    "queue_delay_text",
    "triton_model_name",
    "utc_now",
    "validate_model_name",
]

MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
"""Model names: a letter, then letters, digits, ``_`` or ``-`` (at most 63), never ``__``."""

DEFAULT_QUEUE_DELAY_US = 500
"""Dynamic batching's queue delay when a deployment gives none."""
MAX_QUEUE_DELAY_US = 1_000_000
"""Longest queue delay accepted: Triton holds every request that does not fill a batch this long,
warm-up requests included, so a delay of seconds makes every deploy and every lone call wait."""

DATATYPES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BYTES": 0,
}
"""KServe v2 / Triton tensor datatypes and their element size in bytes (0: variable, BYTES)."""


def queue_delay_text(micros: int) -> str:
    """A queue delay as people write it: ``500us``, ``2ms``, ``1.5s``."""
    for unit, size, digits in (("s", 1_000_000, 6), ("ms", 1000, 3)):
        if micros >= size:
            whole, rest = divmod(micros, size)
            return f"{whole}.{rest:0{digits}d}".rstrip("0").rstrip(".") + unit
    return f"{micros}us"


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (as every stored time is)."""
    return datetime.now(UTC)


class ModelFormat(enum.StrEnum):
    """Serialization format of an artifact."""

    ONNX = "onnx"
    SKLEARN = "sklearn"
    XGBOOST = "xgboost"
    LIGHTGBM = "lightgbm"
    PMML = "pmml"


class VersionState(enum.StrEnum):
    """Lifecycle of a model version."""

    REGISTERED = "registered"
    DEPLOYING = "deploying"
    SERVING = "serving"
    DRAINING = "draining"
    RETIRED = "retired"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class TensorSchema:
    """One input or output tensor. ``shape`` excludes the batch dimension when the version batches
    (``max_batch_size > 0``), as Triton's config.pbtxt does; -1 is a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    class_labels: tuple[str, ...] = ()
    """A classifier output's class names in index order; empty for other tensors."""
    description: str = ""
    """What the tensor holds, for people."""

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            known = ", ".join(DATATYPES)
            raise InvalidArgument(f"tensor '{self.name}': unknown datatype '{self.datatype}' (expected one of {known})")
        if any(d < -1 or d == 0 for d in self.shape):
            raise InvalidArgument(
                f"tensor '{self.name}': shape {list(self.shape)} has a dimension that is 0 or below -1"
            )
        if "" in self.class_labels or len(set(self.class_labels)) != len(self.class_labels):
            raise InvalidArgument(
                f"tensor '{self.name}': class_labels {list(self.class_labels)} must be distinct and non-empty"
            )


@dataclass(frozen=True, slots=True)
class SampleTensor:
    """One input of a recorded request: KServe v2 raw contents and the full shape (batch included)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """A recorded request sent to every worker before a version serves."""

    name: str
    inputs: tuple[SampleTensor, ...]
    count: int = 1


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """How a version runs on Triton."""

    max_batch_size: int = 64
    """Largest batch Triton forms (0: the model does not batch; shapes are then full shapes)."""
    dynamic_batching: bool = True
    """Let Triton combine concurrent requests into batches."""
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    """How long Triton may hold a request to form a batch (0..MAX_QUEUE_DELAY_US)."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Batch sizes Triton's dynamic batcher aims for (each in 1..max_batch_size); empty lets Triton decide."""
    instance_count: int = 1
    """Model instances per worker."""
    placement: tuple[str, ...] = ()
    """Worker ids (or labels) to load on; empty: every worker."""
    warmup_requests: int = 3
    """Synthetic warm-up requests (built from the schema) sent to each worker when there are no samples."""
    warmup_samples: tuple[WarmupSample, ...] = ()
    """Recorded requests sent to each worker (each ``count`` times) before the version is marked SERVING."""
    backend_parameters: dict[str, str] = field(default_factory=dict)
    """Extra ``parameters`` written into config.pbtxt (e.g. ``infermesh.fault.error_rate``)."""


@dataclass(frozen=True, slots=True)
class DriftBaseline:
    """Where a version's drift baseline is (the monitor reads it): a file, or a baseline it stores."""

    uri: str = ""
    """A file of training rows or histograms; empty when ``baseline_id`` names the baseline."""
    baseline_id: str = ""
    """The id of a baseline the monitor already stores; empty when ``uri`` is given."""
    sha256: str = ""
    """Expected SHA-256 of the file at ``uri`` (lowercase hex); empty skips the check."""


@dataclass(frozen=True, slots=True)
class ModelVersionRecord:
    """One registered version of a model."""

    model: str
    version: int
    format: ModelFormat
    artifact_uri: str
    artifact_sha256: str
    inputs: tuple[TensorSchema, ...]
    outputs: tuple[TensorSchema, ...]
    trusted: bool = False
    """Pickled/joblib artifacts are refused unless the registration marks them trusted."""
    serialization: str = "native"
    """How the artifact file is encoded: ``native``, ``pickle`` or ``joblib``."""
    artifact_size_bytes: int = 0
    """Size of the artifact file, measured when it was fetched and verified at registration (0: not known)."""
    owner: str = ""
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    deployment: DeploymentConfig = DeploymentConfig()
    drift_baseline: DriftBaseline | None = None
    """The baseline the monitor compares this version's inputs with, when the registration gave one."""
    created_by: str = ""
    """Who registered it (the registration's actor)."""
    state: VersionState = VersionState.REGISTERED
    state_detail: str = ""
    """Why the version is in its state (e.g. the error of a failed deployment)."""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    """When the version last changed: its state, its retirement or an alias pointing at it."""
    retired_at: datetime | None = None
    deprecated_at: datetime | None = None
    """When its retirement was scheduled (pinned callers are warned from then on)."""
    retired_by: str = ""
    """Who scheduled its retirement (the RetireModelVersion actor)."""
    successor: int | None = None
    """The version that replaces this one once retired."""
    successor_model: str = ""
    """The model that replaces it, when it is another model."""
    deprecated_until: datetime | None = None
    """Pinned callers are warned until then; the version is retired after it."""
    retire_reason: str = ""
    """Why it is (to be) retired."""

    @property
    def triton_name(self) -> str:
        """The Triton model this version is served as."""
        return triton_model_name(self.model, self.version)


class ReplicaState(enum.StrEnum):
    """State of a version on one worker."""

    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Replica:
    """A deployed version's presence on one worker, as this gateway's worker pool sees it now."""

    worker_id: str
    address: str
    state: ReplicaState
    detail: str = ""
    updated_at: datetime | None = None
    """When the state may last have changed: the later of the worker's last change of health, ejection or
    loaded models and the version's own last change (None for a worker the pool no longer has)."""
    worker_restarts: int = 0
    """Times the gateway restarted the worker's process after it died."""


@dataclass(frozen=True, slots=True)
class Mirror:
    """A share of a model's traffic copied to a shadow version, off the critical path."""

    version: int
    fraction: float
    """0 < fraction <= 1 of the requests the primary serves."""


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """How requests without a pinned version pick one."""

    weights: dict[int, int] = field(default_factory=dict)
    """Version -> relative weight; empty: everything goes to the ``production`` alias."""
    sticky_key: str = ""
    """Request parameter (or metadata key) whose value keeps a caller on one version; empty: random."""
    mirror: Mirror | None = None
    revision: int = 0
    """Increases with every change (optimistic concurrency)."""


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A model: its versions are stored separately; aliases name versions."""

    name: str
    owner: str = ""
    description: str = ""
    aliases: dict[str, int] = field(default_factory=dict)
    traffic: TrafficPolicy = TrafficPolicy()
    production_history: tuple[int, ...] = ()
    """Versions that held ``production``, oldest first (rollback walks back through it)."""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    """When its aliases, its traffic policy or one of its versions last changed (None: stored before
    this was recorded, and unchanged since)."""


class RolloutState(enum.StrEnum):
    """Lifecycle of a rollout."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        """Still to be driven by a controller (or resumed by an operator)."""
        return self in (RolloutState.PENDING, RolloutState.RUNNING, RolloutState.PAUSED)


@dataclass(frozen=True, slots=True)
class RolloutStep:
    """One step: the candidate's share of un-pinned traffic and of mirrored requests."""

    candidate_percent: float
    shadow_fraction: float = 0.0
    min_dwell_s: float | None = None
    """None: the rollout's default."""
    min_requests: int | None = None
    """None: the rollout's default."""


@dataclass(frozen=True, slots=True)
class RolloutDecision:
    """One recorded transition."""

    time: datetime
    action: str
    """start, advance, rollback, pause, resume, abort, promote_now, complete, fail."""
    from_step: int
    to_step: int
    automatic: bool
    actor: str
    reason: str
    evaluation: str = ""
    """The monitor's SloEvaluation behind an automatic decision, as JSON."""


@dataclass(frozen=True, slots=True)
class Rollout:
    """An SLO-gated canary rollout of a candidate version against a baseline."""

    id: str
    model: str
    candidate: int
    baseline: int
    steps: tuple[RolloutStep, ...]
    gates: str
    """The SLO thresholds (the contract's SloThresholds, as JSON) checked before each advance."""
    min_dwell_s: float
    min_requests: int
    evaluation_interval_s: float
    state: RolloutState = RolloutState.PENDING
    current_step: int = -1
    step_started_at: datetime | None = None
    next_decision_at: datetime | None = None
    last_evaluation: str = ""
    """The latest SloEvaluation, as JSON."""
    decisions: tuple[RolloutDecision, ...] = ()
    created_by: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    state_detail: str = ""
    controller: str = ""
    """The gateway instance whose controller drives it."""

    def step(self, index: int | None = None) -> RolloutStep:
        """The current step (or ``index``)."""
        return self.steps[self.current_step if index is None else index]

    def dwell_s(self, step: RolloutStep) -> float:
        """Minimum time on ``step``."""
        return self.min_dwell_s if step.min_dwell_s is None else step.min_dwell_s

    def requests_needed(self, step: RolloutStep) -> int:
        """Minimum candidate requests on ``step``."""
        return self.min_requests if step.min_requests is None else step.min_requests


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One change, as the audit log keeps it."""

    id: int
    time: datetime
    actor: str
    action: str
    """``<object>.<verb>``: model_version.register, traffic_policy.set, model.promote, rollout.rollback..."""
    target: str
    """What changed, as a path: ``models/churn``, ``models/churn/versions/3``, ``models/churn/rollouts/<id>``."""
    before: str
    """JSON of the object before the change ("" when it did not exist)."""
    after: str
    """JSON of the object after the change ("" when it was removed)."""
    reason: str = ""
    request_id: str = ""
    """The request that made the change."""


def validate_model_name(name: str) -> str:
    """``name`` if it is a valid model name, else INVALID_ARGUMENT naming the rule."""
    if not MODEL_NAME_PATTERN.match(name) or "__" in name:
        raise InvalidArgument(
            f"model name '{name}' is invalid: use a letter, then letters, digits, '_' or '-' "
            "(at most 63 characters, no '__')"
        )
    return name


def triton_model_name(model: str, version: int) -> str:
    """The Triton model name of ``model`` version ``version``."""
    return f"{model}__{version}"


def parse_triton_model_name(name: str) -> tuple[str, int] | None:
    """``(model, version)`` from a Triton model name made by :func:`triton_model_name`, else None."""
    model, sep, version = name.rpartition("__")
    if not sep or not (version.isascii() and version.isdigit()):
        return None
    return model, int(version)
