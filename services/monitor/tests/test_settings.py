"""The monitor's settings: what stops it at start, with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infermesh_chassis.settings import SettingsError, load_settings
from infermesh_monitor.settings import Settings


def test_the_process_refuses_to_start_without_a_unit_id_hash_key(tmp_path: Path) -> None:
    """ReportFeedback hashes unit ids with the mesh's key: without one it would be a plain hash."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env |= {"MONITOR_STORAGE__CHDB_PATH": str(tmp_path / "chdb"), "MONITOR_METRICS__ENABLED": "false"}
    for key in (None, "", "fifteen-chars-k"):
        if key is None:
            env.pop("MONITOR_EVENTS__UNIT_ID_HASH_KEY", None)
        else:
            env["MONITOR_EVENTS__UNIT_ID_HASH_KEY"] = key
        started = subprocess.run(
            [sys.executable, "-m", "infermesh_monitor"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert started.returncode == 2, started.stderr
        lines = started.stderr.strip().splitlines()
        assert len(lines) == 1 and "MONITOR_EVENTS__UNIT_ID_HASH_KEY" in lines[0], lines
        assert "at least 16 characters" in lines[0]
    assert not (tmp_path / "chdb").exists()  # refused before the store was opened


def test_a_key_of_16_characters_is_accepted() -> None:
    settings = load_settings(Settings, events={"unit_id_hash_key": "k" * 16})
    assert settings.events.unit_id_hash_key.get_secret_value() == "k" * 16
    with pytest.raises(SettingsError, match="MONITOR_EVENTS__UNIT_ID_HASH_KEY"):
        load_settings(Settings, events={"unit_id_hash_key": "k" * 15})
