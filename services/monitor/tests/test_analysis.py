"""Drift (PSI), baselines, significance tests and experiment reports, online metrics from feedback."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from monitor_support import MonitorThread, inference_event, number

from infermesh.common.v1 import common_pb2, events_pb2
from infermesh.monitor.v1 import monitor_pb2
from infermesh_chassis.events import hash_unit_id
from infermesh_monitor.drift import Samples, level, psi
from infermesh_monitor.outcomes import ArmOutcome, compare


def _model(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(11)
    baseline = Samples(rng.normal(0, 1, 20_000).tolist())
    same, _ = psi(baseline, Samples(rng.normal(0, 1, 20_000).tolist()), 10)
    shifted, bins = psi(baseline, Samples(rng.normal(1, 1, 20_000).tolist()), 10)
    assert same < 0.01 and level(same, True) == "none"
    assert shifted > 0.25 and level(shifted, True) == "significant"
    assert len(bins) == 10
    assert sum(b.baseline_fraction for b in bins) == pytest.approx(1.0)
    assert all(b.baseline_fraction == pytest.approx(0.1, abs=0.01) for b in bins)
    expected = sum(
        (b.current_fraction - b.baseline_fraction) * np.log(b.current_fraction / b.baseline_fraction) for b in bins
    )
    assert shifted == pytest.approx(expected, rel=1e-9)

    categories = Samples([], ["a"] * 500 + ["b"] * 500)
    moved, cat_bins = psi(categories, Samples([], ["a"] * 200 + ["b"] * 700 + ["c"] * 100), 10)
    assert [b.category for b in cat_bins] == ["a", "b", "c"]
    assert moved > 0.25


async def test_drift_report_flags_the_shifted_feature_and_prediction(stub) -> None:
    model = _model("drift")
    rng = np.random.default_rng(5)
    samples = monitor_pb2.BaselineSamples(
        features=[
            monitor_pb2.FeatureSamples(name="age", numeric=common_pb2.DoubleList(values=rng.normal(40, 10, 5000))),
            monitor_pb2.FeatureSamples(name="income", numeric=common_pb2.DoubleList(values=rng.normal(50, 5, 5000))),
            monitor_pb2.FeatureSamples(
                name="country", categorical=common_pb2.StringList(values=rng.choice(["fr", "de"], 5000).tolist())
            ),
            monitor_pb2.FeatureSamples(
                name="prediction:score", numeric=common_pb2.DoubleList(values=rng.beta(2, 5, 5000))
            ),
        ]
    )
    registered = await stub.RegisterBaseline(
        monitor_pb2.RegisterBaselineRequest(model=model, model_version=1, samples=samples, description="training")
    )
    assert registered.baseline_id == f"{model}/1"
    assert registered.sample_counts["age"] == 5000

    now = time.time()
    events = [
        inference_event(
            model,
            1,
            3.0,
            at=now - 10,
            scores={"score": float(rng.beta(5, 2))},
            sampled_inputs={
                "age": number(float(rng.normal(40, 10))),
                "income": number(float(rng.normal(58, 5))),
                "country": common_pb2.Value(string_value=str(rng.choice(["fr", "de"]))),
            },
        )
        for _ in range(3000)
    ]
    await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=events))

    report = await stub.GetDriftReport(monitor_pb2.GetDriftReportRequest(model=model, model_version=1))
    assert report.baseline_description == f"registered:{model}/1"
    by_name = {entry.name: entry for entry in report.features}
    assert by_name["age"].level == monitor_pb2.DRIFT_LEVEL_NONE
    assert by_name["country"].level == monitor_pb2.DRIFT_LEVEL_NONE
    assert by_name["income"].level == monitor_pb2.DRIFT_LEVEL_SIGNIFICANT
    assert by_name["income"].current_count == 3000 and by_name["income"].baseline_count == 5000
    [prediction] = [p for p in report.predictions if p.name == "prediction:score"]
    assert prediction.level == monitor_pb2.DRIFT_LEVEL_SIGNIFICANT

    only_age = await stub.GetDriftReport(
        monitor_pb2.GetDriftReportRequest(model=model, model_version=1, features=["age"], bins=5)
    )
    assert [e.name for e in only_age.features] == ["age"]
    assert len(only_age.features[0].bins) == 5


async def test_register_baseline_from_a_file_of_training_rows(stub, tmp_path: Path) -> None:
    model = _model("file")
    rng = np.random.default_rng(9)
    path = tmp_path / "train.csv"
    rows = ["age,country,prediction:score"] + [
        f"{rng.normal(30, 5):.4f},{rng.choice(['fr', 'de'])},{rng.random():.4f}" for _ in range(1000)
    ]
    path.write_text("\n".join(rows) + "\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    reply = await stub.RegisterBaseline(
        monitor_pb2.RegisterBaselineRequest(model=model, model_version=2, uri=f"file://{path}", sha256=digest)
    )
    assert dict(reply.sample_counts) == {"age": 1000, "country": 1000, "prediction:score": 1000}

    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await stub.RegisterBaseline(
            monitor_pb2.RegisterBaselineRequest(model=model, model_version=2, uri=str(path), sha256="0" * 64)
        )
    assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetDriftReport(monitor_pb2.GetDriftReportRequest(model=model, model_version=3))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_two_proportion_test_finds_a_known_effect_and_none_where_there_is_none() -> None:
    rng = np.random.default_rng(21)
    control = ArmOutcome("control", (rng.random(8000) < 0.10).astype(float))
    treated = ArmOutcome("treated", (rng.random(8000) < 0.13).astype(float))
    same = ArmOutcome("same", (rng.random(8000) < 0.10).astype(float))
    results = {r.name: r for r in compare("conversion_rate", [control, treated, same], "control", 0.95)}
    effect = results["treated"]
    assert effect.significant and effect.p_value < 1e-6
    assert effect.delta_ci[0] < 0.03 < effect.delta_ci[1]
    assert effect.ci[0] < 0.13 < effect.ci[1]
    assert not results["same"].significant and results["same"].p_value > 0.05
    assert results["same"].delta_ci[0] < 0 < results["same"].delta_ci[1]

    false_positives = 0
    for _ in range(200):
        a = ArmOutcome("a", (rng.random(2000) < 0.2).astype(float))
        b = ArmOutcome("b", (rng.random(2000) < 0.2).astype(float))
        false_positives += compare("conversion_rate", [a, b], "a", 0.95)[1].significant
    assert false_positives <= 20  # about 5% of 200 expected


def test_welch_and_bootstrap_tests_find_a_known_effect() -> None:
    rng = np.random.default_rng(4)
    control = ArmOutcome("control", np.abs(rng.normal(0, 1.0, 3000)))
    worse = ArmOutcome("worse", np.abs(rng.normal(0, 1.3, 3000)))
    equal = ArmOutcome("equal", np.abs(rng.normal(0, 1.0, 3000)))
    mae = {r.name: r for r in compare("mae", [control, worse, equal], "control", 0.95)}
    assert mae["worse"].significant and mae["worse"].delta > 0
    assert not mae["equal"].significant

    scores = rng.random(3000)
    good = np.column_stack([scores, (rng.random(3000) < scores).astype(float)])
    noise = np.column_stack([scores, (rng.random(3000) < 0.5).astype(float)])
    auc = {
        r.name: r
        for r in compare("auc", [ArmOutcome("control", noise), ArmOutcome("model", good)], "control", 0.95, 300)
    }
    assert auc["control"].value == pytest.approx(0.5, abs=0.03)
    assert auc["model"].significant and auc["model"].delta > 0.2
    assert auc["model"].delta_ci[0] > 0


async def test_experiment_report_from_exposures_and_feedback(stub, monitor: MonitorThread) -> None:
    experiment = _model("exp")
    key = monitor.settings.events.unit_id_hash_key.get_secret_value()
    rng = np.random.default_rng(8)
    now = time.time()
    events, feedback = [], []
    for variant, rate in (("control", 0.10), ("treatment", 0.20)):
        for i in range(1500):
            unit = f"{variant}-user-{i}"
            exposure = inference_event("unused", 1, 1.0, at=now - 60, source="biz-center")
            exposure.ClearField("inference")
            exposure.exposure.CopyFrom(
                events_pb2.ExposureEvent(
                    scene="checkout", experiment=experiment, layer="ranking", variant=variant,
                    unit_id_hash=hash_unit_id(unit, key),
                )
            )  # fmt: skip
            events.append(exposure)
            if rng.random() < rate:
                item = monitor_pb2.Feedback(unit_id=unit, scene="checkout", label_name="converted")
                item.label.bool_value = True
                feedback.append(item)
    await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=events))
    await stub.ReportFeedback(monitor_pb2.ReportFeedbackRequest(items=feedback))

    report = await stub.GetExperimentReport(
        monitor_pb2.GetExperimentReportRequest(
            experiment=experiment, metrics=["conversion_rate"], label_name="converted"
        )
    )
    [metric] = report.reports
    assert (metric.metric, metric.layer, metric.test) == ("conversion_rate", "ranking", "two_proportion_z")
    arms = {v.variant: v for v in metric.variants}
    assert arms["control"].control and not arms["treatment"].control
    assert arms["control"].units == arms["treatment"].units == 1500
    assert arms["control"].value == pytest.approx(0.10, abs=0.02)
    assert arms["treatment"].value == pytest.approx(0.20, abs=0.025)
    assert arms["treatment"].significant and arms["treatment"].p_value < 0.001
    assert arms["treatment"].delta_ci_lower > 0


async def test_online_accuracy_gate_from_labels_by_request(stub) -> None:
    model = _model("online")
    rng = np.random.default_rng(2)
    now = time.time()
    events, feedback = [], []
    for version, accuracy in ((1, 0.9), (2, 0.6)):
        for i in range(400):
            truth = int(rng.integers(0, 2))
            predicted = truth if rng.random() < accuracy else 1 - truth
            request_id = f"{model}-{version}-{i}"
            events.append(
                inference_event(model, version, 2.0, at=now - 30, request_id=request_id, label=str(predicted))
            )
            item = monitor_pb2.Feedback(request_id=request_id)
            item.label.int64_value = truth
            feedback.append(item)
    await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=events))
    await stub.ReportFeedback(monitor_pb2.ReportFeedbackRequest(items=feedback))

    gate = common_pb2.SloThresholds(
        online_metric=common_pb2.OnlineMetricThreshold(metric="accuracy", min_value=0.8, min_labels=100)
    )
    request = monitor_pb2.CheckSloRequest(
        model=model, model_version=1, window=Duration(seconds=300), min_requests=100, thresholds=gate
    )
    good = (await stub.CheckSlo(request)).evaluation
    assert good.verdict == common_pb2.SLO_VERDICT_PASS, good.reasons
    assert good.figures.labels == 400
    assert good.figures.online_metric == pytest.approx(0.9, abs=0.05)

    request.model_version = 2
    request.baseline_version = 1
    request.thresholds.online_metric.ClearField("min_value")
    request.thresholds.online_metric.max_regression_vs_baseline = 0.1
    bad = (await stub.CheckSlo(request)).evaluation
    assert bad.verdict == common_pb2.SLO_VERDICT_FAIL
    assert bad.figures.online_metric == pytest.approx(0.6, abs=0.06)
    assert bad.baseline_figures.online_metric == pytest.approx(0.9, abs=0.05)
