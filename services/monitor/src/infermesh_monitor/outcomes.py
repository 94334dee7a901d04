"""Outcomes from ground-truth feedback: online metrics per model version and experiment reports.

Predictions are joined with their labels: by request id (``Feedback.request_id``), or by unit
(a label for a unit applies to that unit's predictions in the scene before the label's time; each
prediction takes the first such label after it). A request reported by several hops counts once
(the business center's event is preferred: it carries the scene, variant and unit).

Metrics: ``accuracy`` (predicted label = true label), ``auc`` and ``log_loss`` (score of the
positive class against a binary truth), ``rmse`` and ``mae`` (first numeric prediction against a
numeric label), ``conversion_rate`` (share of exposed units with a positive label after their
first exposure). Which score is "positive": a score or output named like the label (``1``,
``true``, ``yes``, ``positive`` or the label's name), else column 1 of a two-column output, else
the first single-valued prediction.

Tests against the control arm (:func:`compare`): two-proportion z test with Wald intervals for
accuracy and conversion rate; Welch's t test for mae and log_loss; a seeded bootstrap for auc
and rmse. Every interval is at the requested confidence level.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from infermesh_monitor.schema import PREDICTED_LABEL, PREDICTION_NAMES, PREDICTION_VALUES
from infermesh_monitor.stats import micros
from infermesh_monitor.store import Store

__all__ = [
    "METRICS",
    "ArmOutcome",
    "Labelled",
    "MetricResult",
    "OutcomeQueries",
    "compare",
    "metric_samples",
    "test_for",
]

METRICS = ("accuracy", "auc", "log_loss", "rmse", "mae", "conversion_rate")
HIGHER_IS_BETTER = {
    "accuracy": True,
    "auc": True,
    "conversion_rate": True,
    "log_loss": False,
    "rmse": False,
    "mae": False,
}
_TRUTHY = {"1", "true", "yes", "positive", "1.0"}
_COLUMN = re.compile(r"^(?P<base>.+)\[(?P<index>\d+)\]$")


@dataclass(slots=True)
class Labelled:
    """Labelled predictions of one arm (a variant, or a model version)."""

    pred_labels: list[str]
    names: list[list[str]]
    values: list[list[float]]
    truth_text: list[str]
    truth_number: list[float]

    @property
    def count(self) -> int:
        """Number of labelled predictions."""
        return len(self.pred_labels)


def _norm(text: str) -> str:
    text = text.strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _positive_score(names: list[str], values: list[float], label_name: str) -> float:
    wanted = _TRUTHY | ({label_name.lower()} if label_name else set())
    for name, value in zip(names, values, strict=False):
        if name.lower() in wanted:
            return value
    columns: dict[str, dict[int, float]] = {}
    for name, value in zip(names, values, strict=False):
        match = _COLUMN.match(name)
        if match:
            columns.setdefault(match["base"], {})[int(match["index"])] = value
    for cols in columns.values():
        if set(cols) == {0, 1}:
            return cols[1]
    for name, value in zip(names, values, strict=False):
        if not _COLUMN.match(name):
            return value
    return math.nan


def metric_samples(metric: str, data: Labelled, label_name: str = "") -> np.ndarray:
    """Per-prediction values whose mean is the metric (squared errors for rmse, 0/1 hits for accuracy...).

    For ``auc`` the result is two columns (score, binary truth). Predictions that cannot be scored
    (no positive score, a non-numeric label for a regression metric) are left out.
    """
    if metric == "accuracy":
        return np.array(
            [_norm(p) == _norm(t) for p, t in zip(data.pred_labels, data.truth_text, strict=True) if p != ""],
            dtype=float,
        )
    truth_binary = np.array([_norm(t) in _TRUTHY for t in data.truth_text], dtype=float)
    if metric in ("auc", "log_loss"):
        scores = np.array([_positive_score(n, v, label_name) for n, v in zip(data.names, data.values, strict=True)])
        keep = ~np.isnan(scores)
        scores, truth = scores[keep], truth_binary[keep]
        if metric == "auc":
            return np.column_stack([scores, truth]) if scores.size else np.empty((0, 2))
        p = np.clip(scores, 1e-15, 1 - 1e-15)
        return -(truth * np.log(p) + (1 - truth) * np.log(1 - p))  # type: ignore[no-any-return]
    if metric in ("rmse", "mae"):
        predicted = np.array([v[0] if v else math.nan for v in data.values], dtype=float)
        truth = np.array(data.truth_number, dtype=float)
        keep = ~(np.isnan(predicted) | np.isnan(truth))
        errors = predicted[keep] - truth[keep]
        return errors**2 if metric == "rmse" else np.abs(errors)  # type: ignore[no-any-return]
    raise ValueError(f"unknown metric {metric!r}")


def _auc(pairs: np.ndarray) -> float:
    scores, truth = pairs[:, 0], pairs[:, 1]
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = sps.rankdata(scores)
    return float((ranks[truth == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _value(metric: str, samples: np.ndarray) -> float:
    if len(samples) == 0:
        return math.nan
    if metric == "auc":
        return _auc(samples)
    if metric == "rmse":
        return float(np.sqrt(samples.mean()))
    return float(samples.mean())


@dataclass(slots=True)
class ArmOutcome:
    """The samples of one arm for one metric."""

    name: str
    samples: np.ndarray
    """Per-prediction values (per unit 0/1 for conversion_rate; (score, truth) rows for auc)."""


@dataclass(slots=True)
class MetricResult:
    """The metric of one arm, its interval, and its comparison with the control."""

    name: str
    count: int
    value: float
    ci: tuple[float, float]
    delta: float = 0.0
    delta_ci: tuple[float, float] = (0.0, 0.0)
    p_value: float = 1.0
    significant: bool = False


def _bootstrap(
    metric: str, arm: np.ndarray, control: np.ndarray, level: float, resamples: int
) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Percentile intervals of the arm's metric and of its difference from the control, and a two-sided p-value."""
    rng = np.random.default_rng(20240601)
    values, deltas = np.empty(resamples), np.empty(resamples)
    for i in range(resamples):
        a = arm[rng.integers(0, len(arm), len(arm))]
        c = control[rng.integers(0, len(control), len(control))]
        values[i] = _value(metric, a)
        deltas[i] = values[i] - _value(metric, c)
    alpha = 1 - level
    values, deltas = values[~np.isnan(values)], deltas[~np.isnan(deltas)]
    if len(deltas) == 0:
        return (math.nan, math.nan), (math.nan, math.nan), 1.0
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    delta_low, delta_high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    p = 2 * min(float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0)))
    return (float(low), float(high)), (float(delta_low), float(delta_high)), min(1.0, p)


