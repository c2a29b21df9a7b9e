"""Layer 3: the watchdog releases what a SIGKILLed owner held, with no other command, and the
sweeper finishes the job when the watchdog dies too. A chaos loop kills at random moments."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reclaim
from conftest import CHILD_TIMEOUT, Spawner, alive, kill, reclaim_cli, wait_until
from reclaim._identity import current_identity
from reclaim._registry import open_registry
from reclaim._run import end_run, existing_run
from reclaim.backends.path import TempDir

HOLDER = """
import json, os, sys, time
import reclaim
from reclaim.backends.path import TempDir
from reclaim.backends.process import Process
from reclaim._run import current_run

with reclaim.Fixture("holder") as f:
    dirs = [str(f.acquire(TempDir(parent=sys.argv[1]))) for _ in range(int(sys.argv[2]))]
    proc = f.acquire(Process(["sleep", "600"]))
    run = current_run()
    extra = {}
    if len(sys.argv) > 3 and sys.argv[3] == "fork":
        pid = os.fork()  # a forked worker that outlives the owner, holding every inherited fd
        if pid == 0:
            time.sleep(600)
            os._exit(0)
        extra["forked"] = pid
    if len(sys.argv) > 3 and sys.argv[3] == "exec":
        # an exec'd child that outlives the owner
        extra["forked"] = __import__("subprocess").Popen(["sleep", "600"]).pid
    print(json.dumps({"dirs": dirs, "pid": proc.pid, "run": run.id,
                      "watchdog": run.watchdog.pid, **extra}), flush=True)
    time.sleep(600)
"""


def run_gone(registry_path: str, run_id: str) -> bool:
    reg = open_registry(registry_path)
    try:
        return reg.get_run(run_id) is None
    finally:
        reg.close()


def test_sigkill_releases_100_dirs_and_a_process(
    spawn: Spawner, scratch: Path, registry_path: str
) -> None:
    proc, held = spawn(HOLDER, str(scratch), "100")
    assert len(list(scratch.iterdir())) == 100
    kill(proc)
    started = time.monotonic()
    wait_until(lambda: not any(os.path.exists(d) for d in held["dirs"]) and not alive(held["pid"]))
    elapsed = time.monotonic() - started
    wait_until(lambda: run_gone(registry_path, held["run"]))
    reg = open_registry(registry_path)
    by = {e.detail.get("by") for e in reg.events() if e.event == "resource.released"}
    assert by == {"watchdog"}
    reg.close()
    print(f"\nSIGKILL -> last of 101 releases: {elapsed * 1000:.0f} ms")
    wait_until(lambda: not alive(held["watchdog"]))


@pytest.mark.parametrize("pidfd", ["1", "0"], ids=["pidfd", "pipe-only"])
@pytest.mark.parametrize("child", ["fork", "exec"])
def test_children_do_not_keep_a_dead_owner_alive(
    spawn: Spawner,
    scratch: Path,
    registry_path: str,
    monkeypatch: pytest.MonkeyPatch,
    pidfd: str,
    child: str,
) -> None:
    monkeypatch.setenv("RECLAIM_WATCHDOG_PIDFD", pidfd)
    proc, held = spawn(HOLDER, str(scratch), "2", child)
    try:
        kill(proc)
        wait_until(lambda: not any(os.path.exists(d) for d in held["dirs"]))
        assert alive(held["forked"]), "the child is still there, and did not delay the release"
    finally:
        os.kill(held["forked"], signal.SIGKILL)


def test_group_and_watchdog_killed_together_then_sweep(
    spawn: Spawner, scratch: Path, registry_path: str
) -> None:
    """A whole container dies at once: owner, its group and its watchdog. Nothing is lost: the
    next sweep releases everything."""
    code = HOLDER.replace("import reclaim\n", "import reclaim\nos.setpgid(0, 0)\n")
    proc, held = spawn(code, str(scratch), "5")
    os.kill(held["watchdog"], signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=CHILD_TIMEOUT)
    time.sleep(0.2)
    assert all(os.path.isdir(d) for d in held["dirs"]), "nobody released anything yet"
    swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
    assert swept["released"] == 6
    assert not any(os.path.exists(d) for d in held["dirs"])
    assert not alive(held["pid"])
    assert json.loads(reclaim_cli("status", "--json").stdout) == {"runs": []}


def test_clean_exit_stops_the_watchdog_without_work(scratch: Path, registry_path: str) -> None:
    code = (
        "import sys, reclaim\n"
        "from reclaim.backends.path import TempDir\n"
        "from reclaim._run import current_run\n"
        "with reclaim.Fixture('clean') as f:\n"
        "    f.acquire(TempDir(parent=sys.argv[1]))\n"
        "    print(current_run().watchdog.pid, flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(scratch)],
        capture_output=True,
        text=True,
        check=True,
        timeout=CHILD_TIMEOUT,  # also proves the watchdog holds none of our pipes
    )
    watchdog = int(out.stdout)
    wait_until(lambda: not alive(watchdog), timeout=5)
    reg = open_registry(registry_path)
    events = [e.event for e in reg.events()]
    assert "run.closed" in events
    assert "run.reaped" not in events
    assert list(scratch.iterdir()) == []
    reg.close()


def test_a_closed_runs_watchdog_exits_and_is_reaped_in_the_background(
    monkeypatch: pytest.MonkeyPatch, scratch: Path, registry_path: str
) -> None:
    """A close does not wait for the watchdog's interpreter to exit; a thread reaps it, so no
    zombie is left while the owner lives, and it exits having done nothing."""
    monkeypatch.delenv("RECLAIM_WATCHDOG", raising=False)
    with reclaim.Fixture("reaped") as f:
        f.acquire(TempDir(parent=scratch))
    run = existing_run(registry_path)
    assert run is not None
    assert run.watchdog is not None
    watchdog = run.watchdog
    end_run(registry_path)
    wait_until(lambda: watchdog.returncode is not None, timeout=5)  # waited for: no zombie
    assert watchdog.returncode == 0
    assert not alive(watchdog.pid)
    reg = open_registry(registry_path)
    events = [e.event for e in reg.events() if e.run_id == run.id]
    reg.close()
    assert events[-1] == "run.closed"
    assert "run.reaped" not in events


SIGNALLED = """
import json, os, signal, sys, time
import reclaim
from reclaim.backends.path import TempDir

