"""``infermesh``: run the local mesh and manage what it serves.

Subcommands: ``demo`` (start the mesh, run the demo workload, print a summary, stop),
``up`` (start the mesh and keep it serving until Ctrl-C, restarting a process that exits),
``status`` (health, restarts and last exit of each process) and ``down`` (for a mesh started by
``up`` in another terminal), and the management groups of
:mod:`infermesh_cli.commands` (``models``, ``rollouts``, ``scenes``, ``experiments``,
``features``, ``events``, ``predict``, ``infer``, ``batch-score``). Errors print one line and
exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from infermesh_cli.commands import EXIT_CODES, Parser, add_commands, add_global_options
from infermesh_cli.commands._output import print_table
from infermesh_cli.stack import LocalStack, ServiceProcess, StackError, pid_alive

DEFAULT_WORKDIR = Path("var/stack")
DOWN_TIMEOUT_S = 120.0
"""How long ``down`` waits for ``infermesh up`` to stop its mesh."""


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the mesh, deploy the churn models, run the demo workload, print a summary, stop."""
    from infermesh_cli.demo import demo_command  # noqa: PLC0415  (training and the workload serve only the demo)

    return demo_command(args.workdir, args.requests, args.json, args.stream_messages)


def cmd_up(args: argparse.Namespace) -> int:
    """Start the mesh with the churn models deployed and serve until Ctrl-C, then stop it cleanly."""
    from infermesh_cli.demo import up_command  # noqa: PLC0415

    return up_command(args.workdir)


def cmd_status(args: argparse.Namespace) -> int:
    """Health of every process of a running mesh, with its restarts and last exit."""
    stack = LocalStack.attach(args.workdir)
    health = {p.name: stack.health(p) for p in stack.processes}
    if args.json:
        rows = [
            {
                "service": p.name,
                "address": p.address,
                "health": health[p.name],
                "pid": p.pid,
                "restarts": p.restarts,
                "last_exit_code": p.last_exit_code,
                "last_exit_at": p.last_exit_at,
            }
            for p in stack.processes
        ]
        print(json.dumps(rows))
    else:
        print_table(
            ["service", "address", "health", "pid", "restarts", "last exit"],
            [[p.name, p.address, health[p.name], str(p.pid), str(p.restarts), _last_exit(p)] for p in stack.processes],
        )
    return 0 if all(h == "SERVING" for h in health.values()) else 1


def _last_exit(process: ServiceProcess) -> str:
    if process.last_exit_code is None:
        return "-"
    code = process.last_exit_code
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
    return f"{how} at {process.last_exit_at}"


def cmd_down(args: argparse.Namespace) -> int:
    """Stop a mesh started by ``infermesh up``, in order: the last started first, NATS last."""
    stack = LocalStack.attach(args.workdir)
    supervisor = stack.supervisor_pid
    if supervisor is not None and pid_alive(supervisor):
        # `infermesh up` stops its stack in order and reports the exit codes; wait until it has
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_TIMEOUT_S
        while pid_alive(supervisor):
            if time.monotonic() > deadline:
                print(f"`infermesh up` (pid {supervisor}) is still stopping the mesh after {DOWN_TIMEOUT_S:.0f} s")
                return 1
            time.sleep(0.1)
        print(f"stopped the mesh of `infermesh up` (pid {supervisor})")
        return 0
    codes = stack.stop()  # its supervisor is gone: stop the services here, in the same order
    print(f"stopped {', '.join(codes)} (the `infermesh up` that started them was gone)")
    return 0


def build_parser() -> Parser:
    """The ``infermesh`` command line: the stack's commands and every management group."""
    parser = Parser(
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
    demo.add_argument("--requests", type=int, default=1000, help="Predict calls in the demo workload")
    demo.add_argument(
        "--stream-messages", type=int, default=2000, help="transactions of the stream burst (0: no burst)"
    )
    demo.set_defaults(run=cmd_demo)
    sub.add_parser("up", help=cmd_up.__doc__).set_defaults(run=cmd_up)
    sub.add_parser("status", help=cmd_status.__doc__).set_defaults(run=cmd_status)
    sub.add_parser("down", help=cmd_down.__doc__).set_defaults(run=cmd_down)
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``infermesh`` command."""
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except StackError as exc:
        print(f"infermesh: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
