"""Acquire that fails (issue 11): the user sees the creation's error, never the clean-up's; an
entry that provably holds nothing is closed, one that may hold something stays for the sweeper
and says it may never have existed; `reclaim forget` clears such entries in bulk, and never a
live run's without --force."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import reclaim
from conftest import reclaim_cli
from reclaim._registry import ResourceState, open_registry
from reclaim.backends.path import TempDir
from reclaim_test_backends import SECRET, Unreachable


def test_nothing_created_closes_the_planned_entry(registry_path: str) -> None:
    with reclaim.Fixture("down") as f, pytest.raises(reclaim.AcquireError) as caught:
        f.acquire(Unreachable())
    error = caught.value
    assert not isinstance(error, reclaim.ReleaseError)
    assert "could not be created" in str(error)
    assert "refused" in str(error), "the cause is named"
    assert "nothing was created" in str(error)
    assert SECRET not in str(error)
    assert SECRET not in "".join(getattr(error, "__notes__", []))
    reg = open_registry(registry_path)
    assert reg.resources() == [], "no entry is left failing forever"
    events = [e for e in reg.events() if e.event == "resource.not_created"]
    assert len(events) == 1
    assert SECRET not in json.dumps(events[0].detail)
    reg.close()


def test_a_maybe_created_entry_stays_failed_and_says_so(registry_path: str) -> None:
    # In a child that then exits, as a test process would: its entry is left to the sweeper.
    code = (
        "import reclaim\n"
        "from reclaim_test_backends import Halfway\n"
        "try:\n"
        "    with reclaim.Fixture('halfway') as f:\n"
        "        f.acquire(Halfway())\n"
        "except reclaim.AcquireError as exc:\n"
        "    assert not isinstance(exc, reclaim.ReleaseError)\n"
        "    print(exc)\n"
        "    print(''.join(exc.__notes__))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    message = child.stdout
    assert "no answer to CREATE" in message, "the creation's cause, not the release's"
    assert "may never have existed" in message
    assert "reclaim forget --never-acquired" in message
    assert "refused" in message, "the compensating release's failure is attached"

    reg = open_registry(registry_path)
    (entry,) = reg.resources()
    assert entry.state == ResourceState.FAILED
    assert entry.acquired_at is None
    reg.close()

    swept = reclaim_cli("sweep", "--grace", "0", check=False)
    assert swept.returncode == 1
    assert "may never have existed" in swept.stdout
    assert "reclaim forget --never-acquired --yes" in swept.stdout

    dry = reclaim_cli("forget", "--never-acquired")
    assert f"would forget {entry.id}" in dry.stdout
    reg = open_registry(registry_path)
    assert len(reg.resources()) == 1, "a dry run changes nothing"
    reg.close()
    done = json.loads(reclaim_cli("forget", "--never-acquired", "--yes", "--json").stdout)
    assert [r["id"] for r in done["forgotten"]] == [entry.id]
    assert reclaim_cli("sweep", "--grace", "0").returncode == 0


def test_forget_refuses_a_live_runs_entry_without_force(registry_path: str, scratch: Path) -> None:
    with reclaim.Fixture("live") as f:
        path = f.acquire(TempDir(parent=scratch))
        reg = open_registry(registry_path)
        (entry,) = reg.resources()
        reg.close()
        refused = reclaim_cli("forget", str(entry.id), "--yes", check=False)
        assert refused.returncode == 1
        assert "its run is alive" in refused.stdout
        reg = open_registry(registry_path)
        assert reg.get_resource(entry.id) is not None
        reg.close()
        forced = reclaim_cli("forget", str(entry.id), "--yes", "--force")
        assert f"forgot {entry.id}" in forced.stdout
        assert path.exists(), "forget never releases"
    shutil.rmtree(path, ignore_errors=True)


def test_forget_needs_a_selection_and_reports_unknown_ids(registry_path: str) -> None:
    open_registry(registry_path).close()
    assert reclaim_cli("forget", check=False).returncode != 0
    missing = reclaim_cli("forget", "424242", "--yes", check=False)
    assert missing.returncode == 2
    assert "there is no resource 424242" in missing.stderr
