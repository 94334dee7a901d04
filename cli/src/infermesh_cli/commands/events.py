"""``infermesh events``: the monitor's windows, drift, shadow, experiment and SLO reports."""

from __future__ import annotations

import argparse
from typing import Any

from infermesh.common.v1 import common_pb2
from infermesh.monitor.v1 import monitor_pb2 as pb
from infermesh.monitor.v1 import monitor_pb2_grpc as pb_grpc
from infermesh_cli.commands._context import Context, Remote, subcommand
from infermesh_cli.commands._convert import enum_name, evaluation_view, print_evaluation, time_range_view
from infermesh_cli.commands._errors import EXIT_FAILED, UsageError
from infermesh_cli.commands._output import ms, percent, print_fields, print_table
from infermesh_cli.commands._parse import (
    guess_value,
    parse_duration,
    parse_time,
    time_range,
    to_duration,
    to_timestamp,
    value_to_proto,
)
from infermesh_cli.commands.rollouts import add_gate_options, gates_from_args

__all__ = ["add_parser"]

WINDOWS = {"1m": pb.STATS_WINDOW_1M, "5m": pb.STATS_WINDOW_5M, "1h": pb.STATS_WINDOW_1H}
DIMENSIONS = {
    "scene": (pb.STATS_DIMENSION_SCENE, "scene"),
    "variant": (pb.STATS_DIMENSION_VARIANT, "variant"),
    "model": (pb.STATS_DIMENSION_MODEL, "model"),
    "version": (pb.STATS_DIMENSION_MODEL_VERSION, "model_version"),
    "service": (pb.STATS_DIMENSION_SOURCE_SERVICE, "source_service"),
    "worker": (pb.STATS_DIMENSION_WORKER, "worker"),
}


def monitor(ctx: Context) -> Remote:
    """The monitor."""
    return ctx.remote("monitor", pb_grpc.MonitorServiceStub)


def _window(args: argparse.Namespace) -> common_pb2.TimeRange | None:
    return time_range(args.since, args.until)


def _add_window(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--since", metavar="TIME", help=f"start of the window: 1h (ago), ISO 8601... (default: {default})"
    )
    parser.add_argument("--until", metavar="TIME", help="end of the window (default: now)")


# -- stats ---------------------------------------------------------------------------------------


async def stats(ctx: Context, args: argparse.Namespace) -> None:
    """Windowed serving figures (requests, throughput, latency quantiles, error and degraded rates), grouped."""
    by = [d for text in args.by or [] for d in text.split(",") if d]
    unknown = [d for d in by if d not in DIMENSIONS]
    if unknown:
        raise UsageError(f"--by: unknown dimension {', '.join(unknown)} (choose from {', '.join(DIMENSIONS)})")
    request = pb.QueryStatsRequest(
        window=WINDOWS[args.window],
        group_by=[DIMENSIONS[d][0] for d in by],
        filter=pb.StatsFilter(
            scene=args.scene or "",
            variant=args.variant or "",
            model=args.model or "",
            model_version=args.version or 0,
            source_service=args.source or "",
        ),
    )
    if args.until is not None:
        request.end_time.CopyFrom(to_timestamp(parse_time(args.until, "--until")))
    reply = await monitor(ctx).call("QueryStats", request)
    rows = [
        {
            "group": {d: getattr(r.group, DIMENSIONS[d][1]) for d in by},
            "requests": r.count,
            "throughput_rps": r.throughput_rps,
            "p50_latency_ms": r.p50_latency_ms,
            "p95_latency_ms": r.p95_latency_ms,
            "p99_latency_ms": r.p99_latency_ms,
            "mean_latency_ms": r.mean_latency_ms,
            "error_rate": r.error_rate,
            "errors": r.error_count,
            "degraded_rate": r.degraded_rate,
            "degraded": r.degraded_count,
        }
        for r in reply.rows
    ]
    data = {"window": time_range_view(reply.window), "rows": rows}

    def render() -> None:
        window = data["window"]
        print(f"window {args.window}: {window['start']} .. {window['end']}")
        print_table(
            [*by, "requests", "rps", "p50 ms", "p95 ms", "p99 ms", "errors", "degraded"],
            [
                [
                    *(r["group"][d] for d in by),
                    r["requests"],
                    f"{r['throughput_rps']:.2f}",
                    ms(r["p50_latency_ms"]),
                    ms(r["p95_latency_ms"]),
                    ms(r["p99_latency_ms"]),
                    f"{r['errors']} ({percent(r['error_rate'])})",
                    f"{r['degraded']} ({percent(r['degraded_rate'])})",
                ]
                for r in rows
            ],
        )

    ctx.emit(data, render)


