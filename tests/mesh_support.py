"""Helpers of the whole-mesh tests: the demo's API key, feature rows as model inputs, local answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from infermesh.common.v1 import common_pb2
from infermesh_cli.stack import DEMO_API_KEY, LocalStack

API_KEY = (("x-api-key", DEMO_API_KEY),)


def flatten(values: list[common_pb2.Value]) -> np.ndarray:
    """A feature row as the model's FP32 input vector (list values expand in place)."""
    out: list[float] = []
    for value in values:
        kind = value.WhichOneof("kind")
        if kind in ("double_list", "int64_list"):
            out.extend(getattr(value, kind).values)
        else:
            out.append(float(getattr(value, kind)))
    return np.asarray(out, dtype=np.float32)


def local_probabilities(stack: LocalStack, version: int, x: np.ndarray) -> np.ndarray:
    """What onnxruntime itself answers for ``x`` with the artifact of ``version``."""
    name = {1: "churn_lr.onnx", 2: "churn_gb.onnx"}[version]
    session = ort.InferenceSession(str(Path(stack.workdir) / "models" / name), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"X": x.reshape(1, -1)})[0][0]
