"""``infermesh``: run the local mesh and manage what it serves.

Subcommands: ``demo`` (start the mesh, run the demo workload, print a summary, stop),
``up`` (start the mesh and keep it serving until Ctrl-C), ``status`` and ``down`` (for a
mesh started by ``up`` in another terminal), and the management groups of
:mod:`infermesh_cli.commands` (``models``, ``rollouts``, ``scenes``, ``experiments``,
``features``, ``events``, ``predict``, ``infer``, ``batch-score``). Errors print one line and
exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from infermesh_cli.commands import EXIT_CODES, add_commands, add_global_options
from infermesh_cli.commands._output import print_table
from infermesh_cli.stack import LocalStack, StackError, health_status

if TYPE_CHECKING:
    from infermesh_cli.demo import ServiceReport

DEFAULT_WORKDIR = Path("var/stack")


def _report_rows(reports: list[ServiceReport]) -> list[list[str]]:
    return [
        [
            r.name,
            r.address,
            r.health,
            str(r.requests),
            str(r.errors),
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            "yes" if r.metrics_ok else "NO",
            "-" if r.rss_mib is None else f"{r.rss_mib:.0f}",
            ", ".join(s for s in r.services if not s.startswith("grpc.")) or "(chassis only)",
        ]
        for r in reports
    ]


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the mesh, run the workload, print the summary, stop, and check nothing is left."""
    from infermesh_cli.demo import run_workload  # noqa: PLC0415  (the workload's imports serve only the demo)

    stack = LocalStack(args.workdir)
    print(f"starting the local mesh under {args.workdir} ...", file=sys.stderr)
    stack.start()
    try:
        reports = asyncio.run(run_workload(stack.processes, args.requests))
    finally:
        codes = stack.stop()
    headers = [
        "service",
        "address",
        "health",
        "requests",
        "errors",
        "p50 ms",
        "p99 ms",
        "/metrics",
        "RSS MiB",
        "RPC services",
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "services": [dataclasses.asdict(r) for r in reports],
                    "exit_codes": codes,
                }
            )
        )
    else:
        print_table(headers, _report_rows(reports))
        print(f"\nstopped: {', '.join(f'{n} exit {c}' for n, c in codes.items())}")
    failed = [r.name for r in reports if r.health != "SERVING" or r.errors or not r.metrics_ok]
    unclean = [n for n, c in codes.items() if c != 0]
    if failed or unclean:
        print(f"demo failed: unhealthy {failed}, unclean exits {unclean}", file=sys.stderr)
        return 1
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Start the mesh and serve until SIGINT/SIGTERM, then stop it cleanly."""
    stack = LocalStack(args.workdir)
    stack.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print_table(
        ["service", "address", "metrics", "pid", "log"],
        [[p.name, p.address, f"127.0.0.1:{p.metrics_port}", str(p.pid), p.log] for p in stack.processes],
    )
    print("\nserving; Ctrl-C (or `infermesh down`) stops the mesh", flush=True)
    while not stop.wait(0.5):
        dead = [p.name for p in stack.processes if not p.alive()]
        if dead:
            print(f"stopping: {', '.join(dead)} exited", file=sys.stderr)
            break
    codes = stack.stop()
    print(f"stopped: {', '.join(f'{n} exit {c}' for n, c in codes.items())}")
    return 0 if all(c == 0 for c in codes.values()) else 1


def cmd_status(args: argparse.Namespace) -> int:
    """Health of every instance of a running mesh."""
    stack = LocalStack.attach(args.workdir)
    rows = [[p.name, p.address, health_status(p.address), str(p.pid)] for p in stack.processes]
    if args.json:
        print(json.dumps([dict(zip(["service", "address", "health", "pid"], r, strict=True)) for r in rows]))
    else:
        print_table(["service", "address", "health", "pid"], rows)
    return 0 if all(r[2] == "SERVING" for r in rows) else 1


def cmd_down(args: argparse.Namespace) -> int:
    """Stop a mesh started by ``infermesh up``."""
    stack = LocalStack.attach(args.workdir)
    for process in reversed(stack.processes):
        if process.alive():
            os.kill(process.pid, signal.SIGTERM)
    print("sent SIGTERM to every service; `infermesh up` finishes the shutdown")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``infermesh`` command."""
    parser = argparse.ArgumentParser(
        prog="infermesh",
        description=__doc__.splitlines()[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir", type=Path, default=DEFAULT_WORKDIR, help="where the stack keeps settings, logs and state"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help=cmd_demo.__doc__)
    demo.add_argument("--requests", type=int, default=200, help="calls per service in the workload")
    demo.set_defaults(run=cmd_demo)
    sub.add_parser("up", help=cmd_up.__doc__).set_defaults(run=cmd_up)
    sub.add_parser("status", help=cmd_status.__doc__).set_defaults(run=cmd_status)
    sub.add_parser("down", help=cmd_down.__doc__).set_defaults(run=cmd_down)
    add_commands(sub)
    args = parser.parse_args(argv)
    try:
        code = args.run(args)
    except StackError as exc:
        print(f"infermesh: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
