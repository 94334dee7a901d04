"""Helpers for tests that need a real model gateway: this service's own, and other services' and the mesh's.

:func:`start_gateway` runs the gateway exactly as its process does (``assemble`` on a chassis
runtime: registry, embedded ``tritonserver`` workers, both servicers), except that its events go
to a list the test can read. The rest builds requests and reads responses of the KServe v2 data
plane, and drives load while counting answers, errors and the versions that served. The ONNX
export helpers it re-exports live in :mod:`.onnx_export` (the demo uses them too).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infermesh.common.v1 import common_pb2, events_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc as pb_grpc
from infermesh_chassis.app import Runtime
from infermesh_chassis.events import EncodedBatch, EventEmitter, decode_batch
from infermesh_chassis.settings import EventSettings, load_settings
from infermesh_model_gateway.__main__ import assemble
from infermesh_model_gateway.domain import utc_now
from infermesh_model_gateway.gateway import ModelGateway
from infermesh_model_gateway.onnx_export import TrainedModel, sha256, to_onnx_file
from infermesh_model_gateway.rollouts import Clock
from infermesh_model_gateway.settings import Settings

__all__ = [
    "CHURN_FEATURES",
    "ChurnModels",
    "GatewayHarness",
    "ListSink",
    "LoadResult",
    "ManualClock",
    "TrainedModel",
    "churn_data",
    "classifier_schema",
    "infer_request",
    "output",
    "register_request",
    "run_load",
    "sha256",
    "start_gateway",
    "to_onnx_file",
    "train_churn_models",
    "until",
]


@dataclass(frozen=True)
class ChurnModels:
    """The synthetic churn data set and two classifiers trained on it, as ONNX files."""

    x: np.ndarray
    y: np.ndarray
    v1: TrainedModel
    """A logistic regression."""
    v2: TrainedModel
    """A gradient-boosted tree ensemble."""


CHURN_FEATURES = 6


def churn_data(rows: int = 2000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic churn data set: 6 float features (tenure, spend, tickets...), label 1 = churned."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, CHURN_FEATURES)).astype(np.float32)
    logits = 1.5 * x[:, 0] - 2.0 * x[:, 1] + x[:, 2] * x[:, 3] + 0.5 * rng.normal(size=rows)
    return x, (logits > 0).astype(np.int64)


def train_churn_models(root: Path, rows: int = 2000) -> ChurnModels:
    """Train the two churn classifiers on :func:`churn_data` and write them under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    x, y = churn_data(rows)
    lr = LogisticRegression(max_iter=500).fit(x, y)
    gb = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0).fit(x, y)
    return ChurnModels(x, y, to_onnx_file(lr, x, root / "churn_lr.onnx"), to_onnx_file(gb, x, root / "churn_gb.onnx"))


def classifier_schema(features: int) -> dict[str, list[common_pb2.TensorSpec]]:
    """The schema skl2onnx gives a binary classifier without zipmap: X in; label and probabilities out."""
    return {
        "inputs": [common_pb2.TensorSpec(name="X", datatype="FP32", shape=[features])],
        "outputs": [
            common_pb2.TensorSpec(name="label", datatype="INT64", shape=[1]),
            common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[2]),
        ],
    }


def register_request(
    model: str, trained: TrainedModel, features: int = 6, **deployment: Any
) -> pb.RegisterModelVersionRequest:
    """Registration of an skl2onnx binary classifier with dynamic batching (``deployment`` overrides)."""
    config = pb.DeploymentConfig(
        max_batch_size=deployment.pop("max_batch_size", 64),
        dynamic_batching=pb.DynamicBatching(enabled=True),
        backend_parameters=deployment.pop("backend_parameters", {}),
    )
    return pb.RegisterModelVersionRequest(
        model=model,
        format=pb.MODEL_FORMAT_ONNX,
        artifact=pb.Artifact(uri=str(trained.path), sha256=trained.sha256),
        deployment=config,
        owner="risk-team",
        actor="tests",
        **classifier_schema(features),
        **deployment,
    )


