"""The rollout state machine on a real registry, with the monitor's verdicts scripted.

These pin down the controller's decisions (advance only after the dwell, roll back at the first
failed gate, hold without data, one controller per model, resume after a restart, operators'
overrides); the tests in tests/test_safe_delivery.py run the same controller against the real
monitor and real Triton. Time is a :class:`ManualClock` the tests move: dwells and evaluation
intervals pass when a test says so, never by waiting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from infermesh.common.v1 import common_pb2
from infermesh.monitor.v1 import monitor_pb2
from infermesh_chassis.errors import FailedPrecondition, InvalidArgument, Unavailable
from infermesh_model_gateway.domain import (
    ModelFormat,
    ModelVersionRecord,
    RolloutState,
    RolloutStep,
    TensorSchema,
    VersionState,
)
from infermesh_model_gateway.registry import Registry, _Tx, open_registry
from infermesh_model_gateway.rollouts import RolloutController, RolloutOperations, new_rollout
from infermesh_model_gateway.settings import RolloutSettings
from infermesh_model_gateway.testing import ManualClock


class ScriptedGate:
    """The monitor's verdicts, one per call (the last one repeats); records the requests."""

    def __init__(self, *verdicts: int) -> None:
        self.verdicts = list(verdicts)
        self.requests: list[monitor_pb2.CheckSloRequest] = []

    async def __call__(self, request: monitor_pb2.CheckSloRequest) -> common_pb2.SloEvaluation:
        self.requests.append(request)
        verdict = self.verdicts.pop(0) if len(self.verdicts) > 1 else self.verdicts[0]
        if verdict == -1:
            raise Unavailable("monitor down")
        reasons = ["error_rate 0.2 > 0.05"] if verdict == common_pb2.SLO_VERDICT_FAIL else []
        model, version = request.model, request.model_version
        return common_pb2.SloEvaluation(verdict=verdict, model=model, version=version, reasons=reasons)


class NoDeployer:
    async def retire(self, model: str, version: int, *, actor: str, reason: str = "") -> None:
        raise AssertionError("no retirement is due in these tests")


PASS, FAIL, WAIT = common_pb2.SLO_VERDICT_PASS, common_pb2.SLO_VERDICT_FAIL, common_pb2.SLO_VERDICT_INSUFFICIENT_DATA


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 1, 1, tzinfo=UTC))


@pytest_asyncio.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    registry = await open_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    for _ in range(2):
        record = ModelVersionRecord(
            model="churn",
            version=0,
            format=ModelFormat.ONNX,
            artifact_uri="file:///m.onnx",
            artifact_sha256="a" * 64,
            inputs=(TensorSchema("X", "FP32", (6,)),),
            outputs=(TensorSchema("probabilities", "FP32", (2,)),),
        )
        stored = await registry.register_version(record, actor="t")
        await registry.set_state("churn", stored.version, VersionState.DEPLOYING, actor="t")
        await registry.set_state("churn", stored.version, VersionState.SERVING, actor="t")
    await registry.promote("churn", 1, actor="t")
    yield registry
    await registry.close()


async def _noop() -> None:
    return None


def _controller(
    registry: Registry, gate: ScriptedGate, clock: ManualClock, instance: str = "gw-a"
) -> RolloutController:
    operations = RolloutOperations(registry, _noop, clock=clock)
    settings = RolloutSettings(tick_s=0.01, lease_ttl_s=30)
    return RolloutController(registry, operations, NoDeployer(), gate, settings=settings, instance=instance)  # type: ignore[arg-type]


async def _start(
    registry: Registry,
    clock: ManualClock,
    *,
    dwell_s: float = 0.0,
    steps=(0.0, 5.0, 50.0, 100.0),
    evaluation_interval_s: float = 1.0,
):
    model = await registry.get_model("churn")
    rollout = new_rollout(
        model,
        candidate=2,
        baseline=0,
        steps=tuple(RolloutStep(p, 1.0 if p == 0 else 0.0) for p in steps),
        gates=common_pb2.SloThresholds(max_error_rate=0.05),
        min_dwell_s=dwell_s,
        min_requests=10,
        evaluation_interval_s=evaluation_interval_s,
    )
    return await RolloutOperations(registry, _noop, clock=clock).start(rollout, actor="alice", reason="ship v2")


