"""SLO gates: does a model version meet its thresholds over a window, with enough requests?

Latency and error figures come from the model gateway's events and the degraded rate from the
business center's (or both from ``source_service`` when given; the degraded rate falls back to
the latency source when the business center reported nothing for the version). Quantiles are
exact over the window. The verdict:

- INSUFFICIENT_DATA when the version served fewer than ``min_requests`` requests (criteria are
  still reported, for information);
- otherwise FAIL when any criterion that could be evaluated fails;
- otherwise INSUFFICIENT_DATA when a criterion lacked its data (no baseline traffic for a
  relative threshold, no shadow pairs, fewer labels than asked);
- otherwise PASS.

Everything is computed with one query for the figures, plus one for shadow agreement and one for
the online metric when those thresholds are set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from infermesh_monitor.outcomes import HIGHER_IS_BETTER, METRICS, ArmOutcome, OutcomeQueries, compare, metric_samples
from infermesh_monitor.shadow import ShadowQueries
from infermesh_monitor.stats import micros
from infermesh_monitor.store import Store

__all__ = ["Criterion", "Figures", "SloGate", "SloResult", "Thresholds"]

LATENCY_SOURCE = "model-gateway"
DEGRADED_SOURCE = "biz-center"


@dataclass(slots=True)
class Thresholds:
    """The thresholds checked (None: not checked)."""

    max_p99_latency_ms: float | None = None
    max_p99_latency_ratio: float | None = None
    max_error_rate: float | None = None
    max_degraded_rate: float | None = None
    min_shadow_agreement: float | None = None
    online_metric: str = ""
    online_min: float | None = None
    online_max: float | None = None
    online_max_regression: float | None = None
    online_min_labels: int = 0
    online_label_name: str = ""


@dataclass(slots=True)
class Figures:
    """What a version did over the window."""

    requests: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    error_rate: float = 0.0
    degraded_rate: float = 0.0
    shadow_agreement: float | None = None
    online_metric: float | None = None
    labels: int = 0


@dataclass(slots=True)
class Criterion:
    """One checked threshold."""

    name: str
    observed: float
    threshold: float
    passed: bool
    detail: str
    baseline_observed: float | None = None


@dataclass(slots=True)
class SloResult:
    """Verdict ("pass", "fail", "insufficient_data"), figures and reasons."""

    verdict: str
    figures: Figures
    baseline_figures: Figures | None
    criteria: list[Criterion] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


class SloGate:
    """Evaluates SLO checks (see the module docstring)."""

    def __init__(self, store: Store, shadow: ShadowQueries, outcomes: OutcomeQueries) -> None:
        self._store = store
        self._shadow = shadow
        self._outcomes = outcomes

    async def _figures(
        self, model: str, versions: list[int], start_s: float, end_s: float, source: str
    ) -> dict[int, Figures]:
        sources = [source] if source else [LATENCY_SOURCE, DEGRADED_SOURCE]
        rows = await self._store.rows(
            """SELECT model_version, source_service, count(), quantilesExactInclusive(0.5, 0.95, 0.99)(latency_ms),
                countIf(status_code != 0), countIf(degraded)
            FROM inference_events
            WHERE model = {model:String} AND model_version IN {versions:Array(Int64)}
                AND source_service IN {sources:Array(String)}
                AND time >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')
                AND time < fromUnixTimestamp64Micro({end:Int64}, 'UTC')
            GROUP BY model_version, source_service""",
            {"model": model, "versions": versions, "sources": sources, "start": micros(start_s), "end": micros(end_s)},
        )
        by_key = {(int(r[0]), str(r[1])): r for r in rows}
        latency_source = source or LATENCY_SOURCE
        out: dict[int, Figures] = {}
        for version in versions:
            figures = Figures()
            row = by_key.get((version, latency_source))
            if row is not None and row[2]:
                count = int(row[2])
                figures.requests = count
                figures.p50_ms, figures.p95_ms, figures.p99_ms = (float(q) for q in row[3])
                figures.error_rate = int(row[4]) / count
            degraded_row = by_key.get((version, source or DEGRADED_SOURCE)) or row
            if degraded_row is not None and degraded_row[2]:
                figures.degraded_rate = int(degraded_row[5]) / int(degraded_row[2])
            out[version] = figures
        return out

    async def check(
        self,
        *,
        model: str,
        version: int,
        baseline_version: int,
        start_s: float,
        end_s: float,
        min_requests: int,
        thresholds: Thresholds,
        source: str = "",
    ) -> SloResult:
        """Evaluate ``thresholds`` for ``model``/``version`` over [start_s, end_s)."""
        versions = [version] + ([baseline_version] if baseline_version else [])
        all_figures = await self._figures(model, versions, start_s, end_s, source)
        figures = all_figures[version]
        base = all_figures.get(baseline_version) if baseline_version else None
        criteria: list[Criterion] = []
        missing: list[str] = []

        def upper(name: str, observed: float, limit: float, unit: str = "") -> None:
            passed = observed <= limit
            sign = "<=" if passed else ">"
            criteria.append(
                Criterion(name, observed, limit, passed, f"{name} {observed:.4g}{unit} {sign} {limit:.4g}{unit}")
            )

        criteria.append(
            Criterion(
                "min_requests",
                figures.requests,
                min_requests,
                figures.requests >= min_requests,
                f"{figures.requests} requests (at least {min_requests} needed)",
            )
        )
        t = thresholds
        if t.max_p99_latency_ms is not None:
            upper("p99_latency_ms", figures.p99_ms, t.max_p99_latency_ms, " ms")
        if t.max_p99_latency_ratio is not None:
            if base is None or base.requests == 0 or base.p99_ms <= 0:
                missing.append("p99_latency_ratio: the baseline version served no requests in the window")
            else:
                ratio = figures.p99_ms / base.p99_ms
                upper("p99_latency_ratio", ratio, t.max_p99_latency_ratio)
                criteria[-1].baseline_observed = base.p99_ms
        if t.max_error_rate is not None:
            upper("error_rate", figures.error_rate, t.max_error_rate)
        if t.max_degraded_rate is not None:
            upper("degraded_rate", figures.degraded_rate, t.max_degraded_rate)
        if t.min_shadow_agreement is not None:
            await self._shadow_criterion(
                model=model,
                version=version,
                baseline_version=baseline_version,
                start_s=start_s,
                end_s=end_s,
                figures=figures,
                criteria=criteria,
                missing=missing,
                t=t,
            )
        if t.online_metric:
            await self._online_criterion(
                model=model,
                version=version,
                baseline_version=baseline_version,
                start_s=start_s,
                end_s=end_s,
                figures=figures,
                base=base,
                criteria=criteria,
                missing=missing,
                t=t,
            )

        failed = [c.detail for c in criteria if not c.passed and c.name != "min_requests"]
        if figures.requests < min_requests:
            verdict, reasons = "insufficient_data", [criteria[0].detail]
        elif failed:
            verdict, reasons = "fail", failed
        elif missing:
            verdict, reasons = "insufficient_data", missing
        else:
            verdict, reasons = "pass", []
        return SloResult(verdict, figures, base, criteria, reasons)

    async def _shadow_criterion(
        self,
        *,
        model: str,
        version: int,
        baseline_version: int,
        start_s: float,
        end_s: float,
        figures: Figures,
        criteria: list[Criterion],
        missing: list[str],
        t: Thresholds,
    ) -> None:
        if baseline_version:
            comparisons = await self._shadow.compare(model, start_s, end_s, either_way=(version, baseline_version))
        else:
            comparisons = await self._shadow.compare(model, start_s, end_s, shadow_version=version)
        pairs = sum(c.pairs for c in comparisons)
        if pairs == 0:
            missing.append("shadow_agreement: no shadow pairs in the window")
            return
        agreement = sum(c.agreement_rate * c.pairs for c in comparisons) / pairs
        figures.shadow_agreement = agreement
        passed = agreement >= (t.min_shadow_agreement or 0.0)
        criteria.append(
            Criterion(
                "shadow_agreement",
                agreement,
                t.min_shadow_agreement or 0.0,
                passed,
                f"shadow agreement {agreement:.4g} {'>=' if passed else '<'} {t.min_shadow_agreement:.4g}"
                f" over {pairs} pairs",
            )
        )

    async def _online_criterion(
        self,
        *,
        model: str,
        version: int,
        baseline_version: int,
        start_s: float,
        end_s: float,
        figures: Figures,
        base: Figures | None,
        criteria: list[Criterion],
        missing: list[str],
        t: Thresholds,
    ) -> None:
        metric = t.online_metric
        name = f"online_metric:{metric}"
        if metric not in METRICS or metric == "conversion_rate":
            missing.append(f"{name}: not available as a per-version gate (one of accuracy, auc, log_loss, rmse, mae)")
            return
        versions = [version] + ([baseline_version] if baseline_version else [])
        labelled = await self._outcomes.labelled(
            "model_version",
            "model = {model:String} AND model_version IN {versions:Array(Int64)}"
            " AND time >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')"
            " AND time < fromUnixTimestamp64Micro({end:Int64}, 'UTC')",
            {"model": model, "versions": versions, "start": micros(start_s), "end": micros(end_s)},
            t.online_label_name,
        )
        arms = [
            ArmOutcome(str(v), metric_samples(metric, labelled[str(v)], t.online_label_name))
            for v in versions
            if str(v) in labelled
        ]
        results = {r.name: r for r in compare(metric, arms, str(baseline_version), 0.95, 200)}
        own = results.get(str(version))
        figures.labels = own.count if own else 0
        if own is None or own.count < max(1, t.online_min_labels) or math.isnan(own.value):
            missing.append(
                f"{name}: {figures.labels} labelled predictions (at least {max(1, t.online_min_labels)} needed)"
            )
            return
        figures.online_metric = own.value
        if base is not None and str(baseline_version) in results:
            base.online_metric = results[str(baseline_version)].value
            base.labels = results[str(baseline_version)].count
        if t.online_min is not None:
            passed = own.value >= t.online_min
            criteria.append(
                Criterion(
                    name,
                    own.value,
                    t.online_min,
                    passed,
                    f"{metric} {own.value:.4g} {'>=' if passed else '<'} {t.online_min:.4g}",
                )
            )
        if t.online_max is not None:
            passed = own.value <= t.online_max
            criteria.append(
                Criterion(
                    name,
                    own.value,
                    t.online_max,
                    passed,
                    f"{metric} {own.value:.4g} {'<=' if passed else '>'} {t.online_max:.4g}",
                )
            )
        if t.online_max_regression is not None:
            baseline_value = base.online_metric if base is not None else None
            if baseline_value is None or math.isnan(baseline_value):
                missing.append(f"{name}: the baseline version has no labelled predictions")
                return
            regression = (baseline_value - own.value) if HIGHER_IS_BETTER[metric] else (own.value - baseline_value)
            passed = regression <= t.online_max_regression
            criteria.append(
                Criterion(
                    name,
                    own.value,
                    t.online_max_regression,
                    passed,
                    f"{metric} {own.value:.4g} vs baseline {baseline_value:.4g}: regression {regression:.4g}"
                    f" {'<=' if passed else '>'} {t.online_max_regression:.4g}",
                    baseline_observed=baseline_value,
                )
            )
