"""Metrics: labelled children are looked up once; function counters read their value when scraped."""

from __future__ import annotations

from infermesh_chassis.metrics import Metrics


def test_labelled_children_are_looked_up_once_and_count() -> None:
    metrics = Metrics("cached")
    counter = metrics.counter("answers", "Answers.", ("scene", "served_by"))
    first = counter.labels("churn", "PRIMARY")
    assert counter.labels("churn", "PRIMARY") is first
    first.inc()
    counter.labels("churn", "PRIMARY").inc(2)
    counter.labels(scene="churn", served_by="PRIMARY").inc()
    counter.labels("churn", "RULE_DEFAULT").inc()
    sample = metrics.registry.get_sample_value
    assert sample("infermesh_cached_answers_total", {"scene": "churn", "served_by": "PRIMARY"}) == 4
    assert sample("infermesh_cached_answers_total", {"scene": "churn", "served_by": "RULE_DEFAULT"}) == 1
    histogram = metrics.histogram("latency_seconds", "Latency.", ("scene",))
    assert histogram.labels("churn") is histogram.labels("churn")


def test_function_counter_reads_its_value_when_scraped() -> None:
    metrics = Metrics("counted")
    count = [0]
    metrics.counter_function("events_emitted", "Events.", lambda: count[0])
    assert metrics.registry.get_sample_value("infermesh_counted_events_emitted_total") == 0
    count[0] = 7
    assert metrics.registry.get_sample_value("infermesh_counted_events_emitted_total") == 7
    assert b"# TYPE infermesh_counted_events_emitted_total counter" in metrics.render()
