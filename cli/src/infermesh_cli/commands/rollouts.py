"""``infermesh rollouts``: SLO-gated canary rollouts run by the model gateway's controller, and overrides."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infermesh.common.v1 import common_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_cli.commands._context import Context, all_pages, subcommand
from infermesh_cli.commands._convert import (
    enum_name,
    evaluation_view,
    figures_line,
    print_evaluation,
    seconds,
    thresholds_view,
    timestamp,
)
from infermesh_cli.commands._errors import CliError, UsageError
from infermesh_cli.commands._output import print_fields, print_table
from infermesh_cli.commands._parse import parse_duration, parse_message, read_document, to_duration
from infermesh_cli.commands.models import control

__all__ = ["add_gate_options", "add_parser", "gates_from_args", "rollout_view"]

_GATES = (
    ("max_p99_ms", "max_p99_latency_ms", "fail when p99 latency exceeds this many ms"),
    ("max_p99_ratio", "max_p99_latency_ratio", "fail when p99 exceeds the baseline's times this"),
    ("max_error_rate", "max_error_rate", "fail when the error rate exceeds this fraction"),
    ("max_degraded_rate", "max_degraded_rate", "fail when the degraded rate exceeds this fraction"),
    ("min_shadow_agreement", "min_shadow_agreement", "fail when shadow agreement with the baseline is below this"),
)


def add_gate_options(parser: argparse.ArgumentParser) -> None:
    """The SLO thresholds as options (shared by ``rollouts start`` and ``events slo``)."""
    for option, _, text in _GATES:
        parser.add_argument(f"--{option.replace('_', '-')}", type=float, metavar="X", help=text)


def gates_from_args(args: argparse.Namespace, base: common_pb2.SloThresholds | None = None) -> common_pb2.SloThresholds:
    """The thresholds given as options, over ``base``."""
    gates = common_pb2.SloThresholds()
    if base is not None:
        gates.CopyFrom(base)
    for option, field, _ in _GATES:
        if getattr(args, option) is not None:
            setattr(gates, field, getattr(args, option))
    return gates


def _step(text: str) -> pb.RolloutStep:
    """``shadow`` (mirror everything, no live share), ``P`` (percent) or ``P:S`` (percent and shadow fraction)."""
    if text == "shadow":
        return pb.RolloutStep(candidate_percent=0, shadow_fraction=1.0)
    percent, _, shadow = text.partition(":")
    try:
        return pb.RolloutStep(candidate_percent=float(percent), shadow_fraction=float(shadow) if shadow else 0.0)
    except ValueError:
        raise UsageError(f"--steps: {text!r} is not 'shadow', PERCENT or PERCENT:SHADOW_FRACTION") from None


# -- views ---------------------------------------------------------------------------------------


def _steps(spec: pb.RolloutSpec) -> list[dict[str, Any]]:
    return [
        {
            "candidate_percent": s.candidate_percent,
            "shadow_fraction": s.shadow_fraction,
            "min_dwell_s": seconds(s.min_dwell) if s.HasField("min_dwell") else None,
            "min_requests": s.min_requests or None,
        }
        for s in spec.steps
    ]


def rollout_view(rollout: pb.Rollout) -> dict[str, Any]:
    """A rollout: spec, state, current step, last gate evaluation, next decision, history."""
    spec = rollout.spec
    return {
        "id": rollout.id,
        "model": spec.model,
        "candidate_version": spec.candidate_version,
        "baseline_version": rollout.baseline_version or spec.baseline_version,
        "state": enum_name(pb.RolloutState, rollout.state, "ROLLOUT_STATE_"),
        "state_detail": rollout.state_detail,
        "current_step": rollout.current_step,
        "steps": _steps(spec),
        "min_dwell_s": seconds(spec.min_dwell),
        "min_requests": spec.min_requests,
        "evaluation_interval_s": seconds(spec.evaluation_interval),
        "gates": thresholds_view(spec.gates),
        "step_start_time": timestamp(rollout, "step_start_time"),
        "next_decision_time": timestamp(rollout, "next_decision_time"),
        "last_evaluation": evaluation_view(rollout.last_evaluation) if rollout.HasField("last_evaluation") else None,
        "decisions": [
            {
                "time": timestamp(d, "time"),
                "action": enum_name(pb.RolloutAction, d.action, "ROLLOUT_ACTION_"),
                "from_step": d.from_step,
                "to_step": d.to_step,
                "automatic": d.automatic,
                "actor": d.actor,
                "reason": d.reason,
            }
            for d in rollout.decisions
        ],
        "controller": rollout.controller,
        "created_by": rollout.created_by,
        "create_time": timestamp(rollout, "create_time"),
        "end_time": timestamp(rollout, "end_time"),
    }


def _step_text(view: dict[str, Any]) -> str:
    steps = view["steps"]
    index = view["current_step"]
    if not steps or not 0 <= index < len(steps):
        return f"{index + 1}/{len(steps)}"
    step = steps[index]
    share = f"{step['candidate_percent']:g}% to v{view['candidate_version']}"
    if step["shadow_fraction"]:
        share += f", mirror {100 * step['shadow_fraction']:g}%"
    dwell = step["min_dwell_s"] if step["min_dwell_s"] is not None else view["min_dwell_s"]
    requests = step["min_requests"] or view["min_requests"]
    return f"{index + 1}/{len(steps)}: {share} (dwell >= {dwell:g}s, >= {requests} requests)"


def _in(moment: str | None) -> str:
    if moment is None:
        return "-"
    delta = (datetime.fromisoformat(moment) - datetime.now(UTC)).total_seconds()
    return f"{moment} (in {delta:.0f}s)" if delta >= 0 else f"{moment} ({-delta:.0f}s ago)"


def _print_rollout(view: dict[str, Any]) -> None:
    state = view["state"] + (f": {view['state_detail']}" if view["state_detail"] else "")
    print_fields(
        [
            ("rollout", view["id"]),
            ("model", f"{view['model']}: candidate v{view['candidate_version']}, baseline v{view['baseline_version']}"),
            ("state", state),
            ("step", _step_text(view)),
            ("step started", view["step_start_time"]),
            ("next decision", _in(view["next_decision_time"])),
            ("gates", view["gates"] or "none"),
            ("controller", view["controller"]),
            ("started", f"{view['create_time'] or '-'} by {view['created_by'] or '-'}"),
        ]
    )
    if view["last_evaluation"] is not None:
        print()
        print_evaluation(view["last_evaluation"], label="last gate")
    if view["decisions"]:
        print()
        print_table(
            ["time", "action", "step", "by", "reason"],
            [
                [
                    d["time"],
                    d["action"],
                    f"{d['from_step'] + 1} -> {d['to_step'] + 1}",
                    d["actor"] + (" (auto)" if d["automatic"] else ""),
                    d["reason"],
                ]
                for d in view["decisions"]
            ],
        )


def _print_list(views: list[dict[str, Any]]) -> None:
    print_table(
        ["id", "model", "candidate", "baseline", "state", "step", "last gate", "started"],
        [
            [
                v["id"],
                v["model"],
                v["candidate_version"],
                v["baseline_version"],
                v["state"],
                f"{v['current_step'] + 1}/{len(v['steps'])}",
                v["last_evaluation"]["verdict"] if v["last_evaluation"] else None,
                v["create_time"],
            ]
            for v in views
        ],
    )


# -- handlers ------------------------------------------------------------------------------------


async def start(ctx: Context, args: argparse.Namespace) -> None:
    """Start an SLO-gated rollout of a candidate version (steps, dwell, minimum requests, gates)."""
    spec = pb.RolloutSpec()
    if args.file is not None:
        parse_message(read_document(args.file), spec)
    if args.model:
        spec.model = args.model
    if args.candidate:
        spec.candidate_version = args.candidate
    if not spec.model or not spec.candidate_version:
        raise UsageError("give MODEL and CANDIDATE (or `model` and `candidate_version` in --file)")
    if args.baseline is not None:
        spec.baseline_version = args.baseline
    if args.steps:
        del spec.steps[:]
        spec.steps.extend(_step(s) for s in args.steps.split(","))
    if args.min_dwell is not None:
        spec.min_dwell.CopyFrom(to_duration(parse_duration(args.min_dwell, "--min-dwell")))
    if args.min_requests is not None:
        spec.min_requests = args.min_requests
    if args.interval is not None:
        spec.evaluation_interval.CopyFrom(to_duration(parse_duration(args.interval, "--interval")))
    spec.gates.CopyFrom(gates_from_args(args, spec.gates))
    request = pb.StartRolloutRequest(spec=spec, actor=ctx.actor, reason=args.reason)
    view = rollout_view((await control(ctx).call("StartRollout", request)).rollout)
    ctx.emit(view, lambda: _print_rollout(view))


async def _find(ctx: Context, args: argparse.Namespace) -> pb.Rollout:
    if args.id:
        return (await control(ctx).call("GetRollout", pb.GetRolloutRequest(id=args.id))).rollout
    if not args.model:
        raise UsageError("give a ROLLOUT id or --model")
    reply = await control(ctx).call(
        "ListRollouts", pb.ListRolloutsRequest(model=args.model, page=common_pb2.PageRequest(page_size=1))
    )
    if not reply.rollouts:
        raise CliError(f"NOT_FOUND: model '{args.model}' has no rollout")
    return reply.rollouts[0]


async def status(ctx: Context, args: argparse.Namespace) -> None:
    """Show a rollout: its step, the gate figures of the last evaluation and the next decision time."""
    view = rollout_view(await _find(ctx, args))
    ctx.emit(view, lambda: _print_rollout(view))


async def list_rollouts(ctx: Context, args: argparse.Namespace) -> None:
    """List rollouts, newest first."""
    states = [getattr(pb, f"ROLLOUT_STATE_{s.upper()}") for s in args.state or []]
    request = pb.ListRolloutsRequest(model=args.model or "", states=states)
    views = [
        rollout_view(r) for r in await all_pages(control(ctx), "ListRollouts", request, "rollouts", limit=args.limit)
    ]
    ctx.emit(views, lambda: _print_list(views))


def _override(method: str, request_type: Any) -> Any:
    async def handler(ctx: Context, args: argparse.Namespace) -> None:
        rollout = await _find(ctx, args)
        request = request_type(id=rollout.id, actor=ctx.actor, reason=args.reason)
        view = rollout_view((await control(ctx).call(method, request)).rollout)

        def render() -> None:
            print(f"rollout {view['id']} ({view['model']} v{view['candidate_version']}): {view['state']}")
            evaluation = view["last_evaluation"]
            if evaluation is not None:
                print(f"last gate: {evaluation['verdict']}, {figures_line(evaluation['figures'])}")
            if view["decisions"]:
                last = view["decisions"][-1]
                why = f": {last['reason']}" if last["reason"] else ""
                print(f"recorded: {last['action']} by {last['actor'] or '-'}{why}")

        ctx.emit(view, render)

    return handler


pause = _override("PauseRollout", pb.PauseRolloutRequest)
pause.__doc__ = "Pause a running rollout: traffic stays, no automatic step is taken."
resume = _override("ResumeRollout", pb.ResumeRolloutRequest)
resume.__doc__ = "Resume a paused rollout; the current step's dwell starts again."
abort = _override("AbortRollout", pb.AbortRolloutRequest)
abort.__doc__ = "Abort a rollout: traffic goes back to the baseline at once."
promote = _override("PromoteRolloutNow", pb.PromoteRolloutNowRequest)
promote.__doc__ = "Skip the remaining steps: the candidate gets 100% and `production` now."


# -- parser --------------------------------------------------------------------------------------


def _which(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", nargs="?", metavar="ROLLOUT", help="rollout id")
    parser.add_argument("--model", help="instead of an id: the model's newest rollout")


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    """``infermesh rollouts ...``."""
    text = "SLO-gated canary rollouts run by the model gateway: start, status, list, and operator overrides."
    group = sub.add_parser("rollouts", help=text, description=text)
    rollouts = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = subcommand(rollouts, "start", start, parent)
    p.add_argument("model", nargs="?", help="model name")
    p.add_argument("candidate", nargs="?", type=int, help="candidate version (SERVING)")
    p.add_argument("--file", type=Path, help="a YAML/JSON RolloutSpec; options override it")
    p.add_argument("--baseline", type=int, metavar="VERSION", help="baseline version (default: production)")
    p.add_argument(
        "--steps",
        metavar="STEPS",
        help="comma-separated: 'shadow', PERCENT or PERCENT:SHADOW_FRACTION, e.g. shadow,1,5,25,50,100",
    )
    p.add_argument("--min-dwell", metavar="DURATION", help="minimum time per step (e.g. 5m)")
    p.add_argument("--min-requests", type=int, metavar="N", help="minimum candidate requests per step")
    p.add_argument("--interval", metavar="DURATION", help="how often the gates are evaluated")
    add_gate_options(p)
    p.add_argument("--reason", default="", help="why, for the audit log")

    p = subcommand(rollouts, "status", status, parent)
    _which(p)

    p = subcommand(rollouts, "list", list_rollouts, parent)
    p.add_argument("--model", help="only this model's rollouts")
    p.add_argument(
        "--state",
        action="append",
        choices=["pending", "running", "paused", "succeeded", "rolled_back", "aborted", "failed"],
        help="only rollouts in this state; repeatable",
    )
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")

    for name, handler in (("pause", pause), ("resume", resume), ("abort", abort), ("promote", promote)):
        p = subcommand(rollouts, name, handler, parent)
        _which(p)
        p.add_argument("--reason", default="", help="why, recorded with the decision")
