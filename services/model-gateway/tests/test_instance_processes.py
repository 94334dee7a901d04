"""A real instance of two worker processes behind one port (``grpc.workers: 2``), as it runs in production.

Which process served a call is read from the kernel: each call goes over a fresh connection, which
``SO_REUSEPORT`` hands to one of the processes, and ``/proc`` says which process owns the accepted
socket. Every wait is for an event (a file, a health status, an answer), bounded only to turn a hang
into a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc as pb_grpc
from infermesh_chassis.ready import wait_ready
from infermesh_model_gateway.testing import ChurnModels, infer_request, register_request

WITHIN_S = 90.0
"""Bound on a start or a heal on a loaded 2-core machine (the tests wait for events, not for this)."""

CONNECTIONS = 16
"""Fresh connections per spread: all on one process by chance has probability 2**-15."""


FRESH_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
"""A channel with a connection of its own (not one shared with an earlier channel to the same address)."""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return sorted(found)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _gone(pid: int) -> bool:
    """Whether process ``pid`` exited (a zombie or reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Instance:
    """The parent process and what runs under it."""

    def __init__(self, process: subprocess.Popen[bytes], address: str, metrics_port: int | None) -> None:
        self.process = process
        self.address = address
        self.metrics_port = metrics_port

    def metric(self, name: str, label: str) -> float:
        """The sum of one metric's samples that carry ``label`` (``key="value"``) on the instance's /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            lines = reply.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(f"{name}{{") and label in line)

    def workers(self) -> list[int]:
        """The gateway worker processes (the parent's children that multiprocessing spawned, not its
        resource tracker)."""
        return [p for p in _children(self.process.pid) if b"spawn_main" in _cmdline(p)]

    def tritons(self) -> dict[int, int]:
        """Every tritonserver in the instance, by pid: the worker process that runs it."""
        return {t: w for w in self.workers() for t in _children(w) if _name(t) == "tritonserver"}

    def owner(self) -> int:
        [owner] = set(self.tritons().values())
        return owner

    def until(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WITHIN_S
        while not check():
            assert self.process.poll() is None, f"the instance exited with {self.process.returncode}"
            assert time.monotonic() < deadline, f"{what}: not within {WITHIN_S}s"
            time.sleep(0.1)

    def settled(self) -> bool:
        """Whether every socket listening on the instance's port belongs to a live worker process.

        A killed worker's listening socket lingers in the kernel's ``SO_REUSEPORT`` group for a moment
        after the process is gone, and a connection hashed to it then is reset (callers retry those).
        """
        port = int(self.address.rsplit(":", 1)[1])
        owned = _socket_owners(self.workers())
        listening = [
            int(fields[9])
            for table in ("/proc/net/tcp", "/proc/net/tcp6")
            for fields in (line.split() for line in Path(table).read_text().splitlines()[1:])
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
        ]
        return all(inode in owned for inode in listening)

    def serving(self) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


@contextlib.contextmanager
def start_instance(tmp_path: Path, workers: int = 2) -> Iterator[Instance]:
    config, ready_file = tmp_path / "model-gateway.yaml", tmp_path / "model-gateway.ready"
    settings = {
        "data_dir": str(tmp_path / "data"),
        "grpc": {"port": 0, "host": "127.0.0.1", "workers": workers, "grace_period_s": 1},
        "metrics": {"port": 0},
        "events": {"enabled": False},
        "deploy": {"propagation_s": 0},
        "workers": {"embedded": 1, "pool": {"health_interval_s": 0.2}},
    }
    config.write_text(json.dumps(settings))
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "infermesh_model_gateway", "--config", str(config), "--ready-file", str(ready_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        ready = wait_ready(ready_file, process.pid, WITHIN_S, exited=process.poll)
        instance = Instance(process, f"127.0.0.1:{ready.grpc_port}", ready.metrics_port)
        instance.until(instance.serving, "the instance SERVING")
        yield instance
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def _socket_owners(pids: list[int]) -> dict[int, int]:
    """Socket inode -> owning pid, over ``pids``."""
    owners = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owners[int(target[8:-1])] = pid
    return owners


def _server_side(port: int, client_port: int) -> int:
    """Inode of the accepted socket of the connection from ``client_port`` to ``port`` (0: none)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            ports = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
            if state == "01" and ports == (port, client_port):
                return int(fields[9])
    return 0


def _client_ports(port: int, before: set[int]) -> set[int]:
    """Local ports of this process' established connections to ``port``, new since ``before``."""
    mine = set(_socket_owners([os.getpid()]))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port and int(fields[9]) in mine:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports - before


def infer_spread(instance: Instance, x: object, connections: int = CONNECTIONS) -> dict[int, list[str]]:
    """One ModelInfer per fresh connection; the versions that answered, by the worker process that served."""
    port = int(instance.address.rsplit(":", 1)[1])
    served: dict[int, list[str]] = {}
    for _ in range(connections):
        before = _client_ports(port, set())
        with grpc.insecure_channel(instance.address, options=FRESH_CONNECTION) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            reply = stub.ModelInfer(infer_request("churn", x), timeout=10)
            [client_port] = _client_ports(port, before)
            owner = _socket_owners(instance.workers()).get(_server_side(port, client_port), 0)
            served.setdefault(owner, []).append(reply.model_version)
    return served


def _answers_everywhere(instance: Instance, x: object) -> bool:
    try:
        served = infer_spread(instance, x)
    except grpc.RpcError:
        return False
    return set(served) == set(instance.workers()) and all(v == "1" for vs in served.values() for v in vs)


def _replicas(instance: Instance) -> set[tuple[int, int]]:
    """(state, worker_restarts) of version 1's replicas as each of several fresh connections answers."""
    seen = set()
    for _ in range(6):
        with grpc.insecure_channel(instance.address, options=FRESH_CONNECTION) as channel:
            control = pb_grpc.ModelControlServiceStub(channel)
            reply = control.GetModelVersion(pb.GetModelVersionRequest(model="churn", version=1), timeout=10)
        seen |= {(r.state, r.worker_restarts) for r in reply.model_version.replicas}
    return seen


def test_two_worker_processes_share_one_triton_and_heal(churn_models: ChurnModels, tmp_path):
    x = churn_models.x[:2]
    with start_instance(tmp_path) as instance:
        workers = instance.workers()
        assert len(workers) == 2
        [triton] = instance.tritons()  # one tritonserver for the instance, under one worker process
        owner = instance.owner()

        with grpc.insecure_channel(instance.address) as channel:
            control = pb_grpc.ModelControlServiceStub(channel)
            version = control.RegisterModelVersion(register_request("churn", churn_models.v1), timeout=60)
            control.DeployModelVersion(pb.DeployModelVersionRequest(model="churn", version=1), timeout=60)
            control.PromoteModelVersion(pb.PromoteModelVersionRequest(model="churn", version=1), timeout=60)
        assert version.model_version.version == 1
        # right after the deploy answered, both processes serve it
        served = infer_spread(instance, x)
        assert set(served) == set(workers), f"both worker processes served: {served}"
        assert all(v == "1" for vs in served.values() for v in vs)
        assert _replicas(instance) == {(pb.REPLICA_STATE_READY, 0)}

        # the Triton child dies: its owner restarts it once, reloads version 1, both processes use it
        os.kill(triton, signal.SIGKILL)
        instance.until(lambda: bool(instance.tritons()) and triton not in instance.tritons(), "a new tritonserver")
        instance.until(lambda: _answers_everywhere(instance, x), "version 1 through both processes again")
        assert list(instance.tritons().values()) == [owner]
        assert _replicas(instance) == {(pb.REPLICA_STATE_READY, 1)}

        # a follower dies: the other keeps serving at once, and the parent starts it again
        [follower] = [w for w in workers if w != owner]
        os.kill(follower, signal.SIGKILL)
        instance.until(lambda: _gone(follower) and instance.settled(), "the follower and its socket gone")
        served = infer_spread(instance, x, connections=4)
        assert set(served) == {owner} and all(v == "1" for vs in served.values() for v in vs)
        instance.until(lambda: len(instance.workers()) == 2, "the parent restarting the follower")
        instance.until(instance.serving, "the instance SERVING again")
        instance.until(lambda: _answers_everywhere(instance, x), "version 1 through both processes")
        assert list(instance.tritons().values()) == [owner], "the restarted follower started no Triton"
        assert _replicas(instance) == {(pb.REPLICA_STATE_READY, 1)}

        # the owner dies and its Triton with it: its successor starts one again, reloads version 1, and
        # counts that restart on from what its predecessor published
        os.kill(owner, signal.SIGKILL)
        instance.until(lambda: _gone(owner) and instance.settled(), "the owner and its socket gone")
        instance.until(lambda: len(instance.tritons()) == 1, "the new owner's tritonserver")
        instance.until(lambda: _answers_everywhere(instance, x), "version 1 through both processes")
        [successor] = set(instance.tritons().values())
        assert successor != owner and len(instance.workers()) == 2
        assert _replicas(instance) == {(pb.REPLICA_STATE_READY, 2)}
        # one /metrics for the instance: the Triton restarts counted once each, not once per process
        assert instance.metric("infermesh_model_gateway_worker_restarts_total", 'worker="embedded-0"') == 2
