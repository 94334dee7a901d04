"""``infermesh streams`` against a real business center process and a real nats-server (JetStream).

The business center's downstreams are absent (nothing listens at their addresses): the churn scene
answers through its fallback chain, which is all a binding's state needs. A garbage message is
dead-lettered, listed by ``status`` and replayed by ``replay-dead-letters``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import yaml

from infermesh_chassis.ready import wait_ready
from infermesh_chassis.testing import NatsServer, free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "services" / "biz-center" / "examples" / "churn.yaml"
CLI = [sys.executable, "-m", "infermesh_cli"]
ADMIN_KEY = "im-cli-streams-admin-key-0123456789"
BINDING = {
    "name": "txn",
    "enabled": True,
    "stream": "CLI_TXN",
    "subjects": ["cli.txn"],
    "format": "STREAM_FORMAT_PROTOBUF",
    "output_subject": "cli.txn.scored",
}


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def bound(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(NATS URL, business center address): the example scene bound to ``cli.txn``."""
    nats_server = NatsServer(tmp_path / "nats")
    nats_server.start()
    url = nats_server.url
    seed = yaml.safe_load(EXAMPLE.read_text())
    seed["scenes"][0]["stream_bindings"] = [BINDING]
    (tmp_path / "seed.yaml").write_text(yaml.safe_dump(seed))
    nowhere = [f"127.0.0.1:{free_port()}"]
    settings = {
        "grpc": {"host": "127.0.0.1", "port": 0, "workers": 1, "grace_period_s": 0.5},
        "metrics": {"enabled": False},
        "thrift": {"enabled": False},
        "events": {"enabled": False},
        "discovery": {"static": {"data-gateway": nowhere, "model-gateway": nowhere}},
        "config": {"store_path": str(tmp_path / "biz.db"), "seed_file": str(tmp_path / "seed.yaml")},
        "auth": {"api_keys": [{"name": "admin", "sha256": _sha256(ADMIN_KEY), "scenes": ["*"], "admin": True}]},
        "streaming": {"nats_url": url, "fetch_timeout_s": 0.2, "lag_interval_s": 0.2},
    }
    config = tmp_path / "biz.yaml"
    config.write_text(yaml.safe_dump(settings))
    ready = tmp_path / "biz.ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIZ_CENTER_")}
    with (tmp_path / "biz.log").open("wb") as log:
        biz = subprocess.Popen(
            [sys.executable, "-m", "infermesh_biz_center", "--config", str(config), "--ready-file", str(ready)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        port = wait_ready(ready, biz.pid, 60, exited=biz.poll).grpc_port
        yield url, f"127.0.0.1:{port}"
    finally:
        _stop(biz)
        nats_server.stop()


def _cli(address: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--biz-center", address, "--api-key", ADMIN_KEY, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _publish(url: str, payloads: list[bytes]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10)
        for payload in payloads:
            await js.publish("cli.txn", payload)
    finally:
        await nc.close()


def test_streams_list_status_and_replay_dead_letters(bound: tuple[str, str]):
    url, address = bound
    listed = _cli(address, "streams", "list")
    assert listed.returncode == 0, listed.stderr
    row = listed.stdout.splitlines()[2].split()
    assert row[:4] == ["churn-score", "txn", "yes", "CLI_TXN"] and "cli.txn.scored.dead" in row

    asyncio.run(_publish(url, [b"\xff\xff\xff", b"\x12\x01" + b"1"]))  # garbage, then unit "1"
    deadline = time.monotonic() + 60
    while True:
        status = _cli(address, "--json", "streams", "status", "--scene", "churn-score")
        assert status.returncode == 0, status.stderr
        (state,) = json.loads(status.stdout)
        if state["dead_letters"] == 1 and state["scored"] == 1:
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert state["consuming"] and state["dead_lettered"] == 1 and state["error"] == ""
    assert state["degraded"] == 1  # the downstreams are absent: the fallback chain answered

    replayed = _cli(address, "streams", "replay-dead-letters", "churn-score", "txn")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "replayed 1 dead letters of churn-score/txn"
    unknown = _cli(address, "streams", "replay-dead-letters", "churn-score", "nope")
    assert unknown.returncode == 1 and unknown.stderr.startswith("infermesh: NOT_FOUND")
