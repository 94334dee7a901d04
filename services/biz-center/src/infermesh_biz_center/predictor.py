"""The core of Predict: one request through admission, routing, the downstreams and the fallback chain.

For a request in scene S for unit U, :meth:`Predictor.predict`:

1. finds the scene (NOT_FOUND; FAILED_PRECONDITION when disabled), checks the caller may use it
   (PERMISSION_DENIED), takes a token from the caller's and the scene's rate limits and a slot of
   the scene's concurrency (RESOURCE_EXHAUSTED at once, with a retry-after hint);
2. sets the deadline: the caller's, bounded by the scene's SLO (or the default deadline when
   neither is set); every downstream call is bounded by it, minus a small reserve when the
   fallback chain can answer locally so that the fallback still answers in time;
3. assigns the unit in every active experiment of the scene (a variant that names a model routes
   the request), then applies the gray release (its target overrides the routing);
4. fetches the feature vector (data gateway) and runs the routed model (model gateway), each
   behind its own circuit breaker (one for the data gateway, one per model and version/alias);
5. maps the outputs to a prediction; when something failed (an open breaker, an error, the
   deadline), walks the fallback chain: another model version (needs the features), then a
   recent cached score of the unit, then the scene's rule-based default. A degraded answer says
   so (reason, detail, which step served); with no step left the call fails with UNAVAILABLE, or
   DEADLINE_EXCEEDED when the deadline is what ran out. A caller error in its values
   (INVALID_ARGUMENT from the data gateway) is returned as such, never hidden by a fallback.

Every answer names the variant and the model version that served; an inference event with
per-hop latencies and an exposure event per assignment go to the monitor through the chassis
emitter, off the critical path. A unit's exposure to a variant is reported once per
``exposure_dedup_s`` per instance (as experimentation SDKs do): the monitor needs each unit's
first exposure and the set of exposed units, and the inference events count the predictions.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from infermesh.common.v1 import common_pb2
from infermesh_biz_center.auth import Authenticator
from infermesh_biz_center.catalog import (
    MODEL_PARAMETERS,
    AlternateModel,
    CachedScore,
    CompiledScene,
    CompiledVariant,
    ResponseMap,
    RuleDefault,
)
from infermesh_biz_center.coalesce import Coalescer
from infermesh_biz_center.domain import (
    Assignment,
    Degradation,
    Hop,
    ModelTarget,
    PredictInput,
    Prediction,
    PredictOutcome,
    Principal,
    Reason,
    Route,
    ServedBy,
)
from infermesh_biz_center.downstream import (
    EntityRow,
    FeatureClient,
    FeatureVector,
    Guard,
    InferResult,
    ModelClient,
    pack_row,
)
from infermesh_biz_center.events import AnswerPayload, ExposurePayload, FailurePayload
from infermesh_biz_center.limits import RateLimits, SceneGate
from infermesh_biz_center.mapping import map_outputs, needs_class_labels
from infermesh_biz_center.registry import ConfigRegistry
from infermesh_biz_center.rules import Facts
from infermesh_biz_center.scorecache import ScoreCache
from infermesh_biz_center.settings import PredictSettings, ResilienceSettings
from infermesh_chassis import context as ctx
from infermesh_chassis.breaker import AsyncCircuitBreaker, CircuitOpenError
from infermesh_chassis.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InfermeshError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from infermesh_chassis.events import EventEmitter, EventSource, UnitHasher
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.validation import check_request_id

__all__ = ["Predictor"]

T = TypeVar("T")

DATA_GATEWAY_BREAKER = "data-gateway"

_log = get_logger("infermesh_biz_center.predictor")


@dataclass(slots=True)
class _Plan:
    """What routing decided for one request."""

    target: ModelTarget
    route: int
    variant: str
    assigned: list[tuple[Assignment, CompiledVariant]]
    exposed: list[Assignment]
    mapping: ResponseMap
    parameters: dict[str, Any]
    model_parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Attempt:
    """What the request has done so far: hops, the feature vector, and what went wrong."""

    hops: list[Hop] = field(default_factory=list)
    vector: FeatureVector | None = None
    reason: int = Reason.NONE
    failures: list[str] = field(default_factory=list)
    deadline_hit: bool = False
    reserve_s: float = 0.0
    """Time kept back from downstream calls for a local fallback step to answer in."""

    def failed(self, what: str, error: InfermeshError, reason: int) -> None:
        if self.reason == Reason.NONE:
            self.reason = reason
        self.failures.append(f"{what}: {error.message}")
        if isinstance(error, DeadlineExceeded):
            self.deadline_hit = True


def _reason(error: InfermeshError, *, features: bool) -> int:
    if isinstance(error, CircuitOpenError):
        return Reason.CIRCUIT_OPEN
    if isinstance(error, DeadlineExceeded):
        return Reason.DEADLINE_EXCEEDED
    if isinstance(error, ResourceExhausted):
        return Reason.DOWNSTREAM_OVERLOADED
    if features:
        return Reason.FEATURES_UNAVAILABLE
    if isinstance(error, NotFound | FailedPrecondition | Unavailable):
        return Reason.MODEL_UNAVAILABLE
    return Reason.DOWNSTREAM_ERROR


class Predictor:
    """Predict and PredictBatch, transport-free (see the module docstring)."""

    def __init__(
        self,
        registry: ConfigRegistry,
        features: FeatureClient,
        models: ModelClient,
        limits: RateLimits,
        *,
        predict: PredictSettings,
        resilience: ResilienceSettings,
        metrics: Metrics,
        emitter: EventEmitter | None = None,
        instance: str = "",
        unit_hash_key: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._features = features
        self._models = models
        self._limits = limits
        self._gate = SceneGate()
        self._cache = ScoreCache(resilience.score_cache_size, resilience.score_cache_ttl_s)
        self._predict = predict
        self._resilience = resilience
        self._emitter = emitter
        self._source = EventSource("biz-center", instance)
        self._hash_unit = UnitHasher(unit_hash_key)
        self._clock = clock
        self._breakers: dict[str, AsyncCircuitBreaker] = {}
        self._exposures: OrderedDict[tuple[str, str, str, str], float] = OrderedDict()
        batch_sizes = metrics.histogram(
            "downstream_batch_size",
            "Requests carried by one downstream call (coalescing), by downstream.",
            ("downstream",),
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        batching: dict[str, Any] = {
            "max_batch": predict.coalesce_max_batch,
            "max_in_flight": predict.coalesce_in_flight,
            "window_s": predict.coalesce_window_ms / 1000,
        }
        self._feature_batches: Coalescer[EntityRow, FeatureVector] = Coalescer(
            self._fetch_batch, on_batch=batch_sizes.labels("data_gateway").observe, **batching
        )
        self._model_batches: Coalescer[bytes, InferResult] = Coalescer(
            self._infer_batch, on_batch=batch_sizes.labels("model_gateway").observe, **batching
        )
        scene_label = ("scene",)
        self._answers = metrics.counter(
            "predictions", "Predict answers, by scene and the step that served.", (*scene_label, "served_by")
        )
        self._degraded = metrics.counter(
            "degraded_answers", "Degraded answers, by scene and reason.", (*scene_label, "reason")
        )
        self._refused = metrics.counter(
            "refused_predictions", "Predict calls refused, by scene and why.", (*scene_label, "why")
        )
        self._latency = metrics.histogram("predict_latency_seconds", "Time to answer a Predict, by scene.", scene_label)
        self._breaker_open = metrics.gauge(
            "breaker_open",
            "1 while a downstream's circuit breaker is not closed.",
            ("breaker",),
            multiprocess_mode="livemax",  # each worker has its own breakers: 1 while any is open
        )

    @property
    def gate(self) -> SceneGate:
        """The per-scene concurrency gate (shedding)."""
        return self._gate

    def breaker(self, name: str) -> AsyncCircuitBreaker:
        """The circuit breaker of downstream ``name`` (``data-gateway`` or ``model:<target>``)."""
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = AsyncCircuitBreaker(
                name,
                fail_max=self._resilience.breaker_fail_max,
                reset_timeout_s=self._resilience.breaker_reset_timeout_s,
            )
        return breaker

    async def _guarded(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        breaker = self.breaker(name)
        try:
            return await breaker.call(call)
        finally:
            self._breaker_open.labels(name).set(0 if breaker.state == "closed" else 1)

    # -- admission --------------------------------------------------------------------------

    def _scene(self, inp: PredictInput, principal: Principal) -> CompiledScene:
        if not inp.scene:
            raise InvalidArgument("scene: required")
        if not inp.unit_id:
            raise InvalidArgument("unit_id: required")
        scene = self._registry.snapshot.scenes.get(inp.scene)
        if scene is None:
            raise NotFound(f"scene '{inp.scene}' does not exist")
        Authenticator.authorize(principal, scene.name)
        if not scene.enabled:
            raise FailedPrecondition(f"scene '{scene.name}' is disabled")
        return scene

    def _deadline(self, scene: CompiledScene) -> float:
        """The absolute (monotonic) deadline of the request."""
        now = time.monotonic()
        inbound = ctx.current_deadline()
        if scene.slo_s is not None:
            return now + scene.slo_s if inbound is None else min(inbound, now + scene.slo_s)
        return now + self._predict.default_deadline_ms / 1000 if inbound is None else inbound

    async def predict(self, principal: Principal, inp: PredictInput, request_id: str) -> PredictOutcome:
        """Answer one request (see the module docstring)."""
        if inp.request_id:  # it travels in every downstream call's metadata: bounded like the chassis' own
            check_request_id(inp.request_id, "request_id")
        scene = self._scene(inp, principal)
        try:
            await self._limits.admit(principal, scene)
        except ResourceExhausted:
            self._refused.labels(scene.name, "rate_limit").inc()
            raise
        try:
            self._gate.acquire(scene)
        except ResourceExhausted:
            self._refused.labels(scene.name, "concurrency").inc()
            raise
        started = time.perf_counter()
        token = ctx.bind(ctx.CallContext(request_id, self._deadline(scene), getattr(ctx.current(), "rpc", "")))
        outcome: PredictOutcome | None = None
        error: InfermeshError | None = None
        try:
            outcome = await self._serve(scene, inp, request_id)
            return outcome
        except InfermeshError as exc:
            error = exc
            raise
        finally:
            elapsed = time.perf_counter() - started
            self._gate.release(scene.name, elapsed)
            self._latency.labels(scene.name).observe(elapsed)
            self._report(scene, inp, outcome=outcome, error=error, elapsed_s=elapsed)
            ctx.unbind(token)

    async def predict_batch(
        self, principal: Principal, items: Sequence[PredictInput], request_id: str
    ) -> list[PredictOutcome | InfermeshError]:
        """Answer every item on its own (concurrently, bounded); each is an outcome or its error."""
        if len(items) > self._predict.max_batch_items:
            raise InvalidArgument(f"items: at most {self._predict.max_batch_items} per call, got {len(items)}")
        slots = asyncio.Semaphore(self._predict.batch_concurrency)

        async def one(index: int, item: PredictInput) -> PredictOutcome | InfermeshError:
            async with slots:
                try:
                    return await self.predict(principal, item, item.request_id or f"{request_id}-{index}")
                except InfermeshError as exc:
                    return exc

        return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))

    # -- routing ----------------------------------------------------------------------------

    def _plan(self, scene: CompiledScene, facts: Facts, now: float) -> _Plan:
        assigned = self._registry.snapshot.assign(scene.name, facts.unit_id, now)
        parameters: dict[str, Any] = {}
        for _, variant in assigned:
            for key, value in variant.parameters.items():
                parameters.setdefault(key, value)
        routing = next(((a, v) for a, v in assigned if v.model is not None), None)
        exposed = [a for a, _ in assigned]
        plan = _Plan(scene.routing, Route.DEFAULT, assigned[0][0].variant if assigned else "", assigned, exposed,
                     scene.mapping.with_parameters(parameters), parameters)  # fmt: skip
        if routing is not None:
            assert routing[1].model is not None
            plan.target, plan.route, plan.variant = routing[1].model, Route.EXPERIMENT, routing[0].variant
        if scene.gray is not None and scene.gray.admits(facts, now) is not None:
            if routing is not None:  # the gray release overrides this variant: the unit is not exposed to it
                plan.exposed = [a for a in exposed if a is not routing[0]]
                plan.variant = ""
            plan.target, plan.route = scene.gray.target, Route.GRAY_RELEASE
        model_parameters = parameters.get(MODEL_PARAMETERS)
        if isinstance(model_parameters, dict):
            plan.model_parameters = model_parameters
        return plan

    # -- serving ----------------------------------------------------------------------------

    @staticmethod
    def _budget(attempt: _Attempt, cap_s: float | None = None) -> float:
        """Seconds a downstream call may take now (the deadline minus the fallback reserve)."""
        remaining = (ctx.remaining_time() or 0.0) - attempt.reserve_s
        if cap_s is not None:
            remaining = min(remaining, cap_s)
        if remaining <= 0:
            raise DeadlineExceeded("the deadline left no time for this call")
        return remaining

    def _guard(self, name: str) -> Guard:
        return lambda call: self._guarded(name, call)

    async def _fetch_batch(self, key: Hashable, rows: list[EntityRow], timeout_s: float) -> list[FeatureVector]:
        feature_service, version, attributes = key  # type: ignore[misc]
        return await self._guarded(
            DATA_GATEWAY_BREAKER,
            lambda: self._features.fetch_rows(feature_service, version, rows, dict(attributes), timeout_s=timeout_s),
        )

    async def _infer_batch(self, key: Hashable, rows: list[bytes], timeout_s: float) -> list[InferResult]:
        target, spec, count, parameters = key  # type: ignore[misc]
        return await self._guarded(
            f"model:{target}",
            lambda: self._models.infer_rows(
                target, spec, rows, count, parameters=dict(parameters), timeout_s=timeout_s
            ),
        )

    async def _fetch(self, scene: CompiledScene, inp: PredictInput, attempt: _Attempt) -> FeatureVector | None:
        began = time.perf_counter()
        try:
            budget = self._budget(attempt)
            guard = self._guard(DATA_GATEWAY_BREAKER)
            row = await self._features.entity_row(scene, inp, guard=guard, timeout_s=budget)
            key = (scene.feature_service, scene.feature_definition_version, tuple(sorted(inp.attributes.items())))
            return await self._feature_batches.submit(key, row, self._budget(attempt))
        except InvalidArgument:
            raise
        except InfermeshError as exc:
            attempt.failed("features", exc, _reason(exc, features=True))
            return None
        finally:
            attempt.hops.append(Hop("data_gateway", (time.perf_counter() - began) * 1000))

    async def _infer(
        self,
        scene: CompiledScene,
        target: ModelTarget,
        *,
        plan: _Plan,
        vector: FeatureVector,
        attempt: _Attempt,
        cap_s: float | None = None,
    ) -> tuple[Prediction, str, int] | None:
        began = time.perf_counter()
        try:
            budget = self._budget(attempt, cap_s)
            guard = self._guard(f"model:{target}")
            spec = await self._models.input_spec(target, scene.input_name, guard=guard, timeout_s=budget)
            row, count = pack_row(vector.names, vector.values, spec.datatype)
            key = (target, spec, count, tuple(sorted(plan.model_parameters.items())))
            result = await self._model_batches.submit(key, row, self._budget(attempt, cap_s), batchable=spec.batchable)
            labels: Mapping[str, tuple[str, ...]] = {}
            if needs_class_labels(plan.mapping):
                labels = await self._models.labels(result.model, result.version, timeout_s=self._budget(attempt))
            return map_outputs(result.outputs, plan.mapping, labels), result.model, result.version
        except InfermeshError as exc:
            attempt.failed(f"model {target}", exc, _reason(exc, features=False))
            return None
        finally:
            attempt.hops.append(Hop("model_gateway", (time.perf_counter() - began) * 1000))

    async def _serve(self, scene: CompiledScene, inp: PredictInput, request_id: str) -> PredictOutcome:
        facts = Facts(inp.unit_id, inp.attributes, inp.features)
        plan = self._plan(scene, facts, self._clock())
        attempt = _Attempt()
        if scene.local_fallback:
            settings = self._resilience
            total = ctx.remaining_time() or 0.0
            attempt.reserve_s = max(settings.fallback_reserve_ms / 1000, settings.fallback_reserve_fraction * total)

        def outcome(
            prediction: Prediction, model: str, version: int, degradation: Degradation, route: int
        ) -> PredictOutcome:
            return PredictOutcome(
                request_id=request_id,
                scene=scene.name,
                scene_config_version=scene.config_version,
                prediction=prediction,
                variant=plan.variant if route != Route.FALLBACK else "",
                assignments=tuple(a for a, _ in plan.assigned),
                model=model,
                model_version=version,
                degradation=degradation,
                hops=tuple(attempt.hops),
                route=route,
                lineage=attempt.vector.lineage if attempt.vector is not None else None,
                parameters=plan.parameters,
            )

        attempt.vector = await self._fetch(scene, inp, attempt)
        if attempt.vector is not None:
            answer = await self._infer(scene, plan.target, plan=plan, vector=attempt.vector, attempt=attempt)
            if answer is not None:
                prediction, model, version = answer
                self._cache.put(scene.name, inp.unit_id, prediction, model, version)
                incomplete = attempt.vector.incomplete()
                degradation = (
                    Degradation(Reason.FEATURES_FALLBACK, f"features not from their primary source: {incomplete}")
                    if incomplete
                    else Degradation()
                )
                return outcome(prediction, model, version, degradation, plan.route)
        for step in scene.fallback:
            detail = "; ".join(attempt.failures)
            if isinstance(step, AlternateModel):
                if attempt.vector is None or step.target == plan.target:
                    continue
                answer = await self._infer(
                    scene, step.target, plan=plan, vector=attempt.vector, attempt=attempt, cap_s=step.timeout_s
                )
                if answer is not None:
                    prediction, model, version = answer
                    self._cache.put(scene.name, inp.unit_id, prediction, model, version)
                    degradation = Degradation(
                        attempt.reason, f"{detail}; served by {step.target}", ServedBy.ALTERNATE_MODEL
                    )
                    return outcome(prediction, model, version, degradation, Route.FALLBACK)
            elif isinstance(step, CachedScore):
                cached = self._cache.get(scene.name, inp.unit_id, step.max_age_s)
                if cached is not None:
                    age = time.monotonic() - cached.at
                    degradation = Degradation(
                        attempt.reason, f"{detail}; cached score from {age:.1f}s ago", ServedBy.CACHED_SCORE
                    )
                    return outcome(cached.prediction, "", 0, degradation, Route.FALLBACK)
            elif isinstance(step, RuleDefault):
                degradation = Degradation(attempt.reason, f"{detail}; rule-based default", ServedBy.RULE_DEFAULT)
                return outcome(step.answer(facts), "", 0, degradation, Route.FALLBACK)
        detail = "; ".join(attempt.failures)
        if attempt.deadline_hit or (ctx.remaining_time() or 0) <= 0:
            raise DeadlineExceeded(f"scene {scene.name}: the deadline ran out with no fallback left ({detail})")
        raise Unavailable(f"scene {scene.name}: no answer and no fallback left ({detail})")

    # -- reporting --------------------------------------------------------------------------

    def _exposed_recently(self, key: tuple[str, str, str, str], now: float) -> bool:
        """Whether this unit's exposure to this variant was reported within the dedup window (and note it now)."""
        window = self._predict.exposure_dedup_s
        if window <= 0:
            return False
        last = self._exposures.get(key)
        if last is not None and now - last < window:
            return True
        self._exposures[key] = now
        self._exposures.move_to_end(key)
        if len(self._exposures) > self._predict.exposure_dedup_size:
            self._exposures.popitem(last=False)
        return False

    def _report(
        self,
        scene: CompiledScene,
        inp: PredictInput,
        *,
        outcome: PredictOutcome | None,
        error: InfermeshError | None,
        elapsed_s: float,
    ) -> None:
        """Count the answer and emit its events (runs with the request's context bound, for its request id)."""
        if outcome is not None:
            degradation = outcome.degradation
            self._answers.labels(scene.name, common_pb2.ServedBy.Name(degradation.served_by)).inc()
            if degradation.degraded:
                self._degraded.labels(scene.name, common_pb2.DegradationReason.Name(degradation.reason)).inc()
        emitter = self._emitter
        if emitter is None:
            return
        unit = self._hash_unit(inp.unit_id)
        latency_ms = elapsed_s * 1000
        if outcome is None:
            assert error is not None
            failure = FailurePayload(scene.name, unit, latency_ms, error.status_code.value[0], error.message)
            emitter.emit(self._source, failure)
            return
        now = time.monotonic()
        for a in outcome.assignments:
            if not self._exposed_recently((a.experiment, a.layer, a.variant, unit), now):
                emitter.emit(self._source, ExposurePayload(scene.name, a.experiment, a.layer, a.variant, unit))
        emitter.emit(self._source, AnswerPayload(outcome, unit, latency_ms))