def test_for(metric: str) -> str:
    """The test :func:`compare` uses for ``metric``."""
    if metric in ("accuracy", "conversion_rate"):
        return "two_proportion_z"
    if metric in ("mae", "log_loss"):
        return "welch_t"
    return "bootstrap"


def compare(
    metric: str, arms: Sequence[ArmOutcome], control: str, level: float, resamples: int = 1000
) -> list[MetricResult]:
    """Each arm's metric with its interval, and its difference from ``control`` with a test."""
    z = float(sps.norm.ppf(1 - (1 - level) / 2))
    by_name = {arm.name: arm for arm in arms}
    base = by_name.get(control)
    results = []
    for arm in arms:
        n = len(arm.samples)
        value = _value(metric, arm.samples)
        result = MetricResult(arm.name, n, value, (math.nan, math.nan))
        test = test_for(metric)
        if test == "two_proportion_z" and n:
            result.ci = _wilson(value, n, z)
        elif test == "welch_t" and n > 1:
            half = float(sps.t.ppf(1 - (1 - level) / 2, n - 1)) * float(arm.samples.std(ddof=1)) / math.sqrt(n)
            result.ci = (value - half, value + half)
        if base is None or arm.name == control or n == 0 or len(base.samples) == 0:
            if test == "bootstrap" and n > 1:
                result.ci = _bootstrap(metric, arm.samples, arm.samples, level, resamples)[0]
            results.append(result)
            continue
        m = len(base.samples)
        base_value = _value(metric, base.samples)
        result.delta = value - base_value
        if test == "two_proportion_z":
            pooled = (value * n + base_value * m) / (n + m)
            se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
            stat = result.delta / se_pooled if se_pooled > 0 else 0.0
            result.p_value = float(2 * sps.norm.sf(abs(stat))) if se_pooled > 0 else 1.0
            se = math.sqrt(value * (1 - value) / n + base_value * (1 - base_value) / m)
            result.delta_ci = (result.delta - z * se, result.delta + z * se)
        elif test == "welch_t":
            if n > 1 and m > 1:
                welch = sps.ttest_ind(arm.samples, base.samples, equal_var=False)
                result.p_value = float(welch.pvalue) if not math.isnan(welch.pvalue) else 1.0
                va, vb = arm.samples.var(ddof=1) / n, base.samples.var(ddof=1) / m
                dof = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (m - 1)) if va + vb > 0 else n + m - 2
                half = float(sps.t.ppf(1 - (1 - level) / 2, dof)) * math.sqrt(va + vb)
                result.delta_ci = (result.delta - half, result.delta + half)
        else:
            result.ci, result.delta_ci, result.p_value = _bootstrap(metric, arm.samples, base.samples, level, resamples)
        result.significant = result.p_value < 1 - level
        results.append(result)
    return results


def _wilson(p: float, n: int, z: float) -> tuple[float, float]:
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (centre - half, centre + half)


_LABELS = """SELECT target_request_id, argMax(label_text, label_time) AS text,
        argMax(label_number, label_time) AS number
    FROM feedback_events WHERE label_name = {label_name:String} AND target_request_id != ''
    GROUP BY target_request_id"""
_UNIT_LABELS = """SELECT unit_id_hash, scene, label_time, label_text AS text, label_number AS number
    FROM feedback_events WHERE label_name = {label_name:String} AND target_request_id = ''"""