# -- drift ---------------------------------------------------------------------------------------


def _drift_entry(entry: pb.DriftEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "psi": entry.psi,
        "level": enum_name(pb.DriftLevel, entry.level, "DRIFT_LEVEL_"),
        "baseline_count": entry.baseline_count,
        "current_count": entry.current_count,
        "bins": [
            {
                "lower": b.lower,
                "upper": b.upper,
                "category": b.category,
                "baseline_fraction": b.baseline_fraction,
                "current_fraction": b.current_fraction,
            }
            for b in entry.bins
        ],
    }


async def drift(ctx: Context, args: argparse.Namespace) -> None:
    """Population stability index of each feature and prediction against a baseline."""
    request = pb.GetDriftReportRequest(
        model=args.model, model_version=args.version, features=args.feature or [], bins=args.bins or 0
    )
    window = _window(args)
    if window is not None:
        request.window.CopyFrom(window)
    if args.baseline and (args.baseline_since or args.baseline_until):
        raise UsageError("give --baseline or a baseline window (--baseline-since/--baseline-until), not both")
    if args.baseline:
        request.baseline.baseline_id = args.baseline
    else:
        baseline = time_range(args.baseline_since, args.baseline_until)
        if baseline is not None:
            request.baseline.window.CopyFrom(baseline)
    reply = await monitor(ctx).call("GetDriftReport", request)
    data = {
        "model": reply.model,
        "version": reply.model_version,
        "window": time_range_view(reply.window),
        "baseline": reply.baseline_description,
        "features": [_drift_entry(e) for e in reply.features],
        "predictions": [_drift_entry(e) for e in reply.predictions],
    }

    def render() -> None:
        print_fields(
            [
                ("model", f"{data['model']} v{data['version']}"),
                ("window", f"{data['window']['start']} .. {data['window']['end'] or 'now'}"),
                ("baseline", data["baseline"]),
            ]
        )
        print()
        print_table(
            ["feature or prediction", "psi", "level", "baseline n", "current n"],
            [
                [e["name"], f"{e['psi']:.4f}", e["level"], e["baseline_count"], e["current_count"]]
                for e in data["features"] + data["predictions"]
            ],
        )

    ctx.emit(data, render)


# -- shadow --------------------------------------------------------------------------------------


async def shadow(ctx: Context, args: argparse.Namespace) -> None:
    """Shadow comparison per (primary, shadow) version pair: agreement, score differences, latency delta."""
    request = pb.GetShadowReportRequest(
        model=args.model,
        primary_version=args.primary or 0,
        shadow_version=args.shadow or 0,
        score_tolerance=args.tolerance or 0.0,
    )
    window = _window(args)
    if window is not None:
        request.window.CopyFrom(window)
    reply = await monitor(ctx).call("GetShadowReport", request)
    pairs = [
        {
            "model": c.model,
            "primary_version": c.primary_version,
            "shadow_version": c.shadow_version,
            "pairs": c.pairs,
            "shadow_errors": c.shadow_errors,
            "agreement_rate": c.agreement_rate,
            "mean_abs_score_diff": c.mean_abs_score_diff,
            "max_abs_score_diff": c.max_abs_score_diff,
            "mean_latency_delta_ms": c.mean_latency_delta_ms,
            "p99_latency_delta_ms": c.p99_latency_delta_ms,
        }
        for c in reply.comparisons
    ]
    data = {"window": time_range_view(reply.window), "comparisons": pairs}
    ctx.emit(
        data,
        lambda: print_table(
            [
                "model",
                "primary",
                "shadow",
                "pairs",
                "shadow errors",
                "agreement",
                "mean |diff|",
                "max |diff|",
                "p99 delta ms",
            ],
            [
                [
                    p["model"],
                    p["primary_version"],
                    p["shadow_version"],
                    p["pairs"],
                    p["shadow_errors"],
                    percent(p["agreement_rate"]),
                    f"{p['mean_abs_score_diff']:.4g}",
                    f"{p['max_abs_score_diff']:.4g}",
                    ms(p["p99_latency_delta_ms"]),
                ]
                for p in pairs
            ],
        ),
    )


