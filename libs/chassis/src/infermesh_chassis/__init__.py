"""infermesh's service chassis: what every service stands on.

Modules: :mod:`.settings` (typed settings), :mod:`.logs` (structlog JSON),
:mod:`.context` (request id and deadline), :mod:`.errors` (one error hierarchy carrying gRPC
status codes), :mod:`.interceptors` and :mod:`.metrics` (RED metrics, error mapping),
:mod:`.server` (grpc.aio bootstrap with health, reflection, graceful shutdown),
:mod:`.client` (channels, deadlines, idempotent retries), :mod:`.discovery` (static and
Consul), :mod:`.breaker` and :mod:`.ratelimit` (resilience), :mod:`.events` (non-blocking
event emission), :mod:`.jetstream` (NATS JetStream streams and durable consumers),
:mod:`.docstore` (records in SQLite or PostgreSQL, serialized writes, Alembic migrations),
:mod:`.documents` (YAML files checked by pydantic models, problems named by file, line and field).
"""
