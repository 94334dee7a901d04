"""Shadow comparison: per (model, primary version, shadow version), how the shadow's answers compare.

A pair agrees when both sides have discrete outputs (labels) and those are equal, or, without
labels, when every score of the shadow is within the tolerance of the primary's. A pair whose
shadow failed counts as a disagreement (a gate on agreement must not pass a failing shadow).
Score differences are taken element by element over the float outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infermesh_monitor.stats import micros
from infermesh_monitor.store import Store

__all__ = ["ShadowComparison", "ShadowQueries"]

DEFAULT_TOLERANCE = 1e-6

_SAME_SIZE = "length(primary_scores) = length(shadow_scores)"
_DIFFS = (
    "arrayMap((a, b) -> abs(a - b), arrayResize(primary_scores, least(length(primary_scores), length(shadow_scores))),"
    " arrayResize(shadow_scores, least(length(primary_scores), length(shadow_scores))))"
)
_AGREE = (
    "NOT shadow_failed AND if(notEmpty(primary_labels) AND notEmpty(shadow_labels), primary_labels = shadow_labels,"
    f" {_SAME_SIZE} AND arrayAll(d -> d <= {{tol:Float64}}, {_DIFFS}))"
)


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """Comparison of one version pair over a window."""

    model: str
    primary_version: int
    shadow_version: int
    pairs: int
    shadow_errors: int
    agreement_rate: float
    mean_abs_score_diff: float
    max_abs_score_diff: float
    mean_latency_delta_ms: float
    p99_latency_delta_ms: float


def _number(value: float | None) -> float:
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


class ShadowQueries:
    """Shadow comparisons over ``shadow_events``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def compare(
        self,
        model: str,
        start_s: float,
        end_s: float,
        *,
        primary_version: int = 0,
        shadow_version: int = 0,
        either_way: tuple[int, int] | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> list[ShadowComparison]:
        """One comparison per version pair; ``either_way`` = (a, b) keeps pairs {a, b} in either role."""
        where = [
            "model = {model:String}",
            "time >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')",
            "time < fromUnixTimestamp64Micro({end:Int64}, 'UTC')",
        ]
        params: dict[str, object] = {"model": model, "start": micros(start_s), "end": micros(end_s), "tol": tolerance}
        if primary_version:
            where.append("primary_version = {pv:Int64}")
            params["pv"] = primary_version
        if shadow_version:
            where.append("shadow_version = {sv:Int64}")
            params["sv"] = shadow_version
        if either_way is not None:
            where.append(
                "((primary_version = {a:Int64} AND shadow_version = {b:Int64})"
                " OR (primary_version = {b:Int64} AND shadow_version = {a:Int64}))"
            )
            params["a"], params["b"] = either_way
        compared = f"NOT shadow_failed AND {_SAME_SIZE} AND notEmpty(primary_scores)"
        rows = await self._store.rows(
            f"""SELECT primary_version, shadow_version, count(), countIf(shadow_failed), countIf({_AGREE}),
                sumIf(arraySum({_DIFFS}), {compared}), sumIf(length(primary_scores), {compared}),
                maxIf(arrayMax({_DIFFS}), {compared}),
                avgIf(shadow_latency_ms - primary_latency_ms, NOT shadow_failed),
                quantileExactInclusiveIf(0.99)(shadow_latency_ms, NOT shadow_failed)
                    - quantileExactInclusive(0.99)(primary_latency_ms)
            FROM shadow_events WHERE {" AND ".join(where)}
            GROUP BY primary_version, shadow_version ORDER BY primary_version, shadow_version""",
            params,
        )
        out = []
        for pv, sv, pairs, errors, agree, diff_sum, diff_n, diff_max, latency_delta, p99_delta in rows:
            out.append(
                ShadowComparison(
                    model=model,
                    primary_version=int(pv),
                    shadow_version=int(sv),
                    pairs=int(pairs),
                    shadow_errors=int(errors),
                    agreement_rate=int(agree) / int(pairs) if pairs else 0.0,
                    mean_abs_score_diff=_number(diff_sum) / int(diff_n) if diff_n else 0.0,
                    max_abs_score_diff=_number(diff_max) if diff_n else 0.0,
                    mean_latency_delta_ms=_number(latency_delta),
                    p99_latency_delta_ms=_number(p99_delta) if int(pairs) > int(errors) else 0.0,
                )
            )
        return out
