"""The management subcommands of ``infermesh``, one module per command group.

Groups: :mod:`.models` and :mod:`.rollouts` (model gateway control plane), :mod:`.scenes`
(scenes and experiments of the business center), :mod:`.streams` (the scenes' stream bindings),
:mod:`.features` (data gateway),
:mod:`.events` (monitor), :mod:`.traces` (``trace``, ``traces``), :mod:`.inference` (``predict`` and
``infer``), :mod:`.batch` (``batch-score``; its Spark engine in :mod:`._spark`). Each has ``add_parser(sub, parent)``;
``parent`` carries the global options (addresses, ``--json``, ``--timeout``...) so they may
follow the subcommand too.

Shared, written once: :mod:`._targets` (where the services are), :mod:`._context` (clients,
running a handler, pagination), :mod:`._errors` (exit codes and the one error line),
:mod:`._output` (tables and JSON), :mod:`._parse` (command-line text and files in) and
:mod:`._convert` / :mod:`._kserve` (protobuf and tensors out, at the edge).
"""

from __future__ import annotations

import argparse
from typing import Any

from infermesh_cli.commands import batch, events, features, inference, models, rollouts, scenes, streams, traces
from infermesh_cli.commands._context import Parser, add_global_options, leaf_options
from infermesh_cli.commands._errors import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE

__all__ = ["EXIT_CODES", "Parser", "add_commands", "add_global_options"]

GROUPS = (models, rollouts, scenes, streams, features, events, traces, inference, batch)

EXIT_CODES = f"""exit codes:
  {EXIT_OK}  done
  {EXIT_FAILED}  a service refused or failed the call (its status and message are printed), or a check did not pass
  {EXIT_USAGE}  bad usage: an unknown option, a malformed value, an unreadable input file
  {EXIT_UNREACHABLE}  a service could not be reached (no address, UNAVAILABLE, or past the deadline)
"""


def add_commands(sub: Any) -> None:
    """Add every command group to the top-level subparsers."""
    parent: argparse.ArgumentParser = leaf_options()
    for group in GROUPS:
        group.add_parser(sub, parent)
