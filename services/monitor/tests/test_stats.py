"""Windowed stats against numpy on the same data; the Prometheus export; SLO gates; shadow comparison."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from monitor_support import MonitorThread, inference_event, until

from infermesh.common.v1 import common_pb2, events_pb2
from infermesh.monitor.v1 import monitor_pb2


def _model(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_windowed_quantiles_and_rates_match_numpy(stub) -> None:
    model = _model("stats")
    rng = np.random.default_rng(7)
    now = time.time()
    data: dict[int, dict[str, np.ndarray]] = {}
    events = []
    for version, size in ((1, 1500), (2, 700)):
        latency = rng.lognormal(mean=1.5 + version * 0.2, sigma=0.6, size=size)
        errors = rng.random(size) < 0.05 * version
        degraded = rng.random(size) < 0.1
        ages = rng.uniform(1, 50, size)
        data[version] = {"latency": latency, "errors": errors, "degraded": degraded}
        events.extend(
            inference_event(
                model,
                version,
                float(latency[i]),
                at=now - float(ages[i]),
                status_code=14 if errors[i] else 0,
                degradation=common_pb2.Degradation(degraded=bool(degraded[i])),
            )
            for i in range(size)
        )
    old = [inference_event(model, 1, 1e6, at=now - 400) for _ in range(20)]
    for start in range(0, len(events), 1000):
        await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=events[start : start + 1000]))
    await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=old))

    end = monitor_pb2.QueryStatsRequest().end_time
    end.FromNanoseconds(round(now * 1e9))
    for window, seconds in ((monitor_pb2.STATS_WINDOW_1M, 60), (monitor_pb2.STATS_WINDOW_5M, 300)):
        reply = await stub.QueryStats(
            monitor_pb2.QueryStatsRequest(
                window=window,
                group_by=[monitor_pb2.STATS_DIMENSION_MODEL_VERSION],
                filter=monitor_pb2.StatsFilter(model=model),
                end_time=end,
            )
        )
        assert [(row.group.model, row.group.model_version) for row in reply.rows] == [(model, 1), (model, 2)]
        for row in reply.rows:
            d = data[row.group.model_version]
            assert row.count == len(d["latency"])
            for q, observed in ((50, row.p50_latency_ms), (95, row.p95_latency_ms), (99, row.p99_latency_ms)):
                assert observed == pytest.approx(np.percentile(d["latency"], q), rel=1e-12)
            assert row.mean_latency_ms == pytest.approx(d["latency"].mean(), rel=1e-12)
            assert row.error_count == d["errors"].sum()
            assert row.error_rate == pytest.approx(d["errors"].mean())
            assert row.degraded_rate == pytest.approx(d["degraded"].mean())
            assert row.throughput_rps == pytest.approx(len(d["latency"]) / seconds)

    hour = await stub.QueryStats(
        monitor_pb2.QueryStatsRequest(
            window=monitor_pb2.STATS_WINDOW_1H,
            filter=monitor_pb2.StatsFilter(model=model, model_version=1),
            end_time=end,
        )
    )
    [row] = hour.rows
    everything = np.concatenate([data[1]["latency"], np.full(20, 1e6)])
    assert row.count == 1520
    assert row.p99_latency_ms == pytest.approx(np.percentile(everything, 99), rel=1e-12)


async def test_windows_are_exported_to_prometheus(stub, monitor: MonitorThread) -> None:
    model = _model("export")
    now = time.time()
    latencies = np.linspace(1, 100, 400)
    events = [
        inference_event(model, 3, float(v), at=now - 2, status_code=2 if i % 10 == 0 else 0)
        for i, v in enumerate(latencies)
    ]
    await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=events))
    labels = {"source_service": "model-gateway", "scene": "", "variant": "", "model": model, "version": "3"}

    async def exported() -> bool:
        return monitor.metric("infermesh_monitor_window_requests", **labels, window="1m") == 400

    await until(exported, timeout_s=20)
    for window in ("1m", "5m", "1h"):
        assert monitor.metric("infermesh_monitor_window_error_rate", **labels, window=window) == pytest.approx(0.1)
        p99 = monitor.metric("infermesh_monitor_window_latency_ms", **labels, window=window, quantile="0.99")
        assert p99 == pytest.approx(np.percentile(latencies, 99), rel=0.02)
    assert monitor.metric("infermesh_monitor_slo_p99_latency_ms") == monitor.settings.analysis.slo_p99_latency_ms


async def _evaluate(stub, model: str, version: int, **fields) -> common_pb2.SloEvaluation:
    request = monitor_pb2.CheckSloRequest(model=model, model_version=version, window=Duration(seconds=120), **fields)
    return (await stub.CheckSlo(request)).evaluation


async def test_check_slo_pass_fail_and_insufficient_data(stub) -> None:
    model = _model("slo")
    rng = np.random.default_rng(3)
    now = time.time()
    baseline = [inference_event(model, 1, float(v), at=now - 5) for v in rng.uniform(5, 10, 500)]
    good = [inference_event(model, 2, float(v), at=now - 5) for v in rng.uniform(5, 11, 500)]
    slow = [inference_event(model, 3, float(v), at=now - 5) for v in rng.uniform(40, 60, 500)]
    failing = [inference_event(model, 4, 6.0, at=now - 5, status_code=14 if i % 5 == 0 else 0) for i in range(500)]
    few = [inference_event(model, 5, 6.0, at=now - 5) for _ in range(10)]
    degraded = [
        inference_event(
            model, 2, 6.0, at=now - 5, source="biz-center", degradation=common_pb2.Degradation(degraded=i % 50 == 0)
        )
        for i in range(500)
    ]
    await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=baseline + good + slow + failing + few + degraded))
    thresholds = common_pb2.SloThresholds(
        max_p99_latency_ms=30, max_p99_latency_ratio=1.5, max_error_rate=0.01, max_degraded_rate=0.05
    )

    passed = await _evaluate(stub, model, 2, baseline_version=1, min_requests=100, thresholds=thresholds)
    assert passed.verdict == common_pb2.SLO_VERDICT_PASS, passed.reasons
    assert passed.figures.requests == 500
    assert passed.figures.p99_latency_ms == pytest.approx(np.percentile([e.inference.latency_ms for e in good], 99))
    assert passed.figures.degraded_rate == pytest.approx(0.02)
    assert passed.baseline_figures.requests == 500
    assert {c.name for c in passed.criteria} == {
        "min_requests", "p99_latency_ms", "p99_latency_ratio", "error_rate", "degraded_rate",
    }  # fmt: skip

    slow_check = await _evaluate(stub, model, 3, baseline_version=1, min_requests=100, thresholds=thresholds)
    assert slow_check.verdict == common_pb2.SLO_VERDICT_FAIL
    assert {c.name for c in slow_check.criteria if not c.passed} == {"p99_latency_ms", "p99_latency_ratio"}

    failing_check = await _evaluate(stub, model, 4, min_requests=100, thresholds=thresholds)
    assert failing_check.verdict == common_pb2.SLO_VERDICT_FAIL
    assert failing_check.figures.error_rate == pytest.approx(0.2)
    assert any("error_rate" in reason for reason in failing_check.reasons)

    few_check = await _evaluate(stub, model, 5, min_requests=100, thresholds=thresholds)
    assert few_check.verdict == common_pb2.SLO_VERDICT_INSUFFICIENT_DATA
    assert few_check.figures.requests == 10

    no_baseline = await _evaluate(stub, model, 2, baseline_version=9, min_requests=100, thresholds=thresholds)
    assert no_baseline.verdict == common_pb2.SLO_VERDICT_INSUFFICIENT_DATA
    assert "baseline" in no_baseline.reasons[0]


def _tensor(values: list[float]) -> common_pb2.Tensor:
    return common_pb2.Tensor(
        name="probabilities",
        datatype="FP32",
        shape=[1, len(values)],
        raw_contents=np.array(values, "float32").tobytes(),
    )


async def test_shadow_report_and_agreement_gate(stub) -> None:
    model = _model("shadow")
    now = time.time()
    events = []
    for i in range(100):
        primary = [0.3, 0.7]
        shadow = primary if i < 80 else [0.6, 0.4]
        event = inference_event(model, 1, 1.0, at=now - 3)
        event.ClearField("inference")
        failed = i >= 95
        event.shadow.CopyFrom(
            events_pb2.ShadowEvent(
                model=model,
                primary_version=1,
                primary_outputs=[_tensor(primary)],
                primary_latency_ms=10.0,
                shadow_version=2,
                shadow_outputs=[] if failed else [_tensor(shadow)],
                shadow_latency_ms=14.0,
                shadow_error=common_pb2.ErrorStatus(code=4, message="deadline") if failed else None,
            )
        )
        events.append(event)
    await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=events))

    report = await stub.GetShadowReport(monitor_pb2.GetShadowReportRequest(model=model, score_tolerance=1e-6))
    [comparison] = report.comparisons
    assert (comparison.primary_version, comparison.shadow_version) == (1, 2)
    assert (comparison.pairs, comparison.shadow_errors) == (100, 5)
    assert comparison.agreement_rate == pytest.approx(0.80)
    assert comparison.max_abs_score_diff == pytest.approx(0.3, rel=1e-6)
    assert comparison.mean_abs_score_diff == pytest.approx(15 * 0.3 / 95, rel=1e-6)
    assert comparison.mean_latency_delta_ms == pytest.approx(4.0)

    for version in (1, 2):
        served = [inference_event(model, version, 5.0, at=now - 3) for _ in range(50)]
        await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=served))
    gate = common_pb2.SloThresholds(min_shadow_agreement=0.9)
    verdict = await _evaluate(stub, model, 2, baseline_version=1, min_requests=10, thresholds=gate)
    assert verdict.verdict == common_pb2.SLO_VERDICT_FAIL
    assert verdict.figures.shadow_agreement == pytest.approx(0.8)
    lenient = common_pb2.SloThresholds(min_shadow_agreement=0.75)
    verdict = await _evaluate(stub, model, 2, baseline_version=1, min_requests=10, thresholds=lenient)
    assert verdict.verdict == common_pb2.SLO_VERDICT_PASS
