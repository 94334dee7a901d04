"""The runtimes that execute a registered artifact, one per format, behind one small interface.

This module is self-contained on purpose (numpy and the format's own library, nothing from
infermesh): the gateway uses it to check an artifact at registration, and copies it next to the
python-backend ``model.py`` of every Triton model it writes, so a Triton worker runs the exact
same code over the whole batch Triton formed.

- ONNX: onnxruntime (one intra-op thread per instance: Triton scales by instances); inputs and
  outputs are the graph's own, by name.
- scikit-learn (skops natively; pickle/joblib when trusted), XGBoost (JSON/UBJ booster),
  LightGBM (text booster), PMML (sklearn-pmml-model): the inputs are concatenated along the
  feature axis, in schema order, into one matrix; outputs are named by what they hold:
  ``label`` (the predicted class), ``probabilities`` (one column per class), ``prediction``
  (the estimator's ``predict``: a class for a classifier, a value for a regressor).

Every output is reshaped to ``[batch, *dims]`` of its schema, so a 1-D label fits a ``[1]`` tensor.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FEATURE_OUTPUTS",
    "FORMATS",
    "SERIALIZATIONS",
    "ArtifactError",
    "Runtime",
    "TensorInfo",
    "infer_serialization",
    "load_runtime",
]

FORMATS = ("onnx", "sklearn", "xgboost", "lightgbm", "pmml")
SERIALIZATIONS = ("native", "pickle", "joblib")
FEATURE_OUTPUTS = ("label", "probabilities", "prediction")
"""Output names a non-ONNX runtime can produce."""

NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}

_ONNX_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


class ArtifactError(Exception):
    """The artifact cannot be loaded or does not match its schema; the message says why."""


class TensorInfo:
    """A tensor as the runtime sees it: name, datatype and dims without the batch dimension."""

    __slots__ = ("datatype", "dims", "name")

    def __init__(self, name: str, datatype: str, dims: Sequence[int]) -> None:
        self.name = name
        self.datatype = datatype
        self.dims = tuple(dims)


def infer_serialization(filename: str) -> str:
    """``pickle``, ``joblib`` or ``native`` from a file name."""
    lowered = filename.lower()
    if lowered.endswith((".pkl", ".pickle")):
        return "pickle"
    if lowered.endswith(".joblib"):
        return "joblib"
    return "native"


class Runtime:
    """A loaded artifact: ``predict`` maps input arrays (batch first) to the requested outputs."""

    def __init__(
        self,
        predict: Callable[[Mapping[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]],
        inputs: Sequence[TensorInfo],
        outputs: Sequence[TensorInfo],
    ) -> None:
        self._predict = predict
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._dims = {o.name: o.dims for o in self.outputs}
        self._types = {o.name: NUMPY_TYPES[o.datatype] for o in self.outputs}

    def predict(self, inputs: Mapping[str, np.ndarray], names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """The outputs ``names`` (all outputs when empty), each shaped ``[batch, *dims]``."""
        wanted = list(names) or [o.name for o in self.outputs]
        batch = next(iter(inputs.values())).shape[0]
        raw = self._predict(inputs, wanted)
        shaped = {}
        for name in wanted:
            value = np.asarray(raw[name])
            dims = self._dims[name]
            if self._types[name] is not np.object_:
                value = value.astype(self._types[name], copy=False)
            shaped[name] = value.reshape((batch, *(d if d > 0 else -1 for d in dims)) if dims else (batch,))
        return shaped


def load_runtime(
    fmt: str,
    path: Path,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    *,
    serialization: str = "native",
    trusted: bool = False,
) -> Runtime:
    """Load ``path`` as ``fmt`` and check it against the schema; ArtifactError when it cannot serve it."""
    if serialization not in SERIALIZATIONS:
        raise ArtifactError(f"unknown serialization '{serialization}' (expected one of {', '.join(SERIALIZATIONS)})")
    if serialization != "native" and not trusted:
        raise ArtifactError(
            f"the artifact is a {serialization} file, which runs code when loaded: register it with "
            "artifact.trusted=true if you trust its origin, or export it to the format's native file"
        )
    if fmt == "onnx":
        if serialization != "native":
            raise ArtifactError("an ONNX artifact must be the .onnx file itself")
        return _onnx(path, inputs, outputs)
    unsupported = [o.name for o in outputs if o.name not in FEATURE_OUTPUTS]
    if unsupported:
        raise ArtifactError(
            f"{fmt} models produce the outputs {', '.join(FEATURE_OUTPUTS)}; "
            f"the schema asks for {', '.join(repr(u) for u in unsupported)}"
        )
    loaders: dict[str, Callable[[Path, str], _Estimator]] = {
        "sklearn": _sklearn,
        "xgboost": _xgboost,
        "lightgbm": _lightgbm,
        "pmml": _pmml,
    }
    loader = loaders.get(fmt)
    if loader is None:
        raise ArtifactError(f"unknown model format '{fmt}' (expected one of {', '.join(FORMATS)})")
    try:
        estimator = loader(path, serialization)
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(f"the {fmt} artifact could not be loaded: {type(exc).__name__}: {exc}") from None
    if "probabilities" in (o.name for o in outputs) and estimator.proba is None:
        raise ArtifactError(f"the {fmt} model is not a classifier with probabilities; drop the 'probabilities' output")
    names = [i.name for i in inputs]
    return Runtime(estimator.bind(names), inputs, outputs)


def _onnx(path: Path, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]) -> Runtime:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"the ONNX artifact could not be loaded: {exc}") from None
    graph_inputs = {i.name: i for i in session.get_inputs()}
    graph_outputs = {o.name: o for o in session.get_outputs()}
    for kind, declared, graph in (("input", inputs, graph_inputs), ("output", outputs, graph_outputs)):
        for tensor in declared:
            node = graph.get(tensor.name)
            if node is None:
                raise ArtifactError(
                    f"{kind} '{tensor.name}' is not in the ONNX graph (its {kind}s: {', '.join(sorted(graph))})"
                )
            datatype = _ONNX_TYPES.get(node.type)
            if datatype != tensor.datatype:
                raise ArtifactError(
                    f"{kind} '{tensor.name}' is {datatype or node.type} in the ONNX graph, the schema says "
                    f"{tensor.datatype}"
                )
    missing = [name for name in graph_inputs if name not in {i.name for i in inputs}]
    if missing:
        raise ArtifactError(f"the ONNX graph needs inputs the schema lacks: {', '.join(missing)}")

    def predict(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        results = session.run(list(names), dict(arrays))
        return dict(zip(names, results, strict=True))

    return Runtime(predict, inputs, outputs)


class _Estimator:
    """A tabular model: ``predict`` and, for classifiers, ``proba`` and the class labels."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        proba: Callable[[np.ndarray], np.ndarray] | None,
        classes: np.ndarray | None,
        dtype: Any = np.float32,
    ) -> None:
        self.predict = predict
        self.proba = proba
        self.classes = classes
        self.dtype = dtype

    def bind(self, input_names: Sequence[str]) -> Callable[[Mapping[str, np.ndarray], Sequence[str]], dict]:
        def run(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
            columns = [arrays[n].reshape(arrays[n].shape[0], -1) for n in input_names]
            matrix = (columns[0] if len(columns) == 1 else np.concatenate(columns, axis=1)).astype(self.dtype)
            out: dict[str, np.ndarray] = {}
            probabilities = None
            if ("probabilities" in names or "label" in names) and self.proba is not None:
                probabilities = np.asarray(self.proba(matrix))
            if "probabilities" in names:
                out["probabilities"] = probabilities
            if "label" in names:
                if probabilities is not None and self.classes is not None:
                    out["label"] = np.asarray(self.classes)[np.argmax(probabilities, axis=1)]
                else:
                    out["label"] = np.asarray(self.predict(matrix))
            if "prediction" in names:
                out["prediction"] = np.asarray(self.predict(matrix))
            return out

        return run


def _unpickle(path: Path, serialization: str) -> Any:
    if serialization == "joblib":
        import joblib

        return joblib.load(path)
    with path.open("rb") as handle:
        return pickle.load(handle)  # only reached for artifacts registered as trusted


def _sklearn(path: Path, serialization: str) -> _Estimator:
    if serialization == "native":
        import skops.io

        untrusted = skops.io.get_untrusted_types(file=path)
        unknown = [t for t in untrusted if not t.startswith(("sklearn.", "numpy.", "scipy."))]
        if unknown:
            raise ArtifactError(f"the skops file holds types outside scikit-learn/numpy/scipy: {', '.join(unknown)}")
        model = skops.io.load(path, trusted=untrusted)
    else:
        model = _unpickle(path, serialization)
    if not hasattr(model, "predict"):
        raise ArtifactError(f"the scikit-learn artifact holds a {type(model).__name__}, which has no predict()")
    proba = model.predict_proba if hasattr(model, "predict_proba") else None
    return _Estimator(model.predict, proba, getattr(model, "classes_", None), np.float64)


def _xgboost(path: Path, serialization: str) -> _Estimator:
    import xgboost as xgb

    if serialization == "native":
        booster = xgb.Booster()
        booster.load_model(str(path))
    else:
        loaded = _unpickle(path, serialization)
        booster = loaded.get_booster() if hasattr(loaded, "get_booster") else loaded
    booster.set_param({"nthread": 1})
    objective = _xgb_objective(booster)

    def raw(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(booster.inplace_predict(matrix))

    if objective.startswith("binary:"):

        def proba(matrix: np.ndarray) -> np.ndarray:
            p = raw(matrix).reshape(-1)
            return np.stack([1 - p, p], axis=1)

        return _Estimator(lambda m: (raw(m).reshape(-1) > 0.5).astype(np.int64), proba, np.array([0, 1]))
    if objective.startswith("multi:softprob"):

        def predict(matrix: np.ndarray) -> np.ndarray:
            return np.argmax(raw(matrix), axis=1)

        classes = np.arange(int(booster.attr("num_class") or _xgb_num_class(booster)))
        return _Estimator(predict, raw, classes)
    return _Estimator(raw, None, None)


def _xgb_objective(booster: Any) -> str:
    config = json.loads(booster.save_config())
    return str(config["learner"]["objective"]["name"])


def _xgb_num_class(booster: Any) -> int:
    config = json.loads(booster.save_config())
    return int(config["learner"]["learner_model_param"]["num_class"])


def _lightgbm(path: Path, serialization: str) -> _Estimator:
    import lightgbm as lgb

    if serialization == "native":
        booster = lgb.Booster(model_file=str(path))
    else:
        loaded = _unpickle(path, serialization)
        booster = loaded.booster_ if hasattr(loaded, "booster_") else loaded
    objective = str(booster.params.get("objective", booster.dump_model().get("objective", "")))

    def raw(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(matrix, num_threads=1))

    if objective.startswith(("binary", "cross_entropy")):

        def proba(matrix: np.ndarray) -> np.ndarray:
            p = raw(matrix).reshape(-1)
            return np.stack([1 - p, p], axis=1)

        return _Estimator(lambda m: (raw(m).reshape(-1) > 0.5).astype(np.int64), proba, np.array([0, 1]))
    if objective.startswith(("multiclass", "softmax", "multiclassova")):
        return _Estimator(lambda m: np.argmax(raw(m), axis=1), raw, np.arange(booster.num_model_per_iteration()))
    return _Estimator(raw, None, None)


def _pmml(path: Path, serialization: str) -> _Estimator:
    if serialization != "native":
        raise ArtifactError("a PMML artifact must be the PMML XML document itself")
    from sklearn_pmml_model.auto_detect import auto_detect_estimator

    model = auto_detect_estimator(pmml=str(path))
    proba = model.predict_proba if hasattr(model, "predict_proba") else None
    classes = getattr(model, "classes_", None)
    return _Estimator(model.predict, proba, None if classes is None else np.asarray(classes), np.float64)
