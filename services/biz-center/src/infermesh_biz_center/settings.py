"""Settings of the business center: the chassis' settings under the ``BIZ_CENTER_`` prefix, plus
where scenes and experiments are stored, who may call, limits, resilience and the Thrift front."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from infermesh_chassis.settings import GrpcServerSettings, MiB, ServiceSettings

__all__ = [
    "ApiKeySettings",
    "AuthSettings",
    "ConfigSettings",
    "DownstreamSettings",
    "JwtKeySettings",
    "JwtSettings",
    "KeyRateLimit",
    "PredictSettings",
    "RateLimitSettings",
    "ResilienceSettings",
    "Settings",
    "StreamingSettings",
    "ThriftSettings",
    "TlsListenerSettings",
    "TlsSettings",
]


class KeyRateLimit(BaseModel):
    """A token-bucket limit on one caller (API key or JWT subject)."""

    requests_per_second: float = Field(0.0, ge=0)
    """Sustained rate; 0 means unlimited."""
    burst: int = Field(0, ge=0)
    """Largest burst; 0 means the rate rounded up."""
    mode: Literal["default", "local", "global"] = "default"
    """Where it is enforced: ``local`` (per instance), ``global`` (Redis), ``default`` (``rate_limit.default_mode``)."""


class ApiKeySettings(BaseModel):
    """One API key. Only its SHA-256 is configured: ``printf %s "$KEY" | sha256sum``."""

    name: str = Field(min_length=1)
    """Who the key belongs to (logs, audit, the rate-limit key)."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hex SHA-256 of the key."""
    scenes: list[str] = Field(default_factory=list)
    """Scenes the key may call; ``*`` allows every scene."""
    admin: bool = False
    """Whether the key may call the admin RPCs."""
    rate_limit: KeyRateLimit = KeyRateLimit()
    """The key's own limit."""


class JwtKeySettings(BaseModel):
    """One key that may verify tokens: a public key (RS*/ES*/EdDSA/PS*) or a shared secret (HS*)."""

    kid: str | None = None
    """Key id; a token whose header names a kid is verified only with the key of that id."""
    algorithm: str = "RS256"
    """The one algorithm this key verifies."""
    public_key_file: Path | None = None
    """PEM file of the public key."""
    public_key: str | None = None
    """PEM of the public key, inline."""
    secret: str | None = None
    """Shared secret of an HS* algorithm."""

    @model_validator(mode="after")
    def _one_key(self) -> JwtKeySettings:
        given = [k for k in (self.public_key_file, self.public_key, self.secret) if k]
        if len(given) != 1:
            raise ValueError("set exactly one of public_key_file, public_key, secret")
        if self.algorithm.startswith("HS") != bool(self.secret):
            needs = "a secret" if self.secret is None else "a public key"
            raise ValueError(f"algorithm {self.algorithm} needs {needs}")
        return self


class JwtSettings(BaseModel):
    """JWT bearer tokens (``authorization: Bearer <jwt>``)."""

    issuer: str | None = None
    """Required ``iss``; None accepts any issuer."""
    audience: str | None = None
    """Required ``aud``; None refuses tokens that carry an audience."""
    keys: list[JwtKeySettings] = Field(default_factory=list)
    """Keys that may verify tokens; none disables JWT."""
    scenes_claim: str = "scenes"
    """Claim listing the scenes the token may call (a list, or a space-separated string; ``*`` is every scene)."""
    admin_claim: str = "roles"
    """Claim listing roles; ``admin_role`` in it allows the admin RPCs."""
    admin_role: str = "biz-center-admin"
    """Role that allows the admin RPCs."""
    leeway_s: float = Field(30.0, ge=0)
    """Clock skew tolerated on ``exp``/``nbf``/``iat``."""
    rate_limit: KeyRateLimit = KeyRateLimit()
    """Limit per token subject (``sub``)."""
    cache_size: int = Field(10_000, ge=0)
    """Verified tokens remembered (until they expire) so each is verified once."""


class AuthSettings(BaseModel):
    """Who may call."""

    required: bool = True
    """Refuse calls without valid credentials; False lets anonymous callers use every scene (development only)."""
    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    """API keys (hashed)."""
    jwt: JwtSettings = JwtSettings()
    """JWT bearer tokens."""


class RateLimitSettings(BaseModel):
    """Where rate limits are enforced."""

    default_mode: Literal["local", "global"] = "local"
    """Mode of limits that do not choose one."""
    redis_url: str | None = None
    """Redis of the global mode (``redis://host:6379/0``); required when a limit is global."""
    redis_timeout_s: float = Field(0.05, gt=0)
    """Socket timeout of Redis calls; on failure the limit is enforced locally for that call."""
    key_prefix: str = "infermesh:biz-center:ratelimit:"
    """Prefix of the bucket keys in Redis."""


