"""The ``reclaim`` command as a user runs it: a real process, real output."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import Spawner, kill, reclaim_cli
from test_reaper import HOLDER


@pytest.fixture(autouse=True)
def _no_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the sweeper (layer 4): no watchdog may release first."""
    monkeypatch.setenv("RECLAIM_WATCHDOG", "0")


def test_demo_runs_on_a_fresh_registry(tmp_path: Path, registry_path: str) -> None:
    result = reclaim_cli("--registry", str(tmp_path / "fresh" / "r.sqlite3"), "demo")
    out = result.stdout
    assert "killed with SIGKILL" in out
    assert "Nothing remains" in out
    dirs = re.findall(r"^\s+(/\S+demo-rc_\S+)$", out, flags=re.MULTILINE)
    assert len(dirs) == 3
    assert not any(os.path.exists(d) for d in dirs)


def test_status_for_people(spawn: Spawner, scratch: Path) -> None:
    proc, held = spawn(HOLDER, str(scratch), "1")
    live = reclaim_cli("status").stdout
    assert f"run {held['run']}" in live
    assert "alive" in live
    assert "path.tempdir" in live
    assert held["dirs"][0] in live, "TempDir rows show the path"
    assert "(live)" in live
    kill(proc)
    dead = reclaim_cli("status").stdout
    assert "dead" in dead
    assert "(orphaned)" in dead
    swept = reclaim_cli("sweep", "--grace", "0").stdout
    assert "Released 2, failed 0." in swept
    assert "Nothing is held" in reclaim_cli("status").stdout


def test_json_status_shape(spawn: Spawner, scratch: Path) -> None:
    proc, _held = spawn(HOLDER, str(scratch), "1")
    data = json.loads(reclaim_cli("status", "--json").stdout)
    (run,) = data["runs"]
    assert {"id", "state", "alive", "pid", "host", "started_at", "resources"} <= set(run)
    assert run["pid"] == proc.pid
    for resource in run["resources"]:
        assert {"id", "kind", "name", "state", "attempts", "last_error"} <= set(resource)
    kill(proc)


def test_forget_unknown_id_is_a_clear_error(registry_path: str) -> None:
    result = reclaim_cli("forget", "12345", check=False)
    assert result.returncode == 2
    assert "there is no resource 12345" in result.stderr


def test_help_and_version() -> None:
    assert "sweep" in reclaim_cli("--help").stdout
    assert "reclaim, version" in reclaim_cli("--version").stdout
