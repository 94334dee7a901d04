"""What every management subcommand shares: help, where the addresses come from, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import pytest
from cli_mesh import Mesh, run_cli

from infermesh_chassis.testing import free_port
from infermesh_cli.__main__ import build_parser
from infermesh_cli.stack import ServiceProcess

STACK_COMMANDS = {"demo", "up", "status", "down"}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _leaves(child, (*path, name))
    return found or [path]


def test_every_subcommand_has_help_json_and_the_global_options():
    leaves = [leaf for leaf in _leaves(build_parser()) if leaf[0] not in STACK_COMMANDS]
    groups = {leaf[0] for leaf in leaves}
    assert groups == {
        "models",
        "rollouts",
        "scenes",
        "experiments",
        "streams",
        "features",
        "events",
        "trace",
        "traces",
        "predict",
        "infer",
        "batch-score",
    }
    assert len(leaves) > 40
    for leaf in leaves:
        shown = run_cli(*leaf, "--help")
        assert shown.code == 0, leaf
        assert shown.out.startswith(f"usage: infermesh {' '.join(leaf)}"), leaf
        assert "--json" in shown.out and "Global options" in shown.out, leaf
    top = run_cli("--help")
    assert top.code == 0 and "exit codes:" in top.out and "INFERMESH_MODEL_GATEWAY_ADDR" in top.out


@pytest.fixture
def no_address_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("INFERMESH_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_address_env")
def test_without_any_address_it_says_how_to_give_one(tmp_path: Path):
    done = run_cli("--workdir", str(tmp_path), "models", "list")
    assert done.code == 3 and done.out == ""
    assert done.err == (
        "infermesh: no address for model-gateway: pass --model-gateway HOST:PORT, "
        "set INFERMESH_MODEL_GATEWAY_ADDR, or start the local mesh with `infermesh up`\n"
    )


@pytest.mark.usefixtures("no_address_env")
def test_unreachable_and_malformed_addresses():
    port = free_port()
    down = run_cli("--model-gateway", f"127.0.0.1:{port}", "--timeout", "2", "models", "list")
    assert down.code == 3 and len(down.err.splitlines()) == 1
    assert down.err.startswith(f"infermesh: UNAVAILABLE: model-gateway/ListModels at 127.0.0.1:{port}: ")
    assert down.err.rstrip().endswith("(address from --model-gateway)")
    malformed = run_cli("models", "list", "--model-gateway", "localhost")
    assert malformed.code == 2
    assert malformed.err == "infermesh: --model-gateway: 'localhost' is not HOST:PORT (e.g. 127.0.0.1:50051)\n"


def _write_state(workdir: Path, mesh: Mesh) -> None:
    ports = {
        "model-gateway": mesh.gateway.address,
        "data-gateway": mesh.data_gateway.address,
        "biz-center": mesh.biz_center.address,
        "monitor": mesh.monitor.address,
    }
    processes = [
        ServiceProcess(name=name, pid=os.getpid(), port=int(address.rsplit(":", 1)[1]), metrics_port=0, log="")
        for name, address in ports.items()
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "state.json").write_text(json.dumps({"processes": [dataclasses.asdict(p) for p in processes]}))


@pytest.mark.usefixtures("no_address_env")
def test_addresses_come_from_the_option_then_the_environment_then_the_local_stack(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    workdir = tmp_path / "stack"
    _write_state(workdir, mesh)
    from_stack = run_cli("--workdir", str(workdir), "--json", "features", "list")
    assert from_stack.code == 0 and [s["name"] for s in from_stack.json()] == ["churn6"]
    scenes = run_cli("--workdir", str(workdir), "--json", "scenes", "list")  # with the stack's own API key
    assert scenes.code == 0, scenes.err
    nowhere = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("INFERMESH_DATA_GATEWAY_ADDR", nowhere)
    from_env = run_cli("--workdir", str(workdir), "--timeout", "2", "features", "list")
    assert from_env.code == 3 and "(address from INFERMESH_DATA_GATEWAY_ADDR)" in from_env.err
    from_option = run_cli("--workdir", str(workdir), "features", "list", "--data-gateway", mesh.data_gateway.address)
    assert from_option.code == 0 and from_option.out.splitlines()[2].startswith("churn6 ")


def test_a_real_process_prints_json_and_one_line_errors(mesh: Mesh):
    listed = mesh.cli_process("models", "list", "--json")
    assert listed.code == 0, listed.err
    assert {m["name"] for m in listed.json()} >= {"churn"}
    failed = mesh.cli_process("models", "get", "no-such-model")
    assert failed.code == 1 and failed.out == ""
    where = f"model-gateway/GetModel at {mesh.gateway.address}"
    assert failed.err.splitlines() == [f"infermesh: NOT_FOUND: {where}: model 'no-such-model' is not registered"]
    usage = mesh.cli_process("models", "frobnicate")
    assert usage.code == 2 and len(usage.err.splitlines()) == 1 and "invalid choice: 'frobnicate'" in usage.err
