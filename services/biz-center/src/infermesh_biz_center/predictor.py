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

:meth:`Predictor.predict_batch` admits each item as a Predict, then scores the items in waves that
share their downstream calls (one GetFeatures, one ModelInfer per model and chunk of rows) before each
item without an answer walks the fallback chain on its own.

Every answer names the variant and the model version that served; an inference event with
per-hop latencies and an exposure event per assignment go to the monitor through the chassis
emitter, off the critical path. A unit's exposure to a variant is reported once per
``exposure_dedup_s`` per instance (as experimentation SDKs do): the monitor needs each unit's
first exposure and the set of exposed units, and the inference events count the predictions.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

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
from infermesh_chassis import tracing
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

_SPLIT_ON = (InvalidArgument, FailedPrecondition)
"""Errors of a shared downstream call about its content: retried one item at a time."""
_NOT_DEGRADED = Degradation()

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


@dataclass(slots=True)
class _Job:
    """One request (a Predict, or an item of a PredictBatch) from its admission to its answer."""

    index: int
    """Its place in its PredictBatch (0 for a Predict)."""
    inp: PredictInput
    request_id: str
    scene: CompiledScene
    facts: Facts = field(init=False)
    plan: _Plan = field(init=False)
    attempt: _Attempt = field(init=False)
    context: ctx.CallContext | None = None
    """Its own context (its request id, the wave's deadline), for its fallback chain and its report."""
    answer: tuple[Prediction, str, int] | None = None
    """The routed model's answer, once the wave's calls are done."""
    error: InfermeshError | None = None
    """A caller error (its values): the item's answer, never hidden by a fallback."""


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
        self._batch_sizes = batch_sizes = metrics.histogram(
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

    async def _admit(self, principal: Principal, inp: PredictInput) -> CompiledScene:
        """The request's scene, once the caller may use it and the rate limits let the request in."""
        if inp.request_id:  # it travels in every downstream call's metadata: bounded like the chassis' own
            check_request_id(inp.request_id, "request_id")
        scene = self._scene(inp, principal)
        try:
            await self._limits.admit(principal, scene)
        except ResourceExhausted:
            self._refused.labels(scene.name, "rate_limit").inc()
            raise
        return scene

    def _acquire(self, scene: CompiledScene) -> None:
        """A slot of the scene's concurrency (RESOURCE_EXHAUSTED, counted, when none is free)."""
        try:
            self._gate.acquire(scene)
        except ResourceExhausted:
            self._refused.labels(scene.name, "concurrency").inc()
            raise

    @staticmethod
    def _context(request_id: str, deadline: float) -> ctx.CallContext:
        """The context a request runs with: its id and deadline, the current call's RPC and trace."""
        call = ctx.current()
        bound = ctx.CallContext(request_id, deadline, getattr(call, "rpc", ""), getattr(call, "tracing", None))
        bound.traceparent = getattr(call, "traceparent", "")
        return bound

    def _finish(
        self,
        scene: CompiledScene,
        inp: PredictInput,
        *,
        outcome: PredictOutcome | None,
        error: InfermeshError | None,
        elapsed_s: float,
    ) -> None:
        """A request is over: its slot back, its latency, its counts and events (its context bound)."""
        self._gate.release(scene.name, elapsed_s)
        self._latency.labels(scene.name).observe(elapsed_s)
        self._report(scene, inp, outcome=outcome, error=error, elapsed_s=elapsed_s)

    async def predict(self, principal: Principal, inp: PredictInput, request_id: str) -> PredictOutcome:
        """Answer one request (see the module docstring)."""
        scene = await self._admit(principal, inp)
        self._acquire(scene)
        started = time.perf_counter()
        token = ctx.bind(self._context(request_id, self._deadline(scene)))
        outcome: PredictOutcome | None = None
        error: InfermeshError | None = None
        try:
            outcome = await self._serve(scene, inp, request_id)
            return outcome
        except InfermeshError as exc:
            error = exc
            raise
        finally:
            self._finish(scene, inp, outcome=outcome, error=error, elapsed_s=time.perf_counter() - started)
            ctx.unbind(token)

    async def predict_batch(
        self, principal: Principal, items: Sequence[PredictInput], request_id: str
    ) -> list[PredictOutcome | InfermeshError]:
        """Answer every item on its own; each is an outcome or its error.

        Each item is admitted as a Predict is (request id, scene, caller, rate limits), then the items are
        scored in waves of at most ``batch_concurrency``: every item of a wave holds a slot of its scene's
        concurrency, and the wave shares its downstream calls (one GetFeatures per scene and routing
        attributes, one ModelInfer per model and chunk of ``batch_model_rows``), then each item that got
        no answer walks its scene's fallback chain on its own. A slot refused to an item while the wave
        already holds others ends the wave (the item waits for the next one); refused to the first item
        of a wave, it is that item's RESOURCE_EXHAUSTED, as for a Predict.
        """
        if len(items) > self._predict.max_batch_items:
            raise InvalidArgument(f"items: at most {self._predict.max_batch_items} per call, got {len(items)}")
        answers: list[PredictOutcome | InfermeshError | None] = [None] * len(items)
        waiting: deque[_Job] = deque()
        for index, item in enumerate(items):
            try:
                scene = await self._admit(principal, item)
            except InfermeshError as exc:
                answers[index] = exc
                continue
            waiting.append(_Job(index, item, item.request_id or f"{request_id}-{index}", scene))
        while waiting:
            wave = self._wave(waiting, answers)
            scenes: dict[str, list[_Job]] = {}
            for job in wave:
                scenes.setdefault(job.scene.name, []).append(job)
            await asyncio.gather(*(self._serve_jobs(jobs, answers) for jobs in scenes.values()))
        return cast(list[PredictOutcome | InfermeshError], answers)  # every item answered by now

    def _wave(self, waiting: deque[_Job], answers: list[PredictOutcome | InfermeshError | None]) -> list[_Job]:
        """The next wave of ``waiting`` (see :meth:`predict_batch`), each of its items holding a slot."""
        wave: list[_Job] = []
        while waiting and len(wave) < self._predict.batch_concurrency:
            job = waiting[0]
            try:
                self._gate.acquire(job.scene)
            except ResourceExhausted as exc:
                if wave:
                    break  # the wave's own items hold slots: this one goes with the next wave
                self._refused.labels(job.scene.name, "concurrency").inc()
                answers[job.index] = exc
            else:
                wave.append(job)
            waiting.popleft()
        return wave

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
        job = _Job(0, inp, request_id, scene)
        job.facts = Facts(inp.unit_id, inp.attributes, inp.features)
        job.plan = plan = self._plan(scene, job.facts, self._clock())
        job.attempt = attempt = _Attempt(reserve_s=self._reserve(scene))
        attempt.vector = await self._fetch(scene, inp, attempt)
        if attempt.vector is not None:
            answer = await self._infer(scene, plan.target, plan=plan, vector=attempt.vector, attempt=attempt)
            if answer is not None:
                return self._primary(job, answer)
        return await self._fall_back(job)

    def _reserve(self, scene: CompiledScene) -> float:
        """Seconds kept back from the downstream calls for the scene's local fallback (0 without one)."""
        if not scene.local_fallback:
            return 0.0
        settings = self._resilience
        total = ctx.remaining_time() or 0.0
        return max(settings.fallback_reserve_ms / 1000, settings.fallback_reserve_fraction * total)

    @staticmethod
    def _outcome(
        job: _Job, answer: tuple[Prediction, str, int], degradation: Degradation, route: int
    ) -> PredictOutcome:
        scene, plan, attempt = job.scene, job.plan, job.attempt
        prediction, model, version = answer
        return PredictOutcome(
            request_id=job.request_id,
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

    def _primary(self, job: _Job, answer: tuple[Prediction, str, int]) -> PredictOutcome:
        """The routed model's answer (degraded only when features did not come from their primary source)."""
        prediction, model, version = answer
        self._cache.put(job.scene.name, job.inp.unit_id, prediction, model, version)
        vector = job.attempt.vector
        incomplete = vector.incomplete() if vector is not None else ""
        degradation = (
            Degradation(Reason.FEATURES_FALLBACK, f"features not from their primary source: {incomplete}")
            if incomplete
            else _NOT_DEGRADED
        )
        return self._outcome(job, answer, degradation, job.plan.route)

    async def _fall_back(self, job: _Job) -> PredictOutcome:
        """Walk the scene's fallback chain after the routed model gave no answer."""
        scene, inp, plan, attempt = job.scene, job.inp, job.plan, job.attempt
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
                    return self._outcome(job, answer, degradation, Route.FALLBACK)
            elif isinstance(step, CachedScore):
                cached = self._cache.get(scene.name, inp.unit_id, step.max_age_s)
                if cached is not None:
                    age = time.monotonic() - cached.at
                    degradation = Degradation(
                        attempt.reason, f"{detail}; cached score from {age:.1f}s ago", ServedBy.CACHED_SCORE
                    )
                    answer = (cached.prediction, "", 0)
                    return self._outcome(job, answer, degradation, Route.FALLBACK)
            elif isinstance(step, RuleDefault):
                degradation = Degradation(attempt.reason, f"{detail}; rule-based default", ServedBy.RULE_DEFAULT)
                answer = (step.answer(job.facts), "", 0)
                return self._outcome(job, answer, degradation, Route.FALLBACK)
        detail = "; ".join(attempt.failures)
        if attempt.deadline_hit or (ctx.remaining_time() or 0) <= 0:
            raise DeadlineExceeded(f"scene {scene.name}: the deadline ran out with no fallback left ({detail})")
        raise Unavailable(f"scene {scene.name}: no answer and no fallback left ({detail})")

    # -- PredictBatch waves -----------------------------------------------------------------

    async def _serve_jobs(self, jobs: list[_Job], answers: list[PredictOutcome | InfermeshError | None]) -> None:
        """One scene's items of a wave (their slots held): scored together, concluded and finished one by one."""
        scene = jobs[0].scene
        deadline = self._deadline(scene)
        started = time.perf_counter()
        results: list[PredictOutcome | InfermeshError | None] = [None] * len(jobs)
        try:
            token = ctx.bind(self._context(jobs[0].request_id, deadline))  # the shared calls run for the first item
            try:
                await self._score_jobs(scene, jobs)
            finally:
                ctx.unbind(token)
            for i, job in enumerate(jobs):
                job.context = self._context(job.request_id, deadline)
                token = ctx.bind(job.context)
                try:
                    results[i] = await self._conclude(job)
                except InfermeshError as exc:
                    results[i] = exc
                finally:
                    ctx.unbind(token)
        finally:
            elapsed = time.perf_counter() - started
            for job, result in zip(jobs, results, strict=True):
                if result is None:  # something else than a request's error broke the wave
                    self._gate.release(scene.name, elapsed)
                    continue
                answers[job.index] = result
                token = ctx.bind(job.context)
                try:
                    if isinstance(result, InfermeshError):
                        self._finish(scene, job.inp, outcome=None, error=result, elapsed_s=elapsed)
                    else:
                        self._finish(scene, job.inp, outcome=result, error=None, elapsed_s=elapsed)
                finally:
                    ctx.unbind(token)

    async def _conclude(self, job: _Job) -> PredictOutcome:
        """The item's answer once the wave's calls are done: the model's, else its fallback chain's."""
        if job.error is not None:
            raise job.error
        if job.answer is not None:
            return self._primary(job, job.answer)
        return await self._fall_back(job)

    def _shared_plan(self, scene: CompiledScene, now: float) -> _Plan | None:
        """The one plan of every unit of ``scene`` when neither an active experiment nor a gray release can
        tell units apart (None otherwise)."""
        if scene.gray is not None:
            return None
        if any(e.active(now) for e in self._registry.snapshot.experiments.get(scene.name, ())):
            return None
        return self._plan(scene, Facts("", {}, {}), now)

    async def _score_jobs(self, scene: CompiledScene, jobs: list[_Job]) -> None:
        """The primary path of a scene's items of a wave, through shared downstream calls: each item ends
        with its answer, its own error (a caller error), or the failures its fallback chain starts from."""
        now = self._clock()
        reserve = self._reserve(scene)
        shared = self._shared_plan(scene, now)
        for job in jobs:
            job.facts = Facts(job.inp.unit_id, job.inp.attributes, job.inp.features)
            job.plan = shared if shared is not None else self._plan(scene, job.facts, now)
            job.attempt = _Attempt(reserve_s=reserve)
        await self._fetch_jobs(scene, jobs)
        fetched = [job for job in jobs if job.attempt.vector is not None]
        if not fetched:
            return
        began = time.perf_counter()
        targets: dict[ModelTarget, list[_Job]] = {}
        for job in fetched:
            targets.setdefault(job.plan.target, []).append(job)
        await asyncio.gather(*(self._infer_jobs(scene, target, members) for target, members in targets.items()))
        hop = Hop("model_gateway", (time.perf_counter() - began) * 1000)
        for job in fetched:
            job.attempt.hops.append(hop)

    async def _fetch_jobs(self, scene: CompiledScene, jobs: list[_Job]) -> None:
        """The feature vectors of ``jobs``: one GetFeatures per routing attributes (see :meth:`_fetch`)."""
        began = time.perf_counter()
        try:
            budget = self._budget(jobs[0].attempt)
            guard = self._guard(DATA_GATEWAY_BREAKER)
            rows = await self._features.entity_rows(scene, [job.inp for job in jobs], guard=guard, timeout_s=budget)
        except InvalidArgument as exc:
            for job in jobs:
                job.error = exc
            rows = []
        except InfermeshError as exc:
            for job in jobs:
                job.attempt.failed("features", exc, _reason(exc, features=True))
            rows = []
        groups: dict[Hashable, tuple[list[_Job], list[EntityRow]]] = {}
        for job, row in zip(jobs, rows, strict=False):
            if isinstance(row, InvalidArgument):
                job.error = row
                continue
            attributes = job.inp.attributes
            key = (
                scene.feature_service,
                scene.feature_definition_version,
                tuple(sorted(attributes.items())) if attributes else (),
            )
            members, member_rows = groups.setdefault(key, ([], []))
            members.append(job)
            member_rows.append(row)
        if groups:
            await asyncio.gather(*(self._fetch_group(key, *group) for key, group in groups.items()))
        hop = Hop("data_gateway", (time.perf_counter() - began) * 1000)
        for job in jobs:
            job.attempt.hops.append(hop)

    async def _fetch_group(self, key: Hashable, jobs: list[_Job], rows: list[EntityRow]) -> None:
        """One GetFeatures for ``jobs``; a content error is retried one item at a time, so one bad item cannot
        fail the others (as coalesced calls are)."""
        try:
            self._batch_sizes.labels("data_gateway").observe(len(rows))
            vectors = await self._fetch_batch(key, rows, self._budget(jobs[0].attempt))
        except _SPLIT_ON as exc:
            if len(jobs) > 1:
                singles = zip(jobs, rows, strict=True)
                await asyncio.gather(*(self._fetch_group(key, [job], [row]) for job, row in singles))
            elif isinstance(exc, InvalidArgument):
                jobs[0].error = exc  # the caller's values: its error, never hidden by a fallback
            else:
                jobs[0].attempt.failed("features", exc, _reason(exc, features=True))
            return
        except InfermeshError as exc:
            for job in jobs:
                job.attempt.failed("features", exc, _reason(exc, features=True))
            return
        for job, vector in zip(jobs, vectors, strict=True):
            job.attempt.vector = vector

    async def _infer_jobs(self, scene: CompiledScene, target: ModelTarget, jobs: list[_Job]) -> None:
        """The answers of ``target`` for ``jobs``: one ModelInfer per model parameters and chunk of
        ``batch_model_rows`` rows (see :meth:`_infer`)."""
        what = f"model {target}"
        try:
            guard = self._guard(f"model:{target}")
            spec = await self._models.input_spec(
                target, scene.input_name, guard=guard, timeout_s=self._budget(jobs[0].attempt)
            )
        except InfermeshError as exc:
            for job in jobs:
                job.attempt.failed(what, exc, _reason(exc, features=False))
            return
        groups: dict[Hashable, tuple[list[_Job], list[bytes]]] = {}
        for job in jobs:
            vector = job.attempt.vector
            assert vector is not None
            try:
                row, count = pack_row(vector.names, vector.values, spec.datatype)
            except InfermeshError as exc:
                job.attempt.failed(what, exc, _reason(exc, features=False))
                continue
            parameters = job.plan.model_parameters
            key = (target, spec, count, tuple(sorted(parameters.items())) if parameters else ())
            members, member_rows = groups.setdefault(key, ([], []))
            members.append(job)
            member_rows.append(row)
        size = self._predict.batch_model_rows if spec.batchable else 1
        await asyncio.gather(
            *(
                self._infer_group(key, members[at : at + size], rows[at : at + size], what)
                for key, (members, rows) in groups.items()
                for at in range(0, len(members), size)
            )
        )

    async def _infer_group(self, key: Hashable, jobs: list[_Job], rows: list[bytes], what: str) -> None:
        """One ModelInfer for ``jobs``, then each one's mapped answer; a content error is retried one item
        at a time."""
        try:
            self._batch_sizes.labels("model_gateway").observe(len(rows))
            results = await self._infer_batch(key, rows, self._budget(jobs[0].attempt))
        except _SPLIT_ON as exc:
            if len(jobs) > 1:
                await asyncio.gather(
                    *(self._infer_group(key, [job], [row], what) for job, row in zip(jobs, rows, strict=True))
                )
            else:
                jobs[0].attempt.failed(what, exc, _reason(exc, features=False))
            return
        except InfermeshError as exc:
            for job in jobs:
                job.attempt.failed(what, exc, _reason(exc, features=False))
            return
        labels: dict[tuple[str, int], Mapping[str, tuple[str, ...]]] = {}
        for job, result in zip(jobs, results, strict=True):
            mapping = job.plan.mapping
            try:
                known: Mapping[str, tuple[str, ...]] = {}
                if needs_class_labels(mapping):
                    served = (result.model, result.version)
                    if served not in labels:
                        labels[served] = await self._models.labels(
                            result.model, result.version, timeout_s=self._budget(job.attempt)
                        )
                    known = labels[served]
                job.answer = (map_outputs(result.outputs, mapping, known), result.model, result.version)
            except InfermeshError as exc:
                job.attempt.failed(what, exc, _reason(exc, features=False))

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
        if getattr(ctx.current(), "tracing", None) is not None:
            _annotate(scene, outcome)
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


def _annotate(scene: CompiledScene, outcome: PredictOutcome | None) -> None:
    """Mark the request's span with its scene and, for a degraded answer, the fallback that served it."""
    tracing.annotate(**{"infermesh.scene": scene.name})
    if outcome is not None and outcome.degradation.degraded:
        degradation = outcome.degradation
        tracing.annotate(
            **{
                "infermesh.degraded": True,
                "infermesh.fallback": common_pb2.ServedBy.Name(degradation.served_by),
                "infermesh.degradation_reason": common_pb2.DegradationReason.Name(degradation.reason),
            }
        )
