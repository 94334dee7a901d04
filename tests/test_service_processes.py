"""Each service runs as its own process on the chassis: it starts from a settings file, binds its own
ports and names them in its ready file, serves health, reflection and /metrics, refuses bad settings
with one line, and stops cleanly on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infermesh_chassis.ready import wait_ready

SERVICES = [
    ("infermesh_model_gateway", "model-gateway", "MODEL_GATEWAY_"),
    ("infermesh_data_gateway", "data-gateway", "DATA_GATEWAY_"),
    ("infermesh_biz_center", "biz-center", "BIZ_CENTER_"),
    ("infermesh_monitor", "monitor", "MONITOR_"),
]


def _env(prefix: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(prefix)}


def _wait_serving(address: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"{address} never became SERVING"
            time.sleep(0.1)


@pytest.mark.parametrize(("module", "name", "prefix"), SERVICES)
def test_service_process_lifecycle(tmp_path: Path, module: str, name: str, prefix: str):
    config, ready_file = tmp_path / f"{name}.yaml", tmp_path / f"{name}.ready"
    config.write_text(json.dumps({"grpc": {"port": 0, "grace_period_s": 2, "workers": 1}, "metrics": {"port": 0}}))
    # a service that hashes unit ids refuses to start without a key
    env = _env(prefix) | {
        f"{prefix}LOGGING__LEVEL": "INFO",
        f"{prefix}EVENTS__UNIT_ID_HASH_KEY": "test-unit-id-hash-key-0123",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--config", str(config), "--ready-file", str(ready_file)],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        ready = wait_ready(ready_file, proc.pid, 120, exited=proc.poll)
        assert ready.service == name and ready.grpc_port > 0
        if name == "biz-center":
            assert ready.ports["thrift"] > 0
        port = ready.grpc_port
        _wait_serving(ready.address)
        with urllib.request.urlopen(f"http://127.0.0.1:{ready.metrics_port}/metrics", timeout=5) as reply:
            assert "process_resident_memory_bytes" in reply.read().decode()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # a repeated signal during the drain changes nothing
        assert proc.wait(timeout=20) == 0
        assert not ready_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    events = [e["event"] for e in logs]
    assert events.index("server_started") < events.index("server_draining") < events.index("server_stopped")
    assert all(e["service"] == name for e in logs)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # the port was freed


@pytest.mark.parametrize(("module", "name", "prefix"), SERVICES)
def test_bad_settings_stop_the_process_with_one_line(module: str, name: str, prefix: str):
    env = _env(prefix) | {f"{prefix}GRPC__PORT": "not-a-port"}
    done = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"{name}: invalid settings ({prefix}* environment): grpc.port: "
        "Input should be a valid integer, unable to parse string as an integer"
    )


@pytest.mark.parametrize(("module", "name", "prefix"), [s for s in SERVICES if s[1] in ("data-gateway", "biz-center")])
def test_service_with_two_workers(tmp_path: Path, module: str, name: str, prefix: str):
    """The real service as one instance of two worker processes: one ready file and port, one /metrics
    summing both, the biz-center's Thrift front (first worker) reported, a clean drain of both."""
    config, ready_file = tmp_path / f"{name}.yaml", tmp_path / f"{name}.ready"
    config.write_text(json.dumps({"grpc": {"port": 0, "grace_period_s": 2, "workers": 2}, "metrics": {"port": 0}}))
    env = _env(prefix) | {f"{prefix}EVENTS__UNIT_ID_HASH_KEY": "test-unit-id-hash-key-0123"}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--config", str(config), "--ready-file", str(ready_file)],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:
        ready = wait_ready(ready_file, proc.pid, 120, exited=proc.poll)
        assert ready.pid == proc.pid and ready.grpc_port > 0
        if name == "biz-center":
            assert ready.ports["thrift"] > 0
        _wait_serving(ready.address)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        workers = [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2
        for _ in range(8):  # fresh connections: the kernel spreads them over the workers
            _wait_serving(ready.address)
        with urllib.request.urlopen(f"http://127.0.0.1:{ready.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        prefix_metric = f"infermesh_{name.replace('-', '_')}_grpc_server_requests_total"
        checks = [line for line in text.splitlines() if line.startswith(prefix_metric) and '"Check"' in line]
        assert checks and sum(float(line.rsplit(" ", 1)[1]) for line in checks) >= 9
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not ready_file.exists()
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
