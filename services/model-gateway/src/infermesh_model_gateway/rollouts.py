"""SLO-gated canary rollouts, and retirements that come due, driven by one controller per model.

Every gateway instance runs a :class:`RolloutController`. Each tick it looks at the active
rollouts and the versions whose retirement is due; for each model it first takes that model's
lease in the registry (a row with a holder and an expiry, renewed every tick), so exactly one
instance drives a model even when several share the registry, and another takes over when the
holder stops (it releases its leases) or dies (its lease expires).

A rollout walks its steps (e.g. shadow → 1% → 5% → 25% → 50% → 100%): each step sets the
model's traffic to ``baseline: 100 - p``, ``candidate: p`` (plus a mirror of the candidate when
the step shadows). Every ``evaluation_interval`` the controller asks the monitor's ``CheckSlo``
whether the candidate meets the rollout's gates over the time spent on the step:

- FAIL: traffic goes back to the baseline at once (``production``, 100%) and the rollout is
  ROLLED_BACK, with the failed criteria as the reason;
- PASS once the step's dwell time has passed (and, by the check, its request count): the next
  step, or, after the last one, the candidate becomes ``production`` and the rollout SUCCEEDED;
- INSUFFICIENT_DATA, or a monitor that cannot answer: hold and ask again.

Operators can pause, resume, abort and promote at any time (:class:`RolloutOperations`); every
transition is one registry transaction (traffic and rollout together), audited, and emitted as an
audit event. A gateway restarted mid-rollout resumes where the rollout is: its state, step and step
start live in the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from google.protobuf import json_format

from infermesh.common.v1 import common_pb2
from infermesh.monitor.v1 import monitor_pb2
from infermesh_chassis.errors import FailedPrecondition, InfermeshError, InvalidArgument
from infermesh_chassis.events import AuditPayload, EventEmitter, EventSource
from infermesh_chassis.logs import get_logger
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_model_gateway.deployment import Deployer
from infermesh_model_gateway.domain import (
    Mirror,
    ModelRecord,
    Rollout,
    RolloutDecision,
    RolloutState,
    RolloutStep,
    TrafficPolicy,
    VersionState,
    utc_now,
)
from infermesh_model_gateway.registry import PRODUCTION, Registry
from infermesh_model_gateway.settings import RolloutSettings

__all__ = ["CONTROLLER_ACTOR", "GateCheck", "RolloutController", "RolloutOperations", "new_rollout"]

_log = get_logger("infermesh_model_gateway.rollouts")

CONTROLLER_ACTOR = "rollout-controller"
_WEIGHT_SCALE = 100
"""Weights are percent times this, so a 0.5% step is representable."""

GateCheck = Callable[[monitor_pb2.CheckSloRequest], Awaitable[common_pb2.SloEvaluation]]
"""The monitor's CheckSlo (a client call in production)."""


def new_rollout(
    model: ModelRecord,
    *,
    candidate: int,
    baseline: int,
    steps: tuple[RolloutStep, ...],
    gates: common_pb2.SloThresholds,
    min_dwell_s: float,
    min_requests: int,
    evaluation_interval_s: float,
) -> Rollout:
    """A PENDING rollout, validated (INVALID_ARGUMENT naming the field)."""
    base = baseline or model.aliases.get(PRODUCTION, 0)
    if not base:
        raise FailedPrecondition(
            f"model '{model.name}' has no production version to use as the baseline: give baseline_version"
        )
    if candidate <= 0:
        raise InvalidArgument("spec.candidate_version is required")
    if candidate == base:
        raise InvalidArgument(f"spec.candidate_version {candidate} is the baseline itself")
    for index, step in enumerate(steps):
        if not 0 <= step.candidate_percent <= 100:
            raise InvalidArgument(f"spec.steps[{index}].candidate_percent must be in [0, 100]")
        if not 0 <= step.shadow_fraction <= 1:
            raise InvalidArgument(f"spec.steps[{index}].shadow_fraction must be in [0, 1]")
        if step.candidate_percent == 0 and step.shadow_fraction == 0:
            raise InvalidArgument(f"spec.steps[{index}] sends the candidate nothing: give a percent or a shadow")
    if min_requests < 0 or min_dwell_s < 0 or evaluation_interval_s <= 0:
        raise InvalidArgument("spec.min_requests and spec.min_dwell must be >= 0, evaluation_interval > 0")
    return Rollout(
        id=uuid.uuid4().hex[:12],
        model=model.name,
        candidate=candidate,
        baseline=base,
        steps=steps,
        gates=json_format.MessageToJson(gates, indent=None),
        min_dwell_s=min_dwell_s,
        min_requests=min_requests,
        evaluation_interval_s=evaluation_interval_s,
    )


