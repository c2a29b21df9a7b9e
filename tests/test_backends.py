"""The built-in local backends: the conformance kit over each, then what is special to each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import alive
from reclaim import BackendNotFoundError, ForeignNameError
from reclaim._identity import process_state
from reclaim.backends import load_backend, make_name, parse_name
from reclaim.backends.path import TempDir
from reclaim.backends.process import MARKER_ENV, Process, _in_exec
from reclaim.testing import check_backend
from reclaim_test_backends import Forgetful

#: Every built-in backend that needs no server, for the conformance kit.


def test_kit_catches_a_backend_that_breaks_i1(
    scratch: Path, tmp_path: Path, registry_path: str
) -> None:
    with pytest.raises(AssertionError, match=r"planned record does not find"):
        check_backend(lambda: Forgetful(scratch), registry=tmp_path / "kit.sqlite3")


def test_kit_needs_the_backend_registered(scratch: Path, tmp_path: Path) -> None:
    class Unregistered(TempDir):
        kind = "test.unregistered"

    with pytest.raises(AssertionError, match="entry-point group"):
        check_backend(lambda: Unregistered(parent=scratch), registry=tmp_path / "kit.sqlite3")


def test_built_ins_load_through_entry_points() -> None:
    assert load_backend("path.tempdir") is TempDir
    assert load_backend("process") is Process
    with pytest.raises(BackendNotFoundError, match=r"reclaim\.backends"):
        load_backend("no.such.kind")


def test_names_carry_prefix_run_and_time() -> None:
    name = make_name("0a1b2c3d", 7, now=1_800_000_000)
    assert name.startswith("rc_0a1b2c3d_")
    assert name.endswith("_7")
    parsed = parse_name(name)
    assert parsed is not None
    assert (parsed.run_id, parsed.created_at, parsed.seq) == ("0a1b2c3d", 1_800_000_000.0, 7)
    # Only a whole name is one (I8): nothing before it, nothing after it.
    for lookalike in (f"prefix-{name}", f"{name}_backup", f"{name}.bak", f"{name}2x", "tmp_x"):
        assert parse_name(lookalike) is None, lookalike
    assert name == name.lower()
    assert len(name) <= 30


@pytest.mark.parametrize("run_id", ["00000000", "0a1b2c3d", "ffffffff"])
def test_every_name_made_is_a_whole_name_of_its_parts(run_id: str) -> None:
    """make_name checks its parts, not what they make: what they make must parse back."""
    for seq in (1, 9, 10, 12345, 10**20 - 1):
        for now in (0, 1, 35, 36, 1_800_000_000, 36**8 - 1):
            parsed = parse_name(make_name(run_id, seq, now=now))
            assert parsed is not None, (run_id, seq, now)
            assert (parsed.run_id, parsed.seq, parsed.created_at) == (run_id, seq, float(now))


@pytest.mark.parametrize(
    ("run_id", "seq", "now"),
    [("0A1B2C3D", 1, 0), ("0a1b2c3", 1, 0), ("0a1b2c3d0", 1, 0), ("0a1b2c3d", 0, 0),
     ("0a1b2c3d", -1, 0), ("0a1b2c3d", 10**20, 0), ("0a1b2c3d", True, 0), ("0a1b2c3d", 1, -1)],
)  # fmt: skip
def test_parts_that_make_no_name_are_refused(run_id: str, seq: int, now: float) -> None:
    with pytest.raises(ValueError, match="do not make a reclaim name"):
        make_name(run_id, seq, now=now)


def test_a_run_id_of_another_type_is_refused_the_same_way() -> None:
    for run_id in (["0a1b2c3d"], None, b"0a1b2c3d", 12345678):
        with pytest.raises(ValueError, match="do not make a reclaim name"):
            make_name(run_id, 1)  # type: ignore[arg-type]


def test_tempdir_removes_read_only_trees(registry_path: str, scratch: Path) -> None:
    backend = TempDir(prefix="ro-", parent=scratch)
    path, record = backend.acquire(backend.adapt_name("rc_00000000_a_1"))
    assert path.name == "ro-rc_00000000_a_1"
    (path / "sub").mkdir()
    (path / "sub" / "f").write_text("x")
    (path / "sub").chmod(0o500)
    TempDir.release(record)
    assert not path.exists()


def test_tempdir_never_follows_a_symlink(scratch: Path) -> None:
    precious = scratch / "precious"
    precious.mkdir()
    (precious / "keep").write_text("x")
    link = scratch / "rc_00000000_a_1"
    link.symlink_to(precious)
    TempDir.release({"name": link.name, "path": str(link)})
    assert not link.exists()
    assert (precious / "keep").exists()


def test_tempdir_rejects_a_path_in_the_prefix() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        TempDir(prefix="../escape")


def test_process_escalates_to_sigkill() -> None:
    backend = Process(["bash", "-c", "trap '' TERM; sleep 600 & wait"], grace=0.3)
    popen, record = backend.acquire("rc_00000000_a_1")
    try:
        time.sleep(0.2)  # let bash install its trap and start its child
        started = time.monotonic()
        Process.release(record)
        assert time.monotonic() - started >= 0.3, "waited the grace period first"
        assert not Process.exists(record)
    finally:
        Process.release(record)  # also when an assertion failed: no sleeper outlives the test
        backend.discard(popen)
    assert popen.returncode == -signal.SIGKILL


def test_process_group_and_escaped_grandchildren(tmp_path: Path) -> None:
    """Members of the group and a grandchild that left it with setsid are all stopped."""
    pids_file = tmp_path / "pids"
    script = f"sleep 600 & echo $! >> {pids_file}; setsid sleep 600 & echo $! >> {pids_file}; wait"
    backend = Process(["bash", "-c", script], grace=2)
    popen, record = backend.acquire("rc_00000000_a_2")
    try:
        deadline = time.monotonic() + 10
        while len(pids_file.read_text().split() if pids_file.exists() else []) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        in_group, escaped = (int(p) for p in pids_file.read_text().split())
        # bash echoes the pid right after fork, before the child has run setsid(2): wait for it.
        while os.getpgid(escaped) == record["pgid"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.getpgid(escaped) != record["pgid"]
        Process.release(record)
        assert not alive(in_group)
        assert not alive(escaped)
        assert not alive(popen.pid)
    finally:
        Process.release(record)  # also when an assertion failed: no sleeper outlives the test
        backend.discard(popen)


def test_process_never_signals_a_reused_pid() -> None:
    """A record whose pid now belongs to a stranger (another start time, no marker)."""
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        record = {
            "name": "rc_00000000_a_3",
            "pid": stranger.pid,
            "pgid": stranger.pid,
            "start_time": 1,  # not the stranger's
            "grace": 0.1,
        }
        assert not Process.exists(record)
        Process.release(record)
        time.sleep(0.1)
        assert alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_process_planned_record_finds_the_child_by_marker() -> None:
    """The crash between fork and journaling the pid: the planned record has no pid, yet the
    child is found through the marker in its environment."""
    backend = Process([sys.executable, "-c", "import time; time.sleep(600)"], grace=2)
    planned = backend.plan("rc_00000000_a_4")
    popen, _record = backend.acquire("rc_00000000_a_4")
    try:
        with open(f"/proc/{popen.pid}/environ", "rb") as f:
            assert f"{MARKER_ENV}=rc_00000000_a_4".encode() in f.read()
        assert Process.exists(planned)
        Process.release(planned)
        assert not alive(popen.pid)
    finally:
        popen.kill()
        backend.discard(popen)


def test_process_acquire_returns_only_once_the_marker_reads() -> None:
    """Popen returns a moment before exec has set up the child's environment (seen in CI: an
    empty /proc/PID/environ right after acquire). acquire waits it out, so a release or a sweep
    at any later instant can prove the child is ours. Before the fix, 2 of 300 read empty."""
    backend = Process([sys.executable, "-c", "import time; time.sleep(600)"], grace=1)
    for seq in range(1, 101):
        name = f"rc_00000000_a_{seq}"
        popen, _record = backend.acquire(name)
        try:
            with open(f"/proc/{popen.pid}/environ", "rb") as f:
                assert f"{MARKER_ENV}={name}".encode() in f.read(), f"acquire {seq}"
        finally:
            popen.kill()
            backend.discard(popen)


def test_process_scan_watches_only_processes_inside_exec() -> None:
    """The marker scan waits on a process whose environment reads empty only while it is inside
    exec (no command line yet either): a kernel thread or an ``env -i`` process is passed over at
    once, and is never taken for ours."""
    user = subprocess.Popen(["env", "-i", "sleep", "30"])
    try:
        for _ in range(200):  # until env has exec'd sleep
            with open(f"/proc/{user.pid}/comm") as f:
                if f.read().strip() == "sleep":
                    break
            time.sleep(0.01)
        state = process_state(user.pid)
        assert state is not None
        assert not state.kernel_thread
        with open(f"/proc/{user.pid}/environ", "rb") as f:
            assert f.read() == b""
        assert not _in_exec(user.pid, state)
    finally:
        user.kill()
        user.wait()
    kthreadd = process_state(2)
    if kthreadd is not None and kthreadd.kernel_thread:
        assert not _in_exec(2, kthreadd)
    me = process_state(os.getpid())
    assert me is not None
    assert not me.kernel_thread


def test_process_rejects_shell_strings_and_group_options() -> None:
    with pytest.raises(TypeError, match="not a shell line"):
        Process("sleep 1")
    with pytest.raises(ValueError, match="start_new_session"):
        Process(["sleep", "1"], start_new_session=False)


def _user_sleep() -> tuple[subprocess.Popen[bytes], int]:
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    user = subprocess.Popen(["sleep", "60"], env=env)
    state = process_state(user.pid)
    assert state is not None
    return user, state.start_time


def test_process_refuses_a_valid_name_on_a_users_process() -> None:
    """A hostile record: a valid reclaim name, the real pid and start time of a user's process
    that carries no marker. Neither release nor exists may signal it (I8)."""
    user, started = _user_sleep()
    try:
        record = {"name": "rc_0badf00d_t0a1b2_1", "pid": user.pid, "start_time": started}
        with pytest.raises(ForeignNameError, match=r"refused.*pid.*RECLAIM_RESOURCE"):
            Process.release(dict(record, grace=0.1))
        with pytest.raises(ForeignNameError, match="refused"):
            Process.exists(record)
        # Another reclaim name's marker is not this one's.
        other = subprocess.Popen(["sleep", "60"], env={**os.environ, MARKER_ENV: "rc_0_a_9"})
        try:
            other_started = process_state(other.pid).start_time  # type: ignore[union-attr]
            with pytest.raises(ForeignNameError, match="refused"):
                Process.release({**record, "pid": other.pid, "start_time": other_started})
            assert other.poll() is None
        finally:
            other.kill()
            other.wait()
        time.sleep(0.1)
        assert user.poll() is None, "the user's process was signalled"
    finally:
        user.kill()
        user.wait()


def test_process_refuses_a_pgid_other_than_the_pid() -> None:
    user, started = _user_sleep()
    try:
        record = {
            "name": "rc_0badf00d_t0a1b2_1",
            "pid": user.pid,
            "pgid": os.getpgid(0),  # the test's own group
            "start_time": started,
        }
        with pytest.raises(ForeignNameError, match=r"refused.*pgid"):
            Process.release(record)
        for bad in ("12", -1, True, 1.5):
            with pytest.raises(ForeignNameError, match="positive integer"):
                Process.exists({**record, "pid": bad, "pgid": bad})
        assert user.poll() is None
    finally:
        user.kill()
        user.wait()


def test_process_refuses_a_users_group_whose_leader_is_gone() -> None:
    shell = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE, start_new_session=True
    )
    assert shell.stdout is not None
    with shell.stdout:
        orphan = int(shell.stdout.readline())
    shell_started = process_state(shell.pid).start_time  # type: ignore[union-attr]
    shell.wait()
    try:
        record = {"name": "rc_0badf00d_t0a1b2_1", "pid": shell.pid, "start_time": shell_started}
        with pytest.raises(ForeignNameError, match=r"refused.*pgid.*member"):
            Process.release(record)
        assert alive(orphan)
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_process_group_members_are_released_after_the_leader_died() -> None:
    """The leader was killed, its marked children live on in its group: released (I3 after)."""
    backend = Process(["bash", "-c", "sleep 600 & echo $!; wait"], grace=2, stdout=subprocess.PIPE)
    popen, record = backend.acquire("rc_00000000_a_5")
    try:
        child = int(popen.stdout.readline())  # type: ignore[union-attr]
        os.kill(popen.pid, signal.SIGKILL)
        popen.wait()
        assert Process.exists(record)
        Process.release(record)
        assert not alive(child)
        assert not Process.exists(record)
        Process.release(record)  # gone: a no-op
    finally:
        popen.stdout.close()  # type: ignore[union-attr]
        backend.discard(popen)
