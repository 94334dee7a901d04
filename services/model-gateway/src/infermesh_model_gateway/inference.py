"""The inference core: route → admit → call a worker → mirror → record, whatever carries the request.

:meth:`InferenceCore.infer` takes a KServe v2 ``ModelInferRequest`` the front decoded, with the
bytes it was decoded from, and answers Triton's serialized ``ModelInferResponse``:

1. **route**: the :class:`~.routing.Router` resolves the version (empty version: the traffic
   policy; a number or an alias pins; ``churn@canary`` or the ``alias`` parameter too; a sticky
   policy's routing key from the request's parameter, else from the call's headers);
2. **admit**: the request is validated against that version's schema (raw contents measured in
   place, never copied or decoded), and refused with RESOURCE_EXHAUSTED when the version already
   has ``inference.max_in_flight_per_version`` inferences in flight;
3. **call a worker**: the caller's bytes go to Triton readdressed by a field appended to them
   (:mod:`.wire`; only a request carrying the gateway's own ``alias`` parameter is re-encoded,
   without it) through the :class:`~.pool.WorkerPool`, the adapter that owns the gRPC channels
   to the workers; Triton's answer comes back as the bytes Triton sent, with the model and the
   version that served appended the same way;
4. **mirror**: a share of the requests goes, as the same bytes, to the shadow version in the
   background; its answer is reported, never returned, and cannot slow or fail the primary;
5. **record**: metrics, the routing decision on the trace, and an inference event (primitives and
   references only; the emitter builds the event off the request path, see :mod:`.events`).

The core has no gRPC in it: it takes the call's remaining time and a way to read its headers, and
returns the deprecation warning a caller pinned to a deprecated version gets, for the front to put
where its protocol carries it. Errors are the chassis' (they carry their status code). The other
KServe v2 RPCs read the router and the pool through the core too (:meth:`~InferenceCore.ready`,
:meth:`~InferenceCore.model_config`, ...).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from infermesh_chassis import tracing
from infermesh_chassis.errors import FailedPrecondition, InfermeshError, Internal, ResourceExhausted, Unavailable
from infermesh_chassis.events import EventEmitter, EventSource
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_model_gateway.domain import ModelVersionRecord, VersionState
from infermesh_model_gateway.events import InferencePayload, ShadowPayload
from infermesh_model_gateway.routing import Router, deprecation_warning
from infermesh_model_gateway.settings import InferenceSettings
from infermesh_model_gateway.validation import RequestValidator
from infermesh_model_gateway.wire import string_field

if TYPE_CHECKING:
    from tritonclient.grpc.service_pb2 import ModelConfigResponse, ModelInferRequest, ModelStatistics

    from infermesh_model_gateway.pool import WorkerPool

__all__ = ["Headers", "InferenceCore"]

Headers = Callable[[], Iterable[tuple[str, str | bytes]] | None]
"""Reads the headers of the call that carries a request (only when a sticky policy needs them)."""

_MODEL_NAME, _MODEL_VERSION = 1, 2
"""The fields that address a ModelInferRequest and name who answered a ModelInferResponse."""

_INTERNAL = Internal.status_code.value[0]

_log = get_logger("infermesh_model_gateway.inference")


class _Target:
    """What the core keeps per version it forwards to: its validator, the bytes that readdress a
    request to its Triton model, and the bytes that name it in an answer."""

    __slots__ = ("answered_by", "record", "to_triton", "triton_name", "validator")

    def __init__(self, record: ModelVersionRecord, max_request_bytes: int) -> None:
        self.record = record
        self.triton_name = record.triton_name
        self.validator = RequestValidator(record, max_request_bytes)
        self.to_triton = string_field(_MODEL_NAME, self.triton_name) + string_field(_MODEL_VERSION, "")
        self.answered_by = string_field(_MODEL_NAME, record.model) + string_field(_MODEL_VERSION, str(record.version))


class InferenceCore:
    """The data plane's work in front of the worker pool (see the module docstring)."""

    def __init__(
        self,
        router: Router,
        pool: WorkerPool,
        settings: InferenceSettings,
        metrics: Metrics,
        *,
        emitter: EventEmitter | None = None,
        instance: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self._router = router
        self._pool = pool
        self._settings = settings
        self._emitter = emitter
        self._source = EventSource("model-gateway", instance)
        self._rng = rng or random.Random()
        self._targets: dict[str, _Target] = {}
        self._shadows: set[asyncio.Task[None]] = set()
        self._served = metrics.counter("inferences", "Inferences served, by model and version.", ("model", "version"))
        self._shadowed = metrics.counter("shadow_requests", "Mirrored requests sent to a shadow version.", ("model",))
        self._shadow_skipped = metrics.counter(
            "shadow_skipped", "Mirrored requests skipped because too many were in flight.", ("model",)
        )
        self._shadow_failed = metrics.counter("shadow_failures", "Mirrored requests that failed.", ("model",))
        self._refused = metrics.counter(
            "inferences_refused", "Inferences refused because their version had too many in flight.", ("model",)
        )

    def _target(self, record: ModelVersionRecord) -> _Target:
        target = self._targets.get(record.triton_name)
        if target is None or target.record is not record:
            target = self._targets[record.triton_name] = _Target(record, self._settings.max_request_bytes)
        return target

    @staticmethod
    def _param(request: ModelInferRequest, name: str) -> str:
        if name not in request.parameters:
            return ""
        value = request.parameters[name]
        kind = value.WhichOneof("parameter_choice")
        return "" if kind is None else str(getattr(value, kind))

    def _routing_key(self, request: ModelInferRequest, headers: Headers) -> str | None:
        key_name = self._router.sticky_key(request.model_name)
        if not key_name:
            return None
        key = self._param(request, key_name)
        if key:
            return key
        for meta_key, value in headers() or ():
            if meta_key == key_name.lower():
                return value if isinstance(value, str) else value.decode()
        return None

    async def infer(
        self, request: ModelInferRequest, payload: bytes, *, time_remaining: float | None, headers: Headers
    ) -> tuple[bytes, str]:
        """Route, admit, forward, mirror and report one request (``payload``: its serialized form).

        Triton's serialized answer naming the model and the version that served, and the
        deprecation warning of a caller pinned to a deprecated version ("" otherwise).
        ``time_remaining`` is the caller's deadline in seconds (None: ``inference.default_timeout_s``).
        """
        started = time.perf_counter()
        alias = self._param(request, "alias")
        route = self._router.resolve(
            request.model_name, request.model_version, alias=alias, routing_key=self._routing_key(request, headers)
        )
        primary = self._target(route.primary)
        record = primary.record
        primary.validator.validate(request, payload)
        limit = self._settings.max_in_flight_per_version
        if self._pool.in_flight(primary.triton_name) >= limit:
            self._refused.labels(record.model).inc()
            raise ResourceExhausted(
                f"model '{record.model}' version {record.version} already has {limit} inferences in flight "
                "through this gateway (inference.max_in_flight_per_version); retry after a short backoff",
                retry_after_s=self._settings.overload_retry_after_s,
            )
        traced = tracing.active()
        if traced:
            tracing.annotate(
                **{
                    "infermesh.model": record.model,
                    "infermesh.model_version": record.version,
                    "infermesh.route": "pinned" if route.pinned else "traffic_policy",
                    "infermesh.alias": alias,
                    "infermesh.shadow_version": route.shadow.version if route.shadow is not None else 0,
                }
            )
        warning = deprecation_warning(record) if route.pinned and record.deprecated_until is not None else ""
        if alias:  # the gateway's own parameter is not Triton's: the one case that re-encodes the request
            del request.parameters["alias"]
            payload = request.SerializeToString()
        timeout_s = self._settings.default_timeout_s if time_remaining is None else max(0.001, time_remaining)
        try:
            if traced:
                with tracing.span("worker_call", **{"infermesh.triton_model": primary.triton_name}) as span:
                    try:
                        reply = await self._pool.infer_bytes(
                            primary.triton_name, payload + primary.to_triton, timeout_s=timeout_s
                        )
                    except InfermeshError as exc:
                        tracing.failed(span, f"{exc.status_code.name}: {exc.message}")
                        raise
            else:
                reply = await self._pool.infer_bytes(
                    primary.triton_name, payload + primary.to_triton, timeout_s=timeout_s
                )
        except InfermeshError as exc:
            self._report(record, request, None, started, exc)
            raise
        self._served.labels(record.model, str(record.version)).inc()
        reply += primary.answered_by
        if route.shadow is not None:
            self._mirror(
                route.shadow,
                request,
                payload,
                primary=record,
                reply=reply,
                primary_latency_ms=(time.perf_counter() - started) * 1000,
            )
        if self._emitter is not None:
            self._report(record, request, reply, started, None)
        return reply, warning

    def _report(
        self,
        record: ModelVersionRecord,
        request: ModelInferRequest,
        response: bytes | None,
        started: float,
        error: InfermeshError | None,
    ) -> None:
        if self._emitter is None:
            return
        payload = InferencePayload(
            record,
            request,
            response,
            latency_ms=(time.perf_counter() - started) * 1000,
            status_code=error.status_code.value[0] if error is not None else 0,
            error_message=error.message if error is not None else "",
            sample=self._rng.random() < self._settings.event_input_sample_rate,
        )
        self._emitter.emit(self._source, payload)

    def _mirror(
        self,
        shadow: ModelVersionRecord,
        request: ModelInferRequest,
        payload: bytes,
        *,
        primary: ModelVersionRecord,
        reply: bytes,
        primary_latency_ms: float,
    ) -> None:
        if len(self._shadows) >= self._settings.shadow_max_in_flight:
            self._shadow_skipped.labels(primary.model).inc()
            return
        self._shadowed.labels(primary.model).inc()
        task = asyncio.get_running_loop().create_task(
            self._run_shadow(
                shadow, request, payload, primary=primary, primary_reply=reply, primary_latency_ms=primary_latency_ms
            )
        )
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _run_shadow(
        self,
        shadow: ModelVersionRecord,
        request: ModelInferRequest,
        payload: bytes,
        *,
        primary: ModelVersionRecord,
        primary_reply: bytes,
        primary_latency_ms: float,
    ) -> None:
        """Send the primary's request bytes, readdressed, to the shadow version and report both answers."""
        started = time.perf_counter()
        response: bytes | None = None
        error: tuple[int, str] | None = None
        with tracing.span(
            "mirror", **{"infermesh.model": primary.model, "infermesh.shadow_version": shadow.version}
        ) as span:
            try:
                target = self._target(shadow)
                target.validator.validate(request, payload)
                response = await self._pool.infer_bytes(
                    target.triton_name, payload + target.to_triton, timeout_s=self._settings.shadow_timeout_s
                )
            except InfermeshError as exc:
                self._shadow_failed.labels(primary.model).inc()
                error = (exc.status_code.value[0], exc.message)
            except Exception as exc:  # a shadow must never take anything down with it
                self._shadow_failed.labels(primary.model).inc()
                _log.exception("shadow_failed", model=primary.model, shadow_version=shadow.version)
                error = (_INTERNAL, str(exc))
            if error is not None:
                tracing.failed(span, error[1])
        if self._emitter is not None:
            latency_ms = (time.perf_counter() - started) * 1000
            event = ShadowPayload(
                primary,
                primary_reply,
                primary_latency_ms=primary_latency_ms,
                shadow=shadow,
                shadow_response=response,
                shadow_latency_ms=latency_ms,
                error=error,
            )
            self._emitter.emit(self._source, event)

    async def drain_shadows(self) -> None:
        """Wait for mirrored requests still in flight (at shutdown)."""
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)

    # --- the server and its models -----------------------------------------------------------------

    def ready(self) -> bool:
        """Whether a worker is healthy and not ejected."""
        now = time.monotonic()
        return any(w.available(now) for w in self._pool.workers)

    def version(self, model: str, version: str = "") -> ModelVersionRecord:
        """The version a call names (number, alias, or empty for the policy's choice)."""
        return self._router.version(model, version)

    def serving_versions(self, model: str) -> list[ModelVersionRecord]:
        """Every SERVING version of ``model``, oldest first."""
        return self._router.serving_versions(model)

    def model_ready(self, model: str, version: str = "") -> bool:
        """Whether the version a call names serves and a healthy worker has it ready (False for one the
        router refuses with FAILED_PRECONDITION; NOT_FOUND stays an error)."""
        try:
            record = self._router.version(model, version)
        except FailedPrecondition:
            return False
        return record.state is VersionState.SERVING and bool(self._pool.candidates(record.triton_name))

    def index(self) -> list[tuple[ModelVersionRecord, bool]]:
        """Every SERVING version of every model, and whether a healthy worker has it ready."""
        return [
            (record, bool(self._pool.candidates(record.triton_name)))
            for name in self._router.models()
            for record in self._router.serving_versions(name)
        ]

    async def model_config(self, model: str, version: str = "") -> ModelConfigResponse:
        """Triton's configuration of the version a call names, in the model's name."""
        record = self._router.version(model, version)
        workers = self._pool.candidates(record.triton_name)
        if not workers:
            raise Unavailable(f"no healthy worker has version {record.version} of model '{record.model}' ready")
        reply = await self._pool.model_config(workers[0], record.triton_name)
        reply.config.name = record.model
        return reply

    async def statistics(self, model: str, version: str = "") -> list[tuple[ModelVersionRecord, list[ModelStatistics]]]:
        """Each named version (every serving one of ``model``, or of every model without a name) with
        the statistics each healthy worker that has it ready keeps of it."""
        if model:
            records = [self._router.version(model, version)] if version else self._router.serving_versions(model)
        else:
            records = [v for m in self._router.models() for v in self._router.serving_versions(m)]
        found = []
        for record in records:
            parts: list[ModelStatistics] = []
            for worker in self._pool.candidates(record.triton_name):
                reply = await self._pool.model_statistics(worker, record.triton_name)
                parts.extend(reply.model_stats)
            found.append((record, parts))
        return found
