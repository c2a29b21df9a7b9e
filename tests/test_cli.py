"""The ``reclaim`` command as a user runs it: a real process, real output."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Spawner, kill, reclaim_cli
from reclaim._registry import open_registry
from reclaim._sweep import sweep
from reclaim.backends import make_name
from reclaim.backends.path import TempDir
from reclaim.testing import dead_identity
from test_reaper import HOLDER
from test_watch import Watcher


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


# --- what users and servers wrote is printed as text, never as rich markup -----------------

#: A run label, a folder and a registry folder that rich would read as a closing tag.
MARKUP = "[/x]"


@dataclasses.dataclass
class Bracketed:
    """A registry (in a folder named with MARKUP) holding a dead run labelled ``lab[/x]`` with
    a real TempDir under a folder named ``a[/x]b``."""

    location: str
    run_id: str
    label: str
    path: Path
    resource_id: int


@pytest.fixture
def bracketed(
    registry_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Bracketed]:
    location = str(tmp_path / f"reg{MARKUP}" / "registry.sqlite3")
    monkeypatch.setenv("RECLAIM_REGISTRY", location)
    parent = tmp_path / f"a{MARKUP}b"
    parent.mkdir(parents=True)
    reg = open_registry(location)
    run_id = secrets.token_hex(4)
    label = f"lab{MARKUP}"
    reg.open_run(run_id, dead_identity(), label=label)
    backend = TempDir(parent=parent)
    name = backend.adapt_name(make_name(run_id, 1))
    rid = reg.plan(run_id, label, "path.tempdir", name, backend.plan(name))
    path, record = backend.acquire(name)
    reg.mark_acquired(rid, record)
    reg.close()
    yield Bracketed(location, run_id, label, path, rid)
    reg = open_registry(location)
    try:
        sweep(reg, grace=0)
    finally:
        reg.close()


def _no_crash(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert "MarkupError" not in result.stderr, result.stderr
    return result.stdout


def test_markup_in_labels_and_paths_is_printed_as_it_is(bracketed: Bracketed) -> None:
    path = str(bracketed.path)
    assert MARKUP in path
    status = _no_crash(reclaim_cli("status"))
    assert f"run {bracketed.run_id}  {bracketed.label}  " in status
    assert path in status
    assert "(orphaned)" in status
    assert f"registry: {bracketed.location}" in status

    (run,) = json.loads(_no_crash(reclaim_cli("status", "--json")))["runs"]
    assert run["label"] == bracketed.label

    dry = _no_crash(reclaim_cli("sweep", "--dry-run", "--grace", "0"))
    assert f"would release  path.tempdir  {path}  (exists)" in dry
    assert "Would release 1, failed 0." in dry
    assert bracketed.path.is_dir(), "a dry run changes nothing"

    swept = _no_crash(reclaim_cli("sweep", "--grace", "0"))
    assert f"released  path.tempdir  {path}" in swept
    assert "Released 1, failed 0." in swept, "the report is whole after the release"
    assert not bracketed.path.exists()
    assert "Nothing is held" in _no_crash(reclaim_cli("status"))


def test_markup_in_errors_is_printed_as_it_is(bracketed: Bracketed, tmp_path: Path) -> None:
    """A failure whose error quotes a path with MARKUP: the sweep reports it whole, status
    shows it, and the entry stays failed."""
    user = tmp_path / f"a{MARKUP}b" / "keep"
    user.mkdir()
    reg = open_registry(bracketed.location)
    hostile = make_name(bracketed.run_id, 2)
    record = {"name": hostile, "path": str(user)}
    rid = reg.plan(bracketed.run_id, bracketed.label, "path.tempdir", hostile, record)
    reg.mark_acquired(rid, record)
    result = reclaim_cli("sweep", "--grace", "0", check=False)
    swept = _no_crash(result)
    assert result.returncode == 1
    assert f"released  path.tempdir  {bracketed.path}" in swept
    assert f"failed    path.tempdir  {user}" in swept
    assert f"'{user}'" in swept, "the refusal quotes the path literally"
    assert "Released 1, failed 1." in swept
    assert user.is_dir()
    status = _no_crash(reclaim_cli("status"))
    assert "refused" in status
    assert f"'{user}'" in status
    reg.forget(rid, actor="test")
    reg.close()


def test_watch_prints_markup_as_it_is(bracketed: Bracketed) -> None:
    swept = _no_crash(reclaim_cli("sweep", "--grace", "0"))
    assert "Released 1, failed 0." in swept
    watcher = Watcher("--from-start")
    try:
        watcher.wait_for_stderr(f"Watching {bracketed.location}")
        lines = watcher.lines_until(lambda lines: any("run.reaped" in x for x in lines))
        opened = next(x for x in lines if "run.opened" in x)
        assert f"label {bracketed.label!r}" in opened
        assert any("resource.released" in x for x in lines)
        assert watcher.stop() == 0
        assert "Traceback" not in watcher.stderr_rest()
    finally:
        watcher.kill()
    assert not bracketed.path.exists()


# --- failures speak one line, and JSON with --json (issue 11) --------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "5 parsecs"])
def test_grace_takes_durations_and_refuses_what_is_not_one(registry_path: str, value: str) -> None:
    result = reclaim_cli("sweep", "--grace", value, "--json", check=False)
    assert result.returncode == 2
    error = json.loads(result.stdout)
    assert "is not a duration" in error["error"] or "negative" in error["error"]
    assert error["exit_status"] == 2


def test_grace_accepts_units(registry_path: str) -> None:
    assert reclaim_cli("sweep", "--grace", "5m").returncode == 0
    assert reclaim_cli("sweep", "--grace", "0").returncode == 0


def test_json_commands_that_fail_print_a_json_error(registry_path: str) -> None:
    result = reclaim_cli("forget", "777", "--json", check=False)
    assert result.returncode == 2
    assert json.loads(result.stdout) == {
        "error": f"there is no resource 777 in the registry {registry_path}",
        "exit_status": 2,
    }


def test_demo_with_a_bad_registry_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite3"
    bad.write_text("not a registry")
    result = reclaim_cli("--registry", str(bad), "demo", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "is not an SQLite database" in result.stderr
