"""The sweeper against real crashes: processes killed with SIGKILL, a real filesystem and the real
process table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Spawner, alive, kill, reclaim_cli
from reclaim import ResourceState, RetryPolicy, sweep
from reclaim._identity import Identity, current_identity, process_state
from reclaim._reaper import claim_for_reaping, is_alive, reap_run
from reclaim._registry import open_registry
from reclaim.testing import dead_identity
from reclaim_test_backends import SECRET


@pytest.fixture(autouse=True)
def _no_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the sweeper (layer 4): no watchdog may release first."""
    monkeypatch.setenv("RECLAIM_WATCHDOG", "0")


HOLDER = """
import json, sys, time
import reclaim
from reclaim.backends.path import TempDir
from reclaim.backends.process import Process

with reclaim.Fixture("holder") as f:
    dirs = [str(f.acquire(TempDir(parent=sys.argv[1]))) for _ in range(int(sys.argv[2]))]
    proc = f.acquire(Process(["sleep", "600"]))
    from reclaim._run import current_run
    print(json.dumps({"dirs": dirs, "pid": proc.pid, "run": current_run().id}), flush=True)
    time.sleep(600)
"""


def test_sigkilled_holder_is_swept_to_nothing(spawn: Spawner, scratch: Path) -> None:
    proc, held = spawn(HOLDER, str(scratch), "3")
    assert all(os.path.isdir(d) for d in held["dirs"])
    assert alive(held["pid"])

    kill(proc)
    # The crash leaves everything behind: no finally, no atexit ran.
    assert all(os.path.isdir(d) for d in held["dirs"])
    assert alive(held["pid"])
    before = json.loads(reclaim_cli("status", "--json").stdout)
    (run,) = before["runs"]
    assert run["id"] == held["run"]
    assert run["alive"] is False
    assert {r["state"] for r in run["resources"]} == {"acquired"}
    assert len(run["resources"]) == 4

    swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
    assert swept["released"] == 4
    assert swept["failed"] == 0

    assert not any(os.path.exists(d) for d in held["dirs"])
    assert not alive(held["pid"])
    assert json.loads(reclaim_cli("status", "--json").stdout) == {"runs": []}


def test_live_run_survives_a_sweep(spawn: Spawner, scratch: Path, registry_path: str) -> None:
    proc, held = spawn(HOLDER, str(scratch), "2")
    swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
    assert swept == {**swept, "released": 0, "failed": 0, "skipped_live": 3}
    assert all(os.path.isdir(d) for d in held["dirs"])
    assert alive(held["pid"])
    status = json.loads(reclaim_cli("status", "--json").stdout)
    assert status["runs"][0]["alive"] is True
    assert {r["condition"] for r in status["runs"][0]["resources"]} == {"live"}
    kill(proc)


def test_grace_period_protects_young_dead_runs(spawn: Spawner, scratch: Path) -> None:
    proc, held = spawn(HOLDER, str(scratch), "1")
    kill(proc)
    swept = json.loads(reclaim_cli("sweep", "--json").stdout)  # default grace: minutes
    assert swept["released"] == 0
    assert swept["skipped_grace"] == 2
    assert os.path.isdir(held["dirs"][0])
    assert json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)["released"] == 2


def test_dry_run_changes_nothing(spawn: Spawner, scratch: Path) -> None:
    proc, held = spawn(HOLDER, str(scratch), "2")
    kill(proc)
    dry = json.loads(reclaim_cli("sweep", "--grace", "0", "--dry-run", "--json").stdout)
    assert len(dry["would_release"]) == 3
    assert all(item["exists"] for item in dry["would_release"])
    assert all(os.path.isdir(d) for d in held["dirs"])
    assert alive(held["pid"])
    human = reclaim_cli("sweep", "--grace", "0", "--dry-run").stdout
    assert "Would release 3" in human


