"""The contracts: they load beside tritonclient's `inference` stubs, follow the naming rules,
the Thrift IDL loads, and stale generated code is detected."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import thriftpy2
from google.protobuf import descriptor_pool
from tritonclient.grpc import service_pb2_grpc as inference_grpc

ROOT = Path(__file__).resolve().parents[3]
MODULES = [
    "infermesh.common.v1.common_pb2",
    "infermesh.common.v1.events_pb2",
    "infermesh.modelgateway.v1.model_gateway_pb2",
    "infermesh.datagateway.v1.data_gateway_pb2",
    "infermesh.bizcenter.v1.biz_center_pb2",
    "infermesh.monitor.v1.monitor_pb2",
]
VERB_NOUN = re.compile(
    r"^(Get|List|Register|Deploy|Undeploy|Set|Delete|Promote|Rollback|Retire|Start|Pause|Resume|"
    r"Abort|Report|Stream|Query|Check|Push|Materialize|Describe|Upsert|Predict|Replay)[A-Z]?\w*$"
)


def _services():
    for name in MODULES:
        module = importlib.import_module(name)
        yield from module.DESCRIPTOR.services_by_name.values()


def test_own_stubs_and_tritonclient_inference_stubs_share_one_process():
    assert inference_grpc.GRPCInferenceServiceServicer
    for name in MODULES:
        importlib.import_module(name.replace("_pb2", "_pb2_grpc"))
    pool = descriptor_pool.Default()
    assert pool.FindServiceByName("inference.GRPCInferenceService")
    assert pool.FindServiceByName("infermesh.modelgateway.v1.ModelControlService")
    assert all(not s.full_name.startswith("inference.") for s in _services())


def test_packages_are_versioned():
    for name in MODULES:
        package = importlib.import_module(name).DESCRIPTOR.package
        assert re.fullmatch(r"infermesh\.[a-z]+\.v\d+", package), package


def test_rpcs_are_verb_noun_with_request_response_messages():
    services = list(_services())
    assert {s.full_name for s in services} == {
        "infermesh.modelgateway.v1.ModelControlService",
        "infermesh.datagateway.v1.DataGatewayService",
        "infermesh.bizcenter.v1.BizCenterService",
        "infermesh.bizcenter.v1.BizCenterAdminService",
        "infermesh.monitor.v1.MonitorService",
    }
    for service in services:
        for method in service.methods:
            assert VERB_NOUN.match(method.name), f"{service.name}.{method.name} is not VerbNoun"
            assert method.input_type.name == f"{method.name}Request", method.full_name
            assert method.output_type.name == f"{method.name}Response", method.full_name


def test_the_event_envelope_is_common_and_a_batch_is_an_ingest_request():
    from infermesh.common.v1 import events_pb2  # noqa: PLC0415
    from infermesh.monitor.v1 import monitor_pb2  # noqa: PLC0415

    for request in (monitor_pb2.ReportEventsRequest, monitor_pb2.StreamEventsRequest):
        field = request.DESCRIPTOR.fields_by_name["events"]
        assert field.number == 1 and field.message_type is events_pb2.Event.DESCRIPTOR
    payload = {f.name: f.number for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert payload == {"inference": 10, "shadow": 11, "exposure": 12, "audit": 13, "feedback": 14}
    batch = events_pb2.EventBatch()
    batch.events.add(event_id="e1", schema_version=1, source={"service": "s"}, inference={"model": "m"})
    batch.events.add(event_id="e2", feedback={"label": {"bool_value": True}})
    payload_bytes = batch.SerializeToString()
    assert monitor_pb2.ReportEventsRequest.FromString(payload_bytes).SerializeToString() == payload_bytes
    assert not any(name.startswith("Event") for name in monitor_pb2.DESCRIPTOR.message_types_by_name)


def test_thrift_idl_loads_with_thriftpy2():
    idl = resources.files("infermesh.bizcenter.v1") / "biz_center.thrift"
    with resources.as_file(idl) as path:
        module = thriftpy2.load(str(path), module_name="biz_center_thrift")
    assert {"predict", "predictBatch"} <= set(module.BizCenter.thrift_services)
    for exception in (
        "InvalidRequest",
        "NotFound",
        "Unauthenticated",
        "RateLimited",
        "Unavailable",
        "InternalError",
    ):
        assert issubclass(getattr(module, exception), Exception)


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The parts of the repository that code generation reads and writes."""
    for part in ("scripts", "protos", "libs/protos/src"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _check(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(tree / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_committed_stubs_are_current(tree_copy: Path):
    done = _check(tree_copy)
    assert done.returncode == 0, done.stderr


def test_stale_stubs_are_detected(tree_copy: Path):
    proto = tree_copy / "protos/infermesh/common/v1/common.proto"
    proto.write_text(
        proto.read_text() + "\n// A new message nobody regenerated for.\nmessage Added { string x = 1; }\n"
    )
    stale = _check(tree_copy)
    assert stale.returncode == 1
    assert "stale: infermesh/common/v1/common_pb2.py" in stale.stderr
    assert "run `make gen`" in stale.stderr


def test_missing_and_extra_stubs_are_detected(tree_copy: Path):
    (tree_copy / "libs/protos/src/infermesh/monitor/v1/monitor_pb2_grpc.py").unlink()
    (tree_copy / "libs/protos/src/infermesh/monitor/v1/old_pb2.py").write_text("")
    done = _check(tree_copy)
    assert done.returncode == 1
    assert "missing: infermesh/monitor/v1/monitor_pb2_grpc.py" in done.stderr
    assert "not generated from protos/: infermesh/monitor/v1/old_pb2.py" in done.stderr
