"""Protobuf into printable data, for the types several command groups share.

A *view* is a plain dict of JSON types (numbers stay numbers, times are ISO 8601 UTC text,
enums their short names): what ``--json`` prints and what the tables are drawn from.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from infermesh.common.v1 import common_pb2
from infermesh_cli.commands._output import ms, percent, print_fields, print_table

__all__ = [
    "audit_view",
    "enum_name",
    "evaluation_view",
    "figures_line",
    "iso",
    "optional",
    "print_audit",
    "print_evaluation",
    "seconds",
    "thresholds_view",
    "time_range_view",
    "timestamp",
    "value",
]


def iso(stamp: timestamp_pb2.Timestamp) -> str:
    """A Timestamp as ISO 8601 UTC, to the millisecond."""
    moment = stamp.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def timestamp(message: Message, field: str) -> str | None:
    """``message.field`` as ISO 8601, None when unset."""
    return iso(getattr(message, field)) if message.HasField(field) else None


def seconds(duration: duration_pb2.Duration) -> float:
    """A Duration in seconds."""
    return duration.ToTimedelta().total_seconds()


def optional(message: Message, field: str) -> Any:
    """``message.field`` when set (proto3 ``optional`` or a message field), else None."""
    return getattr(message, field) if message.HasField(field) else None


def enum_name(enum: EnumTypeWrapper, number: int, prefix: str) -> str:
    """An enum value's name without its prefix (``MODEL_VERSION_STATE_SERVING`` -> ``SERVING``)."""
    try:
        return enum.Name(number).removeprefix(prefix)
    except ValueError:
        return str(number)


def value(message: common_pb2.Value) -> Any:
    """A typed Value as a JSON value (bytes as text when they are UTF-8, else hex)."""
    kind = message.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind in ("double_list", "int64_list", "string_list"):
        return list(getattr(message, kind).values)
    if kind == "bytes_value":
        try:
            return message.bytes_value.decode()
        except UnicodeDecodeError:
            return message.bytes_value.hex()
    return getattr(message, kind)


def time_range_view(window: common_pb2.TimeRange) -> dict[str, str | None]:
    """A TimeRange as ``{"start", "end"}``."""
    return {"start": timestamp(window, "start_time"), "end": timestamp(window, "end_time")}


def _json_or_none(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def audit_view(entry: common_pb2.AuditEntry) -> dict[str, Any]:
    """An audit entry, with its before/after JSON parsed."""
    return {
        "id": entry.id,
        "time": timestamp(entry, "time"),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "reason": entry.reason,
        "request_id": entry.request_id,
        "before": _json_or_none(entry.before_json),
        "after": _json_or_none(entry.after_json),
    }


def print_audit(entries: list[dict[str, Any]]) -> None:
    """Audit entries as a table, newest first."""
    print_table(
        ["time", "actor", "action", "target", "reason"],
        [[e["time"], e["actor"], e["action"], e["target"], e["reason"]] for e in entries],
    )


def thresholds_view(thresholds: common_pb2.SloThresholds) -> dict[str, Any]:
    """The thresholds that are set."""
    view = {
        name: optional(thresholds, name)
        for name in (
            "max_p99_latency_ms",
            "max_p99_latency_ratio",
            "max_error_rate",
            "max_degraded_rate",
            "min_shadow_agreement",
        )
        if thresholds.HasField(name)
    }
    if thresholds.HasField("online_metric"):
        metric = thresholds.online_metric
        view["online_metric"] = {
            "metric": metric.metric,
            "min_value": optional(metric, "min_value"),
            "max_value": optional(metric, "max_value"),
            "max_regression_vs_baseline": optional(metric, "max_regression_vs_baseline"),
            "min_labels": metric.min_labels,
            "label_name": metric.label_name,
        }
    return view


def _figures(figures: common_pb2.SloFigures) -> dict[str, Any]:
    return {
        "requests": figures.requests,
        "p50_latency_ms": figures.p50_latency_ms,
        "p95_latency_ms": figures.p95_latency_ms,
        "p99_latency_ms": figures.p99_latency_ms,
        "error_rate": figures.error_rate,
        "degraded_rate": figures.degraded_rate,
        "shadow_agreement": optional(figures, "shadow_agreement"),
        "online_metric": optional(figures, "online_metric"),
        "labels": figures.labels,
    }


def evaluation_view(evaluation: common_pb2.SloEvaluation) -> dict[str, Any]:
    """An SLO evaluation: verdict, window, figures (the baseline's too), each criterion, reasons."""
    return {
        "verdict": enum_name(common_pb2.SloVerdict, evaluation.verdict, "SLO_VERDICT_"),
        "model": evaluation.model,
        "version": evaluation.version,
        "baseline_version": evaluation.baseline_version or None,
        "window": time_range_view(evaluation.window),
        "evaluate_time": timestamp(evaluation, "evaluate_time"),
        "figures": _figures(evaluation.figures),
        "baseline_figures": _figures(evaluation.baseline_figures) if evaluation.HasField("baseline_figures") else None,
        "criteria": [
            {
                "name": c.name,
                "observed": c.observed,
                "threshold": c.threshold,
                "baseline_observed": optional(c, "baseline_observed"),
                "passed": c.passed,
                "detail": c.detail,
            }
            for c in evaluation.criteria
        ],
        "reasons": list(evaluation.reasons),
    }


def figures_line(figures: dict[str, Any]) -> str:
    """Figures in one line: requests, p99, error and degraded rates, shadow agreement."""
    parts = [
        f"{figures['requests']} requests",
        f"p99 {ms(figures['p99_latency_ms'])} ms",
        f"errors {percent(figures['error_rate'])}",
        f"degraded {percent(figures['degraded_rate'])}",
    ]
    if figures["shadow_agreement"] is not None:
        parts.append(f"shadow agreement {percent(figures['shadow_agreement'])}")
    if figures["online_metric"] is not None:
        parts.append(f"online metric {figures['online_metric']:.4g} ({figures['labels']} labels)")
    return ", ".join(parts)


def print_evaluation(view: dict[str, Any], label: str = "verdict") -> None:
    """An evaluation as a block of fields and a table of its criteria."""
    window = view["window"]
    pairs: list[tuple[str, Any]] = [
        (label, f"{view['verdict']} at {view['evaluate_time'] or '-'}"),
        ("window", f"{window['start'] or '-'} .. {window['end'] or 'now'}"),
        ("figures", figures_line(view["figures"])),
    ]
    if view["baseline_figures"] is not None:
        pairs.append((f"baseline v{view['baseline_version']}", figures_line(view["baseline_figures"])))
    if view["reasons"]:
        pairs.append(("reasons", "; ".join(view["reasons"])))
    print_fields(pairs)
    if view["criteria"]:
        print()
        print_table(
            ["criterion", "observed", "threshold", "baseline", "passed", "detail"],
            [
                [c["name"], c["observed"], c["threshold"], c["baseline_observed"], c["passed"], c["detail"]]
                for c in view["criteria"]
            ],
        )