def infer_request(model: str, x: np.ndarray, version: str = "", **parameters: str) -> service_pb2.ModelInferRequest:
    """A ModelInfer request with ``x`` as FP32 input ``X`` in raw contents; ``parameters`` as strings."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="X", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    for key, value in parameters.items():
        request.parameters[key].string_param = value
    return request


def output(response: service_pb2.ModelInferResponse, name: str) -> np.ndarray:
    """One output tensor of a response, decoded and shaped."""
    dtypes = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64}
    for index, tensor in enumerate(response.outputs):
        if tensor.name == name:
            array = np.frombuffer(response.raw_output_contents[index], dtype=dtypes[tensor.datatype])
            return array.reshape(list(tensor.shape))
    raise KeyError(name)


class ListSink:
    """Collects events in memory (an EventSink)."""

    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []

    async def send(self, batch: EncodedBatch) -> None:
        self.events.extend(decode_batch(batch.payload))


@dataclass
class GatewayHarness:
    """A running gateway with clients of both planes."""

    runtime: Runtime
    gateway: ModelGateway
    sink: ListSink
    channel: grpc.aio.Channel
    control: pb_grpc.ModelControlServiceStub = field(init=False)
    inference: service_pb2_grpc.GRPCInferenceServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.control = pb_grpc.ModelControlServiceStub(self.channel)
        self.inference = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    @property
    def address(self) -> str:
        """Where the gateway listens."""
        return self.runtime.server.address

    async def register_and_deploy(self, model: str, trained: TrainedModel, **deployment: Any) -> int:
        """Register ``trained`` and deploy it; its version number."""
        registered = await self.control.RegisterModelVersion(register_request(model, trained, **deployment))
        version = registered.model_version.version
        await self.control.DeployModelVersion(pb.DeployModelVersionRequest(model=model, version=version))
        return version

    def events(self, kind: str) -> list[Any]:
        """Payloads of the events of one kind (``inference``, ``shadow``...) received so far."""
        return [getattr(e, kind) for e in self.sink.events if e.WhichOneof("payload") == kind]


@contextlib.asynccontextmanager
async def start_gateway(
    data_dir: Path,
    *,
    workers: int = 1,
    worker_settings: dict[str, Any] | None = None,
    clock: Clock = utc_now,
    worker_index: int = 0,
    worker_count: int = 1,
    instance_dir: Path | None = None,
    **overrides: Any,
) -> AsyncIterator[GatewayHarness]:
    """A gateway as its process runs it, with ``workers`` embedded Triton workers (and the other
    ``worker_settings``); ``overrides`` are settings, merged one level deep into the test defaults;
    ``clock`` is the rollouts' and retirements' time. ``worker_index``, ``worker_count`` and
    ``instance_dir`` make it one worker process of an instance served by several (the others
    started with the same ``data_dir`` and ``instance_dir``)."""
    values: dict[str, Any] = {
        "data_dir": str(data_dir),
        "workers": {"embedded": workers, "pool": {"health_interval_s": 0.2}, **(worker_settings or {})},
        "deploy": {"propagation_s": 0.0, "drain_timeout_s": 10.0},
        "grpc": {"grace_period_s": 1.0},
        "metrics": {"enabled": False},
    }
    for key, value in overrides.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) and key in values else value
    settings = load_settings(Settings, **values)
    runtime = Runtime.create(settings, worker_index=worker_index, worker_count=worker_count, instance_dir=instance_dir)
    sink = ListSink()
    emitter = EventEmitter(sink, EventSettings(flush_interval_s=0.02), runtime.metrics)
    emitter.start()
    runtime.on_stop(emitter.stop)
    try:
        gateway = await assemble(settings, runtime, emitter, clock=clock)
        await runtime.server.start()
        async with grpc.aio.insecure_channel(runtime.server.address) as channel:
            yield GatewayHarness(runtime, gateway, sink, channel)
    finally:
        await runtime.close()


class ManualClock:
    """A clock for rollouts and retirements that moves only when a test says (UTC)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utc_now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds``."""
        self.now += timedelta(seconds=seconds)


async def until(check: Callable[[], Any], within_s: float = 10.0, what: str = "the condition") -> None:
    """Wait until ``check()`` (a value or an awaitable) is true, polling; AssertionError after ``within_s``.

    For what happens in the background (events flushed, shadows answered): wait for it, never sleep
    a guessed time and then assert.
    """
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within_s}s")
        await asyncio.sleep(0.02)


@dataclass
class LoadResult:
    """What a load run saw."""

    ok: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)


async def run_load(
    call: Callable[[int], Awaitable[service_pb2.ModelInferResponse]],
    *,
    concurrency: int,
    until: Callable[[], bool],
) -> LoadResult:
    """Call ``call(i)`` from ``concurrency`` tasks until ``until()``; count answers, errors and versions."""
    result = LoadResult()
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while not until():
            counter += 1
            started = time.perf_counter()
            try:
                response = await call(counter)
            except grpc.RpcError as exc:
                result.errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.ok += 1
            result.versions[response.model_version] = result.versions.get(response.model_version, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result