class OutcomeQueries:
    """Joins predictions with feedback (see the module docstring)."""

    def __init__(self, store: Store, max_predictions: int) -> None:
        self._store = store
        self._max = max_predictions

    async def labelled(
        self, arm_column: str, where: str, params: dict[str, object], label_name: str
    ) -> dict[str, Labelled]:
        """Labelled predictions matching ``where`` (over ``inference_events``), by ``arm_column``."""
        predictions = f"""SELECT {arm_column} AS arm, request_id, unit_id_hash, scene, time,
                {PREDICTED_LABEL} AS pred_label,
                {PREDICTION_NAMES} AS names, {PREDICTION_VALUES} AS values
            FROM inference_events WHERE {where} AND status_code = 0
            ORDER BY source_service = 'biz-center' DESC
            LIMIT 1 BY if(request_id = '', event_id, request_id)"""
        rows = await self._store.rows(
            f"""WITH p AS ({predictions})
            SELECT arm, pred_label, names, values, l.text, l.number
                FROM p INNER JOIN ({_LABELS}) AS l ON p.request_id = l.target_request_id
            UNION ALL
            SELECT arm, pred_label, names, values, u.text, u.number
                FROM p ASOF INNER JOIN ({_UNIT_LABELS}) AS u
                ON p.unit_id_hash = u.unit_id_hash AND p.scene = u.scene AND p.time <= u.label_time
                WHERE p.unit_id_hash != ''
            LIMIT {{max_predictions:UInt64}}""",
            {**params, "label_name": label_name, "max_predictions": self._max},
        )
        out: dict[str, Labelled] = {}
        for arm, pred_label, names, values, text, number in rows:
            data = out.setdefault(str(arm), Labelled([], [], [], [], []))
            data.pred_labels.append(pred_label or "")
            data.names.append(names)
            data.values.append([math.nan if v is None else float(v) for v in values])
            data.truth_text.append(text or "")
            data.truth_number.append(math.nan if number is None else float(number))
        return out

    async def conversions(
        self, experiment: str, layer: str, start_s: float, end_s: float, label_name: str
    ) -> dict[tuple[str, str], np.ndarray]:
        """Per (layer, variant): one 0/1 per exposed unit, 1 when it converted after its first exposure."""
        rows = await self._store.rows(
            """SELECT e.layer, e.variant, groupArray(toUInt8(c.last_conversion >= e.first_exposure)) FROM (
                SELECT layer, variant, unit_id_hash, scene, min(time) AS first_exposure FROM exposure_events
                WHERE experiment = {experiment:String} AND ({layer:String} = '' OR layer = {layer:String})
                    AND time >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')
                    AND time < fromUnixTimestamp64Micro({end:Int64}, 'UTC')
                GROUP BY layer, variant, unit_id_hash, scene) AS e
            LEFT JOIN (
                SELECT unit, max(label_time) AS last_conversion FROM (
                    SELECT if(f.target_request_id = '', f.unit_id_hash, i.request_unit) AS unit,
                        f.label_time AS label_time
                    FROM feedback_events AS f
                    LEFT JOIN (SELECT request_id, any(unit_id_hash) AS request_unit FROM inference_events
                               WHERE unit_id_hash != '' AND request_id != '' GROUP BY request_id) AS i
                        ON f.target_request_id = i.request_id
                    WHERE f.label_name = {label_name:String}
                        AND (f.label_number = 1 OR lower(f.label_text) IN {truthy:Array(String)}))
                WHERE unit != '' GROUP BY unit) AS c ON e.unit_id_hash = c.unit
            GROUP BY e.layer, e.variant ORDER BY e.layer, e.variant""",
            {
                "experiment": experiment,
                "layer": layer,
                "start": micros(start_s),
                "end": micros(end_s),
                "label_name": label_name,
                "truthy": sorted(_TRUTHY),
            },
        )
        return {(str(lay), str(var)): np.array(flags, dtype=float) for lay, var, flags in rows}

    async def variant_serving(
        self, experiment: str, layer: str, start_s: float, end_s: float
    ) -> dict[str, tuple[int, float, float]]:
        """Per variant of the layer: predictions served (business center events), p99 latency ms, error rate."""
        rows = await self._store.rows(
            """SELECT variant, count(), quantileExactInclusive(0.99)(latency_ms), countIf(status_code != 0) / count()
            FROM inference_events
            WHERE (variant, unit_id_hash) IN (SELECT variant, unit_id_hash FROM exposure_events
                                              WHERE experiment = {experiment:String} AND layer = {layer:String})
                AND source_service = 'biz-center'
                AND time >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')
                AND time < fromUnixTimestamp64Micro({end:Int64}, 'UTC')
            GROUP BY variant""",
            {"experiment": experiment, "layer": layer, "start": micros(start_s), "end": micros(end_s)},
        )
        return {str(v): (int(n), float(p99 or 0.0), float(err)) for v, n, p99, err in rows}
