"""What batch scoring sends and reads, shared by ``batch-score``'s in-process path and its Spark path.

:class:`ScoringPlan` builds the ModelInfer request of a block of feature rows; :func:`score_batch`
reads the served version and the outputs back. Kept apart from :mod:`.batch` so that the Spark
partitions (:mod:`._spark`) import only this and the KServe helpers, and the two never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2

from infermesh_cli.commands._kserve import TensorMeta, decode_outputs, encode_input, infer_request

__all__ = ["ScoringPlan", "score_batch"]


@dataclass(frozen=True)
class ScoringPlan:
    """What every scoring call needs: where the gateway is, the model, its input and outputs, the batch size."""

    address: str
    model: str
    version: str
    meta: TensorMeta
    outputs: tuple[str, ...]
    batch_size: int

    def request(self, rows: np.ndarray) -> service_pb2.ModelInferRequest:
        """The ModelInfer request of a block of feature rows."""
        values = rows if self.meta.shape and self.meta.shape[0] == -1 else rows[0]
        return infer_request(self.model, self.version, [encode_input(self.meta, values)])


def score_batch(response: service_pb2.ModelInferResponse) -> tuple[str, dict[str, np.ndarray]]:
    """The version that served a response and its outputs, one row per input row."""
    outputs = {name: array.reshape(array.shape[0], -1) for name, (_, array) in decode_outputs(response).items()}
    return response.model_version, outputs
