"""A client in another language: Node (@grpc/grpc-js + @grpc/proto-loader from npm) calls Predict with
the published proto, and gets the same answer a Python client gets."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from bizcenter_support import SCORING_KEY, Doubles, Harness, churn_request, scoring

NODE_DIR = Path(__file__).resolve().parent / "node"
PROTOS = Path(__file__).resolve().parents[3] / "protos"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the client's locked npm dependencies installed (``npm ci``) if missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"npm ci failed (no registry access?): {done.stderr.strip()[-300:]}")
    return node


async def _node_predict(node: str, address: str, key: str, scene: str, unit: str, *attributes: str) -> tuple[int, dict]:
    proc = await asyncio.create_subprocess_exec(
        node,
        str(NODE_DIR / "predict.js"),
        address,
        key,
        str(PROTOS),
        scene,
        unit,
        *attributes,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out, err.decode()
    return proc.returncode or 0, json.loads(out)


async def test_node_client_calls_predict(biz: Harness, doubles: Doubles, node: str):
    code, answer = await _node_predict(node, biz.address, SCORING_KEY, "churn-score", "2", "channel=web")
    assert code == 0, answer
    expected = await biz.predict.Predict(churn_request(2), metadata=scoring())
    assert answer["scene"] == "churn-score"
    assert answer["variant"] == expected.variant
    assert (answer["model"], int(answer["model_version"])) == ("churn", expected.model_version)
    assert answer["prediction"]["scores"]["churn"] == pytest.approx(expected.prediction.scores["churn"])
    assert answer["route"] == "ROUTE_SOURCE_EXPERIMENT"
    assert answer["degradation"]["degraded"] is False
    assert {a["layer"] for a in answer["assignments"]} == {"model", "threshold"}


async def test_node_client_sees_grpc_errors(biz: Harness, doubles: Doubles, node: str):
    code, error = await _node_predict(node, biz.address, "wrong-key", "churn-score", "2")
    assert code == 2
    assert error["code"] == 16  # UNAUTHENTICATED
    assert "API key is not valid" in error["details"]