if sys.argv[2] == "user-handler":
    signal.signal(signal.SIGTERM, lambda *a: (print("user handler", flush=True), os._exit(7)))

def slow() -> None:
    time.sleep(0.5)
    print("slow cleanup done", flush=True)

with reclaim.Fixture("signalled") as f:
    path = f.acquire(TempDir(parent=sys.argv[1]))
    f.add_cleanup(slow)
    later = f.acquire(TempDir(parent=sys.argv[1]))
    print(json.dumps([str(path), str(later)]), flush=True)
    time.sleep(600)
"""


def test_sigterm_unwinds_in_process(spawn: Spawner, scratch: Path, registry_path: str) -> None:
    proc, paths = spawn(SIGNALLED, str(scratch), "default")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # a second one, during the slow cleanup
    out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    assert "slow cleanup done" in out
    assert "Terminated" in err
    assert not any(os.path.exists(p) for p in paths)
    reg = open_registry(registry_path)
    by = [e.detail.get("by") for e in reg.events() if e.event == "resource.released"]
    assert by == ["fixture", "fixture"], "released in-process, before the watchdog"
    reg.close()


def test_a_users_sigterm_handler_is_left_alone(spawn: Spawner, scratch: Path) -> None:
    proc, paths = spawn(SIGNALLED, str(scratch), "user-handler")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=CHILD_TIMEOUT)
    assert "user handler" in out
    assert proc.returncode == 7
    # The user's handler skipped the with block; the watchdog released instead.
    wait_until(lambda: not any(os.path.exists(p) for p in paths))


CHAOS = """
import os, sys, time
import reclaim
from reclaim.backends.path import TempDir
from reclaim.backends.process import Process
from reclaim_test_backends import SlowDir

parent = sys.argv[1]
print("{}", flush=True)
while True:
    with reclaim.Fixture("chaos") as f:
        f.acquire(TempDir(parent=parent))
        f.acquire(Process(["sleep", "600"]))
        f.acquire(SlowDir(__import__("pathlib").Path(parent), pause=0.05))
        f.acquire(TempDir(parent=parent))
