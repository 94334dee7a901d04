"""The mesh the whole-mesh benchmarks run: data gateway, model gateway with one embedded ``tritonserver``
and business center, each its own process started from a settings file (``bench_mesh.py``,
``bench_burst.py``, ``bench_streaming.py``, ``profile_mesh.py``).

The data gateway serves the churn example (services/data-gateway/examples/churn, data made fresh in a
copy, materialized into an SQLite online store at start); the model gateway gets a logistic regression
over the feature service's 10 values (ONNX), trained on the vectors the data gateway serves and
deployed through its control plane; the business center serves the example scene
(services/biz-center/examples/churn.yaml) with its A/B experiment paused and its gray release off, so
the production version serves every request. Every process runs one worker, with events and /metrics
off unless its settings say otherwise.

Apart from :mod:`benchkit` so that benchmarks that start no mesh do not load scikit-learn and the
services' packages (their client's peak RSS is one of their figures).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import yaml
from benchkit import children, process_name
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sklearn.linear_model import LogisticRegression

from infermesh.common.v1 import common_pb2
from infermesh.datagateway.v1 import data_gateway_pb2 as dg
from infermesh.datagateway.v1 import data_gateway_pb2_grpc as dg_grpc
from infermesh.modelgateway.v1 import model_gateway_pb2 as mg
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc as mg_grpc
from infermesh_chassis.ready import wait_ready
from infermesh_model_gateway.testing import register_request, to_onnx_file

__all__ = ["API_KEY", "CUSTOMERS", "ROOT", "Service", "biz_settings", "mesh_pids", "start_mesh"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_FEATURES = ROOT / "services" / "data-gateway" / "examples" / "churn"
EXAMPLE_SCENES = ROOT / "services" / "biz-center" / "examples" / "churn.yaml"
CUSTOMERS = list(range(1, 201))
API_KEY = "bench-key-0123456789abcdef"


class Service:
    """One service process of the mesh, started from a settings file, with its log."""

    def __init__(
        self, name: str, module: str, workdir: Path, settings: dict[str, object], env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.port = 0
        """Its gRPC port, from its ready file once it serves."""
        self.ready_file = workdir / f"{name}.ready"
        settings = {
            "grpc": {"host": "127.0.0.1", "port": 0, "grace_period_s": 2, "workers": 1},
            "metrics": {"enabled": False},
            "events": {"enabled": False},
            "logging": {"level": "WARNING"},
            **settings,
        }
        config = workdir / f"{name}.yaml"
        config.write_text(yaml.safe_dump(settings))
        self.log = workdir / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(config), "--ready-file", str(self.ready_file)],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            self.port = wait_ready(self.ready_file, self.process.pid, timeout_s, exited=self.process.poll).grpc_port
        except (ChildProcessError, TimeoutError) as exc:
            raise SystemExit(f"{self.name} {exc}: {self.log.read_text()[-3000:]}") from None
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise SystemExit(f"{self.name} exited: {self.log.read_text()[-3000:]}")
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{self.name} did not become SERVING: {self.log.read_text()[-3000:]}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _vector(row: dg.FeatureRow) -> np.ndarray:
    flat: list[float] = []
    for value in row.values:
        kind = value.WhichOneof("kind")
        flat.extend(value.double_list.values if kind == "double_list" else [float(getattr(value, kind))])
    return np.asarray(flat, dtype=np.float32)


async def _vectors(data_address: str) -> dict[int, np.ndarray]:
    async with grpc.aio.insecure_channel(data_address) as channel:
        reply = await dg_grpc.DataGatewayServiceStub(channel).GetFeatures(
            dg.GetFeaturesRequest(
                feature_service="churn",
                entities=[dg.EntityRow(keys={"customer_id": common_pb2.Value(int64_value=c)}) for c in CUSTOMERS],
            )
        )
    return {c: _vector(row) for c, row in zip(CUSTOMERS, reply.rows, strict=True)}


async def _deploy(model_address: str, vectors: dict[int, np.ndarray], workdir: Path) -> None:
    x = np.stack([vectors[c] for c in CUSTOMERS])
    rng = np.random.default_rng(3)
    logits = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6) @ rng.normal(size=x.shape[1])
    y = (logits + 0.3 * rng.normal(size=len(x)) > 0).astype(np.int64)
    trained = to_onnx_file(LogisticRegression(max_iter=1000).fit(x, y), x, workdir / "churn_lr.onnx")
    async with grpc.aio.insecure_channel(model_address) as channel:
        control = mg_grpc.ModelControlServiceStub(channel)
        await control.RegisterModelVersion(register_request("churn", trained, features=x.shape[1]))
        await control.DeployModelVersion(mg.DeployModelVersionRequest(model="churn", version=1))
        await control.PromoteModelVersion(mg.PromoteModelVersionRequest(model="churn", version=1))


def _scenes(workdir: Path) -> Path:
    """The example scenes with the experiment paused and the gray release off: production serves all."""
    data = yaml.safe_load(EXAMPLE_SCENES.read_text())
    for experiment in data["experiments"]:
        experiment["status"] = "EXPERIMENT_STATUS_PAUSED"
    data["scenes"][0]["gray_release"]["enabled"] = False
    path = workdir / "scenes.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_mesh(workdir: Path, services: list[Service]) -> tuple[Service, Service, Service, dict[int, np.ndarray]]:
    """Start the data gateway, the model gateway (churn model deployed) and the business center in
    ``workdir``, each appended to ``services`` as it starts (the caller stops them); the three and
    the customers' feature vectors."""
    features = workdir / "churn"
    shutil.copytree(EXAMPLE_FEATURES, features)
    subprocess.run([sys.executable, str(features / "make_data.py")], check=True)
    data = Service(
        "data-gateway",
        "infermesh_data_gateway",
        workdir,
        {
            "definitions": str(features / "definitions.yaml"),
            "materialize_on_start": ["customer_profile", "customer_activity"],
            "definitions_reload_s": 0,
        },
        env={"DATA_GATEWAY_EXAMPLE_ONLINE_DB": str(workdir / "churn-online.db")},
    )
    model = Service(
        "model-gateway",
        "infermesh_model_gateway",
        workdir,
        {
            "data_dir": str(workdir / "models"),
            "workers": {"embedded": 1},
            "deploy": {"propagation_s": 0},
            "logging": {"level": "INFO"},  # its triton_started line names the worker's address
        },
    )
    services += [data, model]
    data.wait_serving()
    model.wait_serving()
    vectors = asyncio.run(_vectors(data.address))
    asyncio.run(_deploy(model.address, vectors, workdir))
    biz = Service("biz-center", "infermesh_biz_center", workdir, biz_settings(workdir, data, model, "biz.db"))
    services.append(biz)
    biz.wait_serving()
    return data, model, biz, vectors


def biz_settings(workdir: Path, data: Service, model: Service, store: str) -> dict[str, object]:
    """The business center's settings in front of ``data`` and ``model``, its config store in ``store``."""
    return {
        "discovery": {"static": {"data-gateway": [data.address], "model-gateway": [model.address]}},
        "config": {"store_path": str(workdir / store), "seed_file": str(_scenes(workdir))},
        "auth": {
            "api_keys": [
                {"name": "bench", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "scenes": ["churn-score"]}
            ]
        },
        "thrift": {"enabled": False},
    }


def mesh_pids(services: list[Service], model: Service) -> dict[str, int]:
    """The process id of every service in ``services`` by name, and of ``model``'s ``tritonserver``."""
    triton = next(pid for pid in children(model.process.pid) if process_name(pid) == "tritonserver")
    return {service.name: service.process.pid for service in services} | {"tritonserver": triton}