def test_reused_pid_is_not_the_owner(registry_path: str, scratch: Path) -> None:
    """A run whose recorded pid now belongs to another live process (different start time) is
    dead: its resources are swept, and the stranger is not touched."""
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        me = current_identity()
        state = process_state(stranger.pid)
        assert state is not None
        owner = Identity(me.host, me.boot_id, me.pidns, stranger.pid, state.start_time - 1)
        reg = open_registry(registry_path)
        reg.open_run("0000abcd", owner, label="reused")
        target = scratch / "rc_0000abcd_x_1"
        target.mkdir()
        rid = reg.plan("0000abcd", "f", "path.tempdir", target.name, {"name": target.name})
        reg.mark_acquired(rid, {"name": target.name, "path": str(target)})
        run = reg.get_run("0000abcd")
        assert run is not None
        assert not is_alive(run)

        report = sweep(reg, grace=0)
        assert report.released == 1
        assert not target.exists()
        assert alive(stranger.pid), "the process that got the pid must not be touched"
        # The same run recorded with the stranger's real start time is alive and left alone.
        reg.open_run(
            "0000abce",
            Identity(**{**owner.to_json(), "start_time": state.start_time}),
            label="alive",
        )
        run2 = reg.get_run("0000abce")
        assert run2 is not None
        assert is_alive(run2)
        reg.close()
    finally:
        stranger.kill()
        stranger.wait()


def test_earlier_boot_is_dead_and_other_host_uses_lease(registry_path: str) -> None:
    me = current_identity()
    reg = open_registry(registry_path)
    reg.open_run(
        "0000000b",
        Identity(me.host, "an-earlier-boot", me.pidns, me.pid, me.start_time),
        label="earlier boot",
    )
    reg.open_run(
        "0000000c",
        Identity("another-host", "b", "ns", me.pid, me.start_time),
        label="remote",
        lease_seconds=30,
    )
    earlier, remote = reg.get_run("0000000b"), reg.get_run("0000000c")
    assert earlier is not None
    assert remote is not None
    assert not is_alive(earlier)
    assert is_alive(remote), "a remote run is alive while its lease is fresh"
    assert not is_alive(remote, now=remote.heartbeat_at + 31)
    reg.close()


def test_failed_release_is_kept_then_retried(registry_path: str, scratch: Path) -> None:
    reg = open_registry(registry_path)
    reg.open_run("000000f1", dead_identity(), label="flaky")
    path = scratch / "rc_000000f1_x_1"
    path.write_text("x")
    (scratch / "rc_000000f1_x_1.fail").write_text("")
    record = {"name": path.name, "path": str(path), "token": SECRET}
    rid = reg.plan("000000f1", "f", "test.flaky", path.name, record)
    reg.mark_acquired(rid, record)

    fast = RetryPolicy(attempts=3, first_delay=0.01)
    first = sweep(reg, grace=0, policy=fast)
    assert (first.released, first.failed) == (0, 1)
    kept = reg.get_resource(rid)
    assert kept is not None
    assert kept.state == ResourceState.FAILED
    assert kept.attempts == 3
    assert kept.last_error is not None
    assert "cannot delete" in kept.last_error
    assert SECRET not in kept.last_error, "secrets are redacted before they are stored (I7)"
    status = reclaim_cli("status", "--json").stdout
    assert SECRET not in status
    assert '"condition": "failed"' in status
    human = reclaim_cli("status").stdout + reclaim_cli("sweep", "--grace", "0", check=False).stdout
    assert SECRET not in human
    assert path.exists()

    (scratch / "rc_000000f1_x_1.fail").unlink()
    second = sweep(reg, grace=0, policy=fast)
    assert (second.released, second.failed) == (1, 0)
    assert not path.exists()
    assert reg.list_runs() == []
    reg.close()