def _step_traffic(rollout: Rollout, model: ModelRecord, step: RolloutStep) -> ModelRecord:
    candidate = round(step.candidate_percent * _WEIGHT_SCALE)
    weights = {rollout.baseline: 100 * _WEIGHT_SCALE - candidate, rollout.candidate: candidate}
    mirror = Mirror(rollout.candidate, step.shadow_fraction) if step.shadow_fraction > 0 else None
    traffic = TrafficPolicy(
        weights={v: w for v, w in weights.items() if w > 0},
        sticky_key=model.traffic.sticky_key,
        mirror=mirror,
        revision=model.traffic.revision,
    )
    return dataclasses.replace(model, traffic=traffic)


def _all_to(model: ModelRecord, version: int) -> ModelRecord:
    """``production`` and every un-pinned request on ``version``; the rollout's mirror removed."""
    history = model.production_history
    if model.aliases.get(PRODUCTION) != version:
        history = (*history, version)
    traffic = TrafficPolicy(weights={}, sticky_key=model.traffic.sticky_key, revision=model.traffic.revision)
    return dataclasses.replace(
        model, aliases={**model.aliases, PRODUCTION: version}, traffic=traffic, production_history=history
    )


Clock = Callable[[], datetime]
"""What the rollouts read the time from (UTC); ``utc_now`` except in tests that move it by hand."""


def _decide(
    rollout: Rollout,
    *,
    now: datetime,
    action: str,
    to_step: int,
    state: RolloutState,
    actor: str,
    reason: str,
    evaluation: str = "",
) -> Rollout:
    decision = RolloutDecision(
        time=now,
        action=action,
        from_step=rollout.current_step,
        to_step=to_step,
        automatic=actor == CONTROLLER_ACTOR,
        actor=actor,
        reason=reason,
        evaluation=evaluation,
    )
    moved = to_step != rollout.current_step or action in ("start", "resume")
    return dataclasses.replace(
        rollout,
        state=state,
        current_step=to_step,
        step_started_at=now if moved else rollout.step_started_at,
        next_decision_at=(now + timedelta(seconds=rollout.evaluation_interval_s)) if state.active else None,
        decisions=(*rollout.decisions, decision),
        ended_at=None if state.active else now,
        state_detail=reason if state in (RolloutState.ROLLED_BACK, RolloutState.FAILED) else rollout.state_detail,
        last_evaluation=evaluation or rollout.last_evaluation,
    )