async def _tick(controller: RolloutController, registry: Registry, rollout_id: str, clock: ManualClock, times: int = 1):
    """``times`` ticks, each one evaluation interval (1s) after the last: a decision is due at each."""
    for _ in range(times):
        clock.advance(1.0)
        await controller.tick()
    return await registry.get_rollout(rollout_id)


async def test_a_healthy_candidate_walks_every_step_to_production(registry, clock):
    rollout = await _start(registry, clock)
    model = await registry.get_model("churn")
    assert rollout.state is RolloutState.RUNNING and rollout.current_step == 0
    assert model.traffic.weights == {1: 10000} and model.traffic.mirror.version == 2
    gate = ScriptedGate(PASS)
    controller = _controller(registry, gate, clock)
    seen = []
    for _ in range(4):
        current = await _tick(controller, registry, rollout.id, clock)
        model = await registry.get_model("churn")
        seen.append((current.current_step, dict(model.traffic.weights)))
    assert seen[:2] == [(1, {1: 9500, 2: 500}), (2, {1: 5000, 2: 5000})]
    assert current.state is RolloutState.SUCCEEDED
    assert model.aliases["production"] == 2 and model.traffic.weights == {}
    assert [d.action for d in current.decisions] == ["start", "advance", "advance", "advance", "complete"]
    assert all(d.automatic for d in current.decisions[1:])
    request = gate.requests[0]
    assert (request.model_version, request.baseline_version, request.min_requests) == (2, 1, 10)
    assert request.thresholds.max_error_rate == pytest.approx(0.05)


async def test_a_step_advances_only_once_its_dwell_has_passed_and_only_when_an_evaluation_is_due(registry, clock):
    rollout = await _start(registry, clock, dwell_s=60, evaluation_interval_s=5)
    gate = ScriptedGate(PASS)
    controller = _controller(registry, gate, clock)
    clock.advance(4.999)
    await controller.tick()
    assert gate.requests == [], "no evaluation before its interval"
    clock.advance(0.001)
    await controller.tick()
    assert len(gate.requests) == 1
    assert (await registry.get_rollout(rollout.id)).current_step == 0, "a pass before the dwell holds"
    clock.advance(54.999)
    await controller.tick()
    held = await registry.get_rollout(rollout.id)
    assert held.current_step == 0 and len(gate.requests) == 2
    assert gate.requests[-1].window.ToTimedelta() == timedelta(seconds=59.999), "the window is the time on the step"
    clock.advance(5)
    await controller.tick()
    advanced = await registry.get_rollout(rollout.id)
    assert advanced.current_step == 1
    assert advanced.step_started_at == clock.now
    assert advanced.decisions[-1].reason == "gates passed on step 0 after 65s"


async def test_a_failed_gate_rolls_back_at_once(registry, clock):
    rollout = await _start(registry, clock, dwell_s=3600)
    controller = _controller(registry, ScriptedGate(PASS, FAIL), clock)
    held = await _tick(controller, registry, rollout.id, clock)
    assert held.current_step == 0, "a pass before the dwell holds"
    rolled = await _tick(controller, registry, rollout.id, clock)
    model = await registry.get_model("churn")
    assert rolled.state is RolloutState.ROLLED_BACK
    assert rolled.state_detail == "error_rate 0.2 > 0.05"
    assert model.aliases["production"] == 1 and model.traffic.weights == {} and model.traffic.mirror is None
    entries, _ = await registry.list_audit(target_prefix=f"models/churn/rollouts/{rollout.id}", page_size=10)
    assert [e.action for e in entries] == ["rollout.rollback", "rollout.start", "rollout.create"]
    assert entries[0].actor == "rollout-controller"