def test_unknown_kind_is_kept_and_reported(registry_path: str) -> None:
    reg = open_registry(registry_path)
    reg.open_run("000000aa", dead_identity(), label="unknown")
    rid = reg.plan("000000aa", "f", "nowhere.thing", "rc_000000aa_x_1", {"name": "x"})
    report = sweep(reg, grace=0)
    assert report.failed == 1
    kept = reg.get_resource(rid)
    assert kept is not None
    assert kept.state == ResourceState.FAILED
    assert kept.last_error is not None
    assert "nowhere.thing" in kept.last_error
    assert "reclaim.backends" in kept.last_error
    # A second sweep keeps it too; only an explicit command drops it.
    sweep(reg, grace=0)
    assert reg.get_resource(rid) is not None
    result = reclaim_cli("sweep", "--grace", "0", check=False)
    assert result.returncode == 1, "a sweep with failures exits 1 so cron can alert"
    assert "nowhere.thing" in reclaim_cli("status").stdout
    assert "would forget" in reclaim_cli("forget", str(rid)).stdout
    assert reg.get_resource(rid) is not None
    reclaim_cli("forget", str(rid), "--yes")
    assert reg.get_resource(rid) is None
    assert reg.events()[-1].event == "resource.forgotten"
    reg.close()


def test_one_reaper_at_a_time(registry_path: str) -> None:
    """I6: the claim is a compare-and-set; the loser gets nothing, a dead claimer's claim can be
    taken over, a live claimer's cannot."""
    reg = open_registry(registry_path)
    reg.open_run("000000c1", dead_identity(), label="contested")
    run = reg.get_run("000000c1")
    assert run is not None
    first = claim_for_reaping(reg, run)
    assert first is not None
    assert claim_for_reaping(reg, run) is None, "a stale view of the run must lose the CAS"
    claimed = reg.get_run("000000c1")
    assert claimed is not None
    assert claim_for_reaping(reg, claimed) is None, "the holder (this process) is alive"
    assert reap_run(reg, claimed, actor="sweeper") is None

    # A claimer that died mid-reap: its claim is taken over.
    reg.open_run("000000c2", dead_identity(), label="abandoned")
    run2 = reg.get_run("000000c2")
    assert run2 is not None
    assert claim_for_reaping(reg, run2, claimer=dead_identity()) is not None
    abandoned = reg.get_run("000000c2")
    assert abandoned is not None
    assert reap_run(reg, abandoned, actor="sweeper") == []
    assert reg.get_run("000000c2") is None
    reg.close()


def test_concurrent_sweepers_release_each_resource_once(
    spawn: Spawner, scratch: Path, registry_path: str
) -> None:
    procs = [spawn(HOLDER, str(scratch), "20") for _ in range(3)]
    for proc, _ in procs:
        kill(proc)
    sweepers = [
        subprocess.Popen(
            [sys.executable, "-m", "reclaim", "sweep", "--grace", "0", "--json"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    reports = [json.loads(s.communicate(timeout=120)[0]) for s in sweepers]
    assert sum(r["released"] for r in reports) == 63
    assert sum(r["failed"] for r in reports) == 0
    reg = open_registry(registry_path)
    released = [e for e in reg.events() if e.event == "resource.released"]
    assert len(released) == 63
    assert len({e.resource_id for e in released}) == 63, "no resource released twice"
    assert reg.list_runs() == []
    reg.close()
    for _, held in procs:
        assert not any(os.path.exists(d) for d in held["dirs"])
        assert not alive(held["pid"])


@pytest.mark.parametrize("stage", ["planned", "releasing"])
def test_entries_of_every_stage_are_released(registry_path: str, scratch: Path, stage: str) -> None:
    """A crash between plan and acquire, or in the middle of a release, still leaks nothing."""
    reg = open_registry(registry_path)
    reg.open_run("000000d1", dead_identity(), label=stage)
    path = scratch / "rc_000000d1_x_1"
    path.mkdir()
    record = {"name": path.name, "path": str(path)}
    rid = reg.plan("000000d1", "f", "path.tempdir", path.name, record)  # planned: never recorded
    if stage == "releasing":
        reg.mark_acquired(rid, record)
        assert reg.begin_release(rid, states=(ResourceState.ACQUIRED,)) is not None
    assert sweep(reg, grace=0).released == 1
    assert not path.exists()
    reg.close()
