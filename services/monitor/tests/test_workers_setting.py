"""The monitor is one process: ``grpc.workers`` auto means 1, and more is refused at start."""

from __future__ import annotations

import pytest

from infermesh_chassis.settings import SettingsError, load_settings
from infermesh_monitor.settings import Settings

KEY = {"unit_id_hash_key": "a-test-key-of-32-characters-long"}


def test_auto_means_one_worker():
    assert load_settings(Settings, None, events=KEY).grpc.worker_count == 1
    assert load_settings(Settings, None, events=KEY, grpc={"workers": 1}).grpc.worker_count == 1


def test_more_workers_are_refused_with_one_line():
    with pytest.raises(SettingsError, match=r"grpc: .*the monitor runs one process") as refused:
        load_settings(Settings, None, events=KEY, grpc={"workers": 2})
    assert "\n" not in str(refused.value)