async def test_no_data_or_no_monitor_holds(registry, clock):
    rollout = await _start(registry, clock)
    controller = _controller(registry, ScriptedGate(WAIT, -1, WAIT), clock)
    current = await _tick(controller, registry, rollout.id, clock, times=3)
    assert (current.state, current.current_step) == (RolloutState.RUNNING, 0)
    assert [d.action for d in current.decisions] == ["start"]


async def test_one_controller_per_model_and_takeover_after_a_restart(registry, clock):
    rollout = await _start(registry, clock)
    first, second = (
        _controller(registry, ScriptedGate(PASS), clock, "gw-a"),
        _controller(registry, ScriptedGate(PASS), clock, "gw-b"),
    )
    await _tick(first, registry, rollout.id, clock)
    current = await _tick(second, registry, rollout.id, clock)
    assert current.current_step == 1, "gw-b does not decide while gw-a holds the lease"
    assert await registry.lease_holder("model:churn") == "gw-a"
    await first.stop()
    current = await _tick(second, registry, rollout.id, clock)
    assert current.current_step == 2, "gw-b takes over where the rollout was"
    assert await registry.lease_holder("model:churn") == "gw-b"


async def test_operators_can_pause_resume_abort_and_promote(registry, clock):
    operations = RolloutOperations(registry, _noop, clock=clock)
    rollout = await _start(registry, clock)
    paused = await operations.pause(rollout.id, actor="bob", reason="holiday freeze")
    assert paused.state is RolloutState.PAUSED and paused.next_decision_at is None
    controller = _controller(registry, ScriptedGate(PASS), clock)
    await controller.tick()
    assert (await registry.get_rollout(rollout.id)).current_step == 0, "a paused rollout is not driven"
    with pytest.raises(FailedPrecondition, match="is paused"):
        await operations.pause(rollout.id, actor="bob")
    await operations.resume(rollout.id, actor="bob")
    aborted = await operations.abort(rollout.id, actor="bob", reason="wrong candidate")
    assert aborted.state is RolloutState.ABORTED
    assert (await registry.get_model("churn")).aliases["production"] == 1
    again = await _start(registry, clock)
    promoted = await operations.promote_now(again.id, actor="carol")
    assert promoted.state is RolloutState.SUCCEEDED
    model = await registry.get_model("churn")
    assert model.aliases["production"] == 2 and model.traffic.weights == {}
    assert [d.actor for d in promoted.decisions] == ["alice", "carol"]


async def test_one_active_rollout_per_model_and_valid_specs(registry, clock):
    await _start(registry, clock)
    with pytest.raises(FailedPrecondition, match="already has an active rollout"):
        await _start(registry, clock)
    model = await registry.get_model("churn")
    with pytest.raises(InvalidArgument, match="candidate_percent must be in"):
        new_rollout(
            model,
            candidate=2,
            baseline=0,
            steps=(RolloutStep(150.0),),
            gates=common_pb2.SloThresholds(),
            min_dwell_s=0,
            min_requests=0,
            evaluation_interval_s=1,
        )
    with pytest.raises(InvalidArgument, match="is the baseline itself"):
        new_rollout(
            model,
            candidate=1,
            baseline=0,
            steps=(RolloutStep(5.0),),
            gates=common_pb2.SloThresholds(),
            min_dwell_s=0,
            min_requests=0,
            evaluation_interval_s=1,
        )


async def test_a_candidate_that_stops_serving_fails_the_rollout(registry, clock):
    rollout = await _start(registry, clock)
    record = await registry.get_version("churn", 2)
    async with registry._docs.write(revise=False) as documents:  # a version lost behind the controller's back
        await _Tx(documents, "", "").put_version(dataclasses.replace(record, state=VersionState.FAILED))
    current = await _tick(_controller(registry, ScriptedGate(PASS), clock), registry, rollout.id, clock)
    assert current.state is RolloutState.FAILED
    assert "candidate version 2 is no longer serving" in current.state_detail
