"""The pytest summary says what the registry's event log says (issue 16), in the cases where it
did not: hand-made and persona fixtures, a cancelled ``aacquire``, a pytest-timeout that fires
in the middle of a release, and an xdist worker SIGKILLed mid-test.

Each case runs a real pytest session in a subprocess on a generated test file; the summary line
it prints is compared with counts the test derives itself from the registry's events.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import CHILD_TIMEOUT, registry_is_empty, wait_until
from reclaim._registry import EventRecord, open_registry

INI = """
[pytest]
reclaim_grace = 0
asyncio_default_fixture_loop_scope = function
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, registry_path: str, scratch: Path) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


@pytest.fixture(autouse=True)
def _scratch_env(monkeypatch: pytest.MonkeyPatch, scratch: Path) -> None:
    monkeypatch.setenv("SCRATCH", str(scratch))
    monkeypatch.delenv("RECLAIM_WATCHDOG", raising=False)


@dataclasses.dataclass
class Log:
    """What the event log says of the sessions' runs."""

    events: list[EventRecord]
    runs: dict[str, dict[str, Any]]  # run id -> its run.opened detail

    def of(self, resource_id: int) -> list[EventRecord]:
        return [e for e in self.events if e.resource_id == resource_id]

    def resources(self, run_ids: set[str] | None = None) -> list[int]:
        return [
            e.resource_id
            for e in self.events
            if e.event == "resource.planned"
            and e.resource_id is not None
            and e.run_id in (self.runs if run_ids is None else run_ids)
        ]

    def last(self, resource_id: int) -> EventRecord | None:
        ends = [e for e in self.of(resource_id) if e.event != "resource.acquired"]
        return ends[-1] if len(ends) > 1 else None  # the first is resource.planned

    def summary(self) -> tuple[int, int, int]:
        """(acquired, released of those, still failed), as the plugin must count them."""
        acquired = [r for r in self.resources() if _has(self.of(r), "resource.acquired")]
        released = [r for r in acquired if _ended(self.last(r), "resource.released")]
        failed = [r for r in self.resources() if _ended(self.last(r), "resource.failed")]
        return len(acquired), len(released), len(failed)


def _has(events: list[EventRecord], name: str) -> bool:
    return any(e.event == name for e in events)


def _ended(event: EventRecord | None, name: str) -> bool:
    return event is not None and event.event == name


def read_log(registry_path: str) -> Log:
    reg = open_registry(registry_path)
    try:
        events = reg.events(limit=100_000)
    finally:
        reg.close()
    runs = {
        str(e.run_id): e.detail
        for e in events
        if e.event == "run.opened" and str(e.detail.get("parent", "")).startswith("pytest-session:")
    }
    return Log(events, runs)


SUMMARY = re.compile(r"^reclaim: (\d+) acquired, (\d+) released, (\d+) failed", re.MULTILINE)


def summary_of(output: str) -> tuple[int, int, int]:
    found = SUMMARY.findall(output)
    assert len(found) == 1, f"one summary line expected in:\n{output}"
    acquired, released, failed = (int(n) for n in found[0])
    return acquired, released, failed


# --- hand-made fixtures and personas ------------------------------------------------------------

EVERY_FIXTURE = """
import asyncio, os, pathlib
from reclaim import Fixture
from reclaim.backends.path import TempDir

SCRATCH = pathlib.Path(os.environ["SCRATCH"])

def test_plugin_hand_made_and_persona(reclaim, persona):
    reclaim.acquire(TempDir(parent=SCRATCH))
    with Fixture("by hand") as f:
        f.acquire(TempDir(parent=SCRATCH))
    sarah = persona("sarah")
    sarah.acquire(TempDir(parent=SCRATCH))

def test_async_hand_made():
    async def main():
        async with Fixture("by hand, async") as f:
            await f.aacquire(TempDir(parent=SCRATCH))
    asyncio.run(main())
"""


def test_hand_made_and_persona_fixtures_are_counted(
    suite: pytest.Pytester, registry_path: str, scratch: Path
) -> None:
    suite.makepyfile(test_every=EVERY_FIXTURE)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    log = read_log(registry_path)
    assert summary_of(result.stdout.str()) == log.summary() == (4, 4, 0)
    assert list(scratch.iterdir()) == []


# --- a cancelled aacquire ------------------------------------------------------------------------

CANCELLED = """
import asyncio, os, pathlib, threading
import pytest
from reclaim.backends.path import TempDir

SCRATCH = pathlib.Path(os.environ["SCRATCH"])
INSIDE, GO = threading.Event(), threading.Event()

class Gated(TempDir):
    def acquire(self, name):
        INSIDE.set()
        GO.wait(60)
        return super().acquire(name)

@pytest.mark.asyncio
async def test_only_a_cancelled_acquisition(reclaim):
    task = asyncio.create_task(reclaim.aacquire(Gated(parent=SCRATCH)))
    while not INSIDE.is_set():
        await asyncio.sleep(0.001)
    task.cancel()  # lands while the worker thread creates the directory
    GO.set()
    with pytest.raises(asyncio.CancelledError):
        await task
"""


