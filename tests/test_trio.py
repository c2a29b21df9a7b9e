"""The async face under trio, anyio (both backends) and asyncio (issue 16).

Each library runs in a child process of its own, which imports only that library (the trio and
asyncio children import no anyio): ``aacquire`` and ``async with reclaim.Fixture`` work, a
cancellation in the middle of a slow release lets the release finish and is raised after it, and
a cancellation in the middle of an acquisition lets it finish and be journaled, then released.
The slow parts are gated with events, not timed: the cancel lands while the worker thread waits.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import CHILD_TIMEOUT, registry_is_empty
from reclaim._registry import open_registry

CHILD = r'''
import json, os, pathlib, sys, threading

MODE = sys.argv[1]
SCRATCH = pathlib.Path(sys.argv[2])

if MODE == "trio":
    import trio as lib
    run = lib.run
    group = lib.open_nursery
elif MODE.startswith("anyio-"):
    import anyio as lib
    run = lambda main: lib.run(main, backend=MODE.removeprefix("anyio-"))
    group = lib.create_task_group
else:
    import asyncio as lib
    run = lambda main: lib.run(main())

import reclaim
from reclaim.backends.path import TempDir
from reclaim.backends.process import Process

IN_RELEASE, RELEASE_GO = threading.Event(), threading.Event()
IN_ACQUIRE, ACQUIRE_GO = threading.Event(), threading.Event()


class GatedRelease(TempDir):
    """A temp dir whose release, in its worker thread, waits until the test has cancelled."""

    @classmethod
    def release(cls, record):
        IN_RELEASE.set()
        RELEASE_GO.wait(60)
        super().release(record)


class GatedAcquire(TempDir):
    def acquire(self, name):
        IN_ACQUIRE.set()
        ACQUIRE_GO.wait(60)
        return super().acquire(name)


async def cancel_inside(body, inside, go):
    """Run body(); cancel it once `inside` is set (a worker thread is in the slow part), then
    let the slow part go on. True if the cancellation reached the canceller's scope."""
    if MODE == "asyncio":
        task = lib.create_task(body())
        while not inside.is_set():
            await lib.sleep(0.001)
        task.cancel()
        go.set()
        try:
            await task
        except lib.CancelledError:
            return True
        return False
    outcome = {}
    scope = lib.CancelScope()

    async def run_body():
        with scope:
            await body()
        outcome["cancelled"] = scope.cancelled_caught

    async def canceller():
        while not inside.is_set():
            await lib.sleep(0.001)
        scope.cancel()
        go.set()

    async with group() as tasks:
        tasks.start_soon(run_body)
        tasks.start_soon(canceller)
    return outcome["cancelled"]


async def main():
    report = {}

    # 1. aacquire and the async exit, no cancellation.
    async with reclaim.Fixture("plain") as f:
        path = await f.aacquire(TempDir(parent=SCRATCH))
        proc = await f.aacquire(Process(["sleep", "600"]))
        assert path.is_dir() and proc.poll() is None
    report["plain"] = {"dir_left": path.exists(), "process_left": proc.poll() is None}

    # 2. Cancelled in the middle of a slow release: everything is released, then cancelled.
    held, steps = [], []

    async def cleanup():
        await lib.sleep(0)  # an async cleanup, itself a checkpoint, runs despite the cancel
        steps.append("async cleanup ran")

    async def releasing():
        async with reclaim.Fixture("slow-release") as f:
            held.append(await f.aacquire(TempDir(parent=SCRATCH)))
            f.add_cleanup(cleanup)
            held.append(await f.aacquire(GatedRelease(parent=SCRATCH)))
        steps.append("the exit returned instead of raising the cancellation")

    cancelled = await cancel_inside(releasing, IN_RELEASE, RELEASE_GO)
    report["release"] = {
        "cancelled": cancelled,
        "left": [str(p) for p in held if p.exists()],
        "held": len(held),
        "steps": steps,
    }

    # 3. Cancelled in the middle of an acquisition: it completes, is journaled, the cancellation
    #    is raised from aacquire, and the fixture releases it.
    got, reached = [], []

    async def acquiring():
        async with reclaim.Fixture("slow-acquire") as f:
            got.append(await f.aacquire(GatedAcquire(parent=SCRATCH)))
            reached.append("aacquire returned instead of raising the cancellation")

    cancelled = await cancel_inside(acquiring, IN_ACQUIRE, ACQUIRE_GO)
    report["acquire"] = {
        "cancelled": cancelled,
        "reached": reached,
        "left": sorted(os.listdir(SCRATCH)),
    }
    report["modules"] = sorted(m for m in ("trio", "anyio") if m in sys.modules)
    print(json.dumps(report))


run(main)
'''

MODES = ["trio", "anyio-trio", "anyio-asyncio", "asyncio"]
#: What each child had imported of trio and anyio at its end.
IMPORTED = {
    "trio": ["trio"],
    "anyio-trio": ["anyio", "trio"],
    "anyio-asyncio": ["anyio"],
    "asyncio": [],
}


def events(registry_path: str) -> collections.Counter[str]:
    reg = open_registry(registry_path)
    try:
        return collections.Counter(e.event for e in reg.events() if e.event.startswith("resource"))
    finally:
        reg.close()


@pytest.mark.parametrize("mode", MODES)
def test_async_face_under(mode: str, registry_path: str, scratch: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(scratch)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["plain"] == {"dir_left": False, "process_left": False}
    assert report["release"] == {
        "cancelled": True,
        "left": [],
        "held": 2,
        "steps": ["async cleanup ran"],
    }
    assert report["acquire"] == {"cancelled": True, "reached": [], "left": []}
    # Only the library under test was imported: reclaim needs neither trio nor anyio.
    assert report["modules"] == IMPORTED[mode]
    # The event log agrees: 5 acquired (the cancelled acquisition included), 5 released.
    assert events(registry_path) == {
        "resource.planned": 5,
        "resource.acquired": 5,
        "resource.released": 5,
    }
    assert registry_is_empty(registry_path)


PLUGIN_UNDER_ANYIO_TRIO = """
import os, pathlib
import anyio
import pytest
from reclaim.backends.path import TempDir

SCRATCH = pathlib.Path(os.environ["SCRATCH"])

@pytest.fixture
def anyio_backend():
    return "trio"

@pytest.mark.anyio
async def test_acquires_under_trio(reclaim):
    path = await reclaim.aacquire(TempDir(parent=SCRATCH))
    assert path.is_dir()
    with anyio.move_on_after(0.01):
        await anyio.sleep(10)

@pytest.fixture
async def own_fixture():
    import reclaim
    async with reclaim.Fixture("trio-fixture") as f:
        yield await f.aacquire(TempDir(parent=SCRATCH))

@pytest.mark.anyio
async def test_async_fixture_under_trio(own_fixture):
    assert own_fixture.is_dir()
"""


def test_the_pytest_fixtures_under_anyio_trio(
    pytester: pytest.Pytester,
    registry_path: str,
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCRATCH", str(scratch))
    pytester.makeini("[pytest]\nreclaim_grace = 0\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_trio_suite=PLUGIN_UNDER_ANYIO_TRIO)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert list(scratch.iterdir()) == []
    assert registry_is_empty(registry_path)
