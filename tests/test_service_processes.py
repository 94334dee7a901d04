"""Each service runs as its own process on the chassis: it starts from a settings file, binds its own
ports and names them in its ready file, serves health, reflection and /metrics, refuses bad settings
with one line, and stops cleanly on SIGTERM."""

from __future__ import annotations

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
