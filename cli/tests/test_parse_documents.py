"""Documents given to ``scenes apply``, ``models register`` and ``rollouts start``: every shape problem named
by file, line and field before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermesh.bizcenter.v1 import biz_center_pb2 as biz
from infermesh.modelgateway.v1 import model_gateway_pb2 as mg
from infermesh_cli.commands._errors import UsageError, error_line
from infermesh_cli.commands._parse import parse_message, read_document


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.yaml"
    path.write_text(text)
    return path


def test_a_typo_and_a_wrong_type_are_named_by_line_and_field_together(tmp_path: Path):
    path = _file(tmp_path, "scenes:\n  - name: s1\n    enabeld: true\n    max_concurrency: many\n")
    with pytest.raises(UsageError) as caught:
        parse_message(read_document(path), biz.Scene(), ("scenes", 0))
    line, code = error_line(caught.value)
    assert code == 2
    assert f"{path}:3: scenes[0].enabeld: unknown key" in line
    assert f"{path}:4: scenes[0].max_concurrency:" in line


def test_a_valid_document_parses_with_either_field_spelling(tmp_path: Path):
    path = _file(tmp_path, "name: s1\nsloDeadline: 0.25s\nmax_concurrency: 8\n")
    scene = parse_message(read_document(path), biz.Scene())
    assert (scene.name, scene.slo_deadline.ToMilliseconds(), scene.max_concurrency) == ("s1", 250, 8)


def test_a_bad_duration_and_broken_yaml_name_their_line(tmp_path: Path):
    path = _file(tmp_path, "model: m\ndeployment:\n  dynamic_batching:\n    max_queue_delay: 5ms\n")
    with pytest.raises(UsageError) as caught:
        parse_message(read_document(path), mg.RegisterModelVersionRequest())
    assert f"{path}:" in str(caught.value) and "max_queue_delay" in str(caught.value)
    broken = _file(tmp_path, "name: s1\n  nested: [\n")
    with pytest.raises(UsageError, match=r"doc\.yaml:\d+: not valid YAML"):
        read_document(broken)
