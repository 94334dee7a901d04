"""Fitted scikit-learn classifiers as ONNX artifacts the model gateway can register.

Used by the ``infermesh demo`` workload, the benchmarks and the tests: :func:`to_onnx_file` writes
the ONNX file and returns a :class:`TrainedModel` with the SHA-256 that registration asks for.
Converting needs the ``onnx`` extra (``infermesh-model-gateway[onnx]``, which brings skl2onnx).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TrainedModel", "sha256", "to_onnx_file"]


def sha256(path: Path) -> str:
    """The SHA-256 of a file, as registration wants it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class TrainedModel:
    """An artifact on disk and the estimator it came from."""

    name: str
    path: Path
    sha256: str
    estimator: Any


def to_onnx_file(estimator: Any, x: np.ndarray, path: Path) -> TrainedModel:
    """Convert a fitted scikit-learn classifier to ONNX (no zipmap: label and probabilities tensors)."""
    try:
        from skl2onnx import to_onnx  # noqa: PLC0415 - an optional extra, imported where it is needed
    except ImportError:
        raise ImportError("converting models to ONNX needs skl2onnx: install infermesh-model-gateway[onnx]") from None
    onx = to_onnx(estimator, x[:1], options={id(estimator): {"zipmap": False}}, target_opset=17)
    path.write_bytes(onx.SerializeToString())
    return TrainedModel(path.stem, path, sha256(path), estimator)
