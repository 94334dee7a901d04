"""The README's main command, run the way a user runs it: ``infermesh demo`` as a process, from the
checkout, with the default relative working directory (services run in their own directories, so a
relative path the demo sends them would point nowhere)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_demo_runs_from_a_relative_workdir_and_stops_cleanly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "infermesh_cli", "--json", "--workdir", "var/stack", "demo", "--requests", "200"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    summary = result["summary"]
    assert summary["requests"] == 200
    assert summary["errors"] == {}
    assert sum(summary["versions"].values()) == 200
    assert set(summary["versions"]) == {"1", "2"}, "the A/B experiment splits between both versions"
    assert set(result["exit_codes"].values()) == {0}
    assert (tmp_path / "var" / "stack" / "models" / "churn_lr.onnx").is_file()