class RolloutOperations:
    """Transitions of rollouts, shared by the controller and the operators' RPCs."""

    def __init__(
        self,
        registry: Registry,
        on_change: Callable[[], Awaitable[None]],
        emitter: EventEmitter | None = None,
        instance: str = "",
        *,
        clock: Clock = utc_now,
    ) -> None:
        self._registry = registry
        self._on_change = on_change
        self._emitter = emitter
        self._source = EventSource("model-gateway", instance)
        self.clock = clock
        """When decisions are taken, steps start and the next evaluation is due."""

    async def transition(
        self,
        rollout_id: str,
        change: Callable[[Rollout, ModelRecord], tuple[Rollout, ModelRecord]],
        *,
        action: str,
        actor: str,
        reason: str = "",
    ) -> Rollout:
        """One audited transition; routing refreshed and an audit event emitted."""
        rollout = await self._registry.change_rollout(rollout_id, change, action=action, actor=actor, reason=reason)
        await self._on_change()
        _log.info(
            "rollout_transition",
            rollout=rollout.id,
            model=rollout.model,
            action=action,
            step=rollout.current_step,
            state=rollout.state.value,
            reason=reason,
        )
        if self._emitter is not None:
            entry = common_pb2.AuditEntry(
                actor=actor,
                action=f"rollout.{action}",
                target=f"models/{rollout.model}/rollouts/{rollout.id}",
                reason=reason,
            )
            entry.time.GetCurrentTime()
            self._emitter.emit(self._source, AuditPayload("model-gateway", entry))
        return rollout

    @staticmethod
    def _require(rollout: Rollout, *states: RolloutState) -> None:
        if rollout.state not in states:
            allowed = " or ".join(s.value for s in states)
            raise FailedPrecondition(f"rollout {rollout.id} is {rollout.state.value}; this needs it {allowed}")

    async def start(self, rollout: Rollout, *, actor: str, reason: str = "") -> Rollout:
        """Store a new rollout and put it on its first step at once."""
        stored = await self._registry.create_rollout(rollout, actor=actor, reason=reason)

        def begin(current: Rollout, model: ModelRecord) -> tuple[Rollout, ModelRecord]:
            first = current.step(0)
            started = _decide(
                current,
                now=self.clock(),
                action="start",
                to_step=0,
                state=RolloutState.RUNNING,
                actor=actor,
                reason=reason,
            )
            return started, _step_traffic(current, model, first)

        return await self.transition(stored.id, begin, action="start", actor=actor, reason=reason)

    async def pause(self, rollout_id: str, *, actor: str, reason: str = "") -> Rollout:
        """Stop deciding; traffic stays where it is."""

        def pause(current: Rollout, model: ModelRecord) -> tuple[Rollout, ModelRecord]:
            self._require(current, RolloutState.RUNNING, RolloutState.PENDING)
            paused = _decide(
                current,
                now=self.clock(),
                action="pause",
                to_step=current.current_step,
                state=RolloutState.PAUSED,
                actor=actor,
                reason=reason,
            )
            return dataclasses.replace(paused, next_decision_at=None), model

        return await self.transition(rollout_id, pause, action="pause", actor=actor, reason=reason)

    async def resume(self, rollout_id: str, *, actor: str, reason: str = "") -> Rollout:
        """Decide again; the current step's dwell starts over."""

        def resume(current: Rollout, model: ModelRecord) -> tuple[Rollout, ModelRecord]:
            self._require(current, RolloutState.PAUSED)
            resumed = _decide(
                current,
                now=self.clock(),
                action="resume",
                to_step=current.current_step,
                state=RolloutState.RUNNING,
                actor=actor,
                reason=reason,
            )
            return resumed, _step_traffic(current, model, current.step())

        return await self.transition(rollout_id, resume, action="resume", actor=actor, reason=reason)

    async def abort(self, rollout_id: str, *, actor: str, reason: str = "") -> Rollout:
        """Traffic back to the baseline at once."""
        return await self._end(rollout_id, "abort", RolloutState.ABORTED, actor=actor, reason=reason)

    async def promote_now(self, rollout_id: str, *, actor: str, reason: str = "") -> Rollout:
        """The candidate becomes ``production`` with all traffic now."""
        return await self._end(rollout_id, "promote_now", RolloutState.SUCCEEDED, actor=actor, reason=reason)

    async def rollback(self, rollout_id: str, *, reason: str, evaluation: str) -> Rollout:
        """A failed gate: traffic back to the baseline at once."""
        state = RolloutState.ROLLED_BACK
        return await self._end(
            rollout_id, "rollback", state, actor=CONTROLLER_ACTOR, reason=reason, evaluation=evaluation
        )

    async def _end(
        self,
        rollout_id: str,
        action: str,
        state: RolloutState,
        *,
        actor: str,
        reason: str,
        evaluation: str = "",
    ) -> Rollout:
        def end(current: Rollout, model: ModelRecord) -> tuple[Rollout, ModelRecord]:
            self._require(current, RolloutState.PENDING, RolloutState.RUNNING, RolloutState.PAUSED)
            target = current.candidate if state is RolloutState.SUCCEEDED else current.baseline
            ended = _decide(
                current,
                now=self.clock(),
                action=action,
                to_step=current.current_step,
                state=state,
                actor=actor,
                reason=reason,
                evaluation=evaluation,
            )
            return ended, _all_to(model, target)

        return await self.transition(rollout_id, end, action=action, actor=actor, reason=reason)

    async def advance(self, rollout: Rollout, *, reason: str, evaluation: str) -> Rollout:
        """Gates passed on the current step: the next step, or completion after the last."""
        last = rollout.current_step + 1 >= len(rollout.steps)
        if last:
            state = RolloutState.SUCCEEDED
            return await self._end(
                rollout.id, "complete", state, actor=CONTROLLER_ACTOR, reason=reason, evaluation=evaluation
            )

        def step_up(current: Rollout, model: ModelRecord) -> tuple[Rollout, ModelRecord]:
            self._require(current, RolloutState.RUNNING)
            nxt = current.current_step + 1
            moved = _decide(
                current,
                now=self.clock(),
                action="advance",
                to_step=nxt,
                state=RolloutState.RUNNING,
                actor=CONTROLLER_ACTOR,
                reason=reason,
                evaluation=evaluation,
            )
            return moved, _step_traffic(current, model, current.step(nxt))

        return await self.transition(rollout.id, step_up, action="advance", actor=CONTROLLER_ACTOR, reason=reason)

    async def hold(self, rollout: Rollout, *, evaluation: str) -> None:
        """No decision yet: remember the evaluation and when to look again (not a transition: not audited)."""
        next_at = self.clock() + timedelta(seconds=rollout.evaluation_interval_s)
        await self._registry.record_evaluation(rollout.id, evaluation=evaluation, next_decision_at=next_at)

    async def fail(self, rollout: Rollout, reason: str) -> Rollout:
        """The rollout cannot go on (a version stopped serving): back to the baseline if it can serve."""

        def fail(current: Rollout, model: ModelRecord) -> tuple[Rollout, ModelRecord]:
            failed = _decide(
                current,
                now=self.clock(),
                action="fail",
                to_step=current.current_step,
                state=RolloutState.FAILED,
                actor=CONTROLLER_ACTOR,
                reason=reason,
            )
            return failed, model

        return await self.transition(rollout.id, fail, action="fail", actor=CONTROLLER_ACTOR, reason=reason)