"""


@pytest.mark.slow
def test_chaos_kills_leave_nothing(scratch: Path, registry_path: str, tmp_path: Path) -> None:
    """SIGKILL at random moments (and on purpose inside acquire and inside release), 24 times;
    after each, once the watchdog is done, nothing is on disk, no process of the loop runs, and
    the registry holds nothing of the killed run."""
    rng = random.Random(20261121)
    env = {**os.environ, "RECLAIM_TEST_ANNOUNCE": "1"}
    windows = {"in-acquire": 0, "in-release": 0, "random": 0}
    stderr = (tmp_path / "stderr.log").open("w")  # the owners' and their watchdogs'
    for n in range(24):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHAOS, str(scratch)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            target = ("in-acquire", "in-release", "random")[n % 3]
            if target == "random":
                time.sleep(rng.uniform(0.0, 0.3))
            else:
                deadline = time.monotonic() + 20
                while proc.stdout.readline().strip() != target:
                    assert time.monotonic() < deadline
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=CHILD_TIMEOUT)
            windows[target] += 1
            reg = open_registry(registry_path)
            try:
                try:
                    wait_until(lambda: not reg.list_runs() and not any(scratch.iterdir()))  # noqa: B023  (called at once)
                except AssertionError as exc:
                    left = [
                        (
                            r.id,
                            r.state,
                            [(e.kind, e.state, e.last_error) for e in reg.resources(r.id)],
                        )
                        for r in reg.list_runs()
                    ]
                    ps = subprocess.run(
                        ["ps", "-eo", "pid,ppid,stat,etimes,args"],
                        capture_output=True,
                        text=True,
                        check=False,
                    ).stdout
                    dogs = [line for line in ps.splitlines() if "_watchdog.py" in line]
                    stderr.flush()
                    raise AssertionError(
                        f"kill {n} ({target}): runs left {left}, on disk"
                        f" {sorted(p.name for p in scratch.iterdir())}, watchdogs {dogs},"
                        f" stderr {(tmp_path / 'stderr.log').read_text()[-3000:]}"
                    ) from exc
                runs = {e.run_id for e in reg.events(limit=100_000) if e.event == "run.opened"}
            finally:
                reg.close()
            leftovers = [p for p in _marked_processes(runs) if alive(p)]
            assert leftovers == [], f"kill {n} ({target}) left processes {leftovers}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
    stderr.close()
    assert windows == {"in-acquire": 8, "in-release": 8, "random": 8}


def _marked_processes(run_ids: set[str | None]) -> list[int]:
    """Processes started by reclaim's Process backend for these runs (they carry its marker);
    other test suites running on the machine at the same time are not looked at."""
    markers = [f"RECLAIM_RESOURCE=rc_{run_id}_".encode() for run_id in run_ids if run_id]
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read()
                if any(m in environ for m in markers):
                    found.append(int(entry))
            except OSError:
                continue
    return found


BEFORE_THE_ROW = """
import os, secrets, sys, time
import reclaim
from reclaim._registry import open_registry
from reclaim.backends.path import TempDir

registry = open_registry(os.environ["RECLAIM_REGISTRY"])
if len(sys.argv) > 2:
    secrets.token_hex = lambda _n: sys.argv[2]  # the id another process's run holds already


def stuck(self, *args, **kwargs):
    print('{"stuck": "before the run row"}', flush=True)  # its watchdog runs already
    time.sleep(600)


type(registry).open_run = stuck
reclaim.Fixture("early").__enter__().acquire(TempDir(parent=sys.argv[1]))
"""


def _watchdog_of(pid: int) -> int:
    """The one child of ``pid`` (its watchdog)."""
    children: list[str] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            children += f.read().split()
    assert len(children) == 1, f"children of the owner: {children}"
    return int(children[0])


@pytest.mark.parametrize("collide", [False, True], ids=["fresh id", "id of a live run"])
def test_an_owner_killed_before_its_runs_row_leaves_no_run_and_touches_none(
    spawn: Spawner, scratch: Path, registry_path: str, collide: bool
) -> None:
    """The watchdog starts before the run's row is written, so a SIGKILL between the two leaves
    no open run behind (nobody would reap it until a sweep). Its watchdog then finds no run of
    its owner's and exits; under an id that another live process's run holds (a collision the
    row's insert would have refused), that run and what it holds are left alone (I4)."""
    argv = [str(scratch)]
    other_dir = scratch / "the other run's"
    if collide:
        registry = open_registry(registry_path)
        registry.open_run("feedf00d", current_identity(), label="alive", lease_seconds=60)
        other_dir.mkdir()
        registry.plan("feedf00d", "f", "path.tempdir", "rc_feedf00d_1_a", {"path": str(other_dir)})
        registry.close()
        argv.append("feedf00d")
    child, line = spawn(BEFORE_THE_ROW, *argv)
    assert line == {"stuck": "before the run row"}
    watchdog = _watchdog_of(child.pid)
    kill(child)
    wait_until(lambda: not alive(watchdog), CHILD_TIMEOUT)
    registry = open_registry(registry_path)
    try:
        runs = [(r.id, r.state) for r in registry.list_runs()]
        if collide:
            assert runs == [("feedf00d", "open")], "the live run was touched"
            assert [r.state for r in registry.resources("feedf00d")] == ["planned"]
            assert other_dir.is_dir()
        else:
            assert runs == [], "a run was left open"
    finally:
        registry.close()