class ResilienceSettings(BaseModel):
    """Circuit breakers, fallback and the score cache."""

    breaker_fail_max: int = Field(5, ge=1)
    """Consecutive failures that open a downstream's breaker."""
    breaker_reset_timeout_s: float = Field(10.0, gt=0)
    """How long a breaker stays open before one trial call."""
    fallback_reserve_ms: float = Field(5.0, ge=0)
    """Time kept back from downstream calls so a local fallback (cached score, default) still answers in time."""
    fallback_reserve_fraction: float = Field(0.1, ge=0, lt=1)
    """The same reserve as a fraction of the request's deadline, when that is more (10% of 250 ms: 25 ms)."""
    score_cache_size: int = Field(100_000, ge=0)
    """Recent scores remembered per instance for the cached-score fallback (0 disables it)."""
    score_cache_ttl_s: float = Field(3600.0, gt=0)
    """Longest a score is kept, whatever a scene's ``max_age`` says."""


class DownstreamSettings(BaseModel):
    """The services the business center calls, by their discovery names."""

    data_gateway: str = "data-gateway"
    """Discovery name of the data gateway."""
    model_gateway: str = "model-gateway"
    """Discovery name of the model gateway."""
    monitor: str = "monitor"
    """Discovery name of the monitor (events)."""
    metadata_ttl_s: float = Field(30.0, gt=0)
    """How long feature-service descriptions and model input schemas are cached."""


class PredictSettings(BaseModel):
    """Predict and PredictBatch."""

    default_deadline_ms: float = Field(1000.0, gt=0)
    """Deadline of a scene without an SLO deadline, when the caller sets none either."""
    max_batch_items: int = Field(1000, ge=1)
    """Most items in one PredictBatch (INVALID_ARGUMENT beyond)."""
    batch_concurrency: int = Field(128, ge=1, le=1000)
    """Items of one PredictBatch scored together (a wave: one feature call and one model call per chunk of
    ``batch_model_rows``); a larger batch, or one that finds its scene's concurrency taken, is scored in waves.
    At most the data gateway's 1,000 entities per call."""
    batch_model_rows: int = Field(64, ge=1)
    """Most rows in one ModelInfer of a PredictBatch wave (a model version takes at most its max_batch_size,
    64 unless deployed otherwise)."""
    coalesce_max_batch: int = Field(32, ge=1)
    """Most concurrent requests merged into one GetFeatures / ModelInfer (1 turns coalescing off)."""
    coalesce_in_flight: int = Field(1, ge=1)
    """Downstream calls with the same key running at once before new requests wait for the next batch."""
    coalesce_window_ms: float = Field(1.0, ge=0)
    """Under concurrent traffic (another call of the key within this window), how long a batch may wait to
    fill; a lone caller never waits. 0 batches only behind calls in flight."""
    exposure_dedup_s: float = Field(300.0, ge=0)
    """A unit's exposure to a variant is reported once per this many seconds per instance; 0 reports every answer."""
    exposure_dedup_size: int = Field(200_000, ge=1)
    """Recent exposures remembered for that (least recently seen forgotten first)."""


class ConfigSettings(BaseModel):
    """Where scenes and experiments live."""

    store_path: Path = Path("var/biz-center/config.db")
    """SQLite database of scenes, experiments and the audit log (changes survive restarts)."""
    seed_file: Path | None = None
    """Versioned YAML file of scenes and experiments applied when its ``version`` is newer than the last applied."""
    watch_interval_s: float = Field(2.0, gt=0)
    """How often the seed file and the store (changed by another instance) are checked."""


class TlsSettings(BaseModel):
    """TLS of a listener or of outbound calls; mutual TLS when a CA for the peer is set."""

    cert_file: Path | None = None
    """PEM certificate chain presented to the peer (server: required; client: for mutual TLS)."""
    key_file: Path | None = None
    """PEM private key of ``cert_file``."""
    ca_file: Path | None = None
    """PEM CA bundle that verifies the peer (server: requiring a client certificate; client: the server's)."""

    server_name: str | None = None
    """Client side: the name the server's certificate must carry, when it is not the dialed host."""

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class TlsListenerSettings(TlsSettings):
    """A TLS listener: where it binds, and its certificate (mutual TLS when ``ca_file`` is set)."""

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(0, ge=0, le=65535)
    """Port to bind; 0 picks a free port (logged at start)."""

    @model_validator(mode="after")
    def _served(self) -> TlsListenerSettings:
        if self.cert_file is None:
            raise ValueError("a TLS listener needs cert_file and key_file")
        return self