def test_a_cancelled_aacquire_is_counted_acquired_and_released(
    suite: pytest.Pytester, registry_path: str, scratch: Path
) -> None:
    """The only resource of the session is one whose acquisition was cancelled half-way: it is
    finished, journaled and released, and the summary (printed, though nothing else was
    acquired) says so, as the event log does."""
    suite.makepyfile(test_cancelled=CANCELLED)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    log = read_log(registry_path)
    assert summary_of(result.stdout.str()) == log.summary() == (1, 1, 0)
    assert list(scratch.iterdir()) == []


# --- pytest-timeout in the middle of a release ---------------------------------------------------

SLOW_RELEASE = """
import os, pathlib
from reclaim_test_backends import SlowDir

SCRATCH = pathlib.Path(os.environ["SCRATCH"])

class SlowRelease(SlowDir):
    # SlowDir's acquire pauses for `pause`, its release for the record's: only the release.
    def plan(self, name):
        return {**super().plan(name), "pause": 2.0}

def test_slow_release(reclaim):
    reclaim.acquire(SlowRelease(SCRATCH, pause=0))
"""


def test_a_timeout_during_a_release_is_counted_after_the_release_ends(
    suite: pytest.Pytester, registry_path: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest-timeout (signal method) fires while the release sleeps: the release is cut off
    and journaled failed; the run's end, before the summary, releases it again, and the
    summary counts it released."""
    monkeypatch.setenv("RECLAIM_TEST_ANNOUNCE", "1")  # SlowDir's release pauses half-way
    suite.makepyfile(test_slow=SLOW_RELEASE)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "--timeout", "1")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*Timeout*"])
    log = read_log(registry_path)
    (resource,) = log.resources()
    history = [(e.event, e.detail.get("by"), e.detail.get("error")) for e in log.of(resource)]
    assert history == [
        ("resource.planned", None, None),
        ("resource.acquired", None, None),
        ("resource.failed", "fixture", "interrupted while releasing"),
        ("resource.released", "exit", None),
    ]
    assert summary_of(result.stdout.str()) == log.summary() == (1, 1, 0)
    out = result.stdout.str()
    assert out.index("Timeout") < out.index("reclaim: 1 acquired")
    assert list(scratch.iterdir()) == []


# --- xdist, a worker SIGKILLed mid-test ----------------------------------------------------------

XDIST = """
import json, os, pathlib, time
import pytest
from reclaim.backends.path import TempDir

SCRATCH = pathlib.Path(os.environ["SCRATCH"])

@pytest.mark.parametrize("n", range(8))
def test_acquires(reclaim, reclaim_session, n, worker_id):
    reclaim_session.acquire(TempDir(parent=SCRATCH, prefix=f"session{n}-"))
    reclaim.acquire(TempDir(parent=SCRATCH, prefix=f"t{n}-"))
    if n == 5:
        (SCRATCH / "hang.json").write_text(json.dumps({"pid": os.getpid(), "worker": worker_id}))
        time.sleep(600)
"""


def test_a_crashed_xdist_worker_counts_only_its_watchdogs_releases(
    suite: pytest.Pytester, registry_path: str, scratch: Path
) -> None:
    suite.makepyfile(test_xdist=XDIST)
    log_path = suite.path / "inner.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2"],
            cwd=suite.path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        hang = scratch / "hang.json"
        wait_until(lambda: hang.exists() or proc.poll() is not None)
        assert proc.poll() is None, log_path.read_text()
        time.sleep(0.05)  # the writer's json.dumps and write are one call; let it finish
        info = json.loads(hang.read_text())
        os.kill(info["pid"], signal.SIGKILL)
        assert proc.wait(timeout=CHILD_TIMEOUT * 2) == pytest.ExitCode.TESTS_FAILED
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=CHILD_TIMEOUT)
    output = log_path.read_text()
    wait_until(lambda: registry_is_empty(registry_path))
    log = read_log(registry_path)
    crashed = {r for r, opened in log.runs.items() if opened.get("pid") == info["pid"]}
    assert len(crashed) == 1, log.runs
    mine = log.resources(crashed)
    # Held at the crash: what the worker had not released itself; the watchdog released those.
    held = [r for r in mine if not _released_by(log, r, {"fixture", "exit"})]
    by_watchdog = [r for r in mine if _released_by(log, r, {"watchdog"})]
    assert held == by_watchdog
    assert 2 <= len(held) < len(mine), "the hanging test's and the session's dirs, not all"
    line = [ln for ln in output.splitlines() if ln.startswith("reclaim: crashed workers")]
    assert line == [
        f"reclaim: crashed workers {info['worker']} held {len(held)} resources; their"
        f" watchdogs released {len(by_watchdog)}"
    ], output
    assert summary_of(output) == log.summary()
    acquired, released, failed = log.summary()
    assert acquired == released
    assert failed == 0
    assert list(scratch.iterdir()) == [hang]


def _released_by(log: Log, resource_id: int, actors: set[str]) -> bool:
    last = log.last(resource_id)
    return _ended(last, "resource.released") and last is not None and last.detail["by"] in actors