class RolloutController:
    """The loop that drives rollouts and due retirements (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        operations: RolloutOperations,
        deployer: Deployer,
        gate: GateCheck,
        *,
        settings: RolloutSettings,
        instance: str,
    ) -> None:
        self._registry = registry
        self._operations = operations
        self._deployer = deployer
        self._gate = gate
        self._settings = settings
        self._instance = instance
        self._task: asyncio.Task[None] | None = None
        self._held: set[str] = set()

    def start(self) -> None:
        """Start the loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rollout-controller")

    async def stop(self) -> None:
        """Stop the loop and give up the leases this instance holds, so another takes over at once."""
        await cancel_and_wait(self._task)
        self._task = None
        for name in list(self._held):
            with contextlib.suppress(Exception):
                await self._registry.release_lease(name, self._instance)
        self._held.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bad tick must not stop the controller; the next one tries again
                _log.exception("rollout_tick_failed")
            await asyncio.sleep(self._settings.tick_s)

    async def _lease(self, model: str) -> bool:
        name = f"model:{model}"
        if await self._registry.acquire_lease(name, self._instance, self._settings.lease_ttl_s):
            self._held.add(name)
            return True
        self._held.discard(name)
        return False

    async def tick(self) -> None:
        """One pass over active rollouts and due retirements."""
        active, _ = await self._registry.list_rollouts(
            states=frozenset(s for s in RolloutState if s.active), page_size=1000
        )
        for rollout in active:
            if rollout.state is RolloutState.RUNNING and await self._lease(rollout.model):
                try:
                    await self._drive(rollout)
                except FailedPrecondition as exc:  # an operator changed it meanwhile; the next tick sees it
                    _log.info("rollout_changed_meanwhile", rollout=rollout.id, detail=exc.message)
        now = self._operations.clock()
        for model, versions in await self._registry.snapshot():
            due = [v for v in versions if v.deprecated_until is not None and v.deprecated_until <= now]
            due = [v for v in due if v.state is not VersionState.RETIRED]
            if due and await self._lease(model.name):
                for record in due:
                    await self._deployer.retire(model.name, record.version, actor=CONTROLLER_ACTOR)

    async def _drive(self, rollout: Rollout) -> None:
        now = self._operations.clock()
        if rollout.next_decision_at is not None and now < rollout.next_decision_at:
            return
        serving = {v.version: v for v in await self._registry.model_versions(rollout.model)}
        for role, version in (("candidate", rollout.candidate), ("baseline", rollout.baseline)):
            record = serving.get(version)
            if record is None or record.state is not VersionState.SERVING:
                await self._operations.fail(rollout, f"the {role} version {version} is no longer serving")
                return
        assert rollout.step_started_at is not None
        step = rollout.step()
        on_step_s = (now - rollout.step_started_at).total_seconds()
        request = monitor_pb2.CheckSloRequest(
            model=rollout.model,
            model_version=rollout.candidate,
            baseline_version=rollout.baseline,
            min_requests=rollout.requests_needed(step),
            thresholds=json_format.Parse(rollout.gates, common_pb2.SloThresholds()),
        )
        request.window.FromTimedelta(timedelta(seconds=max(on_step_s, rollout.evaluation_interval_s)))
        try:
            evaluation = await self._gate(request)
        except InfermeshError as exc:
            _log.warning("rollout_gate_unavailable", rollout=rollout.id, error=exc.message)
            await self._operations.hold(rollout, evaluation=rollout.last_evaluation)
            return
        figures = json_format.MessageToJson(evaluation, indent=None)
        if evaluation.verdict == common_pb2.SLO_VERDICT_FAIL:
            reason = "; ".join(evaluation.reasons) or "an SLO gate failed"
            await self._operations.rollback(rollout.id, reason=reason, evaluation=figures)
        elif evaluation.verdict == common_pb2.SLO_VERDICT_PASS and on_step_s >= rollout.dwell_s(step):
            passed = f"gates passed on step {rollout.current_step} after {on_step_s:.0f}s"
            await self._operations.advance(rollout, reason=passed, evaluation=figures)
        else:
            await self._operations.hold(rollout, evaluation=figures)
