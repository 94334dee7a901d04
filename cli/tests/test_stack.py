"""LocalStack's supervision on its cheapest stack (NATS alone): a process killed again and again is
restarted on its port after a backoff that doubles while it dies young, and the state file keeps its
restarts and last exit for `infermesh status`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from infermesh_cli.stack import LocalStack


def _restarted(stack: LocalStack, restarts: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while stack.process("nats").restarts < restarts:
        assert time.monotonic() < deadline, f"nats was not restarted a {restarts}th time"
        time.sleep(0.05)


def test_a_process_dying_young_is_restarted_on_its_port_with_a_growing_backoff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    stack = LocalStack(tmp_path, services=())
    stack.start()
    stack.supervise()
    try:
        first = stack.process("nats")
        for restarts in (1, 2, 3):
            os.kill(stack.process("nats").pid, signal.SIGKILL)
            _restarted(stack, restarts)
            assert stack.health(stack.process("nats")) == "SERVING"
        attached = LocalStack.attach(tmp_path)  # what `infermesh status` reads
        nats = attached.process("nats")
        assert (nats.port, nats.metrics_port) == (first.port, first.metrics_port)
        assert (nats.restarts, nats.last_exit_code) == (3, -signal.SIGKILL) and nats.last_exit_at
        assert nats.pid != first.pid and nats.alive()
    finally:
        codes = stack.stop()
    assert codes == {"nats": 0}
    delays = [line.split("restarting in ")[1] for line in capsys.readouterr().err.splitlines() if "restarting" in line]
    assert delays == ["0.5 s", "1.0 s", "2.0 s"]
    assert not (tmp_path / "state.json").exists()