# -- experiments ---------------------------------------------------------------------------------


async def experiment(ctx: Context, args: argparse.Namespace) -> None:
    """Per-variant outcome of an experiment: value with its interval, delta against control, significance."""
    request = pb.GetExperimentReportRequest(
        experiment=args.name,
        layer=args.layer or "",
        metrics=args.metric or [],
        label_name=args.label or "",
        confidence_level=args.confidence or 0.0,
        control_variant=args.control or "",
    )
    window = _window(args)
    if window is not None:
        request.window.CopyFrom(window)
    reply = await monitor(ctx).call("GetExperimentReport", request)
    reports = [
        {
            "metric": r.metric,
            "layer": r.layer,
            "test": r.test,
            "variants": [
                {
                    "variant": v.variant,
                    "control": v.control,
                    "units": v.units,
                    "predictions": v.predictions,
                    "labelled": v.labelled,
                    "value": v.value,
                    "ci": [v.ci_lower, v.ci_upper],
                    "delta": v.delta,
                    "delta_ci": [v.delta_ci_lower, v.delta_ci_upper],
                    "p_value": v.p_value,
                    "significant": v.significant,
                    "p99_latency_ms": v.p99_latency_ms,
                    "error_rate": v.error_rate,
                }
                for v in r.variants
            ],
        }
        for r in reply.reports
    ]
    data = {
        "experiment": reply.experiment,
        "window": time_range_view(reply.window),
        "confidence_level": reply.confidence_level,
        "reports": reports,
    }

    def render() -> None:
        print_fields(
            [
                ("experiment", data["experiment"]),
                ("window", f"{data['window']['start'] or '-'} .. {data['window']['end'] or 'now'}"),
                ("confidence", f"{data['confidence_level']:.2f}"),
            ]
        )
        for report in reports:
            print(f"\n{report['metric']} in layer {report['layer']} ({report['test']})")
            print_table(
                [
                    "variant",
                    "units",
                    "predictions",
                    "labelled",
                    "value",
                    "interval",
                    "delta",
                    "p",
                    "significant",
                    "p99 ms",
                ],
                [
                    [
                        v["variant"] + (" (control)" if v["control"] else ""),
                        v["units"],
                        v["predictions"],
                        v["labelled"],
                        f"{v['value']:.4g}",
                        f"[{v['ci'][0]:.4g}, {v['ci'][1]:.4g}]",
                        f"{v['delta']:+.4g}",
                        f"{v['p_value']:.3g}",
                        v["significant"],
                        ms(v["p99_latency_ms"]),
                    ]
                    for v in report["variants"]
                ],
            )

    ctx.emit(data, render)


# -- SLO -----------------------------------------------------------------------------------------


async def slo(ctx: Context, args: argparse.Namespace) -> int:
    """Check a model version against SLO thresholds over a window; exits 0 only on PASS."""
    request = pb.CheckSloRequest(
        model=args.model,
        model_version=args.version,
        baseline_version=args.baseline or 0,
        window=to_duration(parse_duration(args.window, "--window")),
        min_requests=args.min_requests,
        thresholds=gates_from_args(args),
        source_service=args.source or "",
    )
    if args.until is not None:
        request.end_time.CopyFrom(to_timestamp(parse_time(args.until, "--until")))
    view = evaluation_view((await monitor(ctx).call("CheckSlo", request)).evaluation)
    ctx.emit(view, lambda: print_evaluation(view))
    return 0 if view["verdict"] == "PASS" else EXIT_FAILED


# -- feedback ------------------------------------------------------------------------------------


async def feedback(ctx: Context, args: argparse.Namespace) -> None:
    """Record a ground-truth label for an earlier prediction (by request id, or by unit in a scene)."""
    if bool(args.request_id) == bool(args.unit_id):
        raise UsageError("give exactly one of --request-id or --unit-id")
    if args.unit_id and not args.scene:
        raise UsageError("--unit-id needs the prediction's --scene")
    item = pb.Feedback(scene=args.scene or "", label_name=args.label_name or "")
    if args.request_id:
        item.request_id = args.request_id
    else:
        item.unit_id = args.unit_id
    item.label.CopyFrom(value_to_proto(guess_value(args.label), "--label"))
    if args.at is not None:
        item.label_time.CopyFrom(to_timestamp(parse_time(args.at, "--at")))
    reply = await monitor(ctx).call("ReportFeedback", pb.ReportFeedbackRequest(items=[item]))
    ctx.emit({"accepted": reply.accepted}, lambda: print(f"labels stored: {reply.accepted}"))