class ThriftSettings(BaseModel):
    """The Thrift front for legacy callers (binary protocol)."""

    enabled: bool = True
    """Serve it at all."""
    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(0, ge=0, le=65535)
    """Port to bind; 0 picks a free port (logged at start)."""
    transport: Literal["buffered", "framed"] = "buffered"
    """Transport clients must use too."""
    tls: TlsSettings | None = None
    """TLS of the Thrift listener (with ``ca_file``: clients must present a certificate)."""
    max_message_bytes: int = Field(4 * MiB, ge=1024)
    """Largest request: a framed transport's frame, or one buffered message. A connection that
    declares or sends a bigger one is closed before the rest is read."""
    max_string_bytes: int = Field(1 * MiB, ge=256)
    """Largest string or binary value a request may declare; a bigger declared length closes the
    connection before any of the value is read."""
    idle_timeout_s: float = Field(60.0, gt=0)
    """A connection that starts no request for this long (TLS handshake included) is closed."""
    request_timeout_s: float = Field(10.0, gt=0)
    """A request must arrive whole within this long of its first byte, and its answer must be
    taken within this long; a slower peer is disconnected."""
    max_connections: int = Field(256, gt=0)
    """Open connections at most; one more is closed as soon as it is accepted."""

    @model_validator(mode="after")
    def _served(self) -> ThriftSettings:
        if self.tls is not None and self.tls.cert_file is None:
            raise ValueError("thrift.tls needs cert_file and key_file")
        return self


class StreamingSettings(BaseModel):
    """Consumption of the scenes' stream bindings (NATS JetStream)."""

    enabled: bool = True
    """Consume the bindings of the scenes (a scene without bindings needs no NATS)."""
    nats_url: str = ""
    """NATS server(s) with JetStream, comma-separated; empty: ``events.nats_url``."""
    fetch_timeout_s: float = Field(0.5, gt=0)
    """Longest a fetch waits for messages."""
    connect_timeout_s: float = Field(2.0, gt=0)
    """How long a connection attempt may take (consumption retries in the background)."""
    request_timeout_s: float = Field(5.0, gt=0)
    """Deadline of a result's publication and of JetStream API calls."""
    lag_interval_s: float = Field(2.0, gt=0)
    """How often each binding's lag (pending messages, age of the oldest) is read into the metrics."""
    batches_in_flight: int = Field(4, ge=1, le=64)
    """Micro-batches of one binding scored at once (a binding ``ordered_by_unit`` scores one at a time)."""
    drain_timeout_s: float = Field(10.0, gt=0)
    """At stop (or when a binding changes), how long the batch in hand may take to finish."""


class FrontGrpcSettings(GrpcServerSettings):
    """The chassis' gRPC server settings with the front door's bound on calls waiting for the event loop."""

    max_pending_calls: int = Field(128, gt=0)
    """Calls gRPC core holds for the event loop; beyond them it refuses a call at once, before any
    Python runs (the caller sees CANCELLED, with no ``x-request-id`` trailer: no handler saw it).
    The event loop takes calls up one at a time, so a call accepted into Python, refused by a scene
    or admitted, waits behind every call accepted before it: under a burst of 600 refusals by the
    scene's limits took as long as successes (``bench/bench_burst.py``). 128 keeps that wait within
    tens of milliseconds at ~0.3 ms of event-loop time per call, far below a scene's SLO; the
    chassis' 1024 suits services behind this one."""


class Settings(ServiceSettings):
    """Business center settings.

    Read from a YAML file (``--config`` or ``BIZ_CENTER_CONFIG_FILE``),
    overridden by ``BIZ_CENTER_*`` variables.
    """

    model_config = SettingsConfigDict(env_prefix="BIZ_CENTER_")

    service_name: str = "biz-center"
    grpc: FrontGrpcSettings = FrontGrpcSettings()
    config: ConfigSettings = ConfigSettings()
    auth: AuthSettings = AuthSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    downstream: DownstreamSettings = DownstreamSettings()
    predict: PredictSettings = PredictSettings()
    thrift: ThriftSettings = ThriftSettings()
    streaming: StreamingSettings = StreamingSettings()
    grpc_tls: TlsListenerSettings | None = None
    """A TLS listener of the gRPC front beside the chassis' plaintext port (keep that one on 127.0.0.1)."""
    client_tls: TlsSettings | None = None
    """TLS (mutual with ``cert_file``) of calls to the data gateway, model gateway and monitor."""

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.rate_limit.redis_url is None:
            modes = [self.rate_limit.default_mode, self.auth.jwt.rate_limit.mode]
            modes += [key.rate_limit.mode for key in self.auth.api_keys]
            if "global" in modes:
                raise ValueError("a global rate limit needs rate_limit.redis_url")
        if self.events.enabled:  # events carry the keyed hash of every unit id
            self.events.check_unit_id_hash_key(str(self.model_config.get("env_prefix", "")))
        return self
