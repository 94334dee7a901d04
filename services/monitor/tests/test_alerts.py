"""The mesh's alert rules: valid Prometheus rules, about metrics the services really export.

With ``promtool`` (Debian ``prometheus``, or ``PROMTOOL`` naming the binary) the rules are checked
and their unit tests (``data/alerts_test.yml``) run; without it a schema check of the rule groups
stands in. Either way, every metric a rule names must be one the services' registries expose: the
monitor's, the model gateway's (built, not started), the business center's stream bindings' (built,
not started), a service's chassis emitter and its gRPC core counts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from monitor_support import MonitorThread, inference_event, until

from infermesh.monitor.v1 import monitor_pb2
from infermesh_biz_center.settings import StreamingSettings
from infermesh_biz_center.streaming import StreamBindings
from infermesh_chassis.corecalls import CoreCalls
from infermesh_chassis.events import DiskSpool, EventEmitter, SpoolingSink
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import EventSettings
from infermesh_model_gateway.gateway import ModelGateway
from infermesh_model_gateway.settings import Settings as ModelGatewaySettings

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
UNIT_TESTS = Path(__file__).parent / "data" / "alerts_test.yml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
SEVERITIES = {"page", "warning", "ticket"}


def _promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


def test_rule_groups_are_well_formed() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    names: set[str] = set()
    alerts: set[str] = set()
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert group["name"] not in names
        names.add(group["name"])
        assert group["rules"], f"group {group['name']} has no rules"
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"]), rule["alert"]
            assert rule["alert"] not in alerts
            alerts.add(rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            if "for" in rule:
                assert DURATION.match(rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in SEVERITIES
            assert {"summary", "description"} <= set(rule["annotations"])
    assert {
        "InfermeshModelP99OverSlo", "InfermeshModelErrorRateHigh", "InfermeshThroughputDrop", "InfermeshEventsDropped",
        "InfermeshTritonWorkerCrashLooping",
    } <= alerts  # fmt: skip


def test_promtool_checks_and_unit_tests_pass(tmp_path: Path) -> None:
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus, or PROMTOOL=/path/to/promtool)")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    shutil.copy(RULES, tmp_path / "alerts.yml")
    shutil.copy(UNIT_TESTS, tmp_path / "alerts_test.yml")
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _series_names(metrics: Metrics) -> set[str]:
    """Every series name the registry exposes, also of labelled metrics that have no sample yet."""
    names = set()
    for family in metrics.registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


async def test_every_metric_the_rules_name_is_exported(stub, monitor: MonitorThread, tmp_path: Path) -> None:
    model = f"alerts-{uuid.uuid4().hex[:8]}"
    await stub.ReportEvents(monitor_pb2.ReportEventsRequest(events=[inference_event(model, 1, 1.0)]))

    async def exported() -> bool:
        return monitor.metric("infermesh_monitor_window_requests", model=model, version="1", window="1m",
                              source_service="model-gateway", scene="", variant="") == 1  # fmt: skip

    await until(exported, timeout_s=20)
    assert monitor.metrics is not None
    names = _series_names(monitor.metrics)
    assert monitor.monitor is not None
    if monitor.monitor.consumer is None:
        pytest.fail("the test monitor consumes NATS, so its queue metrics exist")

    service = Metrics("biz-center")
    sink = SpoolingSink(_NeverSink(), DiskSpool(tmp_path / "spool", max_bytes=1 << 20), service)
    EventEmitter(sink, EventSettings(), service)
    CoreCalls(0, lambda: 0, max_pending_calls=128).register(service)  # what a service's GrpcServer registers
    service_names = _series_names(service)
    gateway = Metrics("model-gateway")
    ModelGateway(ModelGatewaySettings(data_dir=tmp_path / "model-gateway", metrics={"enabled": False}), gateway)
    names |= _series_names(gateway)
    biz = Metrics("biz-center")
    StreamBindings(None, None, StreamingSettings(), "", biz, watch_interval_s=1.0)  # type: ignore[arg-type]
    names |= _series_names(biz)

    expressions = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    for expr in expressions:
        for pattern in re.findall(r'__name__=~"([^"]+)"', expr):
            assert any(re.fullmatch(pattern, name) for name in service_names | names), f"nothing matches {pattern}"
        for name in re.findall(r"\b(infermesh_[a-z0-9_]+)\b", re.sub(r'__name__=~"[^"]+"', "", expr)):
            assert name in names, f"{name} is exported by none of the monitor, model gateway, stream bindings"


class _NeverSink:
    async def send(self, events: object) -> None:
        raise ConnectionError("unused")
