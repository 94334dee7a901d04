"""The python-backend model the gateway writes for every version it serves through Triton's python backend.

Copied into ``<repository>/<model>__<version>/1/model.py`` beside ``infermesh_runtime.py`` (the
gateway's :mod:`infermesh_model_gateway.runtimes`) and the artifact; it only needs numpy and the
format's library in the worker's Python. Its ``config.pbtxt`` parameters name the format, the
artifact file and its serialization. ``execute`` runs the whole batch Triton formed (all requests
of a dynamic batch) in one runtime call, then splits the outputs back per request.

Fault injection, for resilience and rollout tests (parameters set through the deployment's
``backend_parameters``): ``infermesh.fault.error_rate`` fails that share of requests, and
``infermesh.fault.delay_ms`` adds that latency to every batch. Warm-up requests (request parameter
``infermesh.warmup``) are spared the injected errors, so a faulty version still deploys.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


def _datatype(config_type: str) -> str:
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def _warmup(request: Any) -> bool:
    return bool(json.loads(request.parameters() or "{}").get("infermesh.warmup"))


class TritonPythonModel:
    """One model instance: a loaded runtime and the tensor names it serves."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        sys.path.insert(0, str(here))
        from infermesh_runtime import TensorInfo, load_runtime

        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.batching = int(config.get("max_batch_size", 0)) > 0

        def tensors(entries: list[dict[str, Any]]) -> list[Any]:
            found = []
            for entry in entries:
                dims = [int(d) for d in entry["dims"]]
                datatype = _datatype(entry["data_type"])
                found.append(TensorInfo(entry["name"], datatype, dims if self.batching else dims[1:]))
            return found

        self.runtime = load_runtime(
            parameters["infermesh.format"],
            here / parameters["infermesh.artifact"],
            tensors(config["input"]),
            tensors(config["output"]),
            serialization=parameters.get("infermesh.serialization", "native"),
            trusted=parameters.get("infermesh.trusted") == "true",
        )
        self.input_names = [t.name for t in self.runtime.inputs]
        self.output_names = [t.name for t in self.runtime.outputs]
        self.error_rate = float(parameters.get("infermesh.fault.error_rate", "0") or 0)
        self.delay_s = float(parameters.get("infermesh.fault.delay_ms", "0") or 0) / 1000
        self.rng = random.Random()

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.batching:
            return self._run(requests)
        return [response for request in requests for response in self._run([request])]

    def _run(self, requests: list[Any]) -> list[Any]:
        columns: dict[str, list[np.ndarray]] = {name: [] for name in self.input_names}
        sizes = []
        for request in requests:
            for name in self.input_names:
                columns[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            sizes.append(columns[self.input_names[0]][-1].shape[0])
        merged = {name: parts[0] if len(parts) == 1 else np.concatenate(parts) for name, parts in columns.items()}
        try:
            outputs = self.runtime.predict(merged, self.output_names)
        except Exception as exc:
            error = pb_utils.TritonError(f"the model failed on this batch: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        offset = 0
        for request, size in zip(requests, sizes, strict=True):
            if self.error_rate and not _warmup(request) and self.rng.random() < self.error_rate:
                error = pb_utils.TritonError("injected fault (infermesh.fault.error_rate)")
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                wanted = set(request.requested_output_names()) or set(self.output_names)
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(outputs[name][offset : offset + size]))
                    for name in self.output_names
                    if name in wanted
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            offset += size
        return responses