# -- parser --------------------------------------------------------------------------------------


def _add_slo_and_feedback(events: Any, parent: argparse.ArgumentParser) -> None:
    p = subcommand(events, "slo", slo, parent)
    p.add_argument("model", help="model")
    p.add_argument("version", type=int, help="model version checked")
    p.add_argument("--baseline", type=int, metavar="VERSION", help="baseline for relative thresholds and shadow")
    p.add_argument("--window", default="5m", metavar="DURATION", help="window ending now (default 5m)")
    p.add_argument("--min-requests", type=int, default=1, metavar="N", help="fewer gives INSUFFICIENT_DATA")
    p.add_argument("--source", choices=["biz-center", "model-gateway"], help="only events of this service")
    p.add_argument("--until", metavar="TIME", help="end of the window (default now)")
    add_gate_options(p)

    p = subcommand(events, "feedback", feedback, parent)
    p.add_argument("--request-id", help="the prediction's request id")
    p.add_argument("--unit-id", help="or the unit the prediction was for")
    p.add_argument("--scene", help="the prediction's scene (needed with --unit-id)")
    p.add_argument("--label", required=True, help="the label value (1, true, 0.7, churned...)")
    p.add_argument("--label-name", help="which label (default: the default label)")
    p.add_argument("--at", metavar="TIME", help="when the outcome happened (default now)")


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    """``infermesh events ...``."""
    text = "What the monitor computed from the mesh's events: windows, drift, shadow, experiments, SLO checks."
    group = sub.add_parser("events", help=text, description=text)
    events = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = subcommand(events, "stats", stats, parent)
    p.add_argument("--window", choices=sorted(WINDOWS), default="1m", help="window length (default 1m)")
    p.add_argument("--by", action="append", metavar="DIMS", help=f"group by, comma-separated: {', '.join(DIMENSIONS)}")
    p.add_argument("--scene", help="only this scene")
    p.add_argument("--variant", help="only this experiment variant")
    p.add_argument("--model", help="only this model")
    p.add_argument("--version", type=int, help="only this model version")
    p.add_argument("--source", choices=["biz-center", "model-gateway"], help="only events of this service")
    p.add_argument("--until", metavar="TIME", help="end of the window (default now)")

    p = subcommand(events, "drift", drift, parent)
    p.add_argument("model", help="model")
    p.add_argument("version", type=int, help="model version")
    _add_window(p, "the last hour")
    p.add_argument("--baseline", metavar="ID", help="a baseline stored in the monitor (default: the version's own)")
    p.add_argument("--baseline-since", metavar="TIME", help="use a past window of traffic as the baseline")
    p.add_argument("--baseline-until", metavar="TIME", help="end of that baseline window")
    p.add_argument("--feature", action="append", help="only this feature; repeatable")
    p.add_argument("--bins", type=int, help="bins for numeric values (default 10)")

    p = subcommand(events, "shadow", shadow, parent)
    p.add_argument("model", help="model")
    p.add_argument("--primary", type=int, metavar="VERSION", help="only this primary version")
    p.add_argument("--shadow", type=int, metavar="VERSION", help="only this shadow version")
    p.add_argument("--tolerance", type=float, help="score difference under which two answers agree (default 1e-6)")
    _add_window(p, "the last hour")

    p = subcommand(events, "experiment", experiment, parent)
    p.add_argument("name", help="experiment")
    p.add_argument("--layer", help="only this layer")
    p.add_argument("--metric", action="append", help="metric (auc, accuracy, conversion_rate...); repeatable")
    p.add_argument("--label", metavar="NAME", help="feedback label to use (default: the default label)")
    p.add_argument("--confidence", type=float, help="confidence level (default 0.95)")
    p.add_argument("--control", metavar="VARIANT", help="the control arm (default: the variant marked control)")
    _add_window(p, "the experiment's whole life")

    _add_slo_and_feedback(events, parent)
