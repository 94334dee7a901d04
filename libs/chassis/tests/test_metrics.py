"""Metrics: labelled children are looked up once; function counters read their value when scraped; workers'
files are summed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from infermesh_chassis.metrics import Metrics, multiprocess_registry


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


_WORKER = """
import sys
from infermesh_chassis.metrics import Metrics

metrics = Metrics("mp")
metrics.counter_function("events_emitted", "Events.", lambda: int(sys.argv[1]))
metrics.gauge("events_buffered", "Buffered.").set_function(lambda: int(sys.argv[1]) * 10)
metrics.gauge("in_flight", "In flight.").inc(int(sys.argv[1]))
metrics.gauge("state", "Worst state.", multiprocess_mode="livemax").set(int(sys.argv[1]))
"""


def test_workers_metrics_are_summed_from_their_files(tmp_path: Path) -> None:
    """Two worker processes in multiprocess mode: function-backed values are written to their files too,
    and one registry over the directory sums the counts and combines gauges by their mode."""
    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for value in ("3", "4"):
        subprocess.run([sys.executable, "-c", _WORKER, value], env=env, check=True, timeout=60)
    sample = multiprocess_registry(tmp_path).get_sample_value
    assert sample("infermesh_mp_events_emitted_total") == 7
    assert sample("infermesh_mp_events_buffered") == 70
    assert sample("infermesh_mp_in_flight") == 7
    assert sample("infermesh_mp_state") == 4
