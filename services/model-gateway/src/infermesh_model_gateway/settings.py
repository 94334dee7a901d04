"""Settings of the model gateway: the chassis' settings under the ``MODEL_GATEWAY_`` prefix, plus
the registry, the Triton workers, the data plane and deployments."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from infermesh_chassis.settings import ServiceSettings

MiB = 1024 * 1024


class PoolSettings(BaseModel):
    """How the pool watches and uses its workers."""

    health_interval_s: float = Field(1.0, gt=0)
    """How often every worker's readiness and ready models are refreshed."""
    health_timeout_s: float = Field(1.0, gt=0)
    """Deadline of one health probe."""
    eject_after_failures: int = Field(3, ge=1)
    """Consecutive worker-side failures that eject a worker."""
    base_ejection_s: float = Field(2.0, gt=0)
    """First ejection length; doubles on each further ejection of the same worker."""
    max_ejection_s: float = Field(30.0, gt=0)
    """Longest ejection."""
    load_timeout_s: float = Field(120.0, gt=0)
    """Deadline of loading one model on one worker."""
    max_message_bytes: int = Field(64 * MiB, gt=0)
    """Largest message exchanged with a worker."""


class WorkerSettings(BaseModel):
    """Where the Triton workers come from."""

    embedded: int = Field(1, ge=0, le=16)
    """tritonserver processes the gateway starts itself (the nvidia-pytriton wheel's binary)."""
    discovery_service: str = ""
    """Service name of external Triton workers in discovery (e.g. ``triton``); empty: none."""
    discovery_interval_s: float = Field(5.0, gt=0)
    """How often external workers are resolved again."""
    startup_timeout_s: float = Field(60.0, gt=0)
    """How long an embedded worker may take to become ready."""
    restart_backoff_s: float = Field(0.5, gt=0)
    """Wait before restarting an embedded worker whose process died; doubles on each further
    restart until the worker stays up ``restart_reset_s``."""
    restart_max_backoff_s: float = Field(30.0, gt=0)
    """Longest wait between two restarts of a worker that keeps dying."""
    restart_reset_s: float = Field(60.0, gt=0)
    """A worker up this long counts as recovered: its next death is restarted at once again."""
    native_onnx: bool = False
    """Serve ONNX versions with Triton's ``onnxruntime_onnx`` backend (Triton's containers have it;
    the embedded wheel has only the python backend)."""
    pool: PoolSettings = PoolSettings()


class InferenceSettings(BaseModel):
    """How the data plane treats requests."""

    default_timeout_s: float = Field(10.0, gt=0)
    """Deadline of a forwarded inference when the caller sets none."""
    max_request_bytes: int = Field(32 * MiB, gt=0)
    """Largest total size of a request's input tensors."""
    max_in_flight_per_version: int = Field(512, ge=1)
    """Inferences of one version in flight through this gateway at most; beyond it requests are
    refused at once with RESOURCE_EXHAUSTED instead of queuing (one hot or stuck version cannot
    take every slot of the gateway)."""
    overload_retry_after_s: float = Field(0.05, gt=0)
    """Retry-after hint sent with such a refusal."""
    shadow_max_in_flight: int = Field(32, ge=0)
    """Mirrored requests in flight at most; beyond it mirroring skips (and counts) requests."""
    shadow_timeout_s: float = Field(5.0, gt=0)
    """Deadline of a mirrored request."""
    event_input_sample_rate: float = Field(0.05, ge=0, le=1)
    """Share of requests whose inputs are attached to their inference event (drift needs them)."""
    deprecation_header: str = "infermesh-deprecation"
    """Trailing metadata key that warns callers pinning a deprecated version."""
    server_name: str = "infermesh-model-gateway"
    """Name reported by ServerMetadata."""
    server_version: str = "0.1.0"
    """Version reported by ServerMetadata."""


class DeploySettings(BaseModel):
    """How deployments run."""

    drain_timeout_s: float = Field(30.0, gt=0)
    """Longest wait for in-flight requests of a version before it unloads anyway."""
    warmup_timeout_s: float = Field(30.0, gt=0)
    """Deadline of one warm-up request."""
    propagation_s: float = Field(2.0, ge=0)
    """How long other gateway instances get to stop routing to a version before it unloads
    (at least twice ``registry_poll_s`` when several instances share the registry)."""


class RolloutSettings(BaseModel):
    """The rollout controller and the defaults of a rollout spec."""

    tick_s: float = Field(1.0, gt=0)
    """How often the controller looks at active rollouts and due retirements."""
    lease_ttl_s: float = Field(10.0, gt=0)
    """How long a model's controller lease lasts without renewal (another instance takes over after it)."""
    default_steps: list[float] = [0.0, 1.0, 5.0, 25.0, 50.0, 100.0]
    """Candidate percent per step when a spec gives none; 0 is a pure shadow step (mirror of every request)."""
    default_min_dwell_s: float = Field(60.0, ge=0)
    """Minimum time per step when a spec gives none."""
    default_min_requests: int = Field(100, ge=0)
    """Minimum candidate requests per step when a spec gives none."""
    default_evaluation_interval_s: float = Field(5.0, gt=0)
    """How often the gates are checked when a spec gives no interval."""


class Settings(ServiceSettings):
    """Model gateway settings.

    Read from a YAML file (``--config`` or ``MODEL_GATEWAY_CONFIG_FILE``),
    overridden by ``MODEL_GATEWAY_*`` variables.
    """

    model_config = SettingsConfigDict(env_prefix="MODEL_GATEWAY_")

    service_name: str = "model-gateway"
    data_dir: Path = Path("var/model-gateway")
    """Artifact cache, Triton model repository and worker logs live under it."""
    registry_url: str = ""
    """``sqlite:///path`` or ``postgresql://...``; empty: SQLite in ``data_dir/registry.db``."""
    registry_poll_s: float = Field(1.0, gt=0)
    """How often the registry is checked for changes made by other gateway instances."""
    instance_poll_s: float = Field(0.05, gt=0)
    """How often a worker process looks at what the other worker processes of its instance
    published (the shared Triton workers, a newer routing generation)."""
    instance_sync_timeout_s: float = Field(2.0, gt=0)
    """Longest wait of a change made through one worker process for the others to route by it."""
    max_artifact_bytes: int = Field(2048 * MiB, gt=0)
    """Largest artifact fetched over http(s)."""
    workers: WorkerSettings = WorkerSettings()
    inference: InferenceSettings = InferenceSettings()
    deploy: DeploySettings = DeploySettings()
    rollouts: RolloutSettings = RolloutSettings()
    monitor_service: str = "monitor"
    """Discovery name of the monitor (the rollout gates call its CheckSlo)."""
