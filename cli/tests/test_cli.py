"""The `infermesh` command against real service processes: demo, and up/status/down leaving nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infermesh_cli.stack import LocalStack

CLI = [sys.executable, "-m", "infermesh_cli"]


def _run(workdir: Path, *args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--workdir", str(workdir), *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` again (as servers do, past connections in TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_demo_runs_the_workload_and_exits_zero(tmp_path: Path):
    # as `make demo` runs it: a workdir relative to where it runs (the services run in their own
    # directories, so a relative path the demo sent them would point nowhere)
    workdir = Path("var") / "stack"
    done = _run(workdir, "--json", "demo", "--requests", "200", timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    summary = report["summary"]
    assert summary["requests"] == 200 and summary["errors"] == {} and summary["degraded"] == {}
    assert set(summary["variants"]) == {"control", "treatment"}
    assert set(summary["versions"]) == {"1", "2"}
    assert {"data_gateway", "model_gateway"} <= set(summary["hops_ms"])
    assert summary["events_stored"] == 200
    assert summary["shadow"]["v1->v2 pairs"] > 0
    stream = summary["stream"]  # the burst on the bound subject: every transaction scored, nothing left behind
    assert stream["published"] == stream["scored"] == 2000 and stream["lag"] == 0
    assert 0 < stream["p50_ms"] <= stream["p99_ms"]
    slowest = summary["slowest"]  # the demo names the trace of its slowest request
    assert slowest["latency_ms"] >= summary["total_ms"]["p99"] and len(slowest["trace_id"]) == 32
    assert set(report["exit_codes"]) == {"nats", "monitor", "model-gateway", "data-gateway", "biz-center"}
    assert set(report["exit_codes"].values()) == {0}
    assert (tmp_path / workdir / "models" / "churn_lr.onnx").is_file()
    assert not (tmp_path / workdir / "state.json").exists()


def _wait_serving(up: subprocess.Popen[str]) -> None:
    assert up.stdout is not None
    for line in up.stdout:
        if line.startswith("serving"):
            return
    raise AssertionError(f"`infermesh up` stopped before serving: {up.stderr.read() if up.stderr else ''}")


def test_up_status_down_leave_no_process_or_port_behind(tmp_path: Path):
    up = subprocess.Popen(
        [*CLI, "--workdir", str(tmp_path), "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_serving(up)
        processes = json.loads((tmp_path / "state.json").read_text())["processes"]
        status = json.loads(_run(tmp_path, "--json", "status").stdout)
        assert {s["health"] for s in status} == {"SERVING"}
        second = _run(tmp_path, "up", timeout=30)
        assert second.returncode == 1 and "already running" in second.stderr
        # a process that dies is restarted on its address, and status says so
        biz = next(p for p in processes if p["name"] == "biz-center")
        os.kill(biz["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            rows = {s["service"]: s for s in json.loads(_run(tmp_path, "--json", "status").stdout)}
            if rows["biz-center"]["restarts"] == 1 and rows["biz-center"]["health"] == "SERVING":
                break
            assert time.monotonic() < deadline, rows["biz-center"]
            time.sleep(0.5)
        assert rows["biz-center"]["address"] == f"127.0.0.1:{biz['port']}"
        assert rows["biz-center"]["last_exit_code"] == -signal.SIGKILL
        assert {s["restarts"] for n, s in rows.items() if n != "biz-center"} == {0}
        assert "signal SIGKILL at " in _run(tmp_path, "status").stdout
        processes.append({**biz, "pid": rows["biz-center"]["pid"]})
        down = _run(tmp_path, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert f"stopped the mesh of `infermesh up` (pid {up.pid})" in down.stdout
        code = up.wait(timeout=10)  # `down` returned once `up` had stopped the mesh in order
        assert code == 0, (up.stdout.read() if up.stdout else "") + (up.stderr.read() if up.stderr else "")
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            up.wait(timeout=30)
    assert all(_gone(p["pid"]) for p in processes)
    assert all(_port_free(p["port"]) and _port_free(p["metrics_port"]) for p in processes)
    assert not (tmp_path / "state.json").exists()
    after = _run(tmp_path, "status")
    assert after.returncode == 1
    state = tmp_path / "state.json"
    assert after.stderr.strip() == f"infermesh: no local stack is running (no {state}); start one with `infermesh up`"


@pytest.mark.timeout(900)  # ten whole meshes started and stopped: the suite's 300 s is for one
def test_ten_up_down_cycles_in_a_row(tmp_path: Path):
    """Every process binds its own ports, so no cycle can lose a race for one (a port picked up front
    once failed `make test` with 'Failed to bind'); the workdir is kept, as a user's is."""
    for cycle in range(10):
        up = subprocess.Popen(
            [*CLI, "--workdir", str(tmp_path), "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            _wait_serving(up)
            stack = LocalStack.attach(tmp_path)  # what `status` shows, without a process per cycle
            status = [(p.name, stack.health(p), p.restarts) for p in stack.processes]
            assert [(health, restarts) for _, health, restarts in status] == [("SERVING", 0)] * 5, (cycle, status)
            down = _run(tmp_path, "down")
            assert down.returncode == 0, (cycle, down.stdout + down.stderr)
            assert up.wait(timeout=30) == 0, (cycle, up.stderr.read() if up.stderr else "")
        finally:
            if up.poll() is None:
                up.send_signal(signal.SIGINT)
                up.wait(timeout=60)
        assert all(_gone(p.pid) for p in stack.processes), cycle


def test_down_stops_the_services_itself_when_up_is_gone(tmp_path: Path):
    up = subprocess.Popen([*CLI, "--workdir", str(tmp_path), "up"], stdout=subprocess.PIPE, text=True)
    _wait_serving(up)
    processes = json.loads((tmp_path / "state.json").read_text())["processes"]
    up.kill()  # the services run in their own sessions: they outlive it
    up.wait(timeout=10)
    assert not any(_gone(p["pid"]) for p in processes)
    down = _run(tmp_path, "down")
    assert down.returncode == 0, down.stderr
    names = ", ".join(p["name"] for p in reversed(processes))
    assert down.stdout.strip() == f"stopped {names} (the `infermesh up` that started them was gone)"
    assert all(_gone(p["pid"]) for p in processes)
    assert not (tmp_path / "state.json").exists()


def test_ctrl_c_stops_the_mesh(tmp_path: Path):
    up = subprocess.Popen([*CLI, "--workdir", str(tmp_path), "up"], stdout=subprocess.PIPE, text=True)
    _wait_serving(up)
    processes = json.loads((tmp_path / "state.json").read_text())["processes"]
    up.send_signal(signal.SIGINT)
    assert up.wait(timeout=60) == 0
    assert all(_gone(p["pid"]) for p in processes)


@pytest.mark.parametrize("command", ["status", "down"])
def test_commands_without_a_mesh_fail_with_one_line(tmp_path: Path, command: str):
    done = _run(tmp_path, command)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
