"""Response mapping: model output tensors → a :class:`~.domain.Prediction`, as the scene says.

Scores come from ``score_output`` (default: the first output), named by ``score_labels``, else by
the output's class labels in the model registry, else by the output's name (one score) or
``name[i]``. The label comes from ``label_output`` when set (a BYTES label as text, a number as
the class label it indexes when labels are known); else, with a threshold, from the single score
or the last score of two (the positive class): ``label_if_above`` at or above it,
``label_otherwise`` below; else, with several scores, the label of the highest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from infermesh_biz_center.catalog import ResponseMap
from infermesh_biz_center.domain import Prediction, RawTensor
from infermesh_biz_center.downstream import decode_tensor
from infermesh_chassis.errors import FailedPrecondition

__all__ = ["map_outputs", "needs_class_labels"]


def _output(outputs: Sequence[RawTensor], name: str, what: str) -> RawTensor:
    if not outputs:
        raise FailedPrecondition("the model returned no outputs")
    if not name:
        return outputs[0]
    for tensor in outputs:
        if tensor.name == name:
            return tensor
    raise FailedPrecondition(f"{what} '{name}' is not among the model's outputs {[t.name for t in outputs]}")


def needs_class_labels(mapping: ResponseMap) -> bool:
    """Whether mapping may need class labels from the registry."""
    return not mapping.score_labels or bool(mapping.label_output)


def map_outputs(
    outputs: Sequence[RawTensor], mapping: ResponseMap, class_labels: Mapping[str, tuple[str, ...]]
) -> Prediction:
    """The Prediction of one row of outputs (see the module docstring)."""
    tensor = _output(outputs, mapping.score_output, "score_output")
    if tensor.datatype == "BYTES":
        raise FailedPrecondition(f"score output '{tensor.name}' holds strings, not scores")
    values = decode_tensor(tensor).astype(np.float64).tolist()
    labels = mapping.score_labels or class_labels.get(tensor.name, ())
    if not labels:
        labels = (tensor.name,) if len(values) == 1 else tuple(f"{tensor.name}[{i}]" for i in range(len(values)))
    if len(labels) != len(values):
        raise FailedPrecondition(f"output '{tensor.name}' has {len(values)} scores for {len(labels)} labels")
    scores = dict(zip(labels, values, strict=True))
    label = ""
    if mapping.label_output:
        label_tensor = _output(outputs, mapping.label_output, "label_output")
        first = decode_tensor(label_tensor)[:1].tolist()
        if first:
            value = first[0]
            names = class_labels.get(label_tensor.name) or labels
            if isinstance(value, bytes):
                label = value.decode(errors="replace")
            elif float(value).is_integer() and 0 <= int(value) < len(names):
                label = names[int(value)]
            else:
                label = str(value)
    elif mapping.threshold is not None and len(values) in (1, 2):
        label = mapping.label_if_above if values[-1] >= mapping.threshold else mapping.label_otherwise
    elif len(values) > 1:
        label = labels[int(np.argmax(values))]
    raw = tuple(outputs) if mapping.include_raw_outputs else ()
    return Prediction(scores, label, raw)
